/**
 * What the ublk server's main thread and a queue thread (queue-thread.ts) agree on; a module of
 * its own, since loading queue-thread.ts starts the thread's work.
 */

export interface QueueThreadData {
  qid: number;
  /** The module whose export builds the queue's device on the thread (see UblkThreadDeviceSpec). */
  module: string;
  exportName: string;
  data: unknown;
}

/** What a queue's device says of itself: the disk the main thread announces to the kernel. */
export interface QueueDeviceGeometry {
  size: number;
  blockSize: number;
  maxRequest: number;
  readOnly: boolean;
  volatileCache: boolean;
  canTrim: boolean;
  canWriteZeroes: boolean;
}

/** A queue thread's counters, sent when it closes. */
export interface QueueThreadStats {
  requests: number;
  errors: number;
  callbacks: number;
  spins: number;
  spinHits: number;
  /** io_uring_enter calls of the queue's ring. */
  enters: number;
  /** The device's own count of doorbells (NVMe SQ tail writes), when it keeps one. */
  doorbells: number;
}

export type ToQueueThread =
  | { kind: 'serve'; cdevFd: number; depth: number; maxIoBytes: number; cpus: number[]; idleSpinUs: number; deferTaskrun: boolean }
  /** STOP_DEV was sent: finish what is in flight, wait for the kernel to give the tags back (when `aborted`), close. */
  | { kind: 'stop'; aborted: boolean };

export type FromQueueThread =
  | { kind: 'device'; geometry: QueueDeviceGeometry }
  | { kind: 'serving'; cpus: number[] }
  | { kind: 'error'; message: string; code: string | undefined }
  | { kind: 'closed'; stats: QueueThreadStats | null };
