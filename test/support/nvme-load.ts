/**
 * A QD-N read/write load on one NVMe queue that keeps `depth` I/Os in flight until stopped or
 * until one fails, through the promise API (zero copy and bounce) or the callback API, and
 * records how every I/O ended. Used by the fault tests on the simulator and in the guest: after
 * a fault, every I/O must have settled, with success or a typed error.
 */
import type { NvmeNamespace } from '../../src/drivers/nvme/namespace';
import type { NvmeQueue } from '../../src/drivers/nvme/queue';
import type { DmaBuffer } from '../../src/dma/dma-space';
import { prng } from '../../src/drivers/nvme/workload';

export type LoadApi = 'promise' | 'callback';

export interface LoadOutcome {
  submitted: number;
  ok: number;
  /** Failures by `${name}:${code}` (e.g. "DeviceGoneError:ENODEV"). */
  errors: Record<string, number>;
  /** Errors that were not UserpciErrors, or were thrown synchronously by a submit call. */
  untyped: string[];
  /** I/Os neither resolved nor rejected. */
  pending: number;
}

export class QueueLoad {
  readonly outcome: LoadOutcome = { submitted: 0, ok: 0, errors: {}, untyped: [], pending: 0 };
  private stopped = false;
  private settledAll: (() => void) | null = null;
  private readonly rnd: () => number;
  private readonly blocksPerIo: number;
  private readonly plain: Uint8Array[];
  private firstError: ((e: Error) => void) | null = null;
  /** Resolves with the first failure (the load then stops submitting). */
  readonly failed: Promise<Error>;

  constructor(
    private readonly ns: NvmeNamespace,
    private readonly queue: NvmeQueue,
    private readonly api: LoadApi,
    private readonly depth: number,
    private readonly buffer: DmaBuffer,
    seed: number,
    private readonly ioBytes = 4096,
  ) {
    this.rnd = prng(seed);
    this.blocksPerIo = ioBytes / ns.blockSize;
    this.plain = Array.from({ length: depth }, () => new Uint8Array(ioBytes));
    this.failed = new Promise<Error>((r) => (this.firstError = r));
  }

  /** Completed I/Os so far. */
  get completed(): number {
    return this.outcome.ok;
  }

  start(): void {
    for (let slot = 0; slot < this.depth; slot++) this.next(slot);
  }

  /** Stop submitting; resolves once every I/O in flight has settled. */
  stop(): Promise<LoadOutcome> {
    this.stopped = true;
    if (this.outcome.pending === 0) return Promise.resolve(this.outcome);
    return new Promise((r) => (this.settledAll = () => r(this.outcome)));
  }

  private next(slot: number): void {
    if (this.stopped) return;
    const span = Math.min(this.ns.blocks, 1 << 20) - this.blocksPerIo;
    const lba = Math.floor(this.rnd() * span / this.blocksPerIo) * this.blocksPerIo;
    const write = this.rnd() < 0.5;
    const offset = slot * this.ioBytes;
    this.outcome.submitted++;
    this.outcome.pending++;
    try {
      if (this.api === 'callback') {
        this.ns.submit(write, lba, this.buffer.iova + offset, this.ioBytes, this.queue, (err) => this.done(slot, err));
      } else {
        const p = this.rnd() < 0.5
          ? (write ? this.ns.writeDma(lba, this.buffer, offset, this.ioBytes, this.queue) : this.ns.readDma(lba, this.buffer, offset, this.ioBytes, this.queue))
          : (write ? this.ns.write(lba, this.plain[slot]!, this.queue) : this.ns.read(lba, this.plain[slot]!, this.queue));
        p.then(() => this.done(slot, null), (e: Error) => this.done(slot, e));
      }
    } catch (err) {
      this.outcome.pending--;
      this.outcome.untyped.push(`thrown by submit: ${String((err as Error)?.stack ?? err)}`);
      this.fail(err as Error);
    }
  }

  private done(slot: number, err: Error | null): void {
    this.outcome.pending--;
    if (err === null) {
      this.outcome.ok++;
    } else {
      const code = (err as { code?: string }).code;
      const key = `${err.name}:${code ?? '-'}`;
      this.outcome.errors[key] = (this.outcome.errors[key] ?? 0) + 1;
      if (code === undefined || err instanceof TypeError) this.outcome.untyped.push(String(err.stack ?? err));
      this.fail(err);
    }
    if (this.stopped) {
      if (this.outcome.pending === 0) this.settledAll?.();
      return;
    }
    this.next(slot);
  }

  private fail(err: Error): void {
    this.stopped = true;
    this.firstError?.(err);
    this.firstError = null;
    if (this.outcome.pending === 0) this.settledAll?.();
  }
}

/** Resolves when `p` does, or rejects after `ms` (a hang guard, not a measurement). */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`hang guard: ${what} did not happen within ${ms} ms`)), ms);
  });
  return Promise.race([p, guard]).finally(() => clearTimeout(timer));
}
