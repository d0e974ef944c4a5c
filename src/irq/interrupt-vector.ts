/**
 * One interrupt vector: an eventfd the kernel (or a vfio-user server) signals. Three deliveries:
 * - 'event-loop' (default): a libuv poll handle on the event loop watches it (never a blocked
 *   threadpool thread); consume it with 'interrupt' events, wait() promises with timeout and
 *   AbortSignal, or async iteration. Interrupts that arrive while nobody listens are counted in
 *   `pending`, never lost.
 *
 * Two traps of the event-loop delivery (both by design):
 * - `pending` is taken only by wait() (and async iteration). It is never replayed as
 *   'interrupt' events: a listener added while `pending > 0` hears only later interrupts.
 *   Waiting for one interrupt? Use wait(): it takes what is pending first.
 * - The vector keeps the process alive only while a wait() is pending, or after ref(). An
 *   'interrupt' listener alone does not (the library's own drivers keep standing listeners that
 *   must not hold the process). A script whose last handle is `once(vector, 'interrupt')` ends
 *   before the interrupt is read, the listener never called (CommonJS exits 0; an unsettled
 *   top-level await exits 13). Use wait(), or ref() the vector while listening (unref() or
 *   close() when done). test/unit/edu-msi-sequence.test.ts shows both.
 * - 'polled': no watcher; the driver calls poll() when it wants (one read of the eventfd), and
 *   what it finds is delivered there and then, to the same waits, listeners and counters.
 * - 'thread': a handler runs on a dedicated thread blocked in the kernel on the eventfd (a worker
 *   thread in read(2) inside the addon, pinned to the CPUs that take the interrupt): no event-loop
 *   turn between the interrupt and the handler. The handler is a function exported by a module,
 *   loaded in that thread.
 */
import { EventEmitter } from 'node:events';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { native, constants, type WatchHandle } from '../native/index';
import { checkTimeoutMs, describeValue, optionsObject } from '../arguments';
import { DeviceGoneError, InvalidArgumentError, UserpciError } from '../errors';
import { STOP_TOKEN, type ThreadWorkerData } from './thread-protocol';

export type InterruptDelivery = 'event-loop' | 'polled' | 'thread';

/** The interrupt handler of a vector in 'thread' delivery: `handler(count, data)` in the thread. */
export interface ThreadHandler {
  /** Absolute path (or package name) of the module, as require() takes it in the thread. */
  module: string;
  /** Name of the exported function (default: the module's `handler` export, else `default`, else the module itself). */
  export?: string;
  /** Handed to the handler as its second argument (structured clone: SharedArrayBuffers are shared). */
  data?: unknown;
  /**
   * CPUs the thread runs on. Default: those the host kernel takes this vector's interrupt on
   * (kernel VFIO; as the kernel pins its own threaded handlers), else wherever it is scheduled.
   */
  cpus?: readonly number[];
  /**
   * Run the thread SCHED_FIFO at this priority (1-99) instead of the default time-sharing policy,
   * as the kernel runs its own threaded IRQ handlers (priority 50): woken by the interrupt, it
   * preempts whatever time-shared thread runs on its CPU at once. Needs CAP_SYS_NICE (or an
   * RLIMIT_RTPRIO that allows it): else the switch fails with EPERM. A handler that never
   * blocks can then starve its CPU's other threads (the kernel's RT throttling still leaves them
   * 5% by default): keep it short.
   *
   * The thread shares its process with V8's background threads (compiler, GC helpers), which
   * compete with it and with whatever raised the interrupt: for the lowest tail, run the driver's
   * process as `node --single-threaded` (V8 compiles and collects on the JS threads themselves).
   * bench:irq's `[st]` cases measure it (docs/ARCHITECTURE.md, Interrupts: in the TCG guest
   * it took the thread mode's p99 from 0.12-1.9 ms to 70-273 us).
   */
  realtimePriority?: number;
}

/** Eventfds of threads still running at exit: each is told to stop, so the process never waits on a blocked one. */
const liveThreads = new Set<number>();
let exitHookInstalled = false;
function stopThreadsAtExit(): void {
  for (const fd of liveThreads) {
    try {
      native.eventfdWrite(fd, STOP_TOKEN);
    } catch {
      // Its vector is closing it right now.
    }
  }
}

export type InterruptKind = 'intx' | 'msi' | 'msix' | 'err' | 'req';

/** wait()'s default: no timeout, no signal (nothing to check). */
const NO_WAIT_OPTIONS: WaitOptions = Object.freeze({});

export interface WaitOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

interface Waiter {
  resolve(count: number): void;
  reject(err: Error): void;
  cleanup(): void;
}

/**
 * Events of an InterruptVector: 'interrupt' with the count taken, 'close' once it stops,
 * 'handler-error' from a thread handler. 'interrupt' reports interrupts read after the listener
 * was added (not `pending` ones), and a listener does not keep the process alive (ref() does).
 */
export interface InterruptVectorEvents {
  interrupt: [count: number];
  close: [];
  'handler-error': [error: Error];
}

export class InterruptVector extends EventEmitter<InterruptVectorEvents> implements Disposable {
  /** Interrupts taken on this thread (event-loop and polled delivery) since the vector was set up. */
  private taken = 0;
  /**
   * Interrupts that arrived with no waiter and no 'interrupt' listener; the next wait() takes
   * them. A listener added later is not told of them (it hears the next interrupt only).
   */
  pending = 0;
  readonly fd: number;
  private watch: WatchHandle | null;
  private deliveryMode: InterruptDelivery = 'event-loop';
  private worker: Worker | null = null;
  /** Settles when the current (or last) handler thread has ended and the eventfd is ours again. */
  private threadEnded: Promise<void> = Promise.resolve();
  /** Thread delivery: the thread's interrupt count (shared), until the thread has ended. */
  private threadCount: Float64Array | null = null;
  /** The thread was told to stop (and must not be told twice). */
  private threadStopping = false;
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
    /** The CPUs the host takes this vector's interrupt on, when the backend can tell. */
    private readonly cpusOf?: () => number[] | undefined,
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

  /**
   * The CPUs the host kernel takes this vector's interrupt on (kernel VFIO: its IRQ's effective
   * affinity, read now); undefined when unknown. A thread that polls or waits for this vector is
   * woken soonest there.
   */
  hostCpus(): number[] | undefined {
    return this.cpusOf?.();
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
    const cpusAsked = handler.cpus !== undefined;
    if (cpusAsked && (!Array.isArray(handler.cpus) || handler.cpus.some((c) => !Number.isInteger(c) || c < 0))) {
      throw new InvalidArgumentError(`thread handler cpus must be an array of CPU numbers, got ${String(handler.cpus)}`);
    }
    const priority = handler.realtimePriority;
    if (priority !== undefined && (!Number.isInteger(priority) || priority < 1 || priority > 99)) {
      throw new InvalidArgumentError(`realtimePriority must be an integer from 1 to 99, got ${String(priority)}`);
    }
    const cpus = cpusAsked ? [...handler.cpus!] : this.hostCpus();
    // The thread gets its own dup (and closes it when it ends); ours stays valid until we close
    // it, so a late stop token can never hit a reused fd number.
    const fd = native.dup(this.fd);
    const count = new Float64Array(new SharedArrayBuffer(8));
    const workerData: ThreadWorkerData = { fd, count: count.buffer as SharedArrayBuffer, module: handler.module, exportName: handler.export, data: handler.data, cpus, cpusAsked, realtimePriority: priority };
    this.stopWatching();
    // The file is shared with the dup: the thread's read(2) blocks in the kernel. Nothing on this
    // thread reads it until the thread has ended (poll() and wait() refuse 'thread' delivery).
    native.setNonBlocking(this.fd, false);
    let worker: Worker;
    try {
      worker = new Worker(path.join(__dirname, 'thread-worker.js'), { workerData });
    } catch (err) {
      native.close(fd);
      native.setNonBlocking(this.fd, true);
      this.startWatching();
      throw err;
    }
    this.rejectWaiters(new UserpciError('EBUSY', `${this.kind} vector ${this.vector} now delivers on a thread`));
    this.deliveryMode = 'thread';
    this.worker = worker;
    this.threadCount = count;
    this.threadStopping = false;
    liveThreads.add(this.fd);
    if (!exitHookInstalled) {
      exitHookInstalled = true;
      process.once('exit', stopThreadsAtExit);
    }
    this.threadEnded = new Promise<void>((resolve) => worker.once('exit', () => {
      this.threadGone(worker);
      resolve();
    }));
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
        this.stopThread();
        // Back on the event loop once the thread is gone and the eventfd non-blocking again.
        void this.threadEnded.then(() => {
          if (!this.closedBy && this.deliveryMode === 'thread' && this.worker === null) this.backToEventLoop();
          // EPERM (no right to a real-time priority) says what to fix; anything else is the caller's setup.
          const code = (err as { code?: unknown }).code === 'EPERM' ? 'EPERM' : 'EINVAL';
          reject(new UserpciError(code, `${this.kind} vector ${this.vector}: the interrupt thread could not start: ${err.message}`, { cause: err }));
        });
      };
      worker.on('message', onReady);
      worker.once('error', onError);
    });
    // An uncaught error ends the thread ('exit' then brings the vector back to the event loop).
    worker.on('error', (err: Error) => {
      this.handlerErrors++;
      if (this.listenerCount('handler-error') > 0) this.emit('handler-error', new UserpciError('EIO', `${this.kind} vector ${this.vector} interrupt thread: ${err.message}`, { cause: err }));
    });
    worker.unref();
  }

  /** Back to the default: watched on the event loop (stops a handler thread; resolves once it has ended). */
  async deliverOnEventLoop(): Promise<void> {
    this.checkOpen();
    if (this.deliveryMode !== 'thread') {
      this.deliveryMode = 'event-loop';
      this.startWatching();
      return;
    }
    // Keep the process alive until the thread has ended (it was unref'ed while it ran).
    this.worker?.ref();
    this.stopThread();
    await this.threadEnded;
    if (!this.closedBy && this.deliveryMode === 'thread') this.backToEventLoop();
  }

  /**
   * Resolves with the number of interrupts taken (pending ones first). Rejects with ETIMEDOUT,
   * with the signal's reason when aborted, or with ENODEV when the device goes away.
   */
  wait(options: WaitOptions = NO_WAIT_OPTIONS): Promise<number> {
    if (options !== NO_WAIT_OPTIONS) {
      // A bad timeout would fire at once (negative, NaN) or after 1 ms (above 2^31 - 1), a bad
      // signal throw from the timer that cleans up: refuse both here.
      try {
        optionsObject(options, 'wait() options');
        checkTimeoutMs(options.timeoutMs, 'wait() timeoutMs');
        if (options.signal !== undefined && !(options.signal instanceof AbortSignal)) throw new InvalidArgumentError(`wait() signal must be an AbortSignal, got ${describeValue(options.signal)}`);
      } catch (err) {
        return Promise.reject(err);
      }
    }
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

  /**
   * Keep the process alive while this vector is armed (by default only pending waits do; an
   * 'interrupt' listener alone does not: a script that only listens needs this).
   */
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
    this.stopThread();
    this.worker = null;
    liveThreads.delete(this.fd);
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

  /** Tell the handler thread to end (it closes its own fd); idempotent. */
  private stopThread(): void {
    if (this.worker === null || this.threadStopping) return;
    this.threadStopping = true;
    native.eventfdWrite(this.fd, STOP_TOKEN);
  }

  /**
   * The handler thread has ended: count what it took, and make the eventfd ours again (non-blocking,
   * stop tokens it did not read taken back off, interrupts left in it kept for the event loop).
   */
  private threadGone(worker: Worker): void {
    if (this.threadCount !== null) this.taken += this.threadCount[0]!;
    this.threadCount = null;
    if (this.closedBy) return; // the fd is closed (its number may be another file's now)
    liveThreads.delete(this.fd);
    native.setNonBlocking(this.fd, true);
    const left = native.eventfdRead(this.fd) % STOP_TOKEN;
    if (left > 0) native.eventfdWrite(this.fd, left);
    const unexpected = this.worker === worker && !this.threadStopping;
    this.worker = null;
    if (unexpected) {
      // The thread died by itself (the handler ended it): never leave the vector unwatched.
      this.backToEventLoop();
      this.handlerErrors++;
      if (this.listenerCount('handler-error') > 0) this.emit('handler-error', new UserpciError('EIO', `${this.kind} vector ${this.vector}: the interrupt thread ended; back on the event loop`));
    }
  }

  private backToEventLoop(): void {
    this.deliveryMode = 'event-loop';
    this.startWatching();
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
