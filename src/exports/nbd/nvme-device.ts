/**
 * An NVMe namespace as a byte-addressed BlockDevice for the NBD server.
 *
 * Aligned requests map 1:1 onto NVMe commands (split by the driver as needed). Unaligned ones
 * are widened to whole blocks: reads read more and slice, writes read-modify-write. A write
 * waits for overlapping read-modify-writes in flight, and a read-modify-write waits for every
 * overlapping write in flight, so no update is lost between its read and its write.
 * Trim deallocates only the whole blocks inside its range (it is advisory), and needs Dataset
 * Management; Write Zeroes uses the NVMe command when the controller has it.
 */
import { describeValue, optionsObject } from '../../arguments';
import { InvalidArgumentError } from '../../errors';
import { NvmeNamespace } from '../../drivers/nvme/namespace';
import type { NvmeQueue } from '../../drivers/nvme/queue';
import type { BlockDevice } from './block-device';

interface ActiveWrite {
  start: number;
  end: number;
  rmw: boolean;
  done: Promise<void>;
}

export interface NvmeBlockDeviceOptions {
  /** The queue to use (default: the controller's default queue). */
  queue?: NvmeQueue;
  readOnly?: boolean;
  /** Largest NBD request accepted, bytes (default 32 MiB). */
  maxRequest?: number;
}

export class NvmeBlockDevice implements BlockDevice {
  readonly size: number;
  readonly blockSize: number;
  readonly readOnly: boolean;
  readonly canTrim: boolean;
  readonly canWriteZeroes = true;
  readonly maxRequest: number;
  /** Unaligned writes done by read-modify-write (diagnostics). */
  readModifyWrites = 0;
  private readonly active: ActiveWrite[] = [];
  private readonly queue: NvmeQueue | undefined;
  private lost: Promise<Error> | undefined;

  constructor(
    readonly namespace: NvmeNamespace,
    options: NvmeBlockDeviceOptions = {},
  ) {
    if (!(namespace instanceof NvmeNamespace)) throw new InvalidArgumentError(`NvmeBlockDevice takes an NvmeNamespace, got ${describeValue(namespace)}`);
    options = optionsObject(options, 'NvmeBlockDevice options');
    this.size = namespace.size;
    this.blockSize = namespace.blockSize;
    this.readOnly = options.readOnly ?? false;
    this.canTrim = namespace.supportsTrim;
    this.maxRequest = options.maxRequest ?? 32 << 20;
    this.queue = options.queue;
  }

  /** Resolves when the controller gives up on its device (see NvmeController 'lost'). */
  whenLost(): Promise<Error> {
    const ctrl = this.namespace.controller;
    this.lost ??= new Promise<Error>((resolve) => {
      const reason = ctrl.closeReason;
      if (reason && (reason as { code?: string }).code === 'ENODEV') resolve(reason);
      else ctrl.once('lost', resolve);
    });
    return this.lost;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const bs = this.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.ceil((offset + length) / bs);
    const buf = Buffer.allocUnsafe((last - first) * bs);
    await this.namespace.read(first, buf, this.queue);
    const skip = offset - first * bs;
    return skip === 0 && buf.length === length ? buf : buf.subarray(skip, skip + length);
  }

  async write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    const bs = this.blockSize;
    const aligned = offset % bs === 0 && data.length % bs === 0;
    const first = Math.floor(offset / bs);
    const last = Math.ceil((offset + data.length) / bs);
    await this.ordered(first, last, !aligned, async () => {
      if (aligned) {
        await this.namespace.write(first, data, this.queue, { fua });
        return;
      }
      this.readModifyWrites++;
      const block = Buffer.allocUnsafe((last - first) * bs);
      // Only the partial first and last blocks need their old contents.
      const head = offset - first * bs;
      const tail = last * bs - (offset + data.length);
      if (head > 0) await this.namespace.read(first, block.subarray(0, bs), this.queue);
      if (tail > 0 && (last - 1 > first || head === 0)) await this.namespace.read(last - 1, block.subarray(block.length - bs), this.queue);
      block.set(data, head);
      await this.namespace.write(first, block, this.queue, { fua });
    });
  }

  flush(): Promise<void> {
    return this.namespace.flush(this.queue);
  }

  async trim(offset: number, length: number): Promise<void> {
    const bs = this.blockSize;
    const first = Math.ceil(offset / bs);
    const last = Math.floor((offset + length) / bs);
    if (last <= first || !this.canTrim) return;
    await this.ordered(first, last, false, () => this.namespace.trim(first, last - first, this.queue));
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    const bs = this.blockSize;
    const first = Math.ceil(offset / bs);
    const last = Math.floor((offset + length) / bs);
    // Partial blocks at either end: ordinary (read-modify-)writes of zeroes.
    if (last <= first) return this.write(offset, new Uint8Array(length), fua);
    const jobs: Promise<void>[] = [];
    if (offset < first * bs) jobs.push(this.write(offset, new Uint8Array(first * bs - offset), fua));
    if (offset + length > last * bs) jobs.push(this.write(last * bs, new Uint8Array(offset + length - last * bs), fua));
    jobs.push(this.ordered(first, last, false, async () => {
      if (this.namespace.controller.identity.supportsWriteZeroes) {
        for (let lba = first; lba < last; lba += 0x10000) await this.namespace.writeZeroes(lba, Math.min(0x10000, last - lba), this.queue);
        if (fua) await this.namespace.flush(this.queue);
      } else {
        const chunk = Math.min(last - first, Math.floor((4 << 20) / bs));
        const zeroes = new Uint8Array(chunk * bs);
        for (let lba = first; lba < last; lba += chunk) {
          const n = Math.min(chunk, last - lba);
          await this.namespace.write(lba, n === chunk ? zeroes : zeroes.subarray(0, n * bs), this.queue, { fua });
        }
      }
    }));
    await Promise.all(jobs);
  }

  /** Run a write over blocks [start, end) after the writes it must not race with. */
  private async ordered(start: number, end: number, rmw: boolean, fn: () => Promise<void>): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const a of this.active) if (a.start < end && start < a.end && (rmw || a.rmw)) waits.push(a.done);
    let release!: () => void;
    const entry: ActiveWrite = { start, end, rmw, done: new Promise<void>((r) => (release = r)) };
    this.active.push(entry);
    try {
      if (waits.length > 0) await Promise.all(waits);
      await fn();
    } finally {
      this.active.splice(this.active.indexOf(entry), 1);
      release();
    }
  }
}
