/**
 * A split virtqueue (virtio 1.x, spec 2.7) in DMA memory: the descriptor table, the available
 * ring (driver to device) and the used ring (device to driver), each addressed by the device
 * through its IOVA. This class only moves indices; what the descriptors point at belongs to the
 * driver above, which keeps its buffers preallocated so nothing here allocates per packet.
 *
 * Layout in one buffer (all little-endian, which is the host's order on the platforms Node runs
 * VFIO on):
 *   descriptors  16 bytes each: le64 addr, le32 len, le16 flags, le16 next   (16-byte aligned)
 *   available    le16 flags, le16 idx, le16 ring[size], le16 used_event      (2-byte aligned)
 *   used         le16 flags, le16 idx, {le32 id, le32 len}[size], le16 avail_event (4-byte aligned)
 * Indices run freely modulo 2^16; the ring slot is index & (size - 1).
 *
 * With EVENT_IDX (spec 2.7.7, 2.7.10) the two trailing words replace the flags: the device's
 * avail_event says which avail index it wants a doorbell for, our used_event which used index we
 * want an interrupt for; either fires only when the other side's index passes it (needEvent).
 */
import { InvalidArgumentError } from '../../errors';
import { alignUp } from '../../dma/iova-allocator';
import { AVAIL_F_NO_INTERRUPT, DESC_F_NEXT, MAX_QUEUE_SIZE, USED_F_NO_NOTIFY } from './constants';
import type { Virtqueue, VirtqueueState } from './virtqueue';

/**
 * Whether moving an index from `old` to `now` passed `event` (all modulo 2^16): event in [old, now).
 * The spec's vring_need_event: with EVENT_IDX, a doorbell or interrupt is due only then.
 */
export function needEvent(event: number, now: number, old: number): boolean {
  return ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
}

export interface QueueLayout {
  descOffset: number;
  availOffset: number;
  usedOffset: number;
  /** Bytes the three parts need together. */
  bytes: number;
}

export function splitQueueLayout(size: number): QueueLayout {
  if (!Number.isInteger(size) || size < 1 || size > MAX_QUEUE_SIZE || (size & (size - 1)) !== 0) {
    throw new InvalidArgumentError(`a split virtqueue's size must be a power of two from 1 to ${MAX_QUEUE_SIZE}, got ${size}`);
  }
  const descOffset = 0;
  const availOffset = 16 * size;
  // The used ring gets a cache line of its own: the device writes it while we write the avail ring.
  const usedOffset = alignUp(availOffset + 6 + 2 * size, 64);
  const bytes = usedOffset + 6 + 8 * size;
  return { descOffset, availOffset, usedOffset, bytes };
}

export class SplitQueue implements Virtqueue {
  readonly format = 'split' as const;
  readonly mask: number;
  readonly descIova: number;
  readonly availIova: number;
  readonly usedIova: number;
  private readonly desc32: Uint32Array;
  private readonly desc16: Uint16Array;
  private readonly avail16: Uint16Array;
  private readonly used16: Uint16Array;
  private readonly used32: Uint32Array;
  /** Our copy of avail.idx: entries pushed but maybe not yet published. */
  private availIdx = 0;
  /** used.idx as far as we have consumed it. */
  private lastUsed = 0;
  /** avail.idx as last published, and as it was at the last kick() (EVENT_IDX: the range a doorbell covers). */
  private publishedIdx = 0;
  private kickedIdx = 0;
  /** Word indices of used_event (in avail16) and avail_event (in used16). */
  private readonly usedEventAt: number;
  private readonly availEventAt: number;
  private interruptsOn = false;

  /**
   * `memory` is zeroed DMA memory of at least splitQueueLayout(size).bytes starting at
   * `byteOffset` (a multiple of 16), seen by the device at `iova`.
   */
  constructor(
    readonly index: number,
    readonly size: number,
    memory: ArrayBuffer,
    byteOffset: number,
    iova: number,
    /** Rings the device's doorbell for this queue. */
    private readonly notifyDevice: () => void,
    /** RING_EVENT_IDX negotiated: doorbells and interrupts by event index instead of flags. */
    readonly eventIdx = false,
  ) {
    const layout = splitQueueLayout(size);
    if (byteOffset % 16 !== 0 || byteOffset + layout.bytes > memory.byteLength) {
      throw new InvalidArgumentError(`virtqueue memory: ${layout.bytes} bytes at a 16-byte aligned offset needed`);
    }
    this.mask = size - 1;
    this.descIova = iova + layout.descOffset;
    this.availIova = iova + layout.availOffset;
    this.usedIova = iova + layout.usedOffset;
    this.desc32 = new Uint32Array(memory, byteOffset + layout.descOffset, 4 * size);
    this.desc16 = new Uint16Array(memory, byteOffset + layout.descOffset, 8 * size);
    this.avail16 = new Uint16Array(memory, byteOffset + layout.availOffset, 3 + size);
    this.used16 = new Uint16Array(memory, byteOffset + layout.usedOffset, 3 + 4 * size);
    this.used32 = new Uint32Array(memory, byteOffset + layout.usedOffset, 1 + 2 * size);
    this.usedEventAt = 2 + size;
    this.availEventAt = 2 + 4 * size;
  }

  /** Fill descriptor `id`. `next` matters only with DESC_F_NEXT. */
  setDescriptor(id: number, iova: number, length: number, flags: number, next = 0): void {
    const w = id << 2;
    this.desc32[w] = iova >>> 0;
    this.desc32[w + 1] = (iova / 0x1_0000_0000) >>> 0;
    this.desc32[w + 2] = length;
    const h = id << 3;
    this.desc16[h + 6] = flags;
    this.desc16[h + 7] = flags & DESC_F_NEXT ? next : 0;
  }

  /** Change only the length of descriptor `id` (the buffer stays where it is). */
  setLength(id: number, length: number): void {
    this.desc32[(id << 2) + 2] = length;
  }

  /** Offer the chain starting at descriptor `head`; the device sees it after publish(). */
  push(head: number): void {
    this.avail16[2 + (this.availIdx & this.mask)] = head;
    this.availIdx = (this.availIdx + 1) & 0xffff;
  }

  /**
   * Make pushed chains visible: the ring entries were stored before this index store, and x86
   * and V8 keep stores in program order, so the device never sees the index before the entries.
   * A locked store (Atomics.store is an xchg): it is also the full barrier kick() needs. A plain
   * store may still sit in the CPU's store buffer when kick() reads used.flags; a device that had
   * NO_NOTIFY set, cleared it and then looked at avail.idx (QEMU does, with its own barrier) sees
   * the old index, while we see the old flag and skip the doorbell: the frames wait for the next
   * kick, which a ping-pong or a full ring never sends (virtio 1.2, 2.7.13.4; Linux's virtio_mb).
   */
  publish(): void {
    Atomics.store(this.avail16, 1, this.availIdx);
    this.publishedIdx = this.availIdx;
  }

  /**
   * Ring the doorbell unless the device said it does not need one: used.flags, or with EVENT_IDX
   * unless avail.idx passed the device's avail_event since the last kick(). Both are read
   * (Atomics.load) after publish()'s locked store, so neither can be stale against it.
   */
  kick(): boolean {
    if (this.eventIdx) {
      const now = this.publishedIdx;
      const old = this.kickedIdx;
      this.kickedIdx = now;
      if (!needEvent(Atomics.load(this.used16, this.availEventAt), now, old)) return false;
    } else if (Atomics.load(this.used16, 0) & USED_F_NO_NOTIFY) return false;
    this.notifyDevice();
    return true;
  }

  /** Entries the device has returned that we have not consumed. */
  usedCount(): number {
    // Atomics: the device writes this index; the loop that polls it must re-read memory.
    return (Atomics.load(this.used16, 1) - this.lastUsed) & 0xffff;
  }

  /** Head descriptor id of the k-th unconsumed used entry. */
  usedId(k: number): number {
    return this.used32[1 + (((this.lastUsed + k) & this.mask) << 1)]!;
  }

  /** Bytes the device wrote into the k-th unconsumed entry's buffers. */
  usedLength(k: number): number {
    return this.used32[2 + (((this.lastUsed + k) & this.mask) << 1)]!;
  }

  consume(n: number): void {
    this.lastUsed = (this.lastUsed + n) & 0xffff;
  }

  /** Chains offered to the device and not yet returned. */
  get outstanding(): number {
    return (this.availIdx - this.lastUsed) & 0xffff;
  }

  /**
   * Ask the device for an interrupt when it uses buffers (or not: polling). With EVENT_IDX the
   * device ignores the flags (we keep them 0, spec 2.7.7.2): on, used_event names the next entry;
   * off, the entry furthest away (one behind what we consumed), so a queue polled for long gets
   * at most one interrupt per 2^16 entries it returns.
   */
  setInterrupts(on: boolean): void {
    this.interruptsOn = on;
    if (!this.eventIdx) this.avail16[0] = on ? 0 : AVAIL_F_NO_INTERRUPT;
    else this.avail16[this.usedEventAt] = on ? this.lastUsed : (this.lastUsed - 1) & 0xffff;
  }

  /**
   * With interrupts on and EVENT_IDX: used_event = what we consumed, so the device interrupts
   * once for the next entry and then not until armed again (one interrupt per batch). A locked
   * store, the barrier before used.idx is read again: an entry the device wrote before it saw the
   * new used_event raised no interrupt, so false says "take it now". Without EVENT_IDX every
   * entry interrupts while the flags allow it: always true.
   */
  armInterrupt(): boolean {
    if (!this.eventIdx || !this.interruptsOn) return true;
    Atomics.store(this.avail16, this.usedEventAt, this.lastUsed);
    return this.usedCount() === 0;
  }

  ringState(): VirtqueueState {
    return {
      format: 'split', published: this.publishedIdx, kicked: this.kickedIdx, deviceUsed: Atomics.load(this.used16, 1), consumed: this.lastUsed,
      deviceEvent: Atomics.load(this.used16, this.availEventAt), driverEvent: this.avail16[this.usedEventAt]! | (this.avail16[0]! << 16),
      deviceFlags: Atomics.load(this.used16, 0), outstanding: this.outstanding,
    };
  }
}
