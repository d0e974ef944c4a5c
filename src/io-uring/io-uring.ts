/**
 * An io_uring instance driven from TypeScript: the addon only makes the three system calls and
 * maps the rings; SQE encoding, the ring indices and completion dispatch live here. Completions
 * reach the event loop the way interrupts do: an eventfd registered with the ring (the kernel
 * signals it per CQE) is watched by the addon's libuv poll watcher, which calls drain().
 *
 * Only what ublk needs: 128-byte SQEs (IORING_SETUP_SQE128) carrying URING_CMDs, user_data as a
 * 32-bit number. Ring memory is plain RAM: indices the kernel reads or writes concurrently go
 * through Atomics (an xchg on RAM is cheap; the plain-store rule is for MMIO).
 */
import { wrapSystemError, UserpciError } from '../errors';
import { constants as C, native, type WatchHandle } from '../native';
import {
  CQ_OFF, CQE, CQE_SIZE, IO_URING_PARAMS_SIZE, IORING_ENTER_GETEVENTS, IORING_FEAT_SINGLE_MMAP, IORING_OFF_CQ_RING,
  IORING_OFF_SQ_RING, IORING_OFF_SQES, IORING_OP_URING_CMD, IORING_REGISTER_EVENTFD, IORING_SETUP_CQSIZE,
  IORING_SETUP_DEFER_TASKRUN, IORING_SETUP_SINGLE_ISSUER, IORING_SETUP_SQE128, IORING_SETUP_TASKRUN_FLAG, IORING_SQ_TASKRUN,
  PARAMS, SQ_OFF, SQE, SQE128_SIZE,
} from '../uapi/io-uring';

/** Called once per completion: user_data (low 32 bits), res (a negative errno on failure), flags. */
export type CompletionHandler = (userData: number, res: number, flags: number) => void;

/**
 * Brackets each drain that finds completions: `begin` before the first is handed over, `end`
 * after the last (also when a handler threw). E.g. to hold a device's doorbell over the batch.
 */
export interface DrainBatch {
  begin(): void;
  end(): void;
}

export interface IoUringOptions {
  /** Completion queue entries (default: twice the submission entries, the kernel's own default). */
  cqEntries?: number;
  /**
   * IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG (Linux 6.1+): the kernel's work
   * for this ring (posting completions of commands it finished elsewhere) waits until this
   * thread enters the ring, instead of interrupting it (an IPI) per completion. submit() and
   * drain() enter as needed; only the creating thread may use the ring.
   */
  deferTaskrun?: boolean;
}

export class IoUring {
  readonly fd: number;
  /** Submission queue entries, as the kernel rounded them. */
  readonly sqEntries: number;
  readonly cqEntries: number;
  private readonly rings: ArrayBuffer[] = [];
  private readonly sqU32: Uint32Array;
  private readonly cqU32: Uint32Array;
  private readonly cqI32: Int32Array;
  private readonly sqes: ArrayBuffer;
  /** The SQE area as bytes, 32-bit words and a DataView (for 64-bit fields). */
  readonly sqeBytes: Uint8Array;
  readonly sqeView: DataView;
  private readonly sqHead: number;
  private readonly sqTail: number;
  private readonly sqMask: number;
  private readonly sqArray: number;
  private readonly sqFlags: number;
  private readonly deferTaskrun: boolean;
  private readonly cqHead: number;
  private readonly cqTail: number;
  private readonly cqMask: number;
  private readonly cqes: number;
  /** SQEs filled in since the last submit. */
  private unsubmitted = 0;
  private localTail: number;
  private eventfd = -1;
  private watcher: WatchHandle | null = null;
  private handler: CompletionHandler | null = null;
  private batch: DrainBatch | null = null;
  private closed = false;
  /** io_uring_enter calls made by submit() since creation. */
  enters = 0;

  constructor(entries: number, options: IoUringOptions = {}) {
    const params = new Uint8Array(IO_URING_PARAMS_SIZE);
    const pv = new DataView(params.buffer);
    let flags = IORING_SETUP_SQE128;
    this.deferTaskrun = options.deferTaskrun === true;
    if (this.deferTaskrun) flags |= IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    if (options.cqEntries !== undefined) {
      flags |= IORING_SETUP_CQSIZE;
      pv.setUint32(PARAMS.cq_entries, options.cqEntries, true);
    }
    pv.setUint32(PARAMS.flags, flags, true);
    try {
      this.fd = native.ioUringSetup(entries, params);
    } catch (e) {
      throw wrapSystemError(e, `io_uring_setup(${entries})`, { ENOSYS: 'this kernel has no io_uring', EPERM: 'io_uring is disabled (kernel.io_uring_disabled)' });
    }
    try {
      this.sqEntries = pv.getUint32(PARAMS.sq_entries, true);
      this.cqEntries = pv.getUint32(PARAMS.cq_entries, true);
      const sq = (f: number) => pv.getUint32(PARAMS.sq_off + f, true);
      const cq = (f: number) => pv.getUint32(PARAMS.cq_off + f, true);
      const sqSize = sq(SQ_OFF.array) + this.sqEntries * 4;
      const cqSize = cq(CQ_OFF.cqes) + this.cqEntries * CQE_SIZE;
      const prot = C.PROT_READ | C.PROT_WRITE;
      const mapFlags = C.MAP_SHARED | C.MAP_POPULATE;
      let sqRing: ArrayBuffer;
      let cqRing: ArrayBuffer;
      if (pv.getUint32(PARAMS.features, true) & IORING_FEAT_SINGLE_MMAP) {
        sqRing = cqRing = native.mmap(Math.max(sqSize, cqSize), prot, mapFlags, this.fd, IORING_OFF_SQ_RING);
        this.rings.push(sqRing);
      } else {
        sqRing = native.mmap(sqSize, prot, mapFlags, this.fd, IORING_OFF_SQ_RING);
        this.rings.push(sqRing);
        cqRing = native.mmap(cqSize, prot, mapFlags, this.fd, IORING_OFF_CQ_RING);
        this.rings.push(cqRing);
      }
      this.sqes = native.mmap(this.sqEntries * SQE128_SIZE, prot, mapFlags, this.fd, IORING_OFF_SQES);
      this.sqU32 = new Uint32Array(sqRing);
      this.cqU32 = new Uint32Array(cqRing);
      this.cqI32 = new Int32Array(cqRing);
      this.sqeBytes = new Uint8Array(this.sqes);
      this.sqeView = new DataView(this.sqes);
      this.sqHead = sq(SQ_OFF.head) >> 2;
      this.sqTail = sq(SQ_OFF.tail) >> 2;
      this.sqMask = this.sqU32[sq(SQ_OFF.ring_mask) >> 2]!;
      this.sqArray = sq(SQ_OFF.array) >> 2;
      this.sqFlags = sq(SQ_OFF.flags) >> 2;
      this.cqHead = cq(CQ_OFF.head) >> 2;
      this.cqTail = cq(CQ_OFF.tail) >> 2;
      this.cqMask = this.cqU32[cq(CQ_OFF.ring_mask) >> 2]!;
      this.cqes = cq(CQ_OFF.cqes);
      this.localTail = this.sqU32[this.sqTail]!;
    } catch (e) {
      this.unmapAll();
      native.close(this.fd);
      throw wrapSystemError(e, 'mapping the io_uring rings');
    }
  }

  /** Free submission slots (the kernel consumes SQEs at submit time, so this is rarely short). */
  get sqSpace(): number {
    return this.sqEntries - (this.localTail - Atomics.load(this.sqU32, this.sqHead));
  }

  /**
   * Starts a URING_CMD SQE for `fd` with `cmdOp` and `userData`; returns the byte offset of its
   * 80-byte command area in sqeBytes/sqeView for the caller to fill. Visible to the kernel at
   * the next submit(). EBUSY when the submission queue is full.
   */
  prepUringCmd(fd: number, cmdOp: number, userData: number): number {
    if (this.closed) throw new UserpciError('EBADF', 'io_uring is closed');
    if (this.sqSpace <= 0) throw new UserpciError('EBUSY', 'io_uring submission queue full');
    const index = this.localTail & this.sqMask;
    const base = index * SQE128_SIZE;
    this.sqeBytes.fill(0, base, base + SQE128_SIZE);
    const v = this.sqeView;
    v.setUint8(base + SQE.opcode, IORING_OP_URING_CMD);
    v.setInt32(base + SQE.fd, fd, true);
    v.setUint32(base + SQE.cmd_op, cmdOp, true);
    v.setUint32(base + SQE.user_data, userData >>> 0, true);
    this.sqU32[this.sqArray + index] = index;
    this.localTail = (this.localTail + 1) >>> 0;
    this.unsubmitted++;
    return base + SQE.cmd;
  }

  /** Publishes the prepared SQEs and submits them (io_uring_enter); waits for `minComplete` CQEs. */
  submit(minComplete = 0): number {
    if (this.closed) throw new UserpciError('EBADF', 'io_uring is closed');
    const n = this.unsubmitted;
    if (n === 0 && minComplete === 0) return 0;
    Atomics.store(this.sqU32, this.sqTail, this.localTail);
    this.unsubmitted = 0;
    this.enters++;
    try {
      // Deferred task work runs only in an enter with GETEVENTS (minComplete 0: it does not wait).
      return native.ioUringEnter(this.fd, n, minComplete, minComplete > 0 || this.deferTaskrun ? IORING_ENTER_GETEVENTS : 0);
    } catch (e) {
      throw wrapSystemError(e, 'io_uring_enter');
    }
  }

  /** Unsubmitted SQEs prepared so far. */
  get pending(): number {
    return this.unsubmitted;
  }

  /**
   * Delivers completions to `handler` on the event loop: an eventfd registered with the ring,
   * watched by libuv. `keepAlive`: whether the watcher keeps the process running. `batch`
   * brackets every drain that finds completions (the watcher's and drain()'s without a handler).
   */
  onCompletion(handler: CompletionHandler, keepAlive = true, batch: DrainBatch | null = null): void {
    if (this.watcher) throw new UserpciError('EBUSY', 'io_uring already has a completion handler');
    this.handler = handler;
    this.batch = batch;
    this.eventfd = native.eventfd(0, C.EFD_NONBLOCK);
    try {
      native.ioUringRegister(this.fd, IORING_REGISTER_EVENTFD, new Int32Array([this.eventfd]), 1);
      this.watcher = native.watch(this.eventfd, 1, true, () => this.drain());
      if (!keepAlive) native.watchRef(this.watcher, false);
    } catch (e) {
      native.close(this.eventfd);
      this.eventfd = -1;
      throw wrapSystemError(e, 'registering an eventfd with io_uring');
    }
    // Completions that arrived before the registration signal nothing: take them now.
    this.drain();
  }

  /** Whether the completion watcher keeps the process running. */
  setKeepAlive(on: boolean): void {
    if (this.watcher) native.watchRef(this.watcher, on);
  }

  /** Whether completions wait in the CQ, or deferred work that will post some (loads only: cheap enough to poll). */
  get ready(): boolean {
    if (this.closed) return false;
    return this.cqU32[this.cqHead] !== Atomics.load(this.cqU32, this.cqTail) || (this.deferTaskrun && this.taskRunPending());
  }

  private taskRunPending(): boolean {
    return (Atomics.load(this.sqU32, this.sqFlags) & IORING_SQ_TASKRUN) !== 0;
  }

  /** Deferred task work posts its completions when we enter with GETEVENTS. */
  private runTaskWork(): void {
    this.enters++;
    try {
      native.ioUringEnter(this.fd, 0, 0, IORING_ENTER_GETEVENTS);
    } catch (e) {
      throw wrapSystemError(e, 'io_uring_enter');
    }
  }

  /**
   * Hands every completion in the CQ to the handler (or to `handler`); returns how many.
   * Completions the kernel posts meanwhile (a handler's submit runs the task's pending work on
   * its way back) are taken in the same drain.
   */
  drain(handler: CompletionHandler | null = this.handler): number {
    if (this.closed || !handler) return 0;
    if (this.deferTaskrun && this.taskRunPending()) this.runTaskWork();
    const cqU32 = this.cqU32;
    const head = cqU32[this.cqHead]!;
    const tail = Atomics.load(cqU32, this.cqTail);
    if (head === tail) return 0;
    const batch = handler === this.handler ? this.batch : null;
    if (batch !== null) batch.begin();
    try {
      return this.drainFrom(handler, head, tail);
    } finally {
      if (batch !== null) batch.end();
    }
  }

  private drainFrom(handler: CompletionHandler, head: number, tail: number): number {
    const cqU32 = this.cqU32;
    let n = 0;
    while (head !== tail) {
      const at = (this.cqes + (head & this.cqMask) * CQE_SIZE) >> 2;
      const userData = cqU32[at + (CQE.user_data >> 2)]!;
      const res = this.cqI32[at + (CQE.res >> 2)]!;
      const flags = cqU32[at + (CQE.flags >> 2)]!;
      // Release the slot before the handler runs: it may submit and so produce completions.
      Atomics.store(cqU32, this.cqHead, (head + 1) >>> 0);
      n++;
      handler(userData, res, flags);
      if (this.closed) break;
      // Both again: the handler may have drained too, and the kernel may have posted more.
      head = cqU32[this.cqHead]!;
      tail = Atomics.load(cqU32, this.cqTail);
    }
    return n;
  }

  /** Stops watching, unmaps the rings and closes the ring fd (the kernel cancels what is in flight). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.watcher) native.watchStop(this.watcher);
    this.watcher = null;
    if (this.eventfd >= 0) native.close(this.eventfd);
    this.eventfd = -1;
    this.unmapAll();
    native.close(this.fd);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private unmapAll(): void {
    for (const r of this.rings.splice(0)) if (r.byteLength > 0) native.munmap(r);
    if (this.sqes && this.sqes.byteLength > 0) native.munmap(this.sqes);
  }
}
