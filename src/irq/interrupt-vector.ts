/**
 * One interrupt vector: an eventfd the kernel (or a vfio-user server) signals, watched on the
 * event loop by a libuv poll handle (never a blocked threadpool thread). Three ways to consume
 * it: 'interrupt' events, wait() promises with timeout and AbortSignal, and async iteration.
 * Interrupts that arrive while nobody listens are counted in `pending`, never lost.
 */
import { EventEmitter } from 'node:events';
import { native, constants, type WatchHandle } from '../native/index';
import { DeviceGoneError, UserpciError } from '../errors';

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

/** Events of an InterruptVector: 'interrupt' with the count taken, 'close' once it stops. */
export interface InterruptVectorEvents {
  interrupt: [count: number];
  close: [];
}

export class InterruptVector extends EventEmitter<InterruptVectorEvents> implements Disposable {
  /** Interrupts seen since the vector was set up. */
  total = 0;
  /** Interrupts that arrived with no waiter; the next wait() takes them. */
  pending = 0;
  readonly fd: number;
  private readonly watch: WatchHandle;
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
    this.watch = native.watch(this.fd, 1, true, (status, count) => this.onSignal(status, count));
    native.watchRef(this.watch, false);
  }

  get closed(): boolean {
    return this.closedBy !== undefined;
  }

  /**
   * Resolves with the number of interrupts taken (pending ones first). Rejects with ETIMEDOUT,
   * with the signal's reason when aborted, or with ENODEV when the device goes away.
   */
  wait(options: WaitOptions = {}): Promise<number> {
    if (this.closedBy) return Promise.reject(this.closedBy);
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
    native.watchStop(this.watch);
    native.close(this.fd);
    for (const w of this.waiters.splice(0)) {
      w.cleanup();
      w.reject(reason);
    }
    this.emit('close');
  }

  /** `using vector = ...`: close() at the end of the scope. */
  [Symbol.dispose](): void {
    this.close();
  }

  private onSignal(status: number, count: number): void {
    if (this.closedBy) return;
    if (status < 0 || count === 0) return;
    this.total += count;
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
    if (this.closedBy) return;
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
