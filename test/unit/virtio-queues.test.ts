/**
 * The split virtqueue and virtio-net's queues against a device simulated on the same memory:
 * index wrap-around past 2^16, frames merged from several buffers, ring-full back-pressure,
 * header fields. The real device (QEMU's virtio-net through vfio-pci) is in the guest run 'net'.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { SplitQueue, needEvent, splitQueueLayout } from '../../src/drivers/virtio/split-queue';
import { AVAIL_F_NO_INTERRUPT, DESC_F_WRITE, USED_F_NO_NOTIFY } from '../../src/drivers/virtio/constants';
import { RxQueue, TxQueue } from '../../src/drivers/virtio-net/queues';
import { PacketBatch, copyBytes } from '../../src/drivers/virtio-net/packet-batch';
import type { DmaBuffer } from '../../src/dma/dma-space';
import { assertFrames, writeFrame } from '../support/virtio-frames';
import { UserpciError } from '../../src/errors';

const IOVA = 0x1_2345_0000; // above 4 GiB: the high address words must be right too

/** The device's side of a split queue, reading and writing the same memory the driver does. */
class FakeDevice {
  private readonly dv: DataView;
  private lastAvail = 0;
  private usedIdx = 0;
  constructor(
    private readonly memory: ArrayBuffer,
    private readonly size: number,
    private readonly data: ArrayBuffer,
  ) {
    this.dv = new DataView(memory);
  }
  private get layout() {
    return splitQueueLayout(this.size);
  }
  /** Heads the driver offered since the last call. */
  takeAvailable(): number[] {
    const idx = this.dv.getUint16(this.layout.availOffset + 2, true);
    const heads: number[] = [];
    for (; this.lastAvail !== idx; this.lastAvail = (this.lastAvail + 1) & 0xffff) {
      heads.push(this.dv.getUint16(this.layout.availOffset + 4 + 2 * (this.lastAvail % this.size), true));
    }
    return heads;
  }
  descriptor(id: number): { addr: number; len: number; flags: number } {
    const o = this.layout.descOffset + 16 * id;
    return { addr: Number(this.dv.getBigUint64(o, true)), len: this.dv.getUint32(o + 8, true), flags: this.dv.getUint16(o + 12, true) };
  }
  /** Bytes of the data buffer a descriptor points at. */
  bytes(id: number): Uint8Array {
    const d = this.descriptor(id);
    return new Uint8Array(this.data, d.addr - IOVA, d.len);
  }
  use(id: number, len: number): void {
    const o = this.layout.usedOffset + 4 + 8 * (this.usedIdx % this.size);
    this.dv.setUint32(o, id, true);
    this.dv.setUint32(o + 4, len, true);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
  }
  publishUsed(): void {
    this.dv.setUint16(this.layout.usedOffset + 2, this.usedIdx, true);
  }
  setNoNotify(on: boolean): void {
    this.dv.setUint16(this.layout.usedOffset, on ? USED_F_NO_NOTIFY : 0, true);
  }
  /** EVENT_IDX: the avail index the device wants a doorbell for (after the used ring). */
  setAvailEvent(idx: number): void {
    this.dv.setUint16(this.layout.usedOffset + 4 + 8 * this.size, idx & 0xffff, true);
  }
  /** EVENT_IDX: the used index the driver wants an interrupt for (after the avail ring). */
  usedEvent(): number {
    return this.dv.getUint16(this.layout.availOffset + 4 + 2 * this.size, true);
  }
  availFlags(): number {
    return this.dv.getUint16(this.layout.availOffset, true);
  }
  get usedIndex(): number {
    return this.usedIdx;
  }
}

function setup(size: number, slot: number, eventIdx = false) {
  const ring = new ArrayBuffer(splitQueueLayout(size).bytes);
  const data = new ArrayBuffer(size * slot);
  let doorbells = 0;
  const vq = new SplitQueue(0, size, ring, 0, 0x9000, () => doorbells++, eventIdx);
  const dma = { buffer: data, iova: IOVA } as unknown as DmaBuffer;
  return { vq, dma, dev: new FakeDevice(ring, size, data), doorbells: () => doorbells };
}

test('split queue layout: power-of-two sizes only, used ring 4-byte aligned after the avail ring', () => {
  assert.throws(() => splitQueueLayout(3), (e: UserpciError) => e.code === 'EINVAL');
  assert.throws(() => splitQueueLayout(65536), (e: UserpciError) => e.code === 'EINVAL');
  const l = splitQueueLayout(256);
  assert.equal(l.availOffset, 4096);
  assert.ok(l.usedOffset >= l.availOffset + 6 + 512 && l.usedOffset % 4 === 0);
  assert.equal(l.bytes, l.usedOffset + 6 + 8 * 256);
});

test('receive: every buffer posted once with the device-writable flag and a 64-bit address', () => {
  const { vq, dma, dev } = setup(8, 256);
  new RxQueue(vq, dma, 256, false);
  const heads = dev.takeAvailable();
  assert.deepEqual(heads, [0, 1, 2, 3, 4, 5, 6, 7]);
  for (const id of heads) assert.deepEqual(dev.descriptor(id), { addr: IOVA + id * 256 + 4, len: 252, flags: DESC_F_WRITE });
});

test('receive: frames through a small ring well past index wrap-around (2^16), each intact, buffers reposted', () => {
  const { vq, dma, dev } = setup(8, 2048);
  const rx = new RxQueue(vq, dma, 2048, false);
  const batch = new PacketBatch(8);
  let posted = dev.takeAvailable();
  let sent = 0;
  for (let round = 0; round < 30_000; round++) {
    const count = 1 + (round % 4);
    for (let k = 0; k < count; k++) {
      const id = posted.shift()!;
      const b = dev.bytes(id);
      dev.use(id, writeFrame(b, sent));
      sent++;
    }
    dev.publishUsed();
    const n = rx.burst(batch);
    assert.equal(n, count);
    assertFrames(batch, n, sent - count);
    posted = posted.concat(dev.takeAvailable());
    assert.equal(posted.length, 8, 'every buffer is back with the device');
  }
  assert.ok(sent > 65536, `${sent} frames`);
  assert.equal(rx.stats.packets, sent);
});

test('receive: a frame merged from three buffers (MRG_RXBUF) is assembled; one waits until all its buffers are back', () => {
  const { vq, dma, dev } = setup(8, 64);
  const rx = new RxQueue(vq, dma, 64, true);
  const posted = dev.takeAvailable();
  const frame = Uint8Array.from({ length: 130 }, (_, i) => i + 1);
  // 60 bytes of slot per buffer: 12 of header + 48 of frame, then 60, then 22.
  const [a, b, c] = [posted[0]!, posted[1]!, posted[2]!];
  dev.bytes(a).set([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0]);
  dev.bytes(a).set(frame.subarray(0, 48), 12);
  dev.bytes(b).set(frame.subarray(48, 108));
  dev.bytes(c).set(frame.subarray(108));
  dev.use(a, 60);
  dev.use(b, 60);
  dev.publishUsed();
  const batch = new PacketBatch(4);
  assert.equal(rx.burst(batch), 0, 'two of three buffers back: nothing yet');
  dev.use(c, 22);
  dev.publishUsed();
  assert.equal(rx.burst(batch), 1);
  assert.deepEqual([...batch.frame(0)], [...frame]);
  assert.equal(rx.stats.buffers, 3);
  assert.deepEqual(dev.takeAvailable().sort(), [a, b, c].sort(), 'all three reposted');
});

test('receive: a frame larger than the batch slot is dropped and counted; flags and checksum fields pass through', () => {
  const { vq, dma, dev } = setup(4, 2048);
  const rx = new RxQueue(vq, dma, 2048, false);
  const [a, b] = dev.takeAvailable();
  dev.use(a!, 12 + 200);
  const hb = dev.bytes(b!);
  hb.set([2, 0, 0, 0, 0, 0, 34, 0, 6, 0, 1, 0]); // DATA_VALID, csum_start 34, csum_offset 6
  dev.use(b!, 12 + 100);
  dev.publishUsed();
  const batch = new PacketBatch(4, 128);
  assert.equal(rx.burst(batch), 1);
  assert.equal(rx.stats.dropped, 1);
  assert.equal(batch.lengths[0], 100);
  assert.equal(batch.flags[0], 2);
  assert.equal(batch.csumStart[0], 34);
  assert.equal(batch.csumOffset[0], 6);
});

test('transmit: header and frame in one descriptor, one doorbell per burst, back-pressure when full, slots reclaimed', () => {
  const { vq, dma, dev, doorbells } = setup(4, 2048);
  const tx = new TxQueue(vq, dma, 2048);
  const batch = new PacketBatch(6);
  for (let i = 0; i < 6; i++) batch.add(Uint8Array.from({ length: 60 + i }, (_, k) => k ^ i), i === 1 ? 1 : 0, i === 1 ? 34 : 0, i === 1 ? 16 : 0);
  assert.equal(tx.burst(batch, 0, 6), 4, 'four slots');
  assert.equal(doorbells(), 1);
  assert.equal(tx.burst(batch, 4, 2), 0, 'ring full');
  const heads = dev.takeAvailable();
  assert.equal(heads.length, 4);
  heads.forEach((id, i) => {
    const bytes = dev.bytes(id);
    assert.equal(bytes.length, 12 + 60 + i);
    assert.equal(bytes[0], i === 1 ? 1 : 0, 'flags');
    assert.equal(bytes[6]! | (bytes[7]! << 8), i === 1 ? 34 : 0, 'csum_start');
    assert.equal(bytes[8]! | (bytes[9]! << 8), i === 1 ? 16 : 0, 'csum_offset');
    assert.deepEqual([...bytes.subarray(12)], [...batch.frame(i)]);
  });
  dev.use(heads[0]!, 0);
  dev.use(heads[1]!, 0);
  dev.publishUsed();
  dev.setNoNotify(true);
  assert.equal(tx.burst(batch, 4, 2), 2, 'two slots came back');
  assert.equal(doorbells(), 1, 'no doorbell while the device says it needs none');
  assert.deepEqual([...dev.bytes(dev.takeAvailable()[1]!).subarray(12)], [...batch.frame(5)]);
});

test('copyBytes: aligned and unaligned offsets, every length 0..40', () => {
  const src = new Uint8Array(128).map((_, i) => i * 3 + 1);
  for (const [so, doff] of [[0, 0], [4, 8], [1, 0], [0, 3], [5, 6]] as const) {
    for (let len = 0; len <= 40; len++) {
      const dst = new Uint8Array(128);
      copyBytes(dst, new Uint32Array(dst.buffer), doff, src, new Uint32Array(src.buffer), so, len);
      assert.deepEqual([...dst.subarray(doff, doff + len)], [...src.subarray(so, so + len)]);
      assert.equal(dst[doff + len] ?? 0, 0, 'nothing written past the end');
    }
  }
});

test('needEvent (vring_need_event): an event index counts when the move from old to new passed it, modulo 2^16', () => {
  // Plain: old 10, new 14 covers 10..13.
  assert.equal(needEvent(10, 14, 10), true, 'event at old');
  assert.equal(needEvent(13, 14, 10), true, 'event at new - 1');
  assert.equal(needEvent(14, 14, 10), false, 'event at new: not reached yet');
  assert.equal(needEvent(9, 14, 10), false, 'event before old: passed at an earlier kick');
  // Across 2^16: old 0xfffe, new 2 covers 0xfffe, 0xffff, 0, 1.
  assert.equal(needEvent(0xfffe, 2, 0xfffe), true);
  assert.equal(needEvent(0xffff, 2, 0xfffe), true);
  assert.equal(needEvent(0, 2, 0xfffe), true);
  assert.equal(needEvent(1, 2, 0xfffe), true);
  assert.equal(needEvent(2, 2, 0xfffe), false);
  assert.equal(needEvent(0xfffd, 2, 0xfffe), false);
  assert.equal(needEvent(5, 5, 5), false, 'nothing moved: never');
});

test('EVENT_IDX split queue: a doorbell exactly when avail.idx passes avail_event since the last kick, well past 2^16, whatever used.flags say', () => {
  const { vq, dev, doorbells } = setup(8, 64, true);
  assert.equal(vq.eventIdx, true);
  dev.setNoNotify(true); // ignored with EVENT_IDX
  let idx = 0; // avail.idx as the device will see it
  let rung = 0;
  let total = 0;
  for (let round = 0; round < 30_000; round++) {
    const count = 1 + (round % 4);
    total += count;
    const old = idx;
    for (let k = 0; k < count; k++) {
      vq.setDescriptor(k, IOVA + k * 64, 64, DESC_F_WRITE);
      vq.push(k);
    }
    vq.publish();
    idx = (idx + count) & 0xffff;
    // The device's event, relative to this batch: at its first entry, its last, just past it, just before it.
    const where = round % 4;
    const event = where === 0 ? old : where === 1 ? idx - 1 : where === 2 ? idx : old - 1;
    dev.setAvailEvent(event);
    const want = where < 2;
    assert.equal(vq.kick(), want, `round ${round}: avail ${old}->${idx}, avail_event ${event & 0xffff}`);
    if (want) rung++;
    assert.equal(doorbells(), rung);
    // The device takes and returns everything so the ring never fills.
    for (const id of dev.takeAvailable()) dev.use(id, 0);
    dev.publishUsed();
    vq.consume(vq.usedCount());
  }
  assert.ok(total > 65536 && idx === (total & 0xffff), `${total} entries: avail.idx wrapped past 2^16`);
  assert.equal(rung, 15_000);
});

test('EVENT_IDX split queue: kicks without anything new published ring nothing; an event passed while a batch was not kicked counts at the next kick', () => {
  const { vq, dev, doorbells } = setup(8, 64, true);
  vq.setDescriptor(0, IOVA, 64, DESC_F_WRITE);
  vq.push(0);
  vq.publish();
  dev.setAvailEvent(0);
  assert.equal(vq.kick(), true);
  assert.equal(vq.kick(), false, 'the same index again: the device was told');
  // Two batches, one kick: the range covers both (the event sits in the first).
  vq.push(0);
  vq.publish();
  vq.push(0);
  vq.publish();
  dev.setAvailEvent(1);
  assert.equal(vq.kick(), true);
  assert.equal(doorbells(), 2);
});

test('EVENT_IDX split queue: used_event written (next entry when on, furthest when off), flags left 0, armInterrupt says when entries came back unannounced', () => {
  const { vq, dma, dev } = setup(8, 256, true);
  const rx = new RxQueue(vq, dma, 256, false);
  assert.equal(dev.availFlags(), 0, 'flags stay 0 with EVENT_IDX (spec 2.7.7.2)');
  assert.equal(dev.usedEvent(), 0xffff, 'polled: one behind what was consumed (0), across the wrap');
  rx.setInterrupts(true);
  assert.equal(dev.usedEvent(), 0, 'on: an interrupt for entry 0');
  const batch = new PacketBatch(8);
  let posted = dev.takeAvailable();
  let sent = 0;
  // The device's interrupt decision at each flush (QEMU's virtio_should_notify with event index).
  let signalled = 0;
  let interrupts = 0;
  const flush = () => {
    const now = dev.usedIndex;
    if (needEvent(dev.usedEvent(), now, signalled)) interrupts++;
    signalled = now;
    dev.publishUsed();
  };
  for (let round = 0; round < 32_000; round++) {
    // A batch of 1..3 frames, flushed one by one as QEMU's receive does: one interrupt for the batch.
    const count = 1 + (round % 3);
    const before = interrupts;
    for (let k = 0; k < count; k++) {
      const id = posted.shift()!;
      dev.use(id, writeFrame(dev.bytes(id), sent++));
      flush();
    }
    assert.equal(interrupts - before, 1, `round ${round}: one interrupt for ${count} frames`);
    assert.equal(rx.burst(batch), count);
    posted = posted.concat(dev.takeAvailable());
    if (round % 5 === 4) {
      // A frame returned after the drain and before the arm raised no interrupt: arm says so.
      const id = posted.shift()!;
      dev.use(id, writeFrame(dev.bytes(id), sent++));
      flush();
      assert.equal(interrupts - before, 1, 'no interrupt: used_event was already passed');
      assert.equal(vq.armInterrupt(), false, 'an entry is waiting: take it, do not wait');
      assert.equal(rx.burst(batch), 1);
      posted = posted.concat(dev.takeAvailable());
    }
    assert.equal(vq.armInterrupt(), true);
    assert.equal(dev.usedEvent(), dev.usedIndex, 'armed for the next entry the device writes');
  }
  assert.ok(sent > 65536, `${sent} frames: the used index wrapped`);
  rx.setInterrupts(false);
  assert.equal(dev.usedEvent(), (dev.usedIndex - 1) & 0xffff);
  assert.equal(vq.armInterrupt(), true, 'polled: nothing armed');
  assert.equal(dev.usedEvent(), (dev.usedIndex - 1) & 0xffff);
});

test('without EVENT_IDX a split queue keeps the flags and never writes used_event', () => {
  const { vq, dev } = setup(4, 64);
  vq.setInterrupts(false);
  assert.equal(dev.availFlags(), AVAIL_F_NO_INTERRUPT);
  vq.setInterrupts(true);
  assert.equal(dev.availFlags(), 0);
  assert.equal(vq.armInterrupt(), true);
  assert.equal(dev.usedEvent(), 0);
  vq.setDescriptor(0, IOVA, 64, 0);
  vq.push(0);
  vq.publish();
  dev.setAvailEvent(5); // ignored
  assert.equal(vq.kick(), true);
});
