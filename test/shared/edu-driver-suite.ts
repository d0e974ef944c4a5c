/**
 * The edu driver's tests, written once and run against every way of reaching an edu device:
 * QEMU's real edu through kernel VFIO (in the guest), and the TypeScript model over vfio-user
 * served on a worker thread or by `userpci serve` in another process. Only the PciDevice differs;
 * the driver and these tests cannot tell which one they have.
 *
 * Each test opens its own device (the device keeps its state across opens, as hardware does).
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import type { PciDevice } from '../../src/device/device';
import type { InterruptVector } from '../../src/irq/interrupt-vector';
import { native } from '../../src/native/index';
import { EduDriver } from '../../src/drivers/edu/edu-driver';
import * as R from '../../src/drivers/edu/registers';

export interface EduSuiteTarget {
  /** Prefix of every test name, e.g. 'vfio-user (worker thread)'. */
  label: string;
  /** A freshly opened edu device (DMA mask set as the device needs); each test closes it. */
  open(): Promise<PciDevice>;
  /**
   * DMA goes through an IOMMU that enforces each map's range and direction (kernel VFIO): the
   * VFIO suite proves that against the hardware itself. Without one (vfio-user), the server is
   * what keeps the device to the client's maps, and this suite checks that it does.
   */
  fullIommu: boolean;
  /**
   * What the device must say of `mapsAnyMemory`: false through `userpci proxy`, whose real device
   * reaches memory only by memfd. The streaming-map tests then map memory the library allocated
   * (views of an allocDma buffer), and check that plain JS memory is refused with ENOTSUP.
   */
  mapsAnyMemory: boolean;
  /** Per-operation timeout handed to the driver (default the driver's 5000 ms). */
  timeoutMs?: number;
}

/** The edu ID register: version 1.0 and the 0xed signature. */
export const EDU_ID = 0x010000ed;

export function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 31 + seed) & 0xff;
  return out;
}

/**
 * Raise the device's own interrupt and wait, on the vector and not on a clock, until it is
 * delivered. Its status bit stays set until acknowledged, so an INTx line stays asserted (an
 * earlier delivery that left the line masked is unmasked after each wait) and an MSI, once sent,
 * arrives. Late deliveries of earlier completions may come first; they are counted, not lost.
 */
async function provesDelivery(edu: EduDriver, vector: InterruptVector, completions: number): Promise<void> {
  const before = vector.total;
  edu.raiseInterrupt(SELF_TEST_IRQ);
  while (vector.total === before) {
    await vector.wait({ timeoutMs: 60_000 }); // a hang guard only
    vector.unmask();
  }
  assert.ok(edu.acknowledgeInterrupt() & SELF_TEST_IRQ, 'the raised status bit was still set when its interrupt came');
  vector.unmask();
  assert.ok(vector.total >= 1, `${vector.kind}: delivered`);
  assertNoExtraMsi(vector, completions + 1);
}

/**
 * MSI is a message per event: never more deliveries than events. INTx has no such bound: it is
 * a level, and unmasking a line that a new completion raised in the meantime (the driver must
 * unmask after a delivery whose status was already taken) delivers it once more, with VFIO as
 * with our server. The driver's results are what count there.
 */
function assertNoExtraMsi(vector: InterruptVector, events: number): void {
  if (vector.kind === 'msi') assert.ok(vector.total <= events, `msi: ${vector.total} interrupts for ${events} events`);
}

/**
 * Memory of the caller's for a streaming map: its own ArrayBuffer where the backend maps any
 * memory; else an allocDma buffer's memfd pages, the memory a proxy's real IOMMU can reach
 * (mapped again at the streaming map's own IOVA). Zeroed either way; freed when the device closes.
 */
function callerMemory(device: PciDevice, bytes: number): ArrayBuffer {
  return device.mapsAnyMemory ? new ArrayBuffer(bytes) : device.allocDma(bytes).buffer;
}

function callerBytes(device: PciDevice, bytes: number, fill?: Uint8Array): Uint8Array {
  const view = new Uint8Array(callerMemory(device, bytes), 0, bytes);
  if (fill) view.set(fill);
  return view;
}

/** A status bit of edu's that neither factorial nor DMA uses. */
const SELF_TEST_IRQ = 0x10000;

export function registerEduDriverSuite(target: EduSuiteTarget): void {
  const { label } = target;
  const opts = target.timeoutMs === undefined ? {} : { timeoutMs: target.timeoutMs };

  test(`${label}: identification: edu's PCI IDs, ID register 0x010000ed (version 1.0)`, async () => {
    await using device = await target.open();
    assert.equal(device.vendorId, R.EDU_VENDOR_ID);
    assert.equal(device.deviceId, R.EDU_DEVICE_ID);
    const edu = new EduDriver(device);
    const id = edu.identify();
    assert.equal(id.id, EDU_ID);
    assert.deepEqual([id.major, id.minor], [1, 0]);
  });

  test(`${label}: liveness: the device inverts what the driver writes`, async () => {
    await using device = await target.open();
    const edu = new EduDriver(device);
    for (const value of [0x12345678, 0, 0xffffffff, 0x5a5aa5a5]) assert.ok(edu.checkLiveness(value), `0x${value.toString(16)}`);
  });

  test(`${label}: factorial, polled`, async () => {
    await using device = await target.open();
    const edu = new EduDriver(device);
    assert.equal(await edu.factorial(0, opts), 1);
    assert.equal(await edu.factorial(1, opts), 1);
    assert.equal(await edu.factorial(10, opts), 3628800);
    assert.equal(await edu.factorial(12, opts), 479001600);
    assert.equal(await edu.factorial(13, opts), Number(6227020800n & 0xffffffffn), '13! wraps at 32 bits');
    await assert.rejects(edu.factorial(-1), (e: any) => e.code === 'EINVAL');
    await assert.rejects(edu.factorial(2 ** 32), (e: any) => e.code === 'EINVAL');
  });

  for (const mode of ['intx', 'msi'] as const) {
    test(`${label}: factorial by ${mode === 'intx' ? 'INTx' : 'MSI'} interrupt`, async () => {
      await using device = await target.open();
      const edu = new EduDriver(device);
      const info = device.interrupts.info(mode);
      assert.equal(info.count, 1);
      assert.equal(info.automasked, mode === 'intx', 'INTx is automasked, MSI is not');
      const vector = edu.useInterrupts(mode)!;
      assert.equal(vector.kind, mode);
      for (const [n, expected] of [[10, 3628800], [7, 5040], [5, 120]] as const) {
        assert.equal(await edu.factorial(n, opts), expected);
      }
      // The driver returns as soon as the status register shows the completion, so completions
      // can outrun their interrupts: two MSIs that reach the CPU before the first is serviced
      // coalesce (x86 edge semantics), and an INTx line the driver lowers before the kernel's
      // handler reads the device's status is no interrupt at all (vfio-pci shares the line and
      // checks PCI_STATUS). So the completions bound an MSI count from above only...
      assertNoExtraMsi(vector, 3);
      // ...and delivery is shown by an interrupt the device holds until it is acknowledged.
      await provesDelivery(edu, vector, 3);
      // And back to polling.
      edu.useInterrupts(undefined);
      assert.equal(await edu.factorial(6, opts), 720);
    });

    test(`${label}: DMA completion by ${mode === 'intx' ? 'INTx' : 'MSI'} interrupt`, async () => {
      await using device = await target.open();
      const edu = new EduDriver(device);
      const vector = edu.useInterrupts(mode)!;
      const data = pattern(4000, 17);
      await edu.copyToDevice(data, 0, opts);
      assert.deepEqual(await edu.copyFromDevice(0, 4000, opts), data);
      // A streaming map of the caller's memory completes by interrupt too.
      const mine = callerBytes(device, 4096);
      const m = device.mapDma(mine, 'from-device');
      await edu.dma('from-device', m.iova, 0, 4000, opts);
      assert.deepEqual(mine.subarray(0, 4000), data);
      m.unmap();
      assertNoExtraMsi(vector, 3);
      await provesDelivery(edu, vector, 3);
      edu.useInterrupts(undefined);
    });
  }

  test(`${label}: DMA both ways through the driver's coherent buffer (copyToDevice/copyFromDevice)`, async () => {
    await using device = await target.open();
    const edu = new EduDriver(device);
    const data = pattern(R.DMA_BUFFER_USABLE, 7);
    await edu.copyToDevice(data, 0, opts);
    assert.deepEqual(await edu.copyFromDevice(0, R.DMA_BUFFER_USABLE, opts), data);
    const part = pattern(100, 99);
    await edu.copyToDevice(part, 1000, opts);
    assert.deepEqual(await edu.copyFromDevice(1000, 100, opts), part);
    assert.deepEqual(await edu.copyFromDevice(0, 1000, opts), data.subarray(0, 1000), 'bytes before the partial write kept');
    await edu.copyToDevice(Uint8Array.of(0xc3), R.DMA_BUFFER_USABLE - 1, opts);
    assert.deepEqual(await edu.copyFromDevice(R.DMA_BUFFER_USABLE - 1, 1, opts), Uint8Array.of(0xc3), 'the last usable byte');
    edu.release();
  });

  test(`${label}: DMA both ways through a streaming map of the caller's buffer (mapDma)`, async () => {
    await using device = await target.open();
    const edu = new EduDriver(device);
    const backing = callerMemory(device, 3 * 4096);
    const view = new Uint8Array(backing, 4096 - 100, 300); // straddles a page boundary
    view.set(pattern(300, 3));
    const m = device.mapDma(view, 'bidirectional');
    assert.equal(m.segments.length, 1);
    assert.equal(m.segments[0]!.length, 300);
    assert.equal(m.segments[0]!.iova % 4096, native.addressOf(view) % 4096, 'first-page offset honoured');
    assert.ok(m.iova + 300 - 1 <= device.dmaLimit, 'below the DMA mask');
    await edu.dma('to-device', m.iova, 0, 300, opts);
    await edu.dma('from-device', m.iova + 50, 0, 200, opts); // device bytes 0..200 land at our offset 50
    const expected = pattern(300, 3);
    expected.set(pattern(300, 3).subarray(0, 200), 50);
    assert.deepEqual(view, expected);
    assert.ok(new Uint8Array(backing, 0, 4096 - 100).every((b) => b === 0), 'nothing before the mapped bytes');
    assert.ok(new Uint8Array(backing, 4096 + 200).every((b) => b === 0), 'nothing after them');
    m.unmap();
    assert.equal(m.mapped, false);
    // One-way maps work in their direction.
    const source = device.mapDma(callerBytes(device, 4096, pattern(4096, 42)), 'to-device');
    await edu.dma('to-device', source.iova, 0, 4095, opts);
    source.unmap();
    const sink = device.mapDma(callerBytes(device, 4096), 'from-device');
    await edu.dma('from-device', sink.iova, 0, 4095, opts);
    assert.deepEqual(sink.view.subarray(0, 4095), pattern(4095, 42));
    sink.unmap();
  });

  test(`${label}: streaming maps of plain JS memory: ${target.mapsAnyMemory ? 'mapped, the device writes into them' : 'refused with ENOTSUP naming the missing fd; library memory maps'}`, async () => {
    await using device = await target.open();
    assert.equal(device.mapsAnyMemory, target.mapsAnyMemory, 'the backend declares what it can map');
    const edu = new EduDriver(device);
    await edu.copyToDevice(pattern(512, 61), 0, opts);
    const plain = new Uint8Array(4096);
    if (target.mapsAnyMemory) {
      const m = device.mapDma(plain, 'from-device');
      await edu.dma('from-device', m.iova, 0, 512, opts);
      m.unmap();
      assert.deepEqual(plain.subarray(0, 512), pattern(512, 61));
    } else {
      assert.throws(() => device.mapDma(plain, 'from-device'), (e: any) => e.code === 'ENOTSUP' && /without an fd/.test(e.message));
      assert.throws(() => device.mapDma(plain.buffer, 'bidirectional'), (e: any) => e.code === 'ENOTSUP', 'every direction alike');
      // The refused maps left no IOVA behind and the device works: library memory maps.
      const lib = callerBytes(device, 4096);
      const m = device.mapDma(lib, 'from-device');
      await edu.dma('from-device', m.iova, 0, 512, opts);
      m.unmap();
      assert.deepEqual(lib.subarray(0, 512), pattern(512, 61));
    }
  });

  test(`${label}: the driver refuses DMA outside the device's buffer with EINVAL and starts nothing`, async () => {
    await using device = await target.open();
    const edu = new EduDriver(device);
    const data = pattern(64, 5);
    await edu.copyToDevice(data, 0, opts);
    const buffer = device.allocDma(4096);
    const refused: [number, number, number][] = [
      [buffer.iova, 0, R.DMA_BUFFER_SIZE], // ends exactly at the buffer's end: QEMU 7.2 would abort the VM
      [buffer.iova, 4000, 100],
      [buffer.iova, 0, 0],
      [buffer.iova, -1, 10],
      [buffer.iova, 0, 1.5],
      [buffer.iova, R.DMA_BUFFER_SIZE, 1],
      [-1, 0, 10],
      [2 ** 53, 0, 10],
    ];
    for (const [iova, offset, length] of refused) {
      await assert.rejects(edu.dma('from-device', iova, offset, length, opts), (e: any) => e.code === 'EINVAL', `iova ${iova} offset ${offset} length ${length}`);
      assert.equal(edu.regs.read32(R.REG_DMA_CMD) & R.DMA_CMD_START, 0, 'no DMA was started');
    }
    assert.ok(new Uint8Array(buffer.buffer).every((b) => b === 0), 'nothing was written to memory');
    assert.deepEqual(await edu.copyFromDevice(0, 64, opts), data, 'the device buffer is as it was');
    buffer.free();
  });

  if (!target.fullIommu) {
    test(`${label}: the server keeps the device to the client's maps: unmapped IOVAs and the map's direction`, async () => {
      await using device = await target.open();
      const edu = new EduDriver(device);
      // A map that is gone: the device's write goes nowhere.
      const victim = new Uint8Array(4096).fill(0xaa);
      const gone = device.mapDma(victim, 'bidirectional');
      const staleIova = gone.iova;
      gone.unmap();
      await edu.copyToDevice(new Uint8Array(4095).fill(0x55), 0, opts);
      await edu.dma('from-device', staleIova, 0, 4095, opts);
      assert.ok(victim.every((b) => b === 0xaa), 'the unmapped buffer is untouched');
      // A to-device map can be read by the device but not written.
      const source = pattern(4096, 42);
      const readOnly = device.mapDma(source, 'to-device');
      await edu.copyToDevice(new Uint8Array(4095).fill(0x11), 0, opts);
      await edu.dma('from-device', readOnly.iova, 0, 4095, opts);
      assert.deepEqual(source, pattern(4096, 42), 'the device could not write into a to-device map');
      readOnly.unmap();
      // A from-device map can be written but not read.
      const secret = new Uint8Array(4096).fill(0x99);
      const writeOnly = device.mapDma(secret, 'from-device');
      await edu.dma('to-device', writeOnly.iova, 0, 4095, opts);
      assert.ok((await edu.copyFromDevice(0, 4095, opts)).every((b) => b === 0x11), 'the device could not read a from-device map');
      writeOnly.unmap();
      assert.equal(await edu.factorial(5, opts), 120, 'the device still works');
    });
  }
}
