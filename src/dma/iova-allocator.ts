/**
 * Hands out IOVA ranges inside the IOMMU's usable ranges (which VFIO reports with the x86 MSI
 * window already cut out) and below each caller's limit (its device's DMA mask). One allocator
 * serves one IOMMU domain, so devices sharing a container never get overlapping IOVAs. Freed
 * ranges are merged back and reused. IOVAs stay plain numbers: all usable ones are below 2^53.
 */
import { InvalidArgumentError, UserpciError } from '../errors';

export class IovaAllocator {
  /**
   * Free spans [starts[i], ends[i]) for i < count, sorted, never adjacent (merged on free). Typed
   * arrays, so carving and merging spans on every streaming map allocate no objects or numbers.
   */
  private starts = new Float64Array(16);
  private ends = new Float64Array(16);
  private count = 0;
  private readonly used = new Map<number, number>();
  /** 1 / granule, exact (the granule is a power of two): rounding to it multiplies, no division. */
  private readonly perGranule: number;

  /**
   * @param ranges usable ranges with inclusive ends (as VFIO reports them)
   * @param granule mapping granule: every range starts and ends on it
   * @param options.cursor offset from the lowest usable IOVA where next-fit search starts (any
   *   number: it is folded into the space); absent: first fit
   */
  constructor(ranges: { start: number; end: number }[], readonly granule = 4096, options: { cursor?: number } = {}) {
    if (!isPowerOfTwo(granule)) throw new InvalidArgumentError(`IOVA granule ${String(granule)} must be a power of two`);
    if (!Array.isArray(ranges) || !ranges.every((r) => r !== null && typeof r === 'object' && Number.isSafeInteger(r.start) && Number.isSafeInteger(r.end) && r.start >= 0 && r.start <= r.end)) {
      throw new InvalidArgumentError('IOVA ranges must be an array of { start, end } with integers 0 <= start <= end');
    }
    if (options.cursor !== undefined && !Number.isFinite(options.cursor)) throw new InvalidArgumentError(`IOVA cursor must be a finite number, got ${String(options.cursor)}`);
    this.perGranule = 1 / granule;
    const sorted = [...ranges].sort((a, b) => a.start - b.start);
    for (const r of sorted) {
      const start = alignUp(Math.max(r.start, granule), granule); // never hand out IOVA 0: it hides bugs
      const end = Math.floor((Math.min(r.end, Number.MAX_SAFE_INTEGER - granule) + 1) / granule) * granule;
      if (end > start) this.insertSpan(this.count, start, end);
    }
    if (this.count === 0) throw new UserpciError('ENOSPC', 'the IOMMU reports no usable IOVA space');
    this.bottom = this.starts[0]!;
    this.top = this.ends[this.count - 1]!;
    if (options.cursor !== undefined) this.cursor = this.bottom + (Math.floor(options.cursor / granule) * granule) % (this.top - this.bottom);
  }

  /** Total bytes still free. */
  get available(): number {
    let n = 0;
    for (let i = 0; i < this.count; i++) n += this.ends[i]! - this.starts[i]!;
    return n;
  }

  /**
   * Where the next search starts. With a cursor the allocator is next-fit: it searches from the
   * cursor up, wraps around to the bottom, and moves the cursor past what it handed out, so a
   * range just freed is not handed out again at once, and (with a random first cursor) a new
   * owner does not get the IOVAs its predecessor used. Without one it is plain first fit.
   */
  private cursor = -1;
  private readonly bottom: number;
  private readonly top: number;

  /**
   * First fit (or next fit from the cursor) ending at or below `limit` (inclusive), aligned to
   * `align` (a power of two, at least the granule).
   */
  allocate(size: number, align = this.granule, limit = Number.MAX_SAFE_INTEGER): number {
    const start = this.take(size, align, limit);
    this.used.set(start, alignUp(size, this.granule));
    return start;
  }

  /**
   * @internal allocate() for an owner that keeps each range's size itself (DmaSpace, once per
   * streaming map): nothing is recorded here; give the range back with giveBack(start, size).
   */
  take(size: number, align = this.granule, limit = Number.MAX_SAFE_INTEGER): number {
    return this.takeLength(this.checkRequest(size, align, limit), align, limit);
  }

  /**
   * @internal take() for a caller that hands in a positive multiple of the granule, aligned to
   * the granule (DmaSpace, once per streaming map): nothing left to check or round.
   */
  takePages(length: number, limit: number): number {
    return this.takeLength(length, this.granule, limit);
  }

  /** Round down to the granule. */
  roundDown(value: number): number {
    return Math.floor(value * this.perGranule) * this.granule;
  }

  /** Round up to the granule. */
  roundUp(value: number): number {
    return Math.ceil(value * this.perGranule) * this.granule;
  }

  private takeLength(length: number, align: number, limit: number): number {
    const from = this.searchStart(length, limit);
    let i = this.find(length, align, limit, from);
    if (i < 0 && from > this.bottom) i = this.find(length, align, limit, this.bottom);
    if (i < 0) throw this.exhausted(length, align, limit);
    const start = this.found;
    const end = start + length;
    // Carve [start, end) out of span i.
    const spanEnd = this.ends[i]!;
    if (start === this.starts[i]) {
      if (end === spanEnd) this.removeSpan(i);
      else this.starts[i] = end;
    } else {
      this.ends[i] = start;
      if (end < spanEnd) this.insertSpan(i + 1, end, spanEnd);
    }
    if (this.cursor >= 0) this.cursor = end;
    return start;
  }

  /** Throws what allocate would throw when no such range is free; allocates nothing. */
  check(size: number, align = this.granule, limit = Number.MAX_SAFE_INTEGER): void {
    const length = this.checkRequest(size, align, limit);
    if (this.find(length, align, limit, this.bottom) < 0) throw this.exhausted(length, align, limit);
  }

  private checkRequest(size: number, align: number, limit: number): number {
    if (!Number.isSafeInteger(size) || size <= 0) throw new InvalidArgumentError(`IOVA size must be a positive integer, got ${String(size)}`);
    if (typeof limit !== 'number' || !(limit >= 0)) throw new InvalidArgumentError(`IOVA limit must be a non-negative number, got ${String(limit)}`);
    if (align !== this.granule && (align < this.granule || !isPowerOfTwo(align))) throw new InvalidArgumentError(`IOVA alignment ${align} must be a power of two >= ${this.granule}`);
    return alignUp(size, this.granule);
  }

  /** The cursor folded into the part of the space this caller can reach (on the granule, as the cursor is). */
  private searchStart(length: number, limit: number): number {
    if (this.cursor < 0) return this.bottom;
    const reach = Math.min(limit + 1, this.top) - this.bottom;
    if (reach <= length) return this.bottom;
    const offset = this.cursor - this.bottom;
    // A floating-point modulo is a call: only when needed.
    return offset < reach ? this.cursor : this.bottom + this.roundDown(offset % reach);
  }

  /** Start of the range the last successful find() chose. */
  private found = 0;

  /**
   * Index of the first free span holding an aligned range of `length` from `from` (on the
   * granule) up (its start in `found`), or -1.
   */
  private find(length: number, align: number, limit: number, from: number): number {
    const granule = align === this.granule; // spans and `from` lie on the granule already
    for (let i = 0; i < this.count; i++) {
      const spanEnd = this.ends[i]!;
      if (spanEnd <= from) continue;
      const lowest = Math.max(this.starts[i]!, from);
      const start = granule ? lowest : alignUp(lowest, align);
      if (start + length - 1 > limit) return -1; // spans are sorted: later ones only lie higher
      if (start + length <= spanEnd) {
        this.found = start;
        return i;
      }
    }
    return -1;
  }

  /** Says what is true: how much is free where this caller can reach, and whether it is in pieces. */
  private exhausted(length: number, align: number, limit: number): UserpciError {
    let free = 0;
    let largest = 0;
    for (let i = 0; i < this.count; i++) {
      const start = this.starts[i]!;
      const end = Math.min(this.ends[i]!, limit + 1);
      if (end <= start) break;
      free += end - start;
      largest = Math.max(largest, end - start);
    }
    let why = '';
    if (largest >= length) why = `, but no free range is aligned to ${align} bytes`;
    else if (free >= length) why = `, fragmented (the largest free range is ${largest} bytes)`;
    return new UserpciError('ENOMEM', `IOVA space exhausted: no ${length}-byte range at or below 0x${limit.toString(16)} (the DMA mask); ${free} bytes are free there${why}`);
  }

  /** Give a range back; its size is remembered from allocate. */
  release(iova: number): void {
    const length = this.used.get(iova);
    if (length === undefined) throw this.notAllocated(iova);
    this.used.delete(iova);
    this.giveBack(iova, length);
  }

  /** @internal Give back a range from take(), with the size it was taken with. */
  giveBack(iova: number, size: number): void {
    const end = iova + this.roundUp(size);
    let i = 0;
    while (i < this.count && this.starts[i]! < iova) i++;
    const before = i > 0 ? this.ends[i - 1]! : -1;
    const after = i < this.count ? this.starts[i]! : Infinity;
    // A range that overlaps free space was never taken, or was given back already.
    if (before > iova || after < end) throw this.notAllocated(iova);
    // Merge with the neighbours so large allocations stay possible after churn.
    if (before === iova && after === end) {
      this.ends[i - 1] = this.ends[i]!;
      this.removeSpan(i);
    } else if (before === iova) this.ends[i - 1] = end;
    else if (after === end) this.starts[i] = iova;
    else this.insertSpan(i, iova, end);
  }

  private notAllocated(iova: number): InvalidArgumentError {
    return new InvalidArgumentError(typeof iova === 'number' ? `IOVA 0x${iova.toString(16)} was not allocated here` : `an IOVA is a number, got ${String(iova)}`);
  }

  private insertSpan(i: number, start: number, end: number): void {
    if (this.count === this.starts.length) {
      const starts = new Float64Array(this.count * 2);
      const ends = new Float64Array(this.count * 2);
      starts.set(this.starts);
      ends.set(this.ends);
      this.starts = starts;
      this.ends = ends;
    }
    for (let j = this.count; j > i; j--) {
      this.starts[j] = this.starts[j - 1]!;
      this.ends[j] = this.ends[j - 1]!;
    }
    this.starts[i] = start;
    this.ends[i] = end;
    this.count++;
  }

  private removeSpan(i: number): void {
    this.count--;
    for (let j = i; j < this.count; j++) {
      this.starts[j] = this.starts[j + 1]!;
      this.ends[j] = this.ends[j + 1]!;
    }
  }
}

export function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

export function isPowerOfTwo(value: number): boolean {
  return typeof value === 'number' && value > 0 && Number.isInteger(Math.log2(value));
}
