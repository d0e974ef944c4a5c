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
  constructor(ranges: { start: number; end: number }[], readonly granule = 4096) {
    const sorted = [...ranges].sort((a, b) => a.start - b.start);
    for (const r of sorted) {
      const start = alignUp(Math.max(r.start, granule), granule); // never hand out IOVA 0: it hides bugs
      const end = Math.floor((Math.min(r.end, Number.MAX_SAFE_INTEGER - granule) + 1) / granule) * granule;
      if (end > start) this.free.push({ start, end });
    }
    if (this.free.length === 0) throw new UserpciError('ENOSPC', 'the IOMMU reports no usable IOVA space');
  }

  /** Total bytes still free. */
  get available(): number {
    let n = 0;
    for (const s of this.free) n += s.end - s.start;
    return n;
  }

  /** First fit ending at or below `limit` (inclusive), aligned to `align` (a power of two, at least the granule). */
  allocate(size: number, align = this.granule, limit = Number.MAX_SAFE_INTEGER): number {
    if (!Number.isSafeInteger(size) || size <= 0) throw new InvalidArgumentError(`IOVA size must be a positive integer, got ${size}`);
    if (align < this.granule || !isPowerOfTwo(align)) throw new InvalidArgumentError(`IOVA alignment ${align} must be a power of two >= ${this.granule}`);
    const length = alignUp(size, this.granule);
    for (let i = 0; i < this.free.length; i++) {
      const span = this.free[i]!;
      const start = alignUp(span.start, align);
      if (start + length > span.end) continue;
      if (start + length - 1 > limit) break; // spans are sorted: later ones only lie higher
      const pieces: Span[] = [];
      if (start > span.start) pieces.push({ start: span.start, end: start });
      if (start + length < span.end) pieces.push({ start: start + length, end: span.end });
      this.free.splice(i, 1, ...pieces);
      this.used.set(start, length);
      return start;
    }
    throw new UserpciError('ENOMEM', `IOVA space exhausted: no ${length}-byte range at or below 0x${limit.toString(16)} (${this.available} bytes free, fragmented)`);
  }

  /** Give a range back; its size is remembered from allocate. */
  release(iova: number): void {
    const length = this.used.get(iova);
    if (length === undefined) throw new InvalidArgumentError(`IOVA 0x${iova.toString(16)} was not allocated here`);
    this.used.delete(iova);
    const span = { start: iova, end: iova + length };
    let i = 0;
    while (i < this.free.length && this.free[i]!.start < span.start) i++;
    this.free.splice(i, 0, span);
    // Merge with neighbours so large allocations stay possible after churn.
    if (i + 1 < this.free.length && this.free[i]!.end === this.free[i + 1]!.start) {
      this.free[i]!.end = this.free[i + 1]!.end;
      this.free.splice(i + 1, 1);
    }
    if (i > 0 && this.free[i - 1]!.end === this.free[i]!.start) {
      this.free[i - 1]!.end = this.free[i]!.end;
      this.free.splice(i, 1);
    }
  }
}

export function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

export function isPowerOfTwo(value: number): boolean {
  return value > 0 && Number.isInteger(Math.log2(value));
}
