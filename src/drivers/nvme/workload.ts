/**
 * A deterministic random write/verify workload: random offsets, random lengths (from one block
 * to beyond the controller's transfer size, so requests cross PRP-list and MDTS boundaries),
 * buffers at random dword offsets, both zero-copy and bounce paths. The same seed gives the same
 * plan and the same bytes anywhere, so a disk image written in a guest can be checked on the host.
 */
import type { NvmeNamespace } from './namespace';
import type { NvmeQueue } from './queue';

export interface WorkloadOptions {
  seed: number;
  /** Namespace geometry. */
  blocks: number;
  blockSize: number;
  /** Writes in the plan. */
  count: number;
  /** Largest write, bytes (default 2 MiB). */
  maxBytes?: number;
  /** Only this many blocks at the start of the namespace are used (default all). */
  spanBlocks?: number;
}

export interface PlannedWrite {
  lba: number;
  length: number;
  /** Offset of the data in the DMA buffer (a multiple of 4, often not of a page). */
  bufferOffset: number;
  /** Seed of the bytes written. */
  dataSeed: number;
  /** Zero copy from a DMA buffer, or a plain buffer through bounce memory. */
  zeroCopy: boolean;
}

/** mulberry32: small, fast, good enough for test patterns. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Fill with the bytes `seed` stands for (a 32-bit xorshift stream, written a word at a time). */
export function fillPattern(view: Uint8Array, seed: number): Uint8Array {
  let x = (seed ^ 0x9e3779b9) >>> 0 || 1;
  const n = view.length;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    view[i] = x & 0xff;
    view[i + 1] = (x >>> 8) & 0xff;
    view[i + 2] = (x >>> 16) & 0xff;
    view[i + 3] = x >>> 24;
  }
  for (; i < n; i++) view[i] = (x >>> (8 * (i & 3))) & 0xff;
  return view;
}

/** The writes a seed stands for. Lengths are biased to straddle page, PRP-list and transfer-size boundaries. */
export function planWrites(options: WorkloadOptions): PlannedWrite[] {
  const rnd = prng(options.seed);
  const bs = options.blockSize;
  const span = Math.min(options.spanBlocks ?? options.blocks, options.blocks);
  const maxBytes = Math.min(options.maxBytes ?? 2 << 20, span * bs);
  const interesting = [bs, 4096, 8192, 4096 * 3, 64 * 1024, 128 * 1024, 512 * 1024, 1 << 20, 2 << 20, 4 << 20].filter((n) => n <= maxBytes && n % bs === 0);
  const plan: PlannedWrite[] = [];
  for (let i = 0; i < options.count; i++) {
    let length: number;
    const r = rnd();
    if (r < 0.35 && interesting.length > 0) {
      // A boundary size, give or take a block.
      const base = interesting[Math.floor(rnd() * interesting.length)]!;
      const delta = [-bs, 0, bs][Math.floor(rnd() * 3)]!;
      length = Math.max(bs, Math.min(maxBytes, base + delta));
    } else {
      length = (1 + Math.floor(rnd() * Math.floor(maxBytes / bs))) * bs;
    }
    length -= length % bs;
    const blocks = length / bs;
    const lba = Math.floor(rnd() * (span - blocks + 1));
    const bufferOffset = rnd() < 0.5 ? 0 : 4 * Math.floor(rnd() * 1024);
    plan.push({ lba, length, bufferOffset, dataSeed: Math.floor(rnd() * 0xffffffff), zeroCopy: rnd() < 0.6 });
  }
  return plan;
}

/** Apply a plan to an in-memory image of the namespace (for the host-side check). */
export function applyPlan(image: Uint8Array, plan: readonly PlannedWrite[], blockSize: number): void {
  for (const w of plan) fillPattern(image.subarray(w.lba * blockSize, w.lba * blockSize + w.length), w.dataSeed);
}

/** What a plan will touch, known before anything is written. */
export interface Footprint {
  /** First block written, and one past the last. */
  firstLba: number;
  endLba: number;
  /** Bytes the writes carry in all (overlaps counted each time). */
  bytesWritten: number;
  /** Distinct bytes of the namespace written (and read back). */
  bytesCovered: number;
  /** DMA memory runWorkload allocates: one buffer per concurrent write, one read-back buffer. */
  dmaBytes: number;
}

/** Largest read-back command group of a verification (bounded whatever the namespace size). */
function readChunkBlocks(maxTransfer: number, blockSize: number): number {
  return Math.max(1, Math.floor(Math.min(maxTransfer * 4, 4 << 20) / blockSize));
}

/** Written block ranges [start, end), merged and sorted. */
function coveredRanges(plan: readonly PlannedWrite[], blockSize: number): [number, number][] {
  const ranges = plan.map((w): [number, number] => [w.lba, w.lba + w.length / blockSize]).sort((a, b) => a[0] - b[0]);
  const out: [number, number][] = [];
  for (const r of ranges) {
    const last = out.at(-1);
    if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
    else out.push([r[0], r[1]]);
  }
  return out;
}

export function planFootprint(plan: readonly PlannedWrite[], blockSize: number, options: { concurrency?: number; maxTransfer?: number } = {}): Footprint {
  if (plan.length === 0) return { firstLba: 0, endLba: 0, bytesWritten: 0, bytesCovered: 0, dmaBytes: 0 };
  const ranges = coveredRanges(plan, blockSize);
  const concurrency = Math.max(1, options.concurrency ?? 4);
  const maxLen = Math.max(...plan.map((w) => w.length + w.bufferOffset), blockSize);
  return {
    firstLba: ranges[0]![0],
    endLba: Math.max(...ranges.map((r) => r[1])),
    bytesWritten: plan.reduce((n, w) => n + w.length, 0),
    bytesCovered: ranges.reduce((n, r) => n + (r[1] - r[0]) * blockSize, 0),
    dmaBytes: concurrency * maxLen + readChunkBlocks(options.maxTransfer ?? 4 << 20, blockSize) * blockSize,
  };
}

/** The final bytes of blocks [lba, lba + blocks) after the plan: later writes win (no image of the whole span). */
export function expectedBytes(plan: readonly PlannedWrite[], blockSize: number, lba: number, blocks: number): Uint8Array {
  const out = new Uint8Array(blocks * blockSize);
  const end = lba + blocks;
  for (const w of plan) {
    const wEnd = w.lba + w.length / blockSize;
    if (wEnd <= lba || w.lba >= end) continue;
    const pattern = fillPattern(new Uint8Array(w.length), w.dataSeed);
    const from = Math.max(lba, w.lba);
    const to = Math.min(end, wEnd);
    out.set(pattern.subarray((from - w.lba) * blockSize, (to - w.lba) * blockSize), (from - lba) * blockSize);
  }
  return out;
}

export interface VerifyResult {
  writes: number;
  bytesWritten: number;
  /** Byte ranges compared after all writes (every range written). */
  bytesVerified: number;
  mismatches: { lba: number; length: number; firstBadByte: number }[];
  ms: number;
}

/**
 * Run a plan against a namespace: write everything (up to `concurrency` requests at once, in
 * plan order per overlapping range: a write waits for earlier overlapping writes), then read
 * every written range back and compare with what the plan says the final bytes are.
 */
export async function runWorkload(ns: NvmeNamespace, plan: readonly PlannedWrite[], options: { concurrency?: number; queue?: NvmeQueue } = {}): Promise<VerifyResult> {
  if (plan.length === 0) return { writes: 0, bytesWritten: 0, bytesVerified: 0, mismatches: [], ms: 0 };
  const t0 = Date.now();
  const bs = ns.blockSize;
  const maxLen = Math.max(...plan.map((w) => w.length + w.bufferOffset), bs);
  const concurrency = Math.max(1, options.concurrency ?? 4);
  const dma = Array.from({ length: concurrency }, () => ns.controller.allocBuffer(maxLen, 'never'));
  try {
    const inflight: { lba: number; end: number; done: Promise<void> }[] = [];
    let bytesWritten = 0;
    const free = dma.map((_, i) => i);
    const waiters: (() => void)[] = [];
    const acquire = async (): Promise<number> => {
      while (free.length === 0) await new Promise<void>((r) => waiters.push(r));
      return free.pop()!;
    };
    const all: Promise<void>[] = [];
    for (const w of plan) {
      const end = w.lba + w.length / bs;
      // Keep plan order for overlapping writes.
      const overlaps = inflight.filter((f) => f.lba < end && w.lba < f.end).map((f) => f.done);
      const slot = await acquire();
      const job = (async () => {
        try {
          await Promise.all(overlaps);
          if (w.zeroCopy) {
            fillPattern(new Uint8Array(dma[slot]!.buffer, w.bufferOffset, w.length), w.dataSeed);
            await ns.writeDma(w.lba, dma[slot]!, w.bufferOffset, w.length, options.queue);
          } else {
            await ns.write(w.lba, fillPattern(new Uint8Array(w.length), w.dataSeed), options.queue);
          }
          bytesWritten += w.length;
        } finally {
          free.push(slot);
          waiters.shift()?.();
        }
      })();
      const entry = { lba: w.lba, end, done: job.catch(() => undefined) };
      inflight.push(entry);
      void entry.done.then(() => inflight.splice(inflight.indexOf(entry), 1));
      all.push(job);
    }
    await Promise.all(all);

    // Read every written range back, a bounded chunk at a time, against what the plan says the
    // final bytes are (computed per chunk: memory does not grow with the namespace or the span).
    const mismatches: VerifyResult['mismatches'] = [];
    let bytesVerified = 0;
    const chunkBlocks = readChunkBlocks(ns.maxTransfer, bs);
    const readBuf = ns.controller.allocBuffer(chunkBlocks * bs, 'never');
    try {
      for (const [start, end] of coveredRanges(plan, bs)) {
        for (let lba = start; lba < end;) {
          const n = Math.min(chunkBlocks, end - lba);
          await ns.readDma(lba, readBuf, 0, n * bs, options.queue);
          const got = new Uint8Array(readBuf.buffer, 0, n * bs);
          const want = expectedBytes(plan, bs, lba, n);
          if (firstDifference(got, want) >= 0) {
            for (let k = 0; k < n; k++) {
              const bad = firstDifference(got.subarray(k * bs, (k + 1) * bs), want.subarray(k * bs, (k + 1) * bs));
              if (bad >= 0 && mismatches.length < 100) mismatches.push({ lba: lba + k, length: bs, firstBadByte: bad });
            }
          }
          bytesVerified += n * bs;
          lba += n;
        }
      }
    } finally {
      readBuf.free();
    }
    return { writes: plan.length, bytesWritten, bytesVerified, mismatches, ms: Date.now() - t0 };
  } finally {
    for (const b of dma) b.free();
  }
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  if (Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length))) return -1;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}
