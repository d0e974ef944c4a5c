/**
 * An NVMe namespace served from a ublk queue thread (see thread-server.ts and
 * serveNamespaceOverUblkThreads in nvme.ts): the thread drives an NVMe I/O queue pair of its own.
 *
 * Threads share the process, not its JavaScript objects: the controller, its DMA space and its
 * BAR mapping stay on the main thread. What a thread reaches is what the main thread hands it by
 * number: one DMA buffer (its memfd, mapped again here: the same pages, so the same IOVAs) that
 * holds the queue's rings, PRP lists and the ublk tags' buffers; and the VFIO device fd, from
 * which it maps BAR0 for its doorbells. The thread builds the NvmeQueue (the driver's own queue
 * code) over them; the main thread creates the queue pair on the controller with the rings'
 * IOVAs (an admin command). A controller reset is followed as the controller follows it for its
 * own queues: 'suspend' (send nothing more), 'reset' once the controller stopped (what it held
 * fails with EIO, the rest waits, the rings start over; answered, and only then is the controller
 * enabled again), 'resume' once the pair is re-created over the same rings. When the controller is
 * lost or closed ('lost'), the queue fails everything and the thread's BAR mapping goes (a PCI
 * removal waits for it).
 */
import type { MessagePort } from 'node:worker_threads';
import { DeviceGoneError, InvalidArgumentError, RangeAccessError, UserpciError, type UserpciErrorCode } from '../../errors';
import { constants as C, native } from '../../native/index';
import { Region } from '../../device/region';
import type { RegionBackend } from '../../device/backend';
import { NvmeQueue, type QueueHost, type QueueMemory } from '../../drivers/nvme/queue';
import { NVM_FLUSH, NVM_READ, NVM_WRITE, RW_FUA } from '../../drivers/nvme/registers';
import { UBLK_IO_OP_READ, UBLK_IO_OP_WRITE } from '../../uapi/ublk';
import type { UblkIoDone } from './block-device';
import type { UblkThreadDevice } from './queue-thread';

/** What the main thread gives a queue thread (structured-cloned; `port` transferred). */
export interface NvmeThreadQueueData {
  qid: number;
  depth: number;
  /** The DMA buffer the thread's memory comes from. */
  memfd: number;
  poolIova: number;
  poolBytes: number;
  /** VFIO device fd and BAR0's place in it: offset, size, and the parts that may be mapped. */
  deviceFd: number;
  barOffset: number;
  barSize: number;
  barAreas: { offset: number; size: number }[];
  name: string;
  pageSize: number;
  doorbellStride: number;
  maxTransfer: number;
  maxQueueEntries: number;
  nsid: number;
  blockSize: number;
  blocks: number;
  readOnly: boolean;
  volatileCache: boolean;
  canTrim: boolean;
  canWriteZeroes: boolean;
  /** To the main thread: { rings } once built, { stalled | timedOut | fault }; from it: { created | error | lost }. */
  port: MessagePort;
}

export type FromNvmeThread =
  | { kind: 'rings'; sqIova: number; cqIova: number; entries: number; cqEntries: number }
  | { kind: 'stalled' | 'timedOut' }
  | { kind: 'fault'; message: string; gone: boolean }
  /** Answer to 'reset': done, the queue touches nothing until 'resume' (ok), or it is gone (not ok). */
  | { kind: 'reset'; ok: boolean };

export type ToNvmeThread =
  | { kind: 'created' }
  /** A controller reset: 'suspend' (send nothing more), 'reset' once it stopped (fail what it held with this error, rings start over), 'resume' once the pair is re-created. */
  | { kind: 'suspend' | 'resume' }
  | { kind: 'error' | 'lost' | 'reset'; message: string; code: UserpciErrorCode };

/** Bytes of the DMA buffer a queue thread needs: rings, PRP lists, DSM ranges, the tags' buffers. */
export function nvmeThreadPoolBytes(depth: number, pageSize: number, maxTransfer: number, maxQueueEntries: number, tagBytes: number): number {
  const page = (n: number) => Math.ceil(n / C.PAGE_SIZE) * C.PAGE_SIZE;
  const cqEntries = Math.max(depth + 1, Math.min(Math.max(2 * depth + 1, 256), maxQueueEntries));
  const entries = maxTransfer / pageSize + 1;
  const perPage = pageSize / 8;
  const prpSlot = entries * 8 <= pageSize ? 2 ** Math.ceil(Math.log2(entries * 8)) : Math.ceil(entries / (perPage - 1)) * pageSize;
  return page((depth + 1) * 64) + page(cqEntries * 16) + page(prpSlot * depth) + page(depth * 16) + depth * page(tagBytes) + 4 * C.PAGE_SIZE;
}

/** Pieces of the shared DMA buffer, each mapped on its own (NvmeQueue views a buffer from byte 0). */
class Pool {
  private next = 0;
  private readonly maps: ArrayBuffer[] = [];

  constructor(private readonly d: NvmeThreadQueueData) {}

  alloc(size: number): QueueMemory {
    const bytes = Math.ceil(size / C.PAGE_SIZE) * C.PAGE_SIZE;
    if (this.next + bytes > this.d.poolBytes) throw new UserpciError('ENOMEM', `${this.d.name} queue ${this.d.qid} thread: ${size} bytes more do not fit its ${this.d.poolBytes}-byte DMA buffer`);
    const offset = this.next;
    const buffer = native.mmap(bytes, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED | C.MAP_POPULATE, this.d.memfd, offset);
    this.next += bytes;
    this.maps.push(buffer);
    // The memory goes back with the pool (release()).
    const memory = {
      buffer, iova: this.d.poolIova + offset, freed: false,
      free(): void {
        memory.freed = true;
      },
    };
    return memory;
  }

  release(): void {
    for (const m of this.maps.splice(0)) if (m.byteLength > 0) native.munmap(m);
  }
}

/** BAR0 mapped from the VFIO device fd. */
function barBackend(d: NvmeThreadQueueData, onUnmap: (b: ArrayBuffer) => void): RegionBackend {
  const gone = () => new DeviceGoneError(`${d.name}: the queue thread's BAR mapping is gone`);
  return {
    mapRegion: (_index: number, offset: number, size: number) => native.mmap(size, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, d.deviceFd, d.barOffset + offset),
    unmapRegion: onUnmap,
    regionRead: () => {
      throw gone();
    },
    regionWrite: () => {
      throw gone();
    },
  };
}

class NvmeThreadDevice implements UblkThreadDevice {
  readonly size: number;
  readonly blockSize: number;
  readonly maxRequest: number;
  readonly readOnly: boolean;
  readonly volatileCache: boolean;
  readonly canTrim: boolean;
  readonly canWriteZeroes: boolean;
  private readonly nsid: number;
  private readonly blocks: number;
  private tagMemory: ArrayBuffer | null = null;
  private tagIova = 0;
  private closed = false;

  constructor(
    private readonly d: NvmeThreadQueueData,
    readonly queue: NvmeQueue,
    private readonly pool: Pool,
    private readonly regs: Region,
  ) {
    this.size = d.blocks * d.blockSize;
    this.blockSize = d.blockSize;
    this.maxRequest = d.maxTransfer;
    this.readOnly = d.readOnly;
    this.volatileCache = d.volatileCache;
    this.canTrim = d.canTrim;
    this.canWriteZeroes = d.canWriteZeroes;
    this.nsid = d.nsid;
    this.blocks = d.blocks;
  }

  get doorbells(): number {
    return this.queue.doorbells;
  }

  /** Every tag's buffer comes from one piece of the pool (depth of them, asked in a row). */
  allocIoBuffer(size: number): Uint8Array {
    const bytes = Math.ceil(size / C.PAGE_SIZE) * C.PAGE_SIZE;
    if (this.tagMemory === null) {
      const m = this.pool.alloc(bytes * this.d.depth);
      this.tagMemory = m.buffer;
      this.tagIova = m.iova;
      this.tagNext = 0;
    }
    if (this.tagNext + bytes > this.tagMemory.byteLength) throw new UserpciError('ENOMEM', `${this.d.name} queue ${this.d.qid} thread: more tag buffers than its depth`);
    const view = new Uint8Array(this.tagMemory, this.tagNext, size);
    this.tagNext += bytes;
    return view;
  }

  private tagNext = 0;

  ioBufferHandle(view: Uint8Array): number {
    return view.buffer === this.tagMemory ? this.tagIova + view.byteOffset : -1;
  }

  startIo(op: number, offset: number, length: number, fua: boolean, iova: number, done: UblkIoDone): boolean {
    const write = op === UBLK_IO_OP_WRITE;
    if (iova < 0 || (op !== UBLK_IO_OP_READ && (!write || fua || this.readOnly))) return false;
    const bs = this.blockSize;
    const lba = offset / bs;
    if (!(lba >= 0 && Number.isInteger(lba) && length > 0 && length % bs === 0 && lba + length / bs <= this.blocks)) {
      done(this.rangeError(offset, length));
      return true;
    }
    this.queue.rw(write ? NVM_WRITE : NVM_READ, this.nsid, bs, lba, iova, null, length, 0, done);
    return true;
  }

  plug(): void {
    this.queue.plug();
  }

  unplug(): void {
    this.queue.unplug();
  }

  private rangeError(offset: number, length: number): Error {
    return new RangeAccessError(`${this.d.name} namespace ${this.nsid}: ${length} bytes at ${offset} are not whole blocks inside the namespace`);
  }

  /** The IOVA of a view of a tag buffer (the only memory this device transfers to and from). */
  private iovaOf(view: Uint8Array): number {
    const iova = this.ioBufferHandle(view);
    if (iova < 0) throw new InvalidArgumentError(`${this.d.name} queue ${this.d.qid} thread: only ublk's tag buffers can be transferred`);
    return iova;
  }

  private async rw(opcode: number, offset: number, view: Uint8Array, flags: number): Promise<void> {
    const bs = this.blockSize;
    if (offset % bs !== 0 || view.length % bs !== 0 || offset / bs + view.length / bs > this.blocks) throw this.rangeError(offset, view.length);
    await this.queue.rw(opcode, this.nsid, bs, offset / bs, this.iovaOf(view), null, view.length, flags, null);
  }

  readInto(offset: number, target: Uint8Array): Promise<void> {
    return this.rw(NVM_READ, offset, target, 0);
  }

  read(): Promise<Uint8Array> {
    return Promise.reject(new InvalidArgumentError(`${this.d.name} queue ${this.d.qid} thread: reads go into tag buffers (readInto)`));
  }

  write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    if (this.readOnly) return Promise.reject(new UserpciError('EROFS', `${this.d.name} namespace ${this.nsid} is served read-only`));
    return this.rw(NVM_WRITE, offset, data, fua ? RW_FUA : 0);
  }

  async flush(): Promise<void> {
    await this.queue.command(NVM_FLUSH, this.nsid, 0, 0, 0, 0, 0, 0, 0, 0);
  }

  async trim(offset: number, length: number): Promise<void> {
    const bs = this.blockSize;
    const first = Math.ceil(offset / bs);
    const last = Math.min(Math.floor((offset + length) / bs), this.blocks);
    if (last <= first || !this.canTrim) return;
    for (let lba = first; lba < last; lba += 0xffffffff) await this.queue.deallocate(this.nsid, lba, Math.min(0xffffffff, last - lba), null);
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    const bs = this.blockSize;
    if (offset % bs !== 0 || length % bs !== 0 || (offset + length) / bs > this.blocks) throw this.rangeError(offset, length);
    if (!this.canWriteZeroes) throw new UserpciError('EOPNOTSUPP', `${this.d.name} has no Write Zeroes`);
    const first = offset / bs;
    const last = first + length / bs;
    for (let lba = first; lba < last; lba += 0x10000) await this.queue.writeZeroes(this.nsid, bs, lba, Math.min(0x10000, last - lba), null);
    if (fua) await this.flush();
  }

  /** A controller reset begins: send nothing more (requests wait); completions still count until the controller stops. */
  suspend(): void {
    if (!this.queue.destroyed) this.queue.suspend();
  }

  /**
   * The controller has stopped (what it does to its own queues in recover()): the commands it
   * held fail with `error`, requests not yet sent keep waiting, the rings start over. False when
   * the queue is gone already.
   */
  reset(error: Error): boolean {
    if (this.queue.destroyed) return false;
    this.queue.suspend();
    this.queue.abortAll(error, false);
    this.queue.resetRings();
    return true;
  }

  /** The pair is on the controller again, over the same rings: send what waited. */
  resume(): void {
    if (!this.queue.destroyed) this.queue.resume();
  }

  /** The controller is gone or closed: fail everything, let the BAR go. */
  lose(error: Error): void {
    this.queue.destroy(error);
    this.regs.revoke(error.message);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.lose(new UserpciError('ECANCELED', `${this.d.name} queue ${this.d.qid}: the ublk queue thread closed`));
    this.pool.release();
    this.d.port.close();
  }
}

/** UblkThreadDeviceFactory: builds the queue on this thread and waits for the main thread to create it on the controller. */
export async function createUblkDevice(data: unknown): Promise<UblkThreadDevice> {
  const d = data as NvmeThreadQueueData;
  const pool = new Pool(d);
  let regs: Region | null = null;
  try {
    const backend = barBackend(d, (b) => {
      if (b.byteLength > 0) native.munmap(b);
    });
    const info = { index: 0, size: d.barSize, readable: true, writable: true, mappable: true, sparseAreas: d.barAreas.length > 0 ? d.barAreas : undefined };
    regs = new Region(backend, info, `${d.name} BAR0 (queue ${d.qid} thread)`);
    let queue: NvmeQueue | null = null;
    const host: QueueHost = {
      name: d.name,
      regs,
      pageSize: d.pageSize,
      maxTransfer: d.maxTransfer,
      maxQueueEntries: d.maxQueueEntries,
      doorbellStride: d.doorbellStride,
      allocDma: (size) => pool.alloc(size),
      queueTimedOut: () => d.port.postMessage({ kind: 'timedOut' } satisfies FromNvmeThread),
      queueStalled: () => d.port.postMessage({ kind: 'stalled' } satisfies FromNvmeThread),
      queueFault: (_q, error) => {
        d.port.postMessage({ kind: 'fault', message: error.message, gone: error instanceof DeviceGoneError } satisfies FromNvmeThread);
        queue?.destroy(error);
      },
    };
    queue = new NvmeQueue(host, d.qid, d.depth, {});
    const q = queue;
    const created = new Promise<void>((resolve, reject) => {
      d.port.once('message', (m: ToNvmeThread) => {
        if (m.kind === 'created') resolve();
        else if (m.kind === 'error' || m.kind === 'lost' || m.kind === 'reset') reject(new UserpciError(m.code, m.message));
        else reject(new UserpciError('EIO', `${d.name} queue ${d.qid} thread: '${m.kind}' before the queue pair was created`));
      });
    });
    d.port.postMessage({ kind: 'rings', sqIova: q.sqIova, cqIova: q.cqIova, entries: q.entries, cqEntries: q.cqEntries } satisfies FromNvmeThread);
    await created;
    const device = new NvmeThreadDevice(d, q, pool, regs);
    d.port.on('message', (m: ToNvmeThread) => {
      if (m.kind === 'lost') device.lose(m.code === 'ENODEV' ? new DeviceGoneError(m.message) : new UserpciError(m.code, m.message));
      else if (m.kind === 'suspend') device.suspend();
      else if (m.kind === 'reset') d.port.postMessage({ kind: 'reset', ok: device.reset(new UserpciError(m.code, m.message)) } satisfies FromNvmeThread);
      else if (m.kind === 'resume') device.resume();
    });
    // The port must not keep the thread alive by itself.
    d.port.unref();
    return device;
  } catch (e) {
    regs?.revoke('the queue thread could not start');
    pool.release();
    d.port.close();
    throw e;
  }
}
