/**
 * MSI-X on a real QEMU device model through the guest's vfio-pci: the e1000e (82574L) routes
 * its interrupt causes to MSI-X vectors through IVAR, and its ICS register lets software raise a
 * cause, so every vector can be fired on purpose.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { openDevice } from '../../src/device/open';
import type { PciDevice } from '../../src/device/device';
import { bindToVfio, unbindFromVfio, iommuGroupOf } from '../../src/pci/bind';
import { requireGuest, findDevices } from './guest-env';

// 82574L registers (BAR0) and interrupt causes.
const ICR = 0xc0;
const ICS = 0xc8;
const IMS = 0xd0;
const IMC = 0xd8;
const IVAR = 0xe4;
const CAUSES = [0x00100000, 0x00200000, 0x00400000, 0x00800000, 0x01000000]; // RxQ0, RxQ1, TxQ0, TxQ1, Other
/** IVAR: a 4-bit field per cause, bit 3 = valid, bits 0-2 = vector. */
function ivar(vectors: number[]): number {
  return vectors.reduce((acc, vec, i) => acc | ((0x8 | vec) << (4 * i)), 0) >>> 0;
}

const CTRL = 0x0;
const CTRL_RST = 0x04000000;
const EITR = 0xe8; // one per vector, 4 bytes apart: interrupt throttling

let nic: string;

/**
 * Software reset, then interrupts routed cause i -> vector i with no throttling. The kernel's
 * e1000e driver had the device before us and leaves its own set-up (throttling, auto-clear).
 */
async function resetAndRoute(device: PciDevice, routes: number[], causes: number): Promise<void> {
  const bar = device.bar(0);
  bar.write32(CTRL, bar.read32(CTRL) | CTRL_RST);
  await new Promise((r) => setTimeout(r, 20));
  bar.write32(IMC, 0xffffffff);
  bar.write32(ICR, 0xffffffff);
  for (let v = 0; v < 5; v++) bar.write32(EITR + 4 * v, 0);
  bar.write32(IVAR, ivar(routes));
  bar.write32(IMS, causes >>> 0);
}

before(() => {
  requireGuest();
  // The e1000e that has an IOMMU group of its own.
  const nics = findDevices(0x8086, 0x10d3).filter((a) => findDevices(0x1234, 0x11e8).every((e) => iommuGroupOf(e) !== iommuGroupOf(a)));
  assert.ok(nics.length > 0, 'an e1000e alone in its IOMMU group');
  nic = nics[0]!;
  bindToVfio(nic);
});

after(() => {
  if (nic) unbindFromVfio(nic);
});

/**
 * Raise one cause, then clear it. In MSI-X mode ICR is write-1-to-clear, not read-to-clear, and
 * the device notifies a cause again only once it was cleared.
 */
async function fire(device: PciDevice, cause: number): Promise<void> {
  const bar = device.bar(0);
  bar.write32(ICS, cause);
  await new Promise((r) => setTimeout(r, 5));
  bar.write32(ICR, 0xffffffff);
}

test('MSI-X: each of the device\'s vectors delivers its own cause, once', async () => {
  await using device = await openDevice(nic);
  device.enableBusMaster(); // MSI-X messages are bus-master writes; the unbound NIC is quiet
  const offered = device.interrupts.info('msix').count;
  assert.ok(offered >= 5, `e1000e offers ${offered} MSI-X vectors`);
  const vectors = device.enableInterrupts('msix', 5);
  await resetAndRoute(device, [0, 1, 2, 3, 4], CAUSES.reduce((a, c) => a | c, 0));
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < 5; i++) {
      const got = vectors[i]!.wait({ timeoutMs: 5000 });
      await fire(device, CAUSES[i]!);
      assert.equal(await got, 1, `vector ${i}`);
    }
  }
  for (const v of vectors) {
    assert.equal(v.total, 3, `vector ${v.vector} fired once per round`);
    assert.equal(v.pending, 0);
  }
});

test('MSI-X: changing the vector count at run time keeps the existing vectors working', async () => {
  await using device = await openDevice(nic);
  device.enableBusMaster(); // MSI-X messages are bus-master writes; the unbound NIC is quiet
  const two = device.enableInterrupts('msix', 2);
  await resetAndRoute(device, [0, 1, 1, 1, 1], CAUSES[0]! | CAUSES[1]!);
  let got = two[1]!.wait({ timeoutMs: 5000 });
  await fire(device, CAUSES[1]!);
  assert.equal(await got, 1);

  const five = device.enableInterrupts('msix', 5);
  assert.equal(five.length, 5);
  assert.equal(five[0], two[0], 'vector objects survive the resize');
  assert.equal(five[1], two[1]);
  await resetAndRoute(device, [0, 1, 2, 3, 4], CAUSES.reduce((a, c) => a | c, 0));
  for (const i of [0, 1, 4]) {
    got = five[i]!.wait({ timeoutMs: 5000 });
    await fire(device, CAUSES[i]!);
    assert.equal(await got, 1, `vector ${i} after the resize`);
  }
  // Shrinking closes the vectors that went away.
  const one = device.enableInterrupts('msix', 1);
  assert.equal(one[0], two[0]);
  assert.equal(five[4]!.closed, true);
  await assert.rejects(five[4]!.wait(), (e: any) => e.code === 'ENODEV');
  assert.throws(() => device.enableInterrupts('msix', 99), (e: any) => e.code === 'EINVAL' && /offers \d+ MSIX/.test(e.message));
});

// The kernel resets this e1000e by a PM D3hot->D0 cycle (it has no FLR), which QEMU's model does
// not treat as a reset: its registers survive. What this test can show is the library's side:
// the reset goes through, and the interrupt set-up and DMA mappings are kept.
test('reset through VFIO keeps the interrupt set-up and the DMA mappings', async () => {
  await using device = await openDevice(nic);
  device.enableBusMaster(); // MSI-X messages are bus-master writes; the unbound NIC is quiet
  assert.equal(device.backend.deviceInfo().canReset, true);
  const vectors = device.enableInterrupts('msix', 5);
  await resetAndRoute(device, [0, 1, 2, 3, 4], CAUSES.reduce((a, c) => a | c, 0));
  const coherent = device.allocDma(4096);
  const mapping = device.mapDma(new Uint8Array(8192), 'bidirectional');
  const bar = device.bar(0);
  assert.equal(fs.readFileSync(`/sys/bus/pci/devices/${nic}/reset_method`, 'utf8').trim(), 'pm');
  device.reset();
  assert.equal(device.interrupts.mode, 'msix');
  // No enableInterrupts again: the same vectors still deliver once the device is set up anew.
  await resetAndRoute(device, [0, 1, 2, 3, 4], CAUSES.reduce((a, c) => a | c, 0));
  for (const i of [2, 3]) {
    const got = vectors[i]!.wait({ timeoutMs: 5000 });
    await fire(device, CAUSES[i]!);
    assert.equal(await got, 1, `vector ${i} after reset`);
  }
  assert.equal(device.dma.liveBuffers, 1);
  assert.equal(device.dma.liveMappings, 1);
  mapping.unmap();
  coherent.free();
});
