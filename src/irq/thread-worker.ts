/**
 * The dedicated interrupt thread of a vector in 'thread' delivery (see interrupt-vector.ts):
 * pinned to the CPUs that take its interrupt (when known), SCHED_FIFO when asked, it blocks in
 * the kernel in read(2) on the vector's eventfd (made blocking for the purpose) and calls the
 * handler as soon as the read returns: one system call per interrupt, as a C driver's thread, and nothing allocated.
 * It is told to end by a count of STOP_TOKEN or more on the same eventfd; the thread owns (and
 * finally closes) the fd it was given.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { native, constants } from '../native/index';
import { STOP_TOKEN, type ThreadWorkerData } from './thread-protocol';

type Handler = (count: number, data: unknown) => void;

function loadHandler(d: ThreadWorkerData): Handler {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const mod = require(d.module) as Record<string, unknown> | Handler;
  const fn = d.exportName !== undefined
    ? (mod as Record<string, unknown>)[d.exportName]
    : typeof mod === 'function' ? mod : ((mod as Record<string, unknown>).handler ?? (mod as Record<string, unknown>).default);
  if (typeof fn !== 'function') throw new Error(`${d.module} exports no function ${d.exportName ?? 'handler (or default)'}`);
  return fn as Handler;
}

function pin(d: ThreadWorkerData): void {
  if (d.cpus === undefined || d.cpus.length === 0) return;
  try {
    native.setThreadAffinity(Int32Array.from(d.cpus));
  } catch (err) {
    if (d.cpusAsked) throw new Error(`cannot run on CPUs ${d.cpus.join(',')}: ${(err as Error).message}`);
    // The IRQ's CPUs are a hint (one may have gone offline): the thread runs unpinned.
  }
}

/** SCHED_FIFO when asked (a failure, EPERM most often, keeps its code: the switch fails with it). */
function schedule(d: ThreadWorkerData): void {
  if (d.realtimePriority === undefined) return;
  try {
    native.setThreadScheduler(constants.SCHED_FIFO, d.realtimePriority);
  } catch (err) {
    const e = new Error(`cannot run SCHED_FIFO at priority ${d.realtimePriority}: ${(err as Error).message}`) as Error & { code?: unknown };
    e.code = (err as { code?: unknown }).code;
    throw e;
  }
}

function run(d: ThreadWorkerData): void {
  const port = parentPort!;
  const fd = d.fd;
  const total = new Float64Array(d.count);
  const data = d.data;
  try {
    pin(d);
    const handler = loadHandler(d);
    schedule(d);
    port.postMessage('ready');
    for (;;) {
      let n = native.eventfdTake(fd);
      const stop = n >= STOP_TOKEN;
      if (stop) n %= STOP_TOKEN; // interrupts that came with the stop are still this thread's
      if (n > 0) {
        total[0] = total[0]! + n;
        try {
          handler(n, data);
        } catch (err) {
          port.postMessage({ error: err instanceof Error ? err.message : String(err) });
        }
      }
      if (stop) break;
    }
  } finally {
    native.close(fd);
  }
}

run(workerData as ThreadWorkerData);
