/**
 * Register access on one region (a BAR or config space).
 *
 * Where the backend lets the whole region be mapped, accesses go straight to the mapping:
 * - reads are plain typed-array loads made full-width for sure: each value read is compared
 *   with all ones (counted in `allOnesReads`: what a device that left the bus answers), so the
 *   load has a use of its own, ends its basic block, and V8 cannot fold it into a narrower memory
 *   test in the caller (alone, `read32(o) & 1` compiles to a one-byte `testb`, which device specs
 *   forbid). A load is never hoisted or merged with another (typed-array loads stay on the effect
 *   chain). This costs a compare and a predicted branch instead of a call to Atomics.load.
 * - writes are plain typed-array stores: V8 emits one full-width `mov` per store and keeps every
 *   one, while Atomics.store is an `xchg`, a locked instruction: on uncached MMIO that is a bus
 *   lock on real hardware and a stop-the-world exclusive section under QEMU's TCG.
 * - write64 of a number is one 8-byte store with no BigInt: a Float64Array store of the double
 *   whose bit pattern is the number (v * 2^-1074 is exact for every integer below 2^53: a
 *   subnormal or the smallest normals, never a NaN; a typed-array store keeps the bits).
 * test/unit/v8-codegen.test.ts checks each of these on the running V8.
 *
 * The fast path is one shift, one compare and the typed array's own bounds check: the views are
 * empty where an access may not go fast (not mapped as a whole, not readable or writable,
 * revoked), so such accesses fall to the checked slow path. Elsewhere (I/O port BARs, config
 * space, parts a sparse-mmap capability leaves out) the same calls go through the backend's
 * pread/pwrite. Every access is bounds- and alignment-checked.
 */
import { checkBytes, describeValue } from '../arguments';
import { DeviceGoneError, InvalidArgumentError, RangeAccessError } from '../errors';
import type { BackendRegionInfo, RegionBackend } from './backend';

interface MappedArea {
  start: number;
  end: number;
  buffer: ArrayBuffer;
  u8: Uint8Array;
  u16: Uint16Array;
  u32: Uint32Array;
  u64: BigUint64Array;
  f64: Float64Array;
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
    f64: new Float64Array(buffer, 0, Math.floor(len / 8)),
  };
}

/** 2^-1074: multiplying an integer below 2^53 by it gives the double with that bit pattern. */
const BIT_PATTERN_SCALE = Number.MIN_VALUE;

const NO_U8 = new Uint8Array(0);
const NO_U16 = new Uint16Array(0);
const NO_U32 = new Uint32Array(0);
const NO_F64 = new Float64Array(0);

export class Region {
  readonly index: number;
  readonly size: number;
  readonly readable: boolean;
  readonly writable: boolean;
  /** Reads that returned all ones (what a device that is gone, or not answering, reads as). */
  allOnesReads = 0;
  /** Fast-path views: the whole mapping, or empty when that kind of access must take the slow path. */
  private r8: Uint8Array = NO_U8;
  private r16: Uint16Array = NO_U16;
  private r32: Uint32Array = NO_U32;
  private w8: Uint8Array = NO_U8;
  private w16: Uint16Array = NO_U16;
  private w32: Uint32Array = NO_U32;
  private w64: Float64Array = NO_F64;
  private areas: MappedArea[] = [];
  private gone: string | undefined;
  private wholeMapped = false;
  /** Scratch for the slow path; one per region so slow accesses allocate nothing either. */
  private readonly scratch = new DataView(new ArrayBuffer(8));
  private readonly scratchByWidth = [1, 2, 4, 8].map((w) => new Uint8Array(this.scratch.buffer, 0, w));

  constructor(
    private readonly backend: RegionBackend,
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
      const a = this.areas[0];
      if (this.areas.length === 1 && a!.start === 0 && a!.end === info.size) {
        this.wholeMapped = true;
        if (this.readable) {
          this.r8 = a!.u8;
          this.r16 = a!.u16;
          this.r32 = a!.u32;
        }
        if (this.writable) {
          this.w8 = a!.u8;
          this.w16 = a!.u16;
          this.w32 = a!.u32;
          this.w64 = a!.f64;
        }
      }
    }
  }

  /** True when every offset is served from a mapping (no syscall per access). */
  get mapped(): boolean {
    return this.wholeMapped;
  }

  read8(offset: number): number {
    const u = this.r8;
    const i = offset >>> 0;
    if (i === offset && i < u.length) {
      const v = u[i]!;
      if (v === 0xff) this.allOnesReads++;
      return v;
    }
    return this.readSlow(offset, 1);
  }

  read16(offset: number): number {
    const u = this.r16;
    const i = offset >>> 1;
    if (i << 1 === offset && i < u.length) {
      const v = u[i]!;
      if (v === 0xffff) this.allOnesReads++;
      return v;
    }
    return this.readSlow(offset, 2);
  }

  read32(offset: number): number {
    const u = this.r32;
    const i = offset >>> 2;
    if (i << 2 === offset && i < u.length) {
      const v = u[i]!;
      if (v === 0xffffffff) this.allOnesReads++;
      return v;
    }
    return this.readSlow(offset, 4);
  }

  /** 64-bit registers come back as bigint: their upper bits matter (NVMe CAP, queue bases). */
  read64(offset: number): bigint {
    const a = this.area(offset, 8, false);
    if (a) return Atomics.load(a.u64, (offset - a.start) / 8);
    this.slowAccess(offset, 8, false);
    return this.scratch.getBigUint64(0, true);
  }

  write8(offset: number, value: number): void {
    const u = this.w8;
    const i = offset >>> 0;
    if (i === offset && i < u.length) u[i] = value;
    else this.writeSlow(offset, 1, value);
  }

  write16(offset: number, value: number): void {
    const u = this.w16;
    const i = offset >>> 1;
    if (i << 1 === offset && i < u.length) u[i] = value;
    else this.writeSlow(offset, 2, value);
  }

  write32(offset: number, value: number): void {
    const u = this.w32;
    const i = offset >>> 2;
    if (i << 2 === offset && i < u.length) u[i] = value;
    else this.writeSlow(offset, 4, value);
  }

  /**
   * One 64-bit store. A number must be a non-negative integer below 2^53 (every IOVA is) and
   * costs no BigInt; a bigint is taken modulo 2^64.
   */
  write64(offset: number, value: bigint | number): void {
    if (typeof value === 'number') {
      const u = this.w64;
      const i = offset >>> 3;
      if (!(value >= 0 && value <= Number.MAX_SAFE_INTEGER && Math.floor(value) === value)) {
        throw new InvalidArgumentError(`${this.label}: a 64-bit value given as a number must be an integer in 0..2^53-1, got ${value}; pass a bigint for more`);
      }
      if (i << 3 === offset && i < u.length) {
        u[i] = value * BIT_PATTERN_SCALE;
        return;
      }
      this.check(offset, 8, true);
      const a = this.findArea(offset, 8);
      if (a) {
        a.f64[(offset - a.start) / 8] = value * BIT_PATTERN_SCALE;
        return;
      }
      const lo = value >>> 0;
      this.scratch.setUint32(0, lo, true);
      this.scratch.setUint32(4, (value - lo) / 0x1_0000_0000, true);
      this.slowAccess(offset, 8, true);
      return;
    }
    if (typeof value !== 'bigint') throw new InvalidArgumentError(`${this.label}: a 64-bit value must be a bigint or a number, got ${describeValue(value)}`);
    const v = BigInt.asUintN(64, value);
    const a = this.area(offset, 8, true);
    if (a) {
      a.u64[(offset - a.start) / 8] = v;
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
    checkBytes(bytes, `${this.label}: writeBytes' data`);
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
    this.wholeMapped = false;
    this.r8 = this.w8 = NO_U8;
    this.r16 = this.w16 = NO_U16;
    this.r32 = this.w32 = NO_U32;
    this.w64 = NO_F64;
    for (const a of this.areas) {
      try {
        this.backend.unmapRegion(a.buffer);
      } catch {
        // Already unmapped by the backend's own teardown: nothing left to release.
      }
    }
    this.areas = [];
  }

  /** The mapped area serving a checked access, if any (slow path and 64-bit reads). */
  private area(offset: number, width: number, write: boolean): MappedArea | undefined {
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

  private readSlow(offset: number, width: 1 | 2 | 4): number {
    const a = this.area(offset, width, false);
    if (a) {
      const o = offset - a.start;
      const v = width === 1 ? a.u8[o]! : width === 2 ? a.u16[o / 2]! : a.u32[o / 4]!;
      if (v === (width === 4 ? 0xffffffff : (1 << (8 * width)) - 1)) this.allOnesReads++;
      return v;
    }
    this.slowAccess(offset, width, false);
    return width === 1 ? this.scratch.getUint8(0) : width === 2 ? this.scratch.getUint16(0, true) : this.scratch.getUint32(0, true);
  }

  private writeSlow(offset: number, width: 1 | 2 | 4, value: number): void {
    const a = this.area(offset, width, true);
    if (a) {
      const o = offset - a.start;
      if (width === 1) a.u8[o] = value;
      else if (width === 2) a.u16[o / 2] = value;
      else a.u32[o / 4] = value;
      return;
    }
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
