/**
 * What the main thread and a vector's interrupt thread (thread-worker.ts) agree on; a module of
 * its own, since loading thread-worker.ts starts the thread's loop.
 */

/** Added to the eventfd to stop the thread: far above any count of real interrupts between two reads. */
export const STOP_TOKEN = 2 ** 32;

export interface ThreadWorkerData {
  /** The thread's own dup of the vector's eventfd (blocking while the thread runs). */
  fd: number;
  /** Float64Array[1] shared with the vector: interrupts taken here. */
  count: SharedArrayBuffer;
  module: string;
  exportName: string | undefined;
  data: unknown;
  /** CPUs to run on; none: wherever the scheduler puts the thread. */
  cpus: number[] | undefined;
  /** The caller chose `cpus` (a failure to pin is then an error), rather than the IRQ's affinity. */
  cpusAsked: boolean;
  /** SCHED_FIFO at this priority; none: the default time-sharing policy. */
  realtimePriority: number | undefined;
}
