/**
 * A batch of packets in memory the caller owns, reused burst after burst (like DPDK's or ixy's
 * mbuf arrays, without per-packet objects): fixed slots of `slotSize` bytes in one buffer, with
 * each packet's length and virtio-net checksum fields in parallel typed arrays.
 *
 *   const batch = new PacketBatch(32);
 *   const n = net.rxBurst(0, batch);                // fills slots 0..n-1
 *   for (let i = 0; i < n; i++) use(batch.data, batch.offset(i), batch.lengths[i]);
 *
 *   batch.clear(); batch.add(frame); net.txBurst(0, batch);
 */
import { InvalidArgumentError, UserpciError } from '../../errors';

export class PacketBatch {
  readonly data: Uint8Array;
  /** The same bytes as 32-bit words, for word-wise copies. @internal */
  readonly words: Uint32Array;
  readonly lengths: Uint32Array;
  /** virtio-net header flags: HDR_F_NEEDS_CSUM (transmit, or receive with GUEST_CSUM), HDR_F_DATA_VALID (receive). */
  readonly flags: Uint8Array;
  /** With HDR_F_NEEDS_CSUM: where checksumming starts, and where (from there) the result goes. */
  readonly csumStart: Uint16Array;
  readonly csumOffset: Uint16Array;
  /** Packets in slots 0..count-1. */
  count = 0;

  constructor(
    readonly capacity: number,
    /** Bytes per slot: the largest packet the batch holds (a multiple of 4). */
    readonly slotSize = 2048,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 65536) throw new InvalidArgumentError(`a packet batch holds 1..65536 packets, got ${capacity}`);
    if (!Number.isInteger(slotSize) || slotSize < 64 || slotSize > 65536 || slotSize % 4 !== 0) {
      throw new InvalidArgumentError(`packet slots are 64..65536 bytes, a multiple of 4; got ${slotSize}`);
    }
    const buffer = new ArrayBuffer(capacity * slotSize);
    this.data = new Uint8Array(buffer);
    this.words = new Uint32Array(buffer);
    this.lengths = new Uint32Array(capacity);
    this.flags = new Uint8Array(capacity);
    this.csumStart = new Uint16Array(capacity);
    this.csumOffset = new Uint16Array(capacity);
  }

  /** Byte offset of slot i in `data`. */
  offset(i: number): number {
    return i * this.slotSize;
  }

  /** A view of packet i (allocates a view: for convenience code, not per-packet hot paths). */
  frame(i: number): Uint8Array {
    if (!Number.isInteger(i) || i < 0 || i >= this.count) throw new InvalidArgumentError(`packet ${i} is not in the batch (count ${this.count})`);
    return this.data.subarray(i * this.slotSize, i * this.slotSize + this.lengths[i]!);
  }

  /** Copy a packet into the next slot; returns its index. */
  add(frame: Uint8Array, flags = 0, csumStart = 0, csumOffset = 0): number {
    if (!(frame instanceof Uint8Array)) throw new InvalidArgumentError('a packet must be a Uint8Array (or Buffer)');
    if (this.count >= this.capacity) throw new UserpciError('ENOSPC', `the packet batch is full (${this.capacity} packets)`);
    if (frame.length > this.slotSize) throw new UserpciError('EMSGSIZE', `a ${frame.length}-byte packet does not fit a ${this.slotSize}-byte slot`);
    const i = this.count++;
    this.data.set(frame, i * this.slotSize);
    this.lengths[i] = frame.length;
    this.flags[i] = flags;
    this.csumStart[i] = csumStart;
    this.csumOffset[i] = csumOffset;
    return i;
  }

  clear(): void {
    this.count = 0;
  }
}

/**
 * Copies `length` bytes between two buffers without allocating (a subarray + set would create a
 * view per packet): word by word when both offsets are 4-aligned, else byte by byte.
 */
export function copyBytes(
  dst8: Uint8Array, dst32: Uint32Array, dstOffset: number,
  src8: Uint8Array, src32: Uint32Array, srcOffset: number, length: number,
): void {
  let i = 0;
  if (((dstOffset | srcOffset) & 3) === 0) {
    const dw = dstOffset >>> 2;
    const sw = srcOffset >>> 2;
    const words = length >>> 2;
    for (let w = 0; w < words; w++) dst32[dw + w] = src32[sw + w]!;
    i = words << 2;
  }
  for (; i < length; i++) dst8[dstOffset + i] = src8[srcOffset + i]!;
}
