/**
 * Lost notifications, hunted: our split and packed queues (with and without EVENT_IDX) against a
 * device that does what QEMU 7.2's virtio-net does (test/support/virtio-notify-model.ts), the two
 * interleaved at random at every point where either touches shared state. The device runs its
 * steps whenever the driver loads or stores with Atomics (where our queues publish, read the
 * device's event word, arm used_event and re-read the ring: the windows a lost wake-up lives in)
 * and between the driver's calls. After each run everything is left to settle with no new work:
 * a transmit ring must then be empty (every frame taken: no kick lost) and a receive ring must
 * hold nothing unannounced (no interrupt lost), with no frame left waiting for buffers the driver
 * had posted (no refill doorbell lost).
 *
 * The same runs with the driver's locked stores turned into plain ones (a store buffer: the store
 * becomes visible only after the driver's next loads) and with armInterrupt's re-read ignored
 * must lose notifications: what the barrier (test/unit/v8-codegen.test.ts checks it is emitted)
 * and the re-read are for.
 */
import { test, afterEach } from 'node:test';
import * as assert from 'node:assert/strict';
import { SplitQueue, splitQueueLayout } from '../../src/drivers/virtio/split-queue';
import { PackedQueue, packedQueueLayout } from '../../src/drivers/virtio/packed-queue';
import type { Virtqueue } from '../../src/drivers/virtio/virtqueue';
import { RxQueue, TxQueue } from '../../src/drivers/virtio-net/queues';
import { PacketBatch } from '../../src/drivers/virtio-net/packet-batch';
import type { DmaBuffer } from '../../src/dma/dma-space';
import { PackedRingDevice, RxDevice, SplitRingDevice, TxDevice, type RingDevice } from '../support/virtio-notify-model';
import { prng } from '../../src/drivers/nvme/workload';

const realStore = Atomics.store;
const realLoad = Atomics.load;

interface Pending {
  ta: Uint16Array | Uint32Array;
  i: number;
  v: number;
}

/** What the patched Atomics do while a run is on. */
interface Sched {
  rand: () => number;
  /** One device step (false: nothing to do). */
  step: () => boolean;
  /** The mutant: Atomics.store as a plain store sitting in a store buffer. */
  bufferStores: boolean;
  pending: Pending[];
}
let sched: Sched | undefined;

/** The device gets 0, 1, 2... steps here (each half as likely as the one before). */
function deviceMayRun(): void {
  const s = sched;
  if (!s) return;
  while (s.rand() < 0.5 && s.step());
}

function drain(s: Sched): void {
  for (const p of s.pending.splice(0)) realStore(p.ta, p.i, p.v);
}

const byteAt = (ta: Uint16Array | Uint32Array, i: number) => ta.byteOffset + i * ta.BYTES_PER_ELEMENT;

function patchAtomics(): void {
  (Atomics as { store: unknown }).store = (ta: Uint16Array | Uint32Array, i: number, v: number) => {
    const s = sched;
    if (!s) return realStore(ta, i, v);
    deviceMayRun();
    if (s.bufferStores) s.pending.push({ ta, i, v });
    else realStore(ta, i, v);
    deviceMayRun();
    return v;
  };
  (Atomics as { load: unknown }).load = (ta: Uint16Array | Uint32Array, i: number) => {
    const s = sched;
    if (!s) return realLoad(ta, i);
    deviceMayRun();
    // A buffered store of our own to this very word is what we read (store forwarding).
    let own: Pending | undefined;
    for (const p of s.pending) if (p.ta.buffer === ta.buffer && byteAt(p.ta, p.i) === byteAt(ta, i) && p.ta.BYTES_PER_ELEMENT === ta.BYTES_PER_ELEMENT) own = p;
    const v = own ? own.v : realLoad(ta, i);
    deviceMayRun();
    // The load went ahead of the buffered stores; they reach memory some time after it.
    if (s.pending.length > 0 && s.rand() < 0.5) {
      deviceMayRun();
      drain(s);
    }
    return v;
  };
}

afterEach(() => {
  sched = undefined;
  (Atomics as { store: unknown }).store = realStore;
  (Atomics as { load: unknown }).load = realLoad;
});

type Format = 'split' | 'packed';

interface Variant {
  format: Format;
  eventIdx: boolean;
  bufferStores?: boolean;
  /** armInterrupt's answer ignored: "armed" whatever the re-read found. */
  ignoreRecheck?: boolean;
}

function ring(format: Format, size: number, eventIdx: boolean, notify: () => void, ignoreRecheck: boolean): { vq: Virtqueue; device: RingDevice } {
  const bytes = format === 'split' ? splitQueueLayout(size).bytes : packedQueueLayout(size).bytes;
  const memory = new ArrayBuffer(bytes + 64);
  const vq: Virtqueue = format === 'split' ? new SplitQueue(0, size, memory, 0, 0x10000, notify, eventIdx) : new PackedQueue(0, size, memory, 0, 0x10000, notify, eventIdx);
  if (ignoreRecheck) {
    const arm = vq.armInterrupt.bind(vq);
    vq.armInterrupt = () => (arm(), true);
  }
  return { vq, device: format === 'split' ? new SplitRingDevice(memory, size, eventIdx) : new PackedRingDevice(memory, size, eventIdx) };
}

function dma(size: number, slot: number): DmaBuffer {
  return { buffer: new ArrayBuffer(size * slot), iova: 0x100_0000 } as unknown as DmaBuffer;
}

/** One transmit run: frames offered in bursts of 1-3, the device's bottom half interleaved. Returns what was lost. */
function transmitRun(v: Variant, seed: number, actions: number): { lost?: string; moved: number } {
  const rand = prng(seed);
  const size = 4;
  let device!: TxDevice;
  const s: Sched = { rand, step: () => device.step(), bufferStores: v.bufferStores ?? false, pending: [] };
  // The doorbell is an uncached MMIO write: earlier stores reach memory before it does.
  const { vq, device: r } = ring(v.format, size, v.eventIdx, () => (drain(s), device.doorbell()), false);
  device = new TxDevice(r, 3);
  const tx = new TxQueue(vq, dma(size, 128), 128);
  const batch = new PacketBatch(3, 128);
  const frame = new Uint8Array(60).fill(7);
  for (let i = 0; i < 3; i++) batch.add(frame);
  let sent = 0;
  sched = s;
  for (let a = 0; a < actions; a++) {
    if (rand() < 0.35) {
      sent += tx.burst(batch, 0, 1 + Math.floor(rand() * 3));
      deviceMayRun();
      drain(s);
    } else device.step();
  }
  sched = undefined;
  drain(s);
  device.settle();
  if (r.taken !== sent) return { lost: `seed ${seed}: ${sent} frames sent, the device took ${r.taken} and waits for no doorbell (${device.doorbells} rung)`, moved: sent };
  return { moved: sent };
}

/** One receive run: frames arriving at random, the driver on the interrupt as onReceive() does it (drain, arm, again if arming says so). */
function receiveRun(v: Variant, seed: number, actions: number): { lost?: string; moved: number } {
  const rand = prng(seed);
  const size = 4;
  let device!: RxDevice;
  const s: Sched = { rand, step: () => device.step(), bufferStores: v.bufferStores ?? false, pending: [] };
  const { vq, device: r } = ring(v.format, size, v.eventIdx, () => (drain(s), device.doorbell()), v.ignoreRecheck ?? false);
  device = new RxDevice(r);
  const rx = new RxQueue(vq, dma(size, 128), 128, false);
  vq.kick(); // VirtioNet.start: the posted buffers' doorbell
  const batch = new PacketBatch(2, 128);
  let got = 0;
  let again = true; // onReceive looks once at the start
  let interrupts = 0;
  const handler = () => {
    for (let n = rx.burst(batch); n > 0; n = rx.burst(batch)) got += n;
    if (!vq.armInterrupt()) again = true;
  };
  rx.setInterrupts(true);
  sched = s;
  for (let a = 0; a < actions; a++) {
    const x = rand();
    if (x < 0.3 && (device.interrupts > 0 || again)) {
      // An MSI-X eventfd read takes every interrupt raised since the last one.
      interrupts += device.interrupts;
      device.interrupts = 0;
      again = false;
      handler();
      drain(s);
    } else if (x < 0.5) device.arrivals++;
    else device.step();
  }
  // No more frames: the device finishes what it has, the driver takes every interrupt and "again".
  for (;;) {
    drain(s);
    while (device.step());
    if (device.interrupts === 0 && !again) break;
    interrupts += device.interrupts;
    device.interrupts = 0;
    again = false;
    handler();
  }
  sched = undefined;
  drain(s);
  const left = vq.usedCount();
  const lost = left > 0 ? `seed ${seed}: ${left} frame(s) back in the ring and no interrupt coming (${got} taken, ${interrupts} interrupts)`
    : device.queued > 0 ? `seed ${seed}: ${device.queued} frame(s) wait in the device for buffers the driver posted without a doorbell it asked for`
      : got !== device.delivered ? `seed ${seed}: ${device.delivered} delivered, ${got} taken` : undefined;
  return { lost, moved: got };
}

function runs(kind: 'tx' | 'rx', v: Variant, seeds: number, actions = 300): string[] {
  patchAtomics();
  const lost: string[] = [];
  for (let seed = 1; seed <= seeds; seed++) {
    const l = (kind === 'tx' ? transmitRun : receiveRun)(v, seed, actions).lost;
    if (l) lost.push(l);
  }
  return lost;
}

for (const format of ['split', 'packed'] as const) {
  for (const eventIdx of [true, false]) {
    const name = `${format}${eventIdx ? ' EVENT_IDX' : ''}`;
    test(`${name}: no transmit doorbell lost against QEMU's transmit bottom half, interleaved at every Atomics access (1000 runs)`, () => {
      assert.deepEqual(runs('tx', { format, eventIdx }, 1000).slice(0, 3), []);
    });
    test(`${name}: no receive interrupt or refill doorbell lost, driver as onReceive() (drain, arm, re-read), interleaved at every Atomics access (1000 runs)`, () => {
      assert.deepEqual(runs('rx', { format, eventIdx }, 1000).slice(0, 3), []);
    });
    test(`${name}: the same transmit runs with publish() as a plain (buffered) store lose doorbells`, () => {
      assert.ok(runs('tx', { format, eventIdx, bufferStores: true }, 500).length > 0, 'the store buffer opens the window the locked store closes');
    });
  }
  test(`${format} EVENT_IDX: the receive runs lose interrupts with armInterrupt's store buffered, and with its re-read ignored`, () => {
    assert.ok(runs('rx', { format, eventIdx: true, bufferStores: true }, 500).length > 0, 'buffered used_event store');
    assert.ok(runs('rx', { format, eventIdx: true, ignoreRecheck: true }, 500).length > 0, 'no re-read after arming');
  });
}

test('split EVENT_IDX well past 2^16: one long interleaved run each way loses nothing', () => {
  patchAtomics();
  for (const run of [transmitRun, receiveRun]) {
    const r = run({ format: 'split', eventIdx: true }, 7, 300_000);
    assert.equal(r.lost, undefined);
    assert.ok(r.moved > 65536, `${r.moved} frames: the indices wrapped`);
  }
});
