/**
 * A packed virtqueue (virtio 1.1+, spec 2.8) in DMA memory: one ring of descriptors that both
 * sides read and write, and two small event-suppression structures, each addressed by the
 * device through its IOVA.
 *
 * Layout in one buffer (little-endian, the host's order wherever Node runs VFIO):
 *   descriptors      16 bytes each: le64 addr, le32 len, le16 id, le16 flags      (16-byte aligned)
 *   driver events    le16 desc (offset | wrap << 15), le16 flags: written by us, read by the device
 *   device events    the same, written by the device, read by us                   (own cache line)
 *
 * How the ring moves: the driver writes descriptors at its next position, marking each available
 * by setting flag AVAIL to its wrap counter and USED to the opposite; the device, in the order it
 * finishes buffers, overwrites positions from its own next position with one used descriptor per
 * chain (the chain's buffer id and the bytes written, AVAIL and USED both equal to its wrap
 * counter), then skips the chain's other positions. Both counters start at 1 and flip each time
 * their side passes the ring's end. The driver therefore remembers, per buffer id, how many
 * positions its chain took, to find where the next used descriptor lands.
 *
 * The Virtqueue interface names descriptors by a fixed id (the net driver keeps descriptor i on
 * slot i). A packed ring has no descriptor table, so each id's address, length and flags live in
 * typed arrays here and are copied into the ring when the id is offered; the buffer id the device
 * hands back is the chain's head id. Returned chains are read once (id and length copied out), so
 * their positions may be offered again before consume(). Nothing here allocates after construction.
 *
 * With EVENT_IDX (spec 2.8.10) either side's event structure may say DESC: "an event when the
 * descriptor at ring offset `desc & 0x7fff` is made available (the device's) or used (ours) in
 * the lap whose wrap counter is `desc >> 15`". Positions are then compared as split-ring indices
 * (needEvent), an event of the previous lap counted one ring size back, as Linux and QEMU do.
 */
import { InvalidArgumentError, UserpciError } from '../../errors';
import { alignUp } from '../../dma/iova-allocator';
import {
  DESC_F_NEXT, MAX_PACKED_QUEUE_SIZE, PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED, RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_ENABLE,
} from './constants';
import type { Virtqueue, VirtqueueState } from './virtqueue';
import { needEvent } from './split-queue';

export interface PackedQueueLayout {
  descOffset: number;
  /** Driver event suppression (the queue's "driver area"). */
  driverOffset: number;
  /** Device event suppression (the queue's "device area"). */
  deviceOffset: number;
  bytes: number;
}

export function packedQueueLayout(size: number): PackedQueueLayout {
  if (!Number.isInteger(size) || size < 1 || size > MAX_PACKED_QUEUE_SIZE) {
    throw new InvalidArgumentError(`a packed virtqueue's size must be 1 to ${MAX_PACKED_QUEUE_SIZE}, got ${size}`);
  }
  const descOffset = 0;
  const driverOffset = 16 * size;
  // The device writes its event flags while we write ours: a cache line apart.
  const deviceOffset = alignUp(driverOffset + 4, 64);
  return { descOffset, driverOffset, deviceOffset, bytes: deviceOffset + 4 };
}

const BOTH = PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED;
/** Flags an id may carry into the ring (NEXT, WRITE, INDIRECT); the ring bits are ours to set. */
const DESC_FLAGS = 0x7;

export class PackedQueue implements Virtqueue {
  readonly format = 'packed' as const;
  readonly descIova: number;
  readonly driverIova: number;
  readonly deviceIova: number;
  private readonly ring32: Uint32Array;
  private readonly ring16: Uint16Array;
  private readonly driverEvents: Uint16Array;
  /** The device's event structure as one word (desc | flags << 16): both read in one load. */
  private readonly deviceEvents: Uint32Array;
  // What each descriptor id describes, copied into the ring when offered.
  private readonly addrLo: Uint32Array;
  private readonly addrHi: Uint32Array;
  private readonly lengths: Uint32Array;
  private readonly flags: Uint16Array;
  private readonly next: Uint16Array;
  /** Ring positions the chain headed by each id took while it is with the device (0: not with it). */
  private readonly chainLength: Uint16Array;
  /** Returned chains read from the ring and not yet consumed: head id and length, a circular list. */
  private readonly foundId: Uint16Array;
  private readonly foundLen: Uint32Array;
  private readonly foundMask: number;
  private foundHead = 0;
  private foundCount = 0;
  /** Next position we write, and the AVAIL/USED bits an available descriptor carries there. */
  private nextAvail = 0;
  private availBits = PACKED_DESC_F_AVAIL;
  /** Next position the device writes a used descriptor, and the bits it has when used. */
  private nextUsed = 0;
  private usedBits = BOTH;
  /** The first descriptor pushed since the last publish: its flags are stored last, by publish(). */
  private pendingPos = -1;
  private pendingFlags = 0;
  private unpublished = 0;
  /** EVENT_IDX: positions pushed since publish(), positions published since kick(), and where publish() left us (offset, wrap bit 15). */
  private pendingPositions = 0;
  private sinceKick = 0;
  private publishedPos = 0;
  private publishedWrap = 0x8000;
  private interruptsOn = false;
  /** Chains published and not yet seen back. */
  private withDevice = 0;
  /** Ring positions taken by chains not yet seen back. */
  private positionsInUse = 0;

  /**
   * `memory` is zeroed DMA memory of at least packedQueueLayout(size).bytes starting at
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
    /** RING_EVENT_IDX negotiated: event offsets (flags DESC) honoured and used. */
    readonly eventIdx = false,
  ) {
    const layout = packedQueueLayout(size);
    if (byteOffset % 16 !== 0 || byteOffset + layout.bytes > memory.byteLength) {
      throw new InvalidArgumentError(`virtqueue memory: ${layout.bytes} bytes at a 16-byte aligned offset needed`);
    }
    this.descIova = iova + layout.descOffset;
    this.driverIova = iova + layout.driverOffset;
    this.deviceIova = iova + layout.deviceOffset;
    this.ring32 = new Uint32Array(memory, byteOffset + layout.descOffset, 4 * size);
    this.ring16 = new Uint16Array(memory, byteOffset + layout.descOffset, 8 * size);
    this.driverEvents = new Uint16Array(memory, byteOffset + layout.driverOffset, 2);
    this.deviceEvents = new Uint32Array(memory, byteOffset + layout.deviceOffset, 1);
    this.addrLo = new Uint32Array(size);
    this.addrHi = new Uint32Array(size);
    this.lengths = new Uint32Array(size);
    this.flags = new Uint16Array(size);
    this.next = new Uint16Array(size);
    this.chainLength = new Uint16Array(size);
    // Room for every chain the ring can hold, twice: a driver may offer returned ids again before consuming them.
    const capacity = 2 ** Math.ceil(Math.log2(2 * size));
    this.foundId = new Uint16Array(capacity);
    this.foundLen = new Uint32Array(capacity);
    this.foundMask = capacity - 1;
  }

  setDescriptor(id: number, iova: number, length: number, flags: number, next = 0): void {
    this.addrLo[id] = iova >>> 0;
    this.addrHi[id] = (iova / 0x1_0000_0000) >>> 0;
    this.lengths[id] = length;
    this.flags[id] = flags & DESC_FLAGS;
    this.next[id] = flags & DESC_F_NEXT ? next : 0;
  }

  setLength(id: number, length: number): void {
    this.lengths[id] = length;
  }

  /**
   * Writes the chain headed by `head` at the next ring positions, its first descriptor's flags
   * last (spec 2.8.6: the device must never see part of a chain). The first chain since the last
   * publish() keeps its flags back until then, so the device sees the whole batch at once.
   */
  push(head: number): void {
    const size = this.size;
    let n = 1;
    for (let id = head; this.flags[id]! & DESC_F_NEXT; id = this.next[id]!) {
      if (++n > size) throw new InvalidArgumentError(`virtqueue ${this.index}: the chain at descriptor ${head} loops or is longer than the ring`);
    }
    if (this.positionsInUse + n > size) {
      throw new UserpciError('ENOSPC', `virtqueue ${this.index}: ${n} descriptor(s) offered with ${size - this.positionsInUse} ring position(s) free`);
    }
    const first = this.nextAvail;
    const firstFlags = this.flags[head]! | this.availBits;
    this.writeDescriptor(first, head, head);
    this.advance();
    for (let k = 1, id = head; k < n; k++) {
      id = this.next[id]!;
      const p = this.nextAvail;
      this.writeDescriptor(p, id, head);
      this.ring16[(p << 3) + 7] = this.flags[id]! | this.availBits;
      this.advance();
    }
    this.chainLength[head] = n;
    this.positionsInUse += n;
    this.pendingPositions += n;
    this.unpublished++;
    if (this.pendingPos < 0) {
      this.pendingPos = first;
      this.pendingFlags = firstFlags;
    } else {
      this.ring16[(first << 3) + 7] = firstFlags;
    }
  }

  private writeDescriptor(p: number, id: number, bufferId: number): void {
    const w = p << 2;
    this.ring32[w] = this.addrLo[id]!;
    this.ring32[w + 1] = this.addrHi[id]!;
    this.ring32[w + 2] = this.lengths[id]!;
    this.ring16[(p << 3) + 6] = bufferId;
  }

  private advance(): void {
    if (++this.nextAvail === this.size) {
      this.nextAvail = 0;
      this.availBits ^= BOTH;
    }
  }

  /**
   * Exposes the batch: the held-back flags store comes after every other descriptor store, and
   * x86 and V8 keep stores in program order, so the device never sees a flag before its descriptor.
   * A locked store (Atomics.store is an xchg), as the split ring's index: it is also the full
   * barrier kick() needs before reading the device's event flags (spec 2.8.21.3.1), else a device
   * that re-enabled notifications and found nothing new would not be told.
   */
  publish(): void {
    if (this.pendingPos >= 0) {
      Atomics.store(this.ring16, (this.pendingPos << 3) + 7, this.pendingFlags);
      this.pendingPos = -1;
    }
    this.withDevice += this.unpublished;
    this.unpublished = 0;
    this.sinceKick += this.pendingPositions;
    this.pendingPositions = 0;
    this.publishedPos = this.nextAvail;
    this.publishedWrap = this.availBits === PACKED_DESC_F_AVAIL ? 0x8000 : 0;
  }

  /**
   * Rings the doorbell unless the device's event suppression says DISABLE, or with EVENT_IDX says
   * DESC at a position the batches published since the last kick() did not reach (ENABLE, or
   * DESC without EVENT_IDX: ring).
   */
  kick(): boolean {
    // Atomics: the device writes this word; a narrowed or hoisted load could miss its change.
    // One 32-bit load: offset and flags from the same moment.
    const events = Atomics.load(this.deviceEvents, 0);
    const flags = (events >>> 16) & 3;
    const added = this.sinceKick;
    this.sinceKick = 0;
    if (flags === RING_EVENT_FLAGS_DISABLE) return false;
    if (flags === RING_EVENT_FLAGS_DESC && this.eventIdx) {
      const now = this.publishedPos;
      // An offset in the lap before ours lies one ring size back (and may be negative: modulo 2^16).
      const event = (events & 0x7fff) - ((events & 0x8000) === this.publishedWrap ? 0 : this.size);
      if (!needEvent(event & 0xffff, now, (now - added) & 0xffff)) return false;
    }
    this.notifyDevice();
    return true;
  }

  /**
   * Reads the used descriptors the device wrote since the last call (id and length copied out,
   * the chain's positions freed) and returns how many returned chains are not yet consumed.
   */
  usedCount(): number {
    let left = this.withDevice;
    if (left > 0 && this.foundCount <= this.foundMask) {
      const ring16 = this.ring16;
      const size = this.size;
      let pos = this.nextUsed;
      let bits = this.usedBits;
      let count = this.foundCount;
      do {
        // Atomics: the device writes the flags last; the load must be full width and repeated.
        const f = Atomics.load(ring16, (pos << 3) + 7);
        if ((f & BOTH) !== bits) break;
        const id = ring16[(pos << 3) + 6]!;
        const n = id < size ? this.chainLength[id]! : 0;
        if (n === 0) throw new UserpciError('EIO', `virtqueue ${this.index}: the device returned buffer id ${id}, which it did not hold`);
        this.chainLength[id] = 0;
        this.positionsInUse -= n;
        const slot = (this.foundHead + count) & this.foundMask;
        this.foundId[slot] = id;
        this.foundLen[slot] = this.ring32[(pos << 2) + 2]!;
        count++;
        left--;
        pos += n;
        if (pos >= size) {
          pos -= size;
          bits ^= BOTH;
        }
      } while (left > 0 && count <= this.foundMask);
      this.nextUsed = pos;
      this.usedBits = bits;
      this.foundCount = count;
      this.withDevice = left;
    }
    return this.foundCount;
  }

  usedId(k: number): number {
    return this.foundId[(this.foundHead + k) & this.foundMask]!;
  }

  usedLength(k: number): number {
    return this.foundLen[(this.foundHead + k) & this.foundMask]!;
  }

  consume(n: number): void {
    if (n > this.foundCount) throw new InvalidArgumentError(`virtqueue ${this.index}: ${n} returned chains consumed, ${this.foundCount} read`);
    this.foundHead = (this.foundHead + n) & this.foundMask;
    this.foundCount -= n;
  }

  get outstanding(): number {
    return this.unpublished + this.withDevice + this.foundCount;
  }

  /** ENABLE or DISABLE; with EVENT_IDX, on is DESC at the next used position (its offset stored first). */
  setInterrupts(on: boolean): void {
    this.interruptsOn = on;
    if (on && this.eventIdx) {
      this.driverEvents[0] = this.nextUsed | (this.usedBits === BOTH ? 0x8000 : 0);
      this.driverEvents[1] = RING_EVENT_FLAGS_DESC;
    } else {
      this.driverEvents[1] = on ? RING_EVENT_FLAGS_ENABLE : RING_EVENT_FLAGS_DISABLE;
    }
  }

  /**
   * EVENT_IDX, interrupts on: the event offset becomes the next position the device writes a used
   * descriptor at (and our wrap counter there), so it interrupts once for it. Stored with
   * Atomics.store, the barrier before the ring is read again: a descriptor used before the device
   * saw the new offset raised no interrupt, and false says so.
   */
  armInterrupt(): boolean {
    if (!this.eventIdx || !this.interruptsOn) return true;
    Atomics.store(this.driverEvents, 0, this.nextUsed | (this.usedBits === BOTH ? 0x8000 : 0));
    return this.usedCount() === 0;
  }

  ringState(): VirtqueueState {
    // Used descriptors written at our next position onwards and not read yet (the ring is not changed).
    let unread = 0;
    for (let pos = this.nextUsed, bits = this.usedBits, left = this.withDevice; left > 0; left--) {
      const f = Atomics.load(this.ring16, (pos << 3) + 7);
      if ((f & BOTH) !== bits) break;
      const id = this.ring16[(pos << 3) + 6]!;
      const n = id < this.size ? this.chainLength[id]! : 0;
      if (n === 0) break;
      unread++;
      pos += n;
      if (pos >= this.size) {
        pos -= this.size;
        bits ^= BOTH;
      }
    }
    return {
      format: 'packed', published: this.publishedPos | this.publishedWrap, kicked: this.sinceKick, deviceUsed: unread,
      consumed: this.nextUsed | (this.usedBits === BOTH ? 0x8000 : 0), deviceEvent: Atomics.load(this.deviceEvents, 0),
      driverEvent: this.driverEvents[0]! | (this.driverEvents[1]! << 16), deviceFlags: 0, outstanding: this.outstanding,
    };
  }
}
