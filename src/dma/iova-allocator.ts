/**
 * Hands out IOVA ranges inside the IOMMU's usable ranges (which VFIO reports with the x86 MSI
 * window already cut out) and below each caller's limit (its device's DMA mask). One allocator
 * serves one IOMMU domain, so devices sharing a container never get overlapping IOVAs. Freed
 * ranges are merged back and reused. IOVAs stay plain numbers: all usable ones are below 2^53.
 */
import { InvalidArgumentError, UserpciError } from '../errors';

interface Span {
  start: number;
  /** exclusive */
  end: number;
}

export class IovaAllocator {
  /** Free spans, sorted by start, never adjacent (merged on free). */
  private free: Span[] = [];
  private readonly used = new Map<number, number>();

  /**
   * @param ranges usable ranges with inclusive ends (as VFIO reports them)
   * @param granule mapping granule: every range starts and ends on it
   */
  /** @param options.cursor offset from the lowest usable IOVA where next-fit search starts (any number: it is folded into the space); absent: first fit */
  constructor(ranges: { start: number; end: number }[], readonly granule = 4096, options: { cursor?: number } = {}) {
    const sorted = [...ranges].sort((a, b) => a.start - b.start);
    for (const r of sorted) {
      const start = alignUp(Math.max(r.start, granule), granule); // never hand out IOVA 0: it hides bugs
      const end = Math.floor((Math.min(r.end, Number.MAX_SAFE_INTEGER - granule) + 1) / granule) * granule;
      if (end > start) this.free.push({ start, end });
    }
    if (this.free.length === 0) throw new UserpciError('ENOSPC', 'the IOMMU reports no usable IOVA space');
    this.bottom = this.free[0]!.start;
    this.top = this.free[this.free.length - 1]!.end;
    if (options.cursor !== undefined) this.cursor = this.bottom + (Math.floor(options.cursor / granule) * granule) % (this.top - this.bottom);
  }

  /** Total bytes still free. */
  get available(): number {
    let n = 0;
    for (const s of this.free) n += s.end - s.start;
    return n;
  }

  /**
   * Where the next search starts. With a cursor the allocator is next-fit: it searches from the
   * cursor up, wraps around to the bottom, and moves the cursor past what it handed out, so a
   * range just freed is not handed out again at once, and (with a random first cursor) a new
   * owner does not get the IOVAs its predecessor used. Without one it is plain first fit.
   */
  private cursor: number | undefined;
  private readonly bottom: number;
  private readonly top: number;

  /**
   * First fit (or next fit from the cursor) ending at or below `limit` (inclusive), aligned to
   * `align` (a power of two, at least the granule).
   */
  allocate(size: number, align = this.granule, limit = Number.MAX_SAFE_INTEGER): number {
    const length = this.checkRequest(size, align);
    const from = this.searchStart(length, limit);
    let i = this.find(length, align, limit, from);
    if (i < 0 && from > this.bottom) i = this.find(length, align, limit, this.bottom);
    if (i < 0) throw this.exhausted(length, align, limit);
    const start = this.found;
    const end = start + length;
    // Carve [start, end) out of span i in place: this runs per streaming map, so no new arrays.
    const span = this.free[i]!;
    if (start === span.start) {
      if (end === span.end) this.removeSpan(i);
      else span.start = end;
    } else {
      if (end < span.end) this.insertSpan(i + 1, { start: end, end: span.end });
      span.end = start;
    }
    this.used.set(start, length);
    if (this.cursor !== undefined) this.cursor = end;
    return start;
  }

  /** Throws what allocate would throw when no such range is free; allocates nothing. */
  check(size: number, align = this.granule, limit = Number.MAX_SAFE_INTEGER): void {
    const length = this.checkRequest(size, align);
    if (this.find(length, align, limit, this.bottom) < 0) throw this.exhausted(length, align, limit);
  }

  private checkRequest(size: number, align: number): number {
    if (!Number.isSafeInteger(size) || size <= 0) throw new InvalidArgumentError(`IOVA size must be a positive integer, got ${size}`);
    if (align !== this.granule && (align < this.granule || !isPowerOfTwo(align))) throw new InvalidArgumentError(`IOVA alignment ${align} must be a power of two >= ${this.granule}`);
    return alignUp(size, this.granule);
  }

  /** The cursor folded into the part of the space this caller can reach. */
  private searchStart(length: number, limit: number): number {
    if (this.cursor === undefined) return this.bottom;
    const reach = Math.min(limit + 1, this.top) - this.bottom;
    if (reach <= length) return this.bottom;
    const offset = (this.cursor - this.bottom) % reach;
    return this.bottom + Math.floor(offset / this.granule) * this.granule;
  }

  /** Start of the range the last successful find() chose. */
  private found = 0;

  /** Index of the first free span holding an aligned range of `length` from `from` up (its start in `found`), or -1. */
  private find(length: number, align: number, limit: number, from: number): number {
    for (let i = 0; i < this.free.length; i++) {
      const span = this.free[i]!;
      if (span.end <= from) continue;
      const start = alignUp(Math.max(span.start, from), align);
      if (start + length - 1 > limit) return -1; // spans are sorted: later ones only lie higher
      if (start + length <= span.end) {
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
    for (const s of this.free) {
      const end = Math.min(s.end, limit + 1);
      if (end <= s.start) break;
      free += end - s.start;
      largest = Math.max(largest, end - s.start);
    }
    let why = '';
    if (largest >= length) why = `, but no free range is aligned to ${align} bytes`;
    else if (free >= length) why = `, fragmented (the largest free range is ${largest} bytes)`;
    return new UserpciError('ENOMEM', `IOVA space exhausted: no ${length}-byte range at or below 0x${limit.toString(16)} (the DMA mask); ${free} bytes are free there${why}`);
  }

  /** Give a range back; its size is remembered from allocate. */
  release(iova: number): void {
    const length = this.used.get(iova);
    if (length === undefined) throw new InvalidArgumentError(`IOVA 0x${iova.toString(16)} was not allocated here`);
    this.used.delete(iova);
    const end = iova + length;
    let i = 0;
    while (i < this.free.length && this.free[i]!.start < iova) i++;
    // Merge with the neighbours so large allocations stay possible after churn.
    const before = i > 0 && this.free[i - 1]!.end === iova ? this.free[i - 1]! : undefined;
    const after = i < this.free.length && this.free[i]!.start === end ? this.free[i]! : undefined;
    if (before && after) {
      before.end = after.end;
      this.removeSpan(i);
    } else if (before) before.end = end;
    else if (after) after.start = iova;
    else this.insertSpan(i, { start: iova, end });
  }

  /** In place (splice would allocate its result array). */
  private insertSpan(i: number, span: Span): void {
    const free = this.free;
    free.push(span);
    for (let j = free.length - 1; j > i; j--) free[j] = free[j - 1]!;
    free[i] = span;
  }

  private removeSpan(i: number): void {
    const free = this.free;
    for (let j = i; j < free.length - 1; j++) free[j] = free[j + 1]!;
    free.pop();
  }
}

export function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

export function isPowerOfTwo(value: number): boolean {
  return value > 0 && Number.isInteger(Math.log2(value));
}
