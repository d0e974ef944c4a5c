/**
 * IOVAs across device close on the real kernel: the two edus sit in one VFIO container (one
 * IOVA space, one allocator). One stays open and keeps its buffers mapped while the other, with
 * a 24-bit mask (16 MiB of IOVA below it), is opened, used and closed again and again. Each
 * close gives back what it took (a leak runs out of space below the mask within a few rounds),
 * VFIO_IOMMU_MAP_DMA over a closed device's old IOVAs succeeds (the kernel no longer maps them)
 * while over the open device's it is refused, and DMA works on both sides after every reopen.
 */
import { test, before } from 'node:test';
import * as assert from 'node:assert/strict';
import { openDevice } from '../../src/device/open';
import type { PciDevice } from '../../src/device/device';
import { native, constants } from '../../src/native/index';
import { EduDriver } from '../../src/drivers/edu/edu-driver';
import { EDU_DEVICE_ID, EDU_VENDOR_ID } from '../../src/drivers/edu/registers';
import { requireGuest, boundDevices } from './guest-env';

const MASK_24 = 0xffffff;
let edu0: string;
let edu1: string;

before(() => {
  requireGuest();
  [edu0, edu1] = boundDevices(EDU_VENDOR_ID, EDU_DEVICE_ID, 2) as [string, string];
});

function pattern(length: number, seed: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (i * 7 + seed) & 0xff);
}

/** Through the device and back: `from` (at fromIova) to the edu's buffer, then into `to` (at toIova). */
async function roundTrip(edu: EduDriver, from: Uint8Array, fromIova: number, to: Uint8Array, toIova: number, seed: number): Promise<void> {
  from.set(pattern(4095, seed));
  to.fill(0);
  await edu.dma('to-device', fromIova, 0, 4095);
  await edu.dma('from-device', toIova, 0, 4095);
  assert.deepEqual(to.subarray(0, 4095), pattern(4095, seed));
}

/** Whether the container maps anything in [iova, iova + size): a map there is EEXIST if so. */
function mappedInKernel(device: PciDevice, iova: number, size: number): boolean {
  const probe = new Uint8Array(native.mmap(size, constants.PROT_READ | constants.PROT_WRITE, constants.MAP_PRIVATE | constants.MAP_ANONYMOUS, -1, 0));
  try {
    device.backend.dmaMap({ iova, size, vaddr: native.addressOf(probe), memory: probe, memoryIova: iova, deviceReads: true, deviceWrites: false });
  } catch (err) {
    if ((err as { code?: string }).code === 'EEXIST') return true;
    throw err;
  } finally {
    native.munmap(probe.buffer);
  }
  device.backend.dmaUnmap(iova, size);
  return false;
}

test('a device closed and reopened beside another in its container: IOVAs come back at each close, the kernel unmapped them, DMA works on both after each reopen', { timeout: 600_000 }, async () => {
  await using keeper = await openDevice(edu0, { dmaMask: 0xfffffff });
  const keeperEdu = new EduDriver(keeper);
  const kIn = keeper.allocDma(4096);
  const kOut = keeper.allocDma(4096);
  await roundTrip(keeperEdu, new Uint8Array(kIn.buffer), kIn.iova, new Uint8Array(kOut.buffer), kOut.iova, 1);
  const baseline = keeper.dma.domainIovaFree;
  let oldRanges: [number, number][] = [];
  for (let round = 0; round < 8; round++) {
    const device = await openDevice(edu1, { dmaMask: MASK_24 });
    assert.equal(device.dma.domainIovaFree, baseline, `round ${round}: the shared allocator is as the keeper left it`);
    for (const [iova, size] of oldRanges) assert.equal(mappedInKernel(device, iova, size), false, `round ${round}: the last close's IOVA 0x${iova.toString(16)} is not mapped in the kernel`);
    const edu = new EduDriver(device);
    const big = device.allocDma(5 << 20, { hugePages: 'never' }); // 15 MiB leaked in three rounds fills the space below the mask
    const mine = new Uint8Array(1 << 20);
    const streaming = device.mapDma(mine, 'bidirectional');
    assert.equal(keeper.dma.domainIovaFree, baseline - big.size - streaming.pageSize);
    const bigBytes = new Uint8Array(big.buffer);
    await roundTrip(edu, bigBytes.subarray(big.size - 4096), big.iovaAt(big.size - 4096), mine.subarray(8192), streaming.iova + 8192, round + 10);
    // The keeper maps part of the closing device's buffer: that memory must outlive the close.
    const lent = keeper.mapDma(bigBytes.subarray(0, 4096), 'bidirectional');
    assert.equal(mappedInKernel(keeper, big.iova, big.size), true, 'an open buffer is mapped in the kernel');
    oldRanges = [[big.iova, big.size], [streaming.pageIova, streaming.pageSize]];
    device.close();
    assert.equal(keeper.dma.domainIovaFree, baseline - lent.pageSize, `round ${round}: every IOVA of the closed device came back`);
    assert.throws(() => big.free(), (e: any) => e.code === 'EINVAL', 'a closed device\'s buffer is freed once, at close');
    assert.throws(() => streaming.unmap(), (e: any) => e.code === 'EINVAL');
    assert.equal(mappedInKernel(keeper, kIn.iova, kIn.size), true, 'the keeper\'s buffers stay mapped');
    await roundTrip(keeperEdu, new Uint8Array(kIn.buffer), kIn.iova, lent.view, lent.iova, round + 20);
    lent.unmap();
    assert.equal(keeper.dma.domainIovaFree, baseline);
  }
});
