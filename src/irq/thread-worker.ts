/**
 * The dedicated interrupt thread of a vector in 'thread' delivery (see interrupt-vector.ts):
 * blocks in the kernel (poll(2) in the addon) on the vector's eventfd and a stop eventfd, and
 * runs the handler on this thread as soon as the interrupt arrives. Nothing is allocated per
 * interrupt here; the thread owns (and finally closes) both fds it was given.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { native } from '../native/index';

export interface ThreadWorkerData {
  /** The thread's own dup of the vector's eventfd. */
  fd: number;
  stopFd: number;
  /** Float64Array[1] shared with the vector: interrupts taken here. */
  count: SharedArrayBuffer;
  module: string;
  exportName: string | undefined;
  data: unknown;
}

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

function run(d: ThreadWorkerData): void {
  const port = parentPort!;
  const fds = new Int32Array([d.fd, d.stopFd]);
  const counts = new Float64Array(2);
  const total = new Float64Array(d.count);
  try {
    const handler = loadHandler(d);
    port.postMessage('ready');
    for (;;) {
      native.eventfdWait(fds, counts, -1);
      if (counts[1] !== 0) break;
      const n = counts[0]!;
      if (n === 0) continue;
      total[0] = total[0]! + n;
      try {
        handler(n, d.data);
      } catch (err) {
        port.postMessage({ error: err instanceof Error ? err.message : String(err) });
      }
    }
  } finally {
    native.close(d.fd);
    native.close(d.stopFd);
  }
}

run(workerData as ThreadWorkerData);
