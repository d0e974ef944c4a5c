/**
 * An NVMe namespace served over ublk: one NvmeBlockDevice per NVMe I/O queue pair (one ublk
 * queue each), with the tags' I/O buffers in the controller's DMA memory, so reads and writes
 * go zero copy between the kernel's copy and the device.
 */
import { MessageChannel } from 'node:worker_threads';
import * as os from 'node:os';
import type { NvmeController, ReservedQueueOwner } from '../../drivers/nvme/controller';
import { VfioBackend } from '../../backends/vfio/vfio-backend';
import { checkInteger, optionsObject } from '../../arguments';
import { DeviceGoneError, UserpciError, toErrorCode, type UserpciErrorCode } from '../../errors';
import type { NvmeNamespace } from '../../drivers/nvme/namespace';
import type { NvmeQueue } from '../../drivers/nvme/queue';
import type { DmaBuffer } from '../../dma/dma-space';
import type { MessagePort } from 'node:worker_threads';
import { NvmeBlockDevice } from '../nbd/nvme-device';
import { UBLK_IO_OP_READ, UBLK_IO_OP_WRITE, UBLK_MAX_NR_QUEUES } from '../../uapi/ublk';
import type { UblkBlockDevice, UblkIoDone } from './block-device';
import { UblkServer, type UblkServerOptions } from './server';
import { UblkThreadServer, type UblkThreadServerOptions } from './thread-server';
import { nvmeThreadPoolBytes, type FromNvmeThread, type NvmeThreadQueueData, type ToNvmeThread } from './nvme-thread';

export class NvmeUblkDevice extends NvmeBlockDevice implements UblkBlockDevice {
  readonly volatileCache: boolean;
  private readonly dma = new Map<ArrayBuffer, DmaBuffer>();
  private readonly q: NvmeQueue | undefined;

  constructor(namespace: NvmeNamespace, queue?: NvmeQueue, readOnly = false) {
    super(namespace, { queue, readOnly });
    this.q = queue;
    this.volatileCache = namespace.controller.identity.volatileWriteCache;
  }

  allocIoBuffer(size: number): Uint8Array {
    const buf = this.namespace.controller.allocBuffer(size);
    this.dma.set(buf.buffer, buf);
    return new Uint8Array(buf.buffer, 0, size);
  }

  freeIoBuffer(view: Uint8Array): void {
    const buf = this.dma.get(view.buffer as ArrayBuffer);
    if (!buf) return;
    this.dma.delete(view.buffer as ArrayBuffer);
    // Freed already when the device went away (removal releases all its DMA memory).
    if (this.namespace.controller.isClosed) return;
    try {
      buf.free();
    } catch {
      // released with its device
    }
  }

  /** The buffer's IOVA (-1 for memory that is not ours: such requests take the promise path). */
  ioBufferHandle(view: Uint8Array): number {
    const buf = this.dma.get(view.buffer as ArrayBuffer);
    return buf ? buf.iova + view.byteOffset : -1;
  }

  /**
   * Reads and plain writes go straight to the NVMe queue through the driver's callback API
   * (namespace.submit): the tag's `done` is the completion callback. FUA writes, flush, discard
   * and write zeroes are rare and take the promise methods.
   */
  startIo(op: number, offset: number, length: number, fua: boolean, iova: number, done: UblkIoDone): boolean {
    const q = this.q;
    const write = op === UBLK_IO_OP_WRITE;
    if (q === undefined || iova < 0 || (op !== UBLK_IO_OP_READ && (!write || fua || this.readOnly))) return false;
    const bs = this.blockSize;
    if (offset % bs !== 0) return false;
    try {
      this.namespace.submit(write, offset / bs, iova, length, q, done);
    } catch (e) {
      // Validation (a request past the end, a bad length): refused before it reached the queue.
      done(e as Error);
    }
    return true;
  }

  plug(): void {
    this.q?.plug();
  }

  unplug(): void {
    this.q?.unplug();
  }

  readInto(offset: number, target: Uint8Array): Promise<void> {
    const bs = this.blockSize;
    if (offset % bs !== 0 || target.length % bs !== 0) {
      return this.read(offset, target.length).then((d) => target.set(d));
    }
    return this.namespace.read(offset / bs, target, this.q);
  }
}

/**
 * Serves `namespace` as /dev/ublkbN with one ublk queue per NVMe I/O queue pair: the
 * controller's existing pairs, plus new ones of `depth` up to `queues` (default 1; completing by
 * MSI-X with `interrupts`, else polled). The driver
 * grants at most one ublk queue per CPU; pairs beyond that go unused.
 */
export async function serveNamespaceOverUblk(
  controller: NvmeController,
  namespace: NvmeNamespace,
  options: UblkServerOptions & { queues?: number; readOnly?: boolean; interrupts?: boolean } = {},
): Promise<UblkServer> {
  options = optionsObject(options, 'ublk options');
  const want = options.queues ?? 1;
  checkInteger(want, 1, UBLK_MAX_NR_QUEUES, 'ublk queues');
  const depth = options.depth ?? 64;
  const queues = [...controller.queues];
  while (queues.length < want) queues.push(await controller.createQueuePair({ depth, interrupts: options.interrupts }));
  const devices = queues.slice(0, want).map((q) => new NvmeUblkDevice(namespace, q, options.readOnly));
  return UblkServer.start(devices, { ...options, depth: Math.min(depth, ...queues.slice(0, want).map((q) => q.depth)) });
}

/**
 * Serves `namespace` as /dev/ublkbN with each ublk queue on a thread of its own (UblkThreadServer:
 * pinned to the CPUs blk-mq maps to the queue; one queue per CPU by default), each thread driving
 * an NVMe I/O queue pair of its own, polled (see nvme-thread.ts). Kernel VFIO only (the thread
 * maps BAR0 from the VFIO device fd). A controller reset (controller.recover() or reinitialize())
 * is followed as by the one-loop server: the NVMe commands in flight fail (EIO to the kernel),
 * requests not yet sent wait and go out once each thread's queue pair is re-created over its
 * rings. A lost or closed controller fails the threads' I/O (EIO) until the server is closed.
 */
export async function serveNamespaceOverUblkThreads(
  controller: NvmeController,
  namespace: NvmeNamespace,
  options: Omit<UblkThreadServerOptions, 'afterClose'> & { readOnly?: boolean } = {},
): Promise<UblkThreadServer> {
  const backend = controller.device.backend;
  if (!(backend instanceof VfioBackend)) throw new UserpciError('ENOTSUP', `${controller.name}: ublk queue threads need the device through kernel VFIO (they map its BAR from the VFIO device fd)`);
  const want = Math.min(options.queues ?? os.cpus().length, controller.grantedQueuePairs - controller.queues.length);
  if (want < 1) throw new UserpciError('ENOSPC', `${controller.name}: no NVMe I/O queue pair left for the ublk queue threads`);
  const depth = Math.min(options.depth ?? 64, controller.maxQueueEntries - 1);
  const maxIo = options.maxIoBytes ?? Math.min(512 << 10, Math.floor(namespace.maxTransfer / 4096) * 4096);
  const layout = backend.regionLayout(0);
  const identity = controller.identity;
  const pools: DmaBuffer[] = [];
  const qids: number[] = [];
  const ports: MessagePort[] = [];
  const cleanup = async () => {
    for (const p of ports.splice(0)) p.close();
    for (const qid of qids.splice(0)) await controller.deleteReservedQueuePair(qid).catch(() => undefined);
    for (const b of pools.splice(0)) {
      if (!controller.isClosed && !b.freed) {
        try {
          b.free();
        } catch {
          // released with its device
        }
      }
    }
  };
  const perQueue = (): { data: unknown; transfer: MessagePort[] } => {
    const channel = new MessageChannel();
    const mine = channel.port1;
    ports.push(mine);
    // A controller reset: the thread's queue follows it as the controller's own queues do (see nvme-thread.ts).
    let portClosed = false;
    let resetWaiter: { resolve: () => void; reject: (e: Error) => void } | null = null;
    const threadGone = () => new UserpciError('EIO', `${controller.name}: the ublk queue thread of an NVMe queue pair is gone`);
    mine.once('close', () => {
      portClosed = true;
      resetWaiter?.reject(threadGone());
      resetWaiter = null;
    });
    const owner: ReservedQueueOwner = {
      lost: (error) => mine.postMessage({ kind: 'lost', message: error.message, code: codeOf(error) } satisfies ToNvmeThread),
      suspend: () => mine.postMessage({ kind: 'suspend' } satisfies ToNvmeThread),
      reset: (error) => new Promise<void>((resolve, reject) => {
        if (portClosed) {
          reject(threadGone());
          return;
        }
        resetWaiter = { resolve, reject };
        mine.postMessage({ kind: 'reset', message: error.message, code: codeOf(error) } satisfies ToNvmeThread);
      }),
      resume: () => mine.postMessage({ kind: 'resume' } satisfies ToNvmeThread),
    };
    const nqid = controller.reserveQueuePair(owner);
    qids.push(nqid);
    const poolBytes = nvmeThreadPoolBytes(depth, controller.pageSize, maxIo, controller.maxQueueEntries, maxIo);
    const pool = controller.allocBuffer(poolBytes, 'never');
    pools.push(pool);
    const ref = { qid: nqid };
    mine.on('message', (m: FromNvmeThread) => {
      if (m.kind === 'rings') {
        controller.createReservedQueuePair(nqid, m).then(
          () => mine.postMessage({ kind: 'created' } satisfies ToNvmeThread),
          (e: Error) => mine.postMessage({ kind: 'error', message: e.message, code: codeOf(e) } satisfies ToNvmeThread),
        );
      } else if (m.kind === 'reset') {
        const w = resetWaiter;
        resetWaiter = null;
        if (m.ok) w?.resolve();
        else w?.reject(threadGone());
      } else if (m.kind === 'stalled') controller.queueStalled(ref);
      else if (m.kind === 'timedOut') controller.queueTimedOut(ref);
      else if (m.kind === 'fault') controller.queueFault(ref, m.gone ? new DeviceGoneError(m.message) : new Error(m.message));
    });
    mine.unref();
    const data: NvmeThreadQueueData = {
      qid: nqid, depth, memfd: pool.fd, poolIova: pool.iova, poolBytes, deviceFd: backend.deviceFd, barOffset: layout.offset, barSize: layout.size,
      barAreas: layout.sparseAreas ?? [], name: controller.name, pageSize: controller.pageSize, doorbellStride: controller.doorbellStride,
      maxTransfer: maxIo, maxQueueEntries: controller.maxQueueEntries, nsid: namespace.nsid, blockSize: namespace.blockSize, blocks: namespace.blocks,
      readOnly: options.readOnly ?? false, volatileCache: identity.volatileWriteCache, canTrim: namespace.supportsTrim, canWriteZeroes: identity.supportsWriteZeroes,
      port: channel.port2,
    };
    return { data, transfer: [channel.port2] };
  };
  try {
    return await UblkThreadServer.start(
      { module: require.resolve('./nvme-thread'), export: 'createUblkDevice', data: perQueue },
      { ...options, queues: want, depth, maxIoBytes: maxIo, afterClose: cleanup },
    );
  } catch (e) {
    await cleanup();
    throw e;
  }
}

/** The error's code as the thread's UserpciError takes it (another code, or none: EIO). */
function codeOf(error: Error): UserpciErrorCode {
  return toErrorCode((error as { code?: string }).code);
}
