/**
 * Register access on one region (a BAR or config space).
 *
 * Where the backend lets the region be mapped, accesses go straight to the mapping:
 * - reads with Atomics.load: full-width and never hoisted out of a polling loop (a plain
 *   typed-array read of `reg & 1` compiles to a one-byte load, which device specs forbid);
 * - writes with plain typed-array stores: V8 emits one full-width `mov` per store and keeps every
 *   one (test/unit/v8-codegen.test.ts checks it), while Atomics.store is an `xchg`, a locked
 *   instruction: on uncached MMIO that is a bus lock on real hardware and a stop-the-world
 *   exclusive section under QEMU's TCG (40x slower per write, measured by bench:vfio).
 * Elsewhere (I/O port BARs, config space, parts a sparse-mmap capability leaves out) the same
 * calls go through the backend's pread/pwrite. Every access is bounds- and alignment-checked.
 */
import { DeviceGoneError, InvalidArgumentError, RangeAccessError } from '../errors';
import type { Backend, BackendRegionInfo } from './backend';

interface MappedArea {
  start: number;
  end: number;
  buffer: ArrayBuffer;
  u8: Uint8Array;
  u16: Uint16Array;
  u32: Uint32Array;
  u64: BigUint64Array;
}

function makeArea(start: number, buffer: ArrayBuffer): MappedArea {
  const len = buffer.byteLength;
  return {
    start,
    end: start + len,
    buffer,
    u8: new Uint8Array(buffer),
    u16: new Uint16Array(buffer, 0, len >>> 1),
    u32: new Uint32Array(buffer, 0, len >>> 2),
    u64: new BigUint64Array(buffer, 0, Math.floor(len / 8)),
  };
}

export class Region {
  readonly index: number;
  readonly size: number;
  readonly readable: boolean;
  readonly writable: boolean;
  /** Set when the whole region is mapped: the fast path needs no area lookup. */
  private whole: MappedArea | undefined;
  private areas: MappedArea[] = [];
  private gone: string | undefined;
  /** Scratch for the slow path; one per region so slow accesses allocate nothing either. */
  private readonly scratch = new DataView(new ArrayBuffer(8));
  private readonly scratchByWidth = [1, 2, 4, 8].map((w) => new Uint8Array(this.scratch.buffer, 0, w));

  constructor(
    private readonly backend: Backend,
    info: BackendRegionInfo,
    private readonly label: string,
  ) {
    this.index = info.index;
    this.size = info.size;
    this.readable = info.readable;
    this.writable = info.writable;
    if (info.mappable && info.size > 0) {
      const parts = info.sparseAreas ?? [{ offset: 0, size: info.size }];
      for (const part of parts) {
        if (part.size === 0) continue;
        this.areas.push(makeArea(part.offset, backend.mapRegion(info.index, part.offset, part.size)));
      }
      if (this.areas.length === 1 && this.areas[0]!.start === 0 && this.areas[0]!.end === info.size) this.whole = this.areas[0];
    }
  }

  /** True when every offset is served from a mapping (no syscall per access). */
  get mapped(): boolean {
    return this.whole !== undefined;
  }

  read8(offset: number): number {
    const a = this.area(offset, 1);
    return a ? Atomics.load(a.u8, offset - a.start) : this.slowRead(offset, 1);
  }

  read16(offset: number): number {
    const a = this.area(offset, 2);
    return a ? Atomics.load(a.u16, (offset - a.start) >>> 1) : this.slowRead(offset, 2);
  }

  read32(offset: number): number {
    const a = this.area(offset, 4);
    return a ? Atomics.load(a.u32, (offset - a.start) >>> 2) : this.slowRead(offset, 4);
  }

  /** 64-bit registers come back as bigint: their upper bits matter (NVMe CAP, queue bases). */
  read64(offset: number): bigint {
    const a = this.area(offset, 8);
    if (a) return Atomics.load(a.u64, (offset - a.start) >>> 3);
    this.slowAccess(offset, 8, false);
    return this.scratch.getBigUint64(0, true);
  }

  write8(offset: number, value: number): void {
    const a = this.area(offset, 1, true);
    if (a) a.u8[offset - a.start] = value;
    else this.slowWrite(offset, 1, value);
  }

  write16(offset: number, value: number): void {
    const a = this.area(offset, 2, true);
    if (a) a.u16[(offset - a.start) >>> 1] = value;
    else this.slowWrite(offset, 2, value);
  }

  write32(offset: number, value: number): void {
    const a = this.area(offset, 4, true);
    if (a) a.u32[(offset - a.start) >>> 2] = value;
    else this.slowWrite(offset, 4, value);
  }

  write64(offset: number, value: bigint | number): void {
    const v = typeof value === 'bigint' ? BigInt.asUintN(64, value) : BigInt(value);
    const a = this.area(offset, 8, true);
    if (a) {
      a.u64[(offset - a.start) >>> 3] = v;
      return;
    }
    this.scratch.setBigUint64(0, v, true);
    this.slowAccess(offset, 8, true);
  }

  /** Bulk copy out of the region (no width guarantees: for memory-like BARs and config dumps). */
  readBytes(offset: number, length: number): Uint8Array {
    this.checkRange(offset, length);
    const out = new Uint8Array(length);
    const a = length > 0 ? this.findArea(offset, length) : undefined;
    if (a) out.set(a.u8.subarray(offset - a.start, offset - a.start + length));
    else if (length > 0) this.transfer(offset, out, false);
    return out;
  }

  writeBytes(offset: number, bytes: Uint8Array): void {
    this.checkRange(offset, bytes.length);
    if (!this.writable) throw new InvalidArgumentError(`${this.label} is not writable`);
    const a = bytes.length > 0 ? this.findArea(offset, bytes.length) : undefined;
    if (a) a.u8.set(bytes, offset - a.start);
    else if (bytes.length > 0) this.transfer(offset, bytes, true);
  }

  /**
   * Make every later access fail with `reason` (close, hot-unplug) and release the mappings:
   * munmap detaches the ArrayBuffers first, so even a view someone kept cannot fault.
   */
  revoke(reason: string): void {
    if (this.gone) return;
    this.gone = reason;
    this.whole = undefined;
    for (const a of this.areas) {
      try {
        this.backend.unmapRegion(a.buffer);
      } catch {
        // Already unmapped by the backend's own teardown: nothing left to release.
      }
    }
    this.areas = [];
  }

  private area(offset: number, width: number, write = false): MappedArea | undefined {
    // Fast path first: one comparison chain and no allocation.
    const w = this.whole;
    if (w !== undefined && offset >= 0 && offset <= this.size - width && offset % width === 0 && Number.isInteger(offset)) {
      if (write && !this.writable) throw new InvalidArgumentError(`${this.label} is not writable`);
      return w;
    }
    this.check(offset, width, write);
    return this.findArea(offset, width);
  }

  private findArea(offset: number, length: number): MappedArea | undefined {
    for (const a of this.areas) if (offset >= a.start && offset + length <= a.end) return a;
    return undefined;
  }

  private check(offset: number, width: number, write: boolean): void {
    if (this.gone) throw new DeviceGoneError(`${this.label}: ${this.gone}`);
    if (!Number.isInteger(offset)) throw new InvalidArgumentError(`${this.label}: offset ${offset} is not an integer`);
    if (offset < 0 || offset + width > this.size) {
      throw new RangeAccessError(`${this.label}: ${width}-byte access at 0x${offset.toString(16)} is outside the region (size 0x${this.size.toString(16)})`);
    }
    if (offset % width !== 0) throw new InvalidArgumentError(`${this.label}: ${width}-byte access at 0x${offset.toString(16)} is not ${width}-byte aligned`);
    if (write && !this.writable) throw new InvalidArgumentError(`${this.label} is not writable`);
    if (!write && !this.readable) throw new InvalidArgumentError(`${this.label} is not readable`);
  }

  private checkRange(offset: number, length: number): void {
    if (this.gone) throw new DeviceGoneError(`${this.label}: ${this.gone}`);
    if (!Number.isInteger(offset) || !Number.isInteger(length) || length < 0) throw new InvalidArgumentError(`${this.label}: offset and length must be non-negative integers`);
    if (offset < 0 || offset + length > this.size) throw new RangeAccessError(`${this.label}: ${length} bytes at 0x${offset.toString(16)} are outside the region (size 0x${this.size.toString(16)})`);
  }

  private slowRead(offset: number, width: 1 | 2 | 4): number {
    this.slowAccess(offset, width, false);
    return width === 1 ? this.scratch.getUint8(0) : width === 2 ? this.scratch.getUint16(0, true) : this.scratch.getUint32(0, true);
  }

  private slowWrite(offset: number, width: 1 | 2 | 4, value: number): void {
    if (width === 1) this.scratch.setUint8(0, value);
    else if (width === 2) this.scratch.setUint16(0, value, true);
    else this.scratch.setUint32(0, value >>> 0, true);
    this.slowAccess(offset, width, true);
  }

  private slowAccess(offset: number, width: number, write: boolean): void {
    this.transfer(offset, this.scratchByWidth[31 - Math.clz32(width)]!, write);
  }

  private transfer(offset: number, bytes: Uint8Array, write: boolean): void {
    const n = write ? this.backend.regionWrite(this.index, offset, bytes) : this.backend.regionRead(this.index, offset, bytes);
    if (n !== bytes.length) throw new RangeAccessError(`${this.label}: short ${write ? 'write' : 'read'} at 0x${offset.toString(16)} (${n} of ${bytes.length} bytes)`);
  }
}
