/**
 * One ublk queue served on a thread of its own (see thread-server.ts): the thread builds its
 * device (a module's export, run here), is pinned to the CPUs blk-mq maps to its queue, owns the
 * queue's io_uring (the kernel takes a queue's commands from one task), its tags and its
 * buffers, and serves on its own event loop: a request submitted on one of those CPUs is served
 * on the same CPU, with no cross-CPU wake-up in between.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { native } from '../../native/index';
import type { UblkBlockDevice } from './block-device';
import { UblkQueue } from './queue';
import type { FromQueueThread, QueueThreadData, ToQueueThread } from './thread-protocol';

/** A device built on a queue thread; close() (when it has one) runs after the queue closed. */
export type UblkThreadDevice = UblkBlockDevice & { close?(): void | Promise<void>; readonly doorbells?: number };

/** What the spec's export is: data as the main thread gave it for this queue. */
export type UblkThreadDeviceFactory = (data: unknown, queue: { qid: number }) => UblkThreadDevice | Promise<UblkThreadDevice>;

const port = parentPort!;
const d = workerData as QueueThreadData;
let device: UblkThreadDevice | null = null;
let queue: UblkQueue | null = null;
let closing = false;

function send(m: FromQueueThread): void {
  port.postMessage(m);
}

function fail(e: unknown): void {
  const err = e as { message?: string; code?: unknown };
  send({ kind: 'error', message: err?.message ?? String(e), code: typeof err?.code === 'string' ? err.code : undefined });
}

async function build(): Promise<void> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const mod = require(d.module) as Record<string, unknown>;
  const factory = mod[d.exportName];
  if (typeof factory !== 'function') throw new Error(`${d.module} exports no function ${d.exportName}`);
  device = await (factory as UblkThreadDeviceFactory)(d.data, { qid: d.qid });
  send({
    kind: 'device',
    geometry: {
      size: device.size, blockSize: device.blockSize, maxRequest: device.maxRequest, readOnly: device.readOnly,
      volatileCache: device.volatileCache ?? false, canTrim: device.canTrim, canWriteZeroes: device.canWriteZeroes,
    },
  });
}

function serve(m: Extract<ToQueueThread, { kind: 'serve' }>): void {
  if (m.cpus.length > 0) native.setThreadAffinity(Int32Array.from(m.cpus));
  queue = new UblkQueue(d.qid, m.depth, m.cdevFd, device!, m.maxIoBytes, fail, m.idleSpinUs, m.deferTaskrun);
  queue.start();
  send({ kind: 'serving', cpus: m.cpus });
}

async function stop(aborted: boolean): Promise<void> {
  if (closing) return;
  closing = true;
  const q = queue;
  if (q) {
    await q.idle();
    if (aborted) await q.aborted();
  }
  const stats = q ? { ...q.stats, enters: q.ring.enters, doorbells: 0 } : null;
  try {
    q?.close();
  } finally {
    try {
      await device?.close?.();
    } finally {
      if (stats) stats.doorbells = device?.doorbells ?? 0;
      send({ kind: 'closed', stats });
      port.close();
    }
  }
}

port.on('message', (m: ToQueueThread) => {
  try {
    if (m.kind === 'serve') serve(m);
    else if (m.kind === 'stop') stop(m.aborted).catch(fail);
  } catch (e) {
    fail(e);
  }
});

build().catch(fail);
