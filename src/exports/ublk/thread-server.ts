/**
 * UblkThreadServer: a ublk device whose queues are each served on a thread of their own, pinned
 * to the CPUs blk-mq maps to that queue (GET_QUEUE_AFFINITY), as ublksrv does. With one queue
 * per CPU (the default) a request is queued on the submitting CPU's queue and served by a thread
 * on that same CPU: the hand-off from the client to the server and back is a same-CPU switch,
 * not a wake-up of another CPU (what a one-event-loop server pays at QD1 on every request).
 *
 * Each thread builds its own device (the export of a module, run on the thread) and owns its
 * queue's io_uring, tags and buffers; the main thread keeps the control commands (ADD_DEV,
 * SET_PARAMS, START_DEV, STOP_DEV, DEL_DEV) and the reclaim of dead servers' leftovers.
 *
 *   const server = await UblkThreadServer.start({ module: require.resolve('./my-device'), data: (qid) => ({ qid }) });
 *   await server.close();
 */
import { EventEmitter } from 'node:events';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker, type Transferable } from 'node:worker_threads';
import { optionsObject } from '../../arguments';
import { InvalidArgumentError, UserpciError, type UserpciErrorCode } from '../../errors';
import { constants as C, native } from '../../native';
import * as U from '../../uapi/ublk';
import { UblkControl, type UblkDeviceInfo } from './control';
import { UBLK_OWNER_MARK, openCdev, reclaimDeadOwned, reclaimLeftover, type ReclaimedDevice, type UblkServerOptions } from './server';
import type { FromQueueThread, QueueDeviceGeometry, QueueThreadData, QueueThreadStats, ToQueueThread } from './thread-protocol';

export interface UblkThreadDeviceSpec {
  /** Absolute path of the module the threads load (require). */
  module: string;
  /** Its export that builds a queue's device (UblkThreadDeviceFactory); default 'createUblkDevice'. */
  export?: string;
  /** What queue `qid`'s factory gets (structured-cloned; `transfer` lists what moves, e.g. a MessagePort). */
  data?: (qid: number) => { data: unknown; transfer?: Transferable[] };
}

/** UblkServer's options (the same meaning, per queue thread), and what only this server has. */
export interface UblkThreadServerOptions extends UblkServerOptions {
  /** Queues, one thread each; default one per CPU (the driver grants at most that many). */
  queues?: number;
  /** Pin each thread to its queue's CPUs (default true). */
  pin?: boolean;
  /** Runs at the end of close(), after the device was deleted (the caller's own teardown). */
  afterClose?: () => Promise<void>;
}

interface QueueThread {
  qid: number;
  worker: Worker;
  geometry: QueueDeviceGeometry | null;
  cpus: number[];
  stats: QueueThreadStats | null;
  exited: Promise<void>;
  alive: boolean;
  /** Waiters for the next message of a kind (start-up steps, closed). */
  waiters: Map<string, (m: FromQueueThread) => void>;
}

export class UblkThreadServer extends EventEmitter {
  private closing: Promise<void> | null = null;
  private closedFlag = false;
  /** The first error a queue thread reported (also emitted as 'queue-error' when listened to). */
  firstError: Error | null = null;

  private constructor(
    readonly info: UblkDeviceInfo,
    private readonly control: UblkControl,
    private readonly cdevFd: number,
    private readonly threads: QueueThread[],
    readonly reclaimed: ReclaimedDevice[],
    private readonly afterClose: (() => Promise<void>) | undefined,
  ) {
    super();
    for (const t of threads) {
      void t.exited.then(() => {
        // A thread that ended by itself leaves its queue unserved: take the disk down rather than hang its clients.
        if (!this.closing) {
          this.noteError(new UserpciError('EIO', `ublk queue ${t.qid}: its thread ended`));
          void this.close().catch(() => undefined);
        }
      });
    }
  }

  get id(): number {
    return this.info.devId;
  }

  get diskPath(): string {
    return `/dev/ublkb${this.info.devId}`;
  }

  /** Per queue: the CPUs its thread runs on (empty: not pinned). */
  get queueCpus(): number[][] {
    return this.threads.map((t) => t.cpus);
  }

  /** Per queue: the counters its thread sent when it closed (null before close). */
  get queueStats(): (QueueThreadStats | null)[] {
    return this.threads.map((t) => t.stats);
  }

  /** Requests served, over all queues (known once closed). */
  get requests(): number {
    return this.threads.reduce((n, t) => n + (t.stats?.requests ?? 0), 0);
  }

  static async start(spec: UblkThreadDeviceSpec, options: UblkThreadServerOptions = {}): Promise<UblkThreadServer> {
    options = optionsObject(options, 'ublk options');
    const want = options.queues ?? os.cpus().length;
    if (!Number.isInteger(want) || want < 1 || want > U.UBLK_MAX_NR_QUEUES) throw new InvalidArgumentError(`ublk: 1..${U.UBLK_MAX_NR_QUEUES} queues, got ${want}`);
    const depth = options.depth ?? 64;
    if (!Number.isInteger(depth) || depth < 1 || depth > U.UBLK_MAX_QUEUE_DEPTH) throw new InvalidArgumentError(`ublk: depth must be 1..${U.UBLK_MAX_QUEUE_DEPTH}, got ${depth}`);
    if (typeof spec?.module !== 'string' || !path.isAbsolute(spec.module)) throw new InvalidArgumentError('ublk: a thread device spec needs the absolute path of its module');
    const threads: QueueThread[] = [];
    const control = UblkControl.open();
    let info: UblkDeviceInfo | null = null;
    let cdevFd = -1;
    try {
      for (let qid = 0; qid < want; qid++) threads.push(spawn(qid, spec));
      const geometries = await Promise.all(threads.map((t) => expect(t, 'device').then((m) => (t.geometry = (m as { geometry: QueueDeviceGeometry }).geometry))));
      const first = geometries[0]!;
      for (const g of geometries) {
        if (g.size !== first.size || g.blockSize !== first.blockSize) throw new InvalidArgumentError('ublk: every queue must serve the same disk (size and block size differ)');
      }
      const bs = first.blockSize;
      if (!(bs >= 512 && bs <= C.PAGE_SIZE && (bs & (bs - 1)) === 0)) throw new InvalidArgumentError(`ublk: block size ${bs} is not a power of two in 512..${C.PAGE_SIZE}`);
      if (first.size % bs !== 0 || first.size === 0) throw new InvalidArgumentError(`ublk: size ${first.size} is not a positive multiple of ${bs}`);
      const maxRequest = Math.min(...geometries.map((g) => g.maxRequest));
      const maxIo = options.maxIoBytes ?? Math.min(512 << 10, Math.floor(maxRequest / 4096) * 4096);
      if (!Number.isInteger(maxIo) || maxIo < 4096 || maxIo % 4096 !== 0 || maxIo > maxRequest) {
        throw new InvalidArgumentError(`ublk: maxIoBytes must be a multiple of 4096 in 4096..${maxRequest}, got ${maxIo}`);
      }
      const features = await control.features();
      if (!(features & U.UBLK_F_CMD_IOCTL_ENCODE)) throw new UserpciError('ENOTSUP', 'ublk: this driver lacks ioctl-encoded commands (Linux 6.1 or later needed)');
      const reclaimed = options.reclaim === false ? [] : await reclaimDeadOwned(control);
      if (options.id !== undefined) await reclaimLeftover(control, options.id);
      info = await control.add({
        devId: options.id ?? -1, queues: threads.length, depth, maxIoBytes: maxIo, flags: U.UBLK_F_CMD_IOCTL_ENCODE,
        serverFlagsHigh: UBLK_OWNER_MARK, serverFlagsLow: process.pid,
      });
      const volatileCache = options.writeCache ?? first.volatileCache;
      await control.setParams(info.devId, {
        logicalBlockSize: bs, physicalBlockSize: bs, size: first.size, maxIoBytes: info.maxIoBytes, readOnly: first.readOnly,
        volatileCache, fua: volatileCache,
        maxDiscardBytes: first.canTrim ? Math.floor(Math.min(maxRequest, 1 << 30) / bs) * bs : 0,
        maxWriteZeroesBytes: first.canWriteZeroes ? Math.floor(Math.min(maxRequest, 1 << 30) / bs) * bs : 0,
        discardGranularity: bs,
      });
      // The driver may grant fewer queues than asked: the extra threads close unserved.
      for (const t of threads.splice(info.queues)) await stopThread(t, false);
      for (const t of threads) t.cpus = options.pin === false ? [] : await control.queueAffinity(info.devId, t.qid);
      cdevFd = await openCdev(info.devId);
      for (const t of threads) {
        post(t, { kind: 'serve', cdevFd, depth: info.depth, maxIoBytes: info.maxIoBytes, cpus: t.cpus, idleSpinUs: options.idleSpinUs ?? 0, deferTaskrun: options.deferTaskrun ?? false });
      }
      await Promise.all(threads.map((t) => expect(t, 'serving')));
      // START_DEV waits for every tag's fetch, and its partition scan reads through the threads.
      const started = control.start(info.devId, process.pid);
      await Promise.race([started, ...threads.map((t) => expect(t, 'never'))]);
      for (const t of threads) t.waiters.delete('never');
      const server = new UblkThreadServer(info, control, cdevFd, threads, reclaimed, options.afterClose);
      for (const t of threads) listenErrors(t, server);
      return server;
    } catch (e) {
      if (info) await control.stop(info.devId).catch(() => undefined);
      await Promise.all(threads.map((t) => stopThread(t, false)));
      if (cdevFd >= 0) native.close(cdevFd);
      if (info) await control.delete(info.devId).catch(() => undefined);
      control.close();
      await options.afterClose?.().catch(() => undefined);
      throw e;
    }
  }

  /** @internal */
  noteError(e: Error): void {
    this.firstError ??= e;
    if (this.listenerCount('queue-error') > 0) this.emit('queue-error', e);
  }

  /** STOP_DEV (the disk goes; requests in flight finish first), every thread closes its queue and device, then DEL_DEV. Idempotent. */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closing = (async () => {
      const id = this.info.devId;
      let error: unknown = null;
      try {
        await this.control.stop(id);
      } catch (e) {
        error = e;
      }
      // STOP_DEV aborts every fetch; do not wait for that on a device that never got that far.
      await Promise.all(this.threads.map((t) => stopThread(t, !error)));
      native.close(this.cdevFd);
      try {
        await this.control.delete(id);
      } catch (e) {
        error ??= e;
      }
      this.control.close();
      try {
        await this.afterClose?.();
      } catch (e) {
        error ??= e;
      }
      this.closedFlag = true;
      this.emit('close');
      if (error) throw error;
    })();
    return this.closing;
  }

  get isClosed(): boolean {
    return this.closedFlag;
  }
}

function spawn(qid: number, spec: UblkThreadDeviceSpec): QueueThread {
  const given = spec.data?.(qid) ?? { data: undefined };
  const workerData: QueueThreadData = { qid, module: spec.module, exportName: spec.export ?? 'createUblkDevice', data: given.data };
  const worker = new Worker(path.join(__dirname, 'queue-thread.js'), { workerData, transferList: given.transfer });
  const t: QueueThread = { qid, worker, geometry: null, cpus: [], stats: null, alive: true, waiters: new Map(), exited: Promise.resolve() };
  t.exited = new Promise<void>((resolve) => worker.once('exit', () => {
    t.alive = false;
    const gone: FromQueueThread = { kind: 'error', message: `ublk queue ${qid}: the thread ended`, code: 'EIO' };
    for (const w of [...t.waiters.values()]) w(gone);
    t.waiters.clear();
    resolve();
  }));
  // An uncaught error ends the thread: 'exit' follows and fails whatever waits on it.
  worker.on('error', () => undefined);
  worker.on('message', (m: FromQueueThread) => {
    if (m.kind === 'closed') t.stats = m.stats;
    // An error fails a start-up step; once serving, errors are noted (listenErrors), not waited for.
    const w = t.waiters.get(m.kind) ?? (m.kind === 'error' ? (t.waiters.get('device') ?? t.waiters.get('serving') ?? t.waiters.get('never')) : undefined);
    if (w) {
      for (const [k, v] of t.waiters) if (v === w) t.waiters.delete(k);
      w(m);
    }
  });
  return t;
}

function post(t: QueueThread, m: ToQueueThread): void {
  if (t.alive) t.worker.postMessage(m);
}

/** The thread's next message of `kind`; rejects on an error it reports (or its end) first. */
function expect(t: QueueThread, kind: FromQueueThread['kind'] | 'never'): Promise<FromQueueThread> {
  return new Promise((resolve, reject) => {
    if (!t.alive) {
      reject(new UserpciError('EIO', `ublk queue ${t.qid}: the thread ended`));
      return;
    }
    t.waiters.set(kind, (m) => {
      if (m.kind === 'error') reject(new UserpciError((m.code ?? 'EIO') as UserpciErrorCode, `ublk queue ${t.qid} thread: ${m.message}`));
      else resolve(m);
    });
  });
}

function listenErrors(t: QueueThread, server: UblkThreadServer): void {
  t.worker.on('message', (m: FromQueueThread) => {
    if (m.kind === 'error') server.noteError(new UserpciError((m.code ?? 'EIO') as UserpciErrorCode, `ublk queue ${t.qid} thread: ${m.message}`));
  });
}

/** Tells a thread to finish, waits for its answer (or its end), then ends it; no timeout: a queue still holding tags would keep DEL_DEV waiting anyway. */
async function stopThread(t: QueueThread, aborted: boolean): Promise<void> {
  if (!t.alive) return;
  const closed = expect(t, 'closed').catch(() => undefined);
  post(t, { kind: 'stop', aborted });
  await closed;
  await t.worker.terminate().catch(() => undefined);
  await t.exited;
}
