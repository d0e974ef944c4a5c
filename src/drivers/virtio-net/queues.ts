/**
 * virtio-net's receive and transmit queues over preallocated DMA slots. Descriptor i always
 * points at slot i, so the steady state writes only lengths and ring indices: no allocation,
 * no descriptor bookkeeping beyond a free stack on the transmit side.
 *
 * A slot holds 4 bytes of padding, the 12-byte virtio-net header, then the frame, so frames start
 * 16-byte aligned and copy word by word.
 */
import type { DmaBuffer } from '../../dma/dma-space';
import type { Virtqueue } from '../virtio/virtqueue';
import { DESC_F_WRITE } from '../virtio/constants';
import { copyBytes, type PacketBatch } from './packet-batch';
import { HDR_CSUM_OFFSET, HDR_CSUM_START, HDR_NUM_BUFFERS, NET_HDR_SIZE } from './constants';

const PAD = 4;

export interface QueueStats {
  packets: number;
  bytes: number;
  /** Receive: frames dropped because they did not fit the caller's batch slot. */
  dropped: number;
  /** Receive: buffers the device returned (more than packets when frames were merged). */
  buffers: number;
  /** Doorbells rung (notifications the device asked for). */
  doorbells: number;
  /** Receive: interrupts taken by onReceive()/listen(). */
  interrupts: number;
}

function newStats(): QueueStats {
  return { packets: 0, bytes: 0, dropped: 0, buffers: 0, doorbells: 0, interrupts: 0 };
}

export class RxQueue {
  readonly stats = newStats();
  private readonly u8: Uint8Array;
  private readonly u32: Uint32Array;

  constructor(
    readonly vq: Virtqueue,
    private readonly memory: DmaBuffer,
    /** Bytes per slot (a multiple of 16); the device gets slotSize - 4 of each. */
    readonly slotSize: number,
    /** MRG_RXBUF: a frame may span several buffers, the header's num_buffers says how many. */
    private readonly mergeable: boolean,
  ) {
    this.u8 = new Uint8Array(memory.buffer);
    this.u32 = new Uint32Array(memory.buffer);
    for (let id = 0; id < vq.size; id++) {
      vq.setDescriptor(id, memory.iova + id * slotSize + PAD, slotSize - PAD, DESC_F_WRITE);
      vq.push(id);
    }
    vq.setInterrupts(false);
    vq.publish();
  }

  /** Frames the device has finished and we have not taken (counting each buffer of a merged frame). */
  get ready(): number {
    return this.vq.usedCount();
  }

  /**
   * Copies up to batch.capacity received frames into the batch (slots 0..n-1), gives their
   * buffers back to the device, and returns n. A frame larger than the batch's slot is dropped
   * and counted in stats.dropped.
   */
  burst(batch: PacketBatch): number {
    const vq = this.vq;
    const u8 = this.u8;
    const avail = vq.usedCount();
    const S = this.slotSize;
    let k = 0;
    let n = 0;
    while (k < avail && n < batch.capacity) {
      const id = vq.usedId(k);
      const base = id * S + PAD;
      const nb = this.mergeable ? Math.max(1, u8[base + HDR_NUM_BUFFERS]! | (u8[base + HDR_NUM_BUFFERS + 1]! << 8)) : 1;
      if (k + nb > avail) break; // the rest of a merged frame is not back yet
      let total = vq.usedLength(k) - NET_HDR_SIZE;
      for (let j = 1; j < nb; j++) total += vq.usedLength(k + j);
      if (total < 0 || total > batch.slotSize) {
        this.stats.dropped++;
      } else {
        const dst = n * batch.slotSize;
        const first = vq.usedLength(k) - NET_HDR_SIZE;
        copyBytes(batch.data, batch.words, dst, u8, this.u32, base + NET_HDR_SIZE, first);
        let at = first;
        for (let j = 1; j < nb; j++) {
          const len = vq.usedLength(k + j);
          copyBytes(batch.data, batch.words, dst + at, u8, this.u32, vq.usedId(k + j) * S + PAD, len);
          at += len;
        }
        batch.lengths[n] = total;
        batch.flags[n] = u8[base]!;
        batch.csumStart[n] = u8[base + HDR_CSUM_START]! | (u8[base + HDR_CSUM_START + 1]! << 8);
        batch.csumOffset[n] = u8[base + HDR_CSUM_OFFSET]! | (u8[base + HDR_CSUM_OFFSET + 1]! << 8);
        this.stats.bytes += total;
        n++;
      }
      for (let j = 0; j < nb; j++) vq.push(vq.usedId(k + j));
      k += nb;
    }
    batch.count = n;
    if (k > 0) {
      vq.consume(k);
      this.stats.buffers += k;
      vq.publish();
      if (vq.kick()) this.stats.doorbells++;
      this.stats.packets += n;
    }
    return n;
  }

  setInterrupts(on: boolean): void {
    this.vq.setInterrupts(on);
  }
}

export class TxQueue {
  readonly stats = newStats();
  private readonly u8: Uint8Array;
  private readonly u32: Uint32Array;
  /** Descriptor ids the device has given back. */
  private readonly free: Uint16Array;
  private freeCount: number;

  constructor(
    readonly vq: Virtqueue,
    private readonly memory: DmaBuffer,
    readonly slotSize: number,
  ) {
    this.u8 = new Uint8Array(memory.buffer);
    this.u32 = new Uint32Array(memory.buffer);
    this.free = new Uint16Array(vq.size);
    for (let id = 0; id < vq.size; id++) {
      vq.setDescriptor(id, memory.iova + id * slotSize + PAD, 0, 0);
      this.free[id] = vq.size - 1 - id;
    }
    this.freeCount = vq.size;
    vq.setInterrupts(false);
  }

  /** Largest frame a slot holds. */
  get maxFrame(): number {
    return this.slotSize - PAD - NET_HDR_SIZE;
  }

  /** Slots free for sending now (after taking back what the device has finished). */
  get space(): number {
    this.reclaim();
    return this.freeCount;
  }

  /** Frames handed to the device and not yet sent by it. */
  get inFlight(): number {
    return this.vq.size - this.freeCount;
  }

  /** Takes back the slots of frames the device has sent. */
  reclaim(): void {
    const vq = this.vq;
    const done = vq.usedCount();
    for (let k = 0; k < done; k++) this.free[this.freeCount++] = vq.usedId(k);
    vq.consume(done);
  }

  /**
   * Copies frames start..start+count-1 of the batch (already validated by the caller) into free
   * slots with their headers, publishes them with one doorbell, and returns how many went (fewer
   * when the ring is full).
   */
  burst(batch: PacketBatch, start: number, count: number): number {
    this.reclaim();
    const vq = this.vq;
    const u32 = this.u32;
    const n = Math.min(count, this.freeCount);
    const S = this.slotSize;
    for (let i = 0; i < n; i++) {
      const p = start + i;
      const id = this.free[--this.freeCount]!;
      const base = id * S + PAD;
      const len = batch.lengths[p]!;
      // The header as three little-endian words: flags, gso_type 0, hdr_len 0 | gso_size 0,
      // csum_start | csum_offset, num_buffers 0.
      const w = base >>> 2;
      u32[w] = batch.flags[p]!;
      u32[w + 1] = batch.csumStart[p]! << 16;
      u32[w + 2] = batch.csumOffset[p]!;
      copyBytes(this.u8, u32, base + NET_HDR_SIZE, batch.data, batch.words, p * batch.slotSize, len);
      vq.setLength(id, NET_HDR_SIZE + len);
      vq.push(id);
      this.stats.bytes += len;
    }
    if (n > 0) {
      vq.publish();
      if (vq.kick()) this.stats.doorbells++;
      this.stats.packets += n;
    }
    return n;
  }
}
