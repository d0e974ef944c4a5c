/**
 * One interrupt vector: an eventfd the kernel (or a vfio-user server) signals. Three deliveries:
 * - 'event-loop' (default): a libuv poll handle on the event loop watches it (never a blocked
 *   threadpool thread); consume it with 'interrupt' events, wait() promises with timeout and
 *   AbortSignal, or async iteration. Interrupts that arrive while nobody listens are counted in
 *   `pending`, never lost.
 * - 'polled': no watcher; the driver calls poll() when it wants (one read of the eventfd), and
 *   what it finds is delivered there and then, to the same waits, listeners and counters.
 * - 'thread': a handler runs on a dedicated thread blocked in the kernel on the eventfd (a worker
 *   thread waiting in poll(2) inside the addon): no event-loop turn between the interrupt and the
 *   handler. The handler is a function exported by a module, loaded in that thread.
 */
import { EventEmitter } from 'node:events';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { native, constants, type WatchHandle } from '../native/index';
import { DeviceGoneError, InvalidArgumentError, UserpciError } from '../errors';
import type { ThreadWorkerData } from './thread-worker';

export type InterruptDelivery = 'event-loop' | 'polled' | 'thread';

/** The interrupt handler of a vector in 'thread' delivery: `handler(count, data)` in the thread. */
export interface ThreadHandler {
  /** Absolute path (or package name) of the module, as require() takes it in the thread. */
  module: string;
  /** Name of the exported function (default: the module's `handler` export, else `default`, else the module itself). */
  export?: string;
  /** Handed to the handler as its second argument (structured clone: SharedArrayBuffers are shared). */
  data?: unknown;
}

/** Threads still running at exit are stopped, so the process never waits on a blocked one. */
const liveThreads = new Set<number>();
let exitHookInstalled = false;
function stopThreadsAtExit(): void {
  for (const fd of liveThreads) {
    try {
      native.eventfdWrite(fd, 1);
    } catch {
      // Its vector is closing it right now.
    }
  }
}

export type InterruptKind = 'intx' | 'msi' | 'msix' | 'err' | 'req';

export interface WaitOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

interface Waiter {
  resolve(count: number): void;
  reject(err: Error): void;
  cleanup(): void;
}

/** Events of an InterruptVector: 'interrupt' with the count taken, 'close' once it stops, 'handler-error' from a thread handler. */
export interface InterruptVectorEvents {
  interrupt: [count: number];
  close: [];
  'handler-error': [error: Error];
}

export class InterruptVector extends EventEmitter<InterruptVectorEvents> implements Disposable {
  /** Interrupts taken on this thread (event-loop and polled delivery) since the vector was set up. */
  private taken = 0;
  /** Interrupts that arrived with no waiter; the next wait() takes them. */
  pending = 0;
  readonly fd: number;
  private watch: WatchHandle | null;
  private deliveryMode: InterruptDelivery = 'event-loop';
  private worker: Worker | null = null;
  /** Settles when the current (or last) handler thread has ended. */
  private threadEnded: Promise<void> = Promise.resolve();
  /** Thread delivery: the eventfd that tells the thread to stop, and its interrupt count (shared). */
  private stopFd = -1;
  private threadCount: Float64Array | null = null;
  /** Handler errors in 'thread' delivery (each is also emitted as 'handler-error'). */
  handlerErrors = 0;
  private readonly waiters: Waiter[] = [];
  private keepAlive = false;
  /** Whether the watcher currently keeps the event loop alive (it starts unref-ed). */
  private referenced = false;
  private closedBy: Error | undefined;

  constructor(
    readonly kind: InterruptKind,
    readonly vector: number,
    /** INTx only: the kernel masks the line on each interrupt until the driver unmasks it. */
    private readonly unmaskLine?: () => void,
  ) {
    super();
    this.fd = native.eventfd(0, constants.EFD_NONBLOCK);
    this.watch = null;
    this.startWatching();
  }

  get closed(): boolean {
    return this.closedBy !== undefined;
  }

  /** Interrupts seen since the vector was set up, whatever the delivery. */
  get total(): number {
    return this.taken + (this.threadCount !== null ? this.threadCount[0]! : 0);
  }

  get delivery(): InterruptDelivery {
    return this.deliveryMode;
  }

  /**
   * Polled delivery: stop watching on the event loop; interrupts are taken only by poll().
   * Waits and listeners stay, and are served from poll().
   */
  deliverPolled(): this {
    this.checkOpen();
    if (this.deliveryMode === 'thread') throw new UserpciError('EBUSY', `${this.kind} vector ${this.vector} delivers on a thread; switch it back with deliverOnEventLoop() first`);
    this.stopWatching();
    this.deliveryMode = 'polled';
    return this;
  }

  /**
   * Take what the eventfd holds now (one non-blocking read) and deliver it here: waiters,
   * 'interrupt' listeners, `pending`. Returns the count taken (0: none). Any delivery but 'thread'.
   */
  poll(): number {
    if (this.closedBy || this.deliveryMode === 'thread') return 0;
    const n = native.eventfdRead(this.fd);
    if (n > 0) this.onSignal(0, n);
    return n;
  }

  /**
   * Thread delivery: `handler(count, data)` runs on a dedicated thread blocked in the kernel on
   * this vector's eventfd. Resolves once the thread waits. Waits, listeners and `pending` on the
   * main thread see nothing in this mode (wait() rejects with EBUSY); `total` counts on.
   * A handler that throws is reported as 'handler-error' and the thread goes on.
   */
  async deliverOnThread(handler: ThreadHandler): Promise<void> {
    this.checkOpen();
    if (this.deliveryMode === 'thread') throw new UserpciError('EBUSY', `${this.kind} vector ${this.vector} already delivers on a thread`);
    if (!handler || typeof handler.module !== 'string' || handler.module.length === 0) throw new InvalidArgumentError('a thread handler needs the module that exports it');
    // The thread gets its own dups of both fds and closes them when it ends; ours stay valid
    // until we close them, so a late stop signal can never hit a reused fd number.
    const stopFd = native.eventfd(0, constants.EFD_NONBLOCK);
    let fd = -1;
    let threadStopFd = -1;
    try {
      fd = native.dup(this.fd);
      threadStopFd = native.dup(stopFd);
    } catch (err) {
      for (const f of [stopFd, fd]) if (f >= 0) native.close(f);
      throw err;
    }
    const count = new Float64Array(new SharedArrayBuffer(8));
    const workerData: ThreadWorkerData = { fd, stopFd: threadStopFd, count: count.buffer as SharedArrayBuffer, module: handler.module, exportName: handler.export, data: handler.data };
    const worker = new Worker(path.join(__dirname, 'thread-worker.js'), { workerData });
    this.threadEnded = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    this.stopWatching();
    this.rejectWaiters(new UserpciError('EBUSY', `${this.kind} vector ${this.vector} now delivers on a thread`));
    this.deliveryMode = 'thread';
    this.worker = worker;
    this.stopFd = stopFd;
    this.threadCount = count;
    liveThreads.add(stopFd);
    if (!exitHookInstalled) {
      exitHookInstalled = true;
      process.once('exit', stopThreadsAtExit);
    }
    worker.on('message', (m: { error?: string }) => {
      if (m.error === undefined) return;
      this.handlerErrors++;
      if (this.listenerCount('handler-error') > 0) this.emit('handler-error', new UserpciError('EIO', `${this.kind} vector ${this.vector} handler: ${m.error}`));
    });
    await new Promise<void>((resolve, reject) => {
      const onReady = (m: unknown) => {
        if (m !== 'ready') return;
        worker.off('message', onReady);
        worker.off('error', onError);
        resolve();
      };
      const onError = (err: Error) => {
        worker.off('message', onReady);
        this.endThread();
        this.deliveryMode = 'event-loop';
        if (!this.closedBy) this.startWatching();
        reject(new UserpciError('EINVAL', `${this.kind} vector ${this.vector}: the interrupt thread could not start: ${err.message}`, { cause: err }));
      };
      worker.on('message', onReady);
      worker.once('error', onError);
    });
    worker.unref();
  }

  /** Back to the default: watched on the event loop (stops a handler thread, resolves when it has ended). */
  async deliverOnEventLoop(): Promise<void> {
    this.checkOpen();
    // Keep the process alive until the thread has ended (it was unref'ed while it ran).
    this.worker?.ref();
    this.endThread();
    this.deliveryMode = 'event-loop';
    this.startWatching();
    await this.threadEnded;
  }

  /**
   * Resolves with the number of interrupts taken (pending ones first). Rejects with ETIMEDOUT,
   * with the signal's reason when aborted, or with ENODEV when the device goes away.
   */
  wait(options: WaitOptions = {}): Promise<number> {
    if (this.closedBy) return Promise.reject(this.closedBy);
    if (this.deliveryMode === 'thread') return Promise.reject(new UserpciError('EBUSY', `${this.kind} vector ${this.vector} delivers on a thread: its handler takes the interrupts`));
    if (this.pending > 0) {
      const n = this.pending;
      this.pending = 0;
      return Promise.resolve(n);
    }
    if (options.signal?.aborted) return Promise.reject(options.signal.reason ?? abortError());
    if (options.timeoutMs === undefined && options.signal === undefined) {
      // The common case (a driver awaiting its next completion): nothing to clean up.
      return new Promise<number>((resolve, reject) => {
        this.waiters.push({ resolve, reject, cleanup: noop });
        this.updateRef();
      });
    }
    return new Promise<number>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const onAbort = () => {
        remove();
        reject(options.signal!.reason ?? abortError());
      };
      const waiter: Waiter = {
        resolve,
        reject,
        cleanup: () => {
          if (timer) clearTimeout(timer);
          options.signal?.removeEventListener('abort', onAbort);
        },
      };
      const remove = () => {
        waiter.cleanup();
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        this.updateRef();
      };
      if (options.timeoutMs !== undefined) {
        timer = setTimeout(() => {
          remove();
          reject(new UserpciError('ETIMEDOUT', `no ${this.kind} interrupt on vector ${this.vector} within ${options.timeoutMs} ms`));
        }, options.timeoutMs);
      }
      options.signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
      this.updateRef();
    });
  }

  /** Each iteration yields the number of interrupts taken; ends when the vector is closed. */
  async *[Symbol.asyncIterator](): AsyncGenerator<number, void, undefined> {
    while (!this.closedBy) {
      try {
        yield await this.wait();
      } catch (err) {
        if (this.closedBy && err === this.closedBy) return;
        throw err;
      }
    }
  }

  /**
   * INTx is level-triggered and VFIO masks it as it fires: acknowledge the interrupt in the
   * device first, then unmask, or it fires again at once. MSI and MSI-X need nothing.
   */
  unmask(): void {
    if (this.closedBy) throw this.closedBy;
    this.unmaskLine?.();
  }

  /** Keep the process alive while this vector is armed (by default only waits do). */
  ref(): this {
    this.keepAlive = true;
    this.updateRef();
    return this;
  }

  unref(): this {
    this.keepAlive = false;
    this.updateRef();
    return this;
  }

  /** Stop watching; pending and future waits reject with `reason`. Idempotent. */
  close(reason: Error = new DeviceGoneError(`${this.kind} vector ${this.vector} is disabled`)): void {
    if (this.closedBy) return;
    this.closedBy = reason;
    this.stopWatching();
    this.endThread();
    native.close(this.fd);
    this.rejectWaiters(reason);
    this.emit('close');
  }

  private rejectWaiters(reason: Error): void {
    for (const w of this.waiters.splice(0)) {
      w.cleanup();
      w.reject(reason);
    }
  }

  private checkOpen(): void {
    if (this.closedBy) throw this.closedBy;
  }

  private startWatching(): void {
    if (this.watch !== null) return;
    this.watch = native.watch(this.fd, 1, true, (status, count) => this.onSignal(status, count));
    this.referenced = false;
    native.watchRef(this.watch, false);
    this.updateRef();
  }

  /** Close the libuv handle now (not at GC: see docs/ARCHITECTURE.md on fd reuse). */
  private stopWatching(): void {
    if (this.watch === null) return;
    native.watchStop(this.watch);
    this.watch = null;
    this.referenced = false;
  }

  /** Tell the handler thread to end (it closes its own fds); idempotent. */
  private endThread(): void {
    if (this.stopFd < 0) return;
    liveThreads.delete(this.stopFd);
    native.eventfdWrite(this.stopFd, 1);
    native.close(this.stopFd);
    if (this.threadCount !== null) this.taken += this.threadCount[0]!;
    this.threadCount = null;
    this.stopFd = -1;
    this.worker = null;
  }

  /** `using vector = ...`: close() at the end of the scope. */
  [Symbol.dispose](): void {
    this.close();
  }

  private onSignal(status: number, count: number): void {
    if (this.closedBy) return;
    if (status < 0 || count === 0) return;
    this.taken += count;
    const waiter = this.waiters.shift();
    if (waiter) {
      waiter.cleanup();
      waiter.resolve(count + this.pending);
      this.pending = 0;
      this.updateRef();
    } else if (this.listenerCount('interrupt') === 0) {
      this.pending += count;
    }
    if (this.listenerCount('interrupt') > 0) this.emit('interrupt', count);
  }

  /** Tell libuv only when the answer changes: this runs on every wait and every interrupt. */
  private updateRef(): void {
    if (this.closedBy || this.watch === null) return;
    const want = this.keepAlive || this.waiters.length > 0;
    if (want === this.referenced) return;
    this.referenced = want;
    native.watchRef(this.watch, want);
  }
}

function noop(): void {}

function abortError(): Error {
  const e = new Error('the wait was aborted') as Error & { code: string };
  e.name = 'AbortError';
  e.code = 'ABORT_ERR';
  return e;
}
