/**
 * One NVMe queue pair (a submission queue and its completion queue), the driver's hot path.
 *
 * Steady state allocates nothing but the promise a caller asks for:
 * - Command slots are preallocated; a command's identifier (CID) is its slot index.
 * - Each slot owns a preallocated PRP list area sized for the largest transfer, and (once the
 *   plain-buffer path is used) a preallocated bounce chunk.
 * - Caller operations ("requests", which a large transfer splits into several commands) come
 *   from a free list and wait in an intrusive FIFO when every slot is busy.
 * - IOVAs, LBAs and lengths stay plain numbers (64-bit fields are written as two 32-bit halves).
 * - Promises are built with one shared executor that keeps only `resolve` (see executor), so no
 *   closure is created per I/O and V8 drops the unused reject function.
 *
 * Doorbells: every submission writes the SQ tail doorbell once, unless the queue is plugged
 * (plug/unplug, batch()), in which case the doorbell is written once at unplug. Completions
 * reaped in one pass are acknowledged with one CQ head doorbell, and the pass holds the SQ
 * doorbell until the callers' continuations have run, so what they submit in reaction goes out
 * together (rung early every `doorbellEvery` commands, so the device works while we do).
 *
 * Completions arrive by polling (the default) or by an MSI-X vector. A polled queue polls while
 * commands are outstanding: each pass spins briefly on the next completion's phase bit, and
 * passes chain as microtasks (an event-loop turn costs about 15 µs in a TCG guest, a pass a few),
 * handing over to the event loop after `pollBurst` passes or a pass that waited in vain.
 * A polled CQ is at least twice the depth, so its head doorbell is written once per many
 * completions; commands submitted in reaction to completions are rung every `doorbellEvery`.
 */
import { UserpciError } from '../../errors';
import type { Region } from '../../device/region';
import type { DmaBuffer } from '../../dma/dma-space';
import type { InterruptVector } from '../../irq/interrupt-vector';
import { NvmeStatusError } from './errors';
import {
  CQE_PHASE, CQE_SIZE, DSM_DEALLOCATE, DSM_RANGE_SIZE, NVM_DATASET_MANAGEMENT, NVM_READ, NVM_WRITE, NVM_WRITE_ZEROES,
  REG_DOORBELL_BASE, SQE_SIZE, opcodeName,
} from './registers';

const TWO32 = 0x1_0000_0000;

/**
 * Microtasks of the polling passes are queued with RESOLVED.then(fn), not queueMicrotask(fn):
 * Node's queueMicrotask builds an AsyncResource and a bound function per call (hundreds of
 * bytes and most of a pass's cost at QD1); a then() on a settled promise queues the job directly.
 */
const RESOLVED = Promise.resolve();

/** x86 does not reorder loads with loads: reap reads the CQ status word with a plain load there. */
const PLAIN_CQ_LOAD = process.arch === 'x64' || process.arch === 'ia32';

/** An exception from inside such a microtask surfaces as uncaught, as it would from queueMicrotask. */
function rethrowUncaught(err: unknown): void {
  queueMicrotask(() => {
    throw err;
  });
}

/** What a queue needs from its controller. */
/** What a queue uses of its DMA memory: a DmaBuffer, or memory another thread maps (ublk's queue threads). */
export type QueueMemory = Pick<DmaBuffer, 'buffer' | 'iova' | 'freed' | 'free'>;

/** What the queue hands back to its host about itself. */
export interface QueueRef {
  readonly qid: number;
}

export interface QueueHost {
  readonly name: string;
  readonly regs: Region;
  /** Controller memory page size (CC.MPS): the PRP page. */
  readonly pageSize: number;
  /** Largest data transfer of one command, bytes (from MDTS, capped by the driver). */
  readonly maxTransfer: number;
  /** Largest queue the controller takes, in entries (CAP.MQES + 1). */
  readonly maxQueueEntries: number;
  readonly doorbellStride: number;
  allocDma(size: number): QueueMemory;
  /** A command on this queue outlived its timeout (the controller decides about recovery). */
  queueTimedOut(queue: QueueRef): void;
  /** Commands are outstanding and none completed for a whole tick: worth a look at CSTS. */
  queueStalled(queue: QueueRef): void;
  /**
   * A register or queue-memory access of this queue failed (the device was removed, closed or
   * stopped answering): the controller gives up, which destroys this queue. Never throws.
   */
  queueFault(queue: QueueRef, error: Error): void;
}

export type CompletionCallback = (error: Error | null, result: number) => void;

export interface QueueTuning {
  /** Command timeout, ms (default 30000). Checked by a coarse timer: fires within 1.25x. */
  timeoutMs?: number;
  /** Polling: how long one poll pass spins on an empty completion queue before yielding, µs (default 50). */
  pollSpinUs?: number;
  /**
   * Polling: passes chained as microtasks before one event-loop turn (default 64); 0 polls
   * from the event loop only (setImmediate), the fairest and slowest.
   */
  pollBurst?: number;
  /**
   * Commands submitted in reaction to completions share a doorbell, rung early once this many
   * wait, so the device starts on them while the rest are built: pipelining instead of lockstep
   * (default: half the depth; measured best in QEMU, where one per command or one per pass
   * both lose). A caller's own plug()/batch() always gets exactly one doorbell.
   */
  doorbellEvery?: number;
  /**
   * Polled queues: acknowledge completions (the CQ head doorbell) once per `depth` of them rather
   * than once per pass (default true; the CQ is sized so it cannot fill).
   */
  cqAckBatch?: boolean;
  /** Plain-buffer I/O: bytes of bounce memory per command slot (default min(128 KiB, max transfer)). */
  bounceChunk?: number;
}

const KIND_RW = 0;
const KIND_DSM = 1;
const KIND_RAW = 2;

/** One caller operation; may take several commands. Pooled. */
class Request {
  kind = KIND_RW;
  opcode = 0;
  nsid = 0;
  /** Data: IOVA of byte 0 for zero copy, or -1 with `view` set for the bounce path. */
  iova = -1;
  view: Uint8Array | null = null;
  /** Bytes in all (RW with data, raw), or blocks in all (DSM, Write Zeroes). */
  length = 0;
  /** How much of `length` was handed to commands so far. */
  done = 0;
  lba = 0;
  blockSize = 512;
  /** Per-command maximum, in `length` units. */
  chunk = 0;
  cdw12Flags = 0;
  /** Raw commands: data buffer length in bytes (0: none). */
  dataLength = 0;
  cdw10 = 0;
  cdw11 = 0;
  cdw12 = 0;
  cdw13 = 0;
  cdw14 = 0;
  cdw15 = 0;
  pending = 0;
  status = 0;
  failure: Error | null = null;
  result = 0;
  resolve: ((value: number | PromiseLike<number>) => void) | null = null;
  callback: CompletionCallback | null = null;
  next: Request | null = null;
}

/**
 * The promise API's executor, shared (no closure per I/O). It keeps only `resolve`, so optimized
 * code does not build the reject function (56 B) nor store it into the pooled request (old space:
 * a remembered-set insertion, 3-4 ns); a failure resolves the promise with a Rejection instead.
 */
let executorTarget: Request | null = null;
function executor(resolve: (value: number | PromiseLike<number>) => void): void {
  executorTarget!.resolve = resolve;
}

/**
 * The promise of `r`. A function of its own, optimized for this path alone: where start() was
 * first optimized for the callback API, the inlined constructor built the reject function too
 * (56 B more per promise I/O in bench:native's QD1 case after its callback case).
 */
function promiseFor(r: Request): Promise<number> {
  executorTarget = r;
  const promise = new Promise<number>(executor);
  executorTarget = null;
  return promise;
}

/** A thenable that rejects whatever adopts it with `error` (a promise resolved with it rejects). */
class Rejection {
  constructor(private readonly error: Error) {}

  then(_onFulfilled: unknown, onRejected: (reason: Error) => void): void {
    onRejected(this.error);
  }
}

const SLOT_FREE = 0;
const SLOT_BUSY = 1;
/** Timed out: failed towards the caller, but the CID stays taken until the controller answers or resets. */
const SLOT_ABANDONED = 2;

export class NvmeQueue {
  /** Commands the queue holds at most (its SQ has depth + 1 entries). */
  readonly depth: number;
  /** SQ entries (depth + 1). */
  readonly entries: number;
  /**
   * CQ entries: room for twice the depth (at least a page) where the controller allows, so a
   * polled queue can acknowledge completions (CQ head doorbell, an MMIO write) once per
   * cqEntries - 1 - depth of them instead of once per pass, without the CQ ever filling.
   */
  readonly cqEntries: number;
  private readonly ackThreshold: number;
  private unacked = 0;
  private readonly sqMem: QueueMemory;
  private readonly cqMem: QueueMemory;
  private readonly sq: Uint32Array;
  private readonly cq: Uint32Array;
  private readonly sqDoorbell: number;
  private readonly cqDoorbell: number;
  private sqTail = 0;
  private cqHead = 0;
  private phase = CQE_PHASE;

  private readonly slotReq: (Request | null)[];
  private readonly slotState: Uint8Array;
  private readonly slotEpoch: Int32Array;
  /** Bounce path: where a slot's chunk goes in the caller's view (reads copy back on completion). */
  private readonly slotViewOffset: Float64Array;
  private readonly slotLength: Int32Array;
  private readonly freeSlots: Int32Array;
  private freeTop: number;
  private busy = 0;

  private readonly prpMem: QueueMemory | null;
  private readonly prp: Uint32Array | null;
  private readonly prpSlotBytes: number;
  /** Controller page size - 1 (a power of two). */
  private readonly pageMask: number;
  /** Hands an IOVA to and from prpList (see writeCommand); 0.5 makes it a double field from the start, updated in place. */
  private listIova = 0.5;
  private bounceMem: QueueMemory | null = null;
  private bounce: Uint8Array | null = null;
  private bounceViews: (Uint8Array | null)[] = [];
  private bounceChunkBytes = 0;
  /** zeroCopyChunk's last answer. */
  private chunkBlockSize = 0;
  private chunkBytes = 0;
  private dsmMem: QueueMemory | null = null;
  private dsm: Uint32Array | null = null;

  private pool: Request | null = null;
  private waitHead: Request | null = null;
  private waitTail: Request | null = null;

  private plugged = 0;
  /** Held by a polling pass until its callers' continuations have run (see reap). */
  private autoPlugged = false;
  /** Commands written since the last SQ doorbell. */
  private unrung = 0;
  private readonly doorbellEvery: number;
  private readonly unplugAutoBound = () => {
    try {
      this.unplugAuto();
    } catch (err) {
      rethrowUncaught(err);
    }
  };
  private sqDirty = false;
  private reaping = false;
  private pollScheduled = false;
  /** Polling passes chained as microtasks since the last event-loop turn. */
  private burst = 0;
  private inPoll = false;
  private readonly pollBurst: number;
  private suspended = false;
  private deadReason: Error | null = null;
  private vector: InterruptVector | null = null;
  private vectorRefd = false;
  private readonly pollSpinMs: number;
  private readonly timeoutMs: number;
  private readonly epochLimit: number;
  private epoch = 0;
  private completedAtTick = 0;
  private timer: NodeJS.Timeout | null = null;

  private readonly pollTickBound = () => {
    try {
      this.pollTick();
    } catch (err) {
      rethrowUncaught(err); // a caller's callback threw: as it would from queueMicrotask
    }
  };
  private readonly pollLoopBound = () => {
    this.burst = 0;
    this.pollTick();
  };
  private readonly onInterruptBound = () => this.onInterrupt();
  private readonly onVectorCloseBound = () => this.onVectorClose();

  /** Commands completed since creation. */
  completed = 0;
  /** SQ tail doorbell writes since creation (a batch of n commands costs one). */
  doorbells = 0;
  /** Poll passes that found the completion queue empty after spinning. */
  emptyPolls = 0;
  /** Milliseconds spent spinning on an empty completion queue (waiting for the device). */
  spinMs = 0;

  constructor(
    /** The controller the queue belongs to (a namespace refuses another's queue). */
    readonly host: QueueHost,
    /** Queue identifier: 0 is the admin queue. */
    readonly qid: number,
    depth: number,
    private readonly tuning: QueueTuning = {},
    /** The PRP list area: only queues that move data through PRP lists need one. */
    withPrpLists = true,
  ) {
    this.depth = depth;
    this.entries = depth + 1;
    // The admin CQ size field (AQA) has 12 bits.
    const cqLimit = qid === 0 ? Math.min(4096, host.maxQueueEntries) : host.maxQueueEntries;
    // At least a page of entries (256): even a depth-1 queue then acknowledges rarely.
    this.cqEntries = Math.max(this.entries, Math.min(Math.max(2 * depth + 1, 4096 / CQE_SIZE), cqLimit));
    // Occupancy seen by the controller is at most unacked + outstanding (<= depth): stay below cqEntries - 1.
    this.ackThreshold = tuning.cqAckBatch === false ? 1 : Math.max(1, this.cqEntries - 1 - depth);
    this.sqMem = host.allocDma(this.entries * SQE_SIZE);
    this.cqMem = host.allocDma(this.cqEntries * CQE_SIZE);
    this.sq = new Uint32Array(this.sqMem.buffer);
    this.cq = new Uint32Array(this.cqMem.buffer);
    this.cq.fill(0);
    this.sqDoorbell = REG_DOORBELL_BASE + 2 * qid * host.doorbellStride;
    this.cqDoorbell = REG_DOORBELL_BASE + (2 * qid + 1) * host.doorbellStride;

    this.slotReq = new Array<Request | null>(depth).fill(null);
    this.slotState = new Uint8Array(depth);
    this.slotEpoch = new Int32Array(depth);
    this.slotViewOffset = new Float64Array(depth);
    this.slotLength = new Int32Array(depth);
    this.freeSlots = new Int32Array(depth);
    for (let i = 0; i < depth; i++) this.freeSlots[i] = depth - 1 - i;
    this.freeTop = depth;

    // PRP lists: a transfer of maxTransfer bytes starting mid-page touches maxTransfer/page + 1
    // pages; PRP1 takes the first, the list the rest. Lists that fit a page get a power-of-two
    // share of one (never straddling a page); longer ones get whole pages chained by their last entry.
    const page = host.pageSize;
    this.pageMask = page - 1;
    const entries = host.maxTransfer / page + 1;
    const perPage = page / 8;
    this.prpSlotBytes = entries * 8 <= page ? nextPow2(entries * 8) : Math.ceil(entries / (perPage - 1)) * page;
    if (withPrpLists && entries > 2) {
      this.prpMem = host.allocDma(this.prpSlotBytes * depth);
      this.prp = new Uint32Array(this.prpMem.buffer);
    } else {
      this.prpMem = null;
      this.prp = null;
    }

    this.timeoutMs = tuning.timeoutMs ?? 30_000;
    // Also the period of the stall check (CSTS read while nothing completes): keep it short.
    const tickMs = Math.max(10, Math.min(250, Math.floor(this.timeoutMs / 4)));
    this.epochLimit = Math.ceil(this.timeoutMs / tickMs);
    this.pollSpinMs = (tuning.pollSpinUs ?? 50) / 1000;
    this.pollBurst = tuning.pollBurst ?? 64;
    this.doorbellEvery = tuning.doorbellEvery ?? Math.max(1, Math.floor(depth / 2));
    this.timer = setInterval(() => this.tick(), tickMs);
    this.timer.unref();
  }

  /** IOVAs the controller needs to create the queue. */
  get sqIova(): number {
    return this.sqMem.iova;
  }

  get cqIova(): number {
    return this.cqMem.iova;
  }

  /** Commands submitted and not completed. */
  get outstanding(): number {
    return this.busy;
  }

  /** The MSI-X vector completions arrive on, or null when the queue polls. */
  get interruptVector(): InterruptVector | null {
    return this.vector;
  }

  get mode(): 'poll' | 'interrupt' {
    return this.vector ? 'interrupt' : 'poll';
  }

  // ---------------------------------------------------------------- submission API

  /**
   * Read or write `length` bytes at `lba`, from/to IOVA `iova` (zero copy; -1 with `view` for the
   * bounce path). Returns a promise, or undefined when `callback` is given (no promise at all).
   * The caller (NvmeNamespace) has validated range and alignment.
   */
  rw(opcode: number, nsid: number, blockSize: number, lba: number, iova: number, view: Uint8Array | null, length: number,
    cdw12Flags: number, callback: CompletionCallback | null): Promise<number> | undefined {
    // Small enough to be inlined into the caller: the IOVA (a double above 2^30) goes straight
    // into its field instead of being boxed as an argument of a call.
    const r = this.take();
    r.kind = KIND_RW;
    r.opcode = opcode;
    r.nsid = nsid;
    r.blockSize = blockSize;
    r.lba = lba;
    r.iova = iova;
    r.view = view;
    r.length = length;
    r.cdw12Flags = cdw12Flags;
    if (view !== null) this.prepareBounce(r, blockSize);
    else r.chunk = blockSize === this.chunkBlockSize ? this.chunkBytes : this.zeroCopyChunk(blockSize);
    return this.start(r, callback);
  }

  private prepareBounce(r: Request, blockSize: number): void {
    if (this.deadReason === null) {
      try {
        this.ensureBounce(blockSize);
      } catch (err) {
        r.failure = err as Error;
      }
    }
    r.chunk = this.bounceChunkBytes;
  }

  /** Zero-copy bytes per command for this block size (the last size asked is remembered). */
  private zeroCopyChunk(blockSize: number): number {
    const max = Math.min(this.host.maxTransfer, 0x10000 * blockSize);
    this.chunkBlockSize = blockSize;
    this.chunkBytes = max - (max % blockSize);
    return this.chunkBytes;
  }

  /** Write Zeroes over `blocks` blocks (no data moves). */
  writeZeroes(nsid: number, blockSize: number, lba: number, blocks: number, callback: CompletionCallback | null): Promise<number> | undefined {
    const r = this.take();
    r.kind = KIND_RW;
    r.opcode = NVM_WRITE_ZEROES;
    r.nsid = nsid;
    r.blockSize = blockSize;
    r.lba = lba;
    r.iova = 0;
    r.view = null;
    r.length = blocks * blockSize;
    r.chunk = 0x10000 * blockSize;
    return this.start(r, callback);
  }

  /** Dataset Management (deallocate) over `blocks` blocks: one range per command. */
  deallocate(nsid: number, lba: number, blocks: number, callback: CompletionCallback | null): Promise<number> | undefined {
    const r = this.take();
    if (this.dsm === null && this.deadReason === null) {
      try {
        this.dsmMem = this.host.allocDma(this.depth * DSM_RANGE_SIZE);
        this.dsm = new Uint32Array(this.dsmMem.buffer);
      } catch (err) {
        r.failure = err as Error;
      }
    }
    r.kind = KIND_DSM;
    r.opcode = NVM_DATASET_MANAGEMENT;
    r.nsid = nsid;
    r.lba = lba;
    r.length = blocks;
    r.chunk = 0xffffffff;
    return this.start(r, callback);
  }

  /** Any single command: opcode, nsid, dwords 10..15, and one data buffer by IOVA (0 length: none). */
  command(opcode: number, nsid: number, cdw10: number, cdw11: number, cdw12: number, cdw13: number, cdw14: number, cdw15: number,
    dataIova: number, dataLength: number, callback: CompletionCallback | null = null): Promise<number> | undefined {
    const r = this.take();
    r.kind = KIND_RAW;
    r.opcode = opcode;
    r.nsid = nsid;
    r.cdw10 = cdw10;
    r.cdw11 = cdw11;
    r.cdw12 = cdw12;
    r.cdw13 = cdw13;
    r.cdw14 = cdw14;
    r.cdw15 = cdw15;
    r.iova = dataIova;
    r.view = null;
    r.dataLength = dataLength;
    r.length = 1;
    r.chunk = 1;
    return this.start(r, callback);
  }

  /**
   * Hold doorbells: commands submitted until the matching unplug() go out with one doorbell.
   * Nests.
   */
  plug(): void {
    this.plugged++;
  }

  unplug(): void {
    if (this.plugged > 0) this.plugged--;
    if (this.plugged === 0 && this.sqDirty && this.deadReason === null) this.ringSq();
  }

  /** Run `fn` plugged: every command it submits shares one doorbell. */
  batch<T>(fn: () => T): T {
    this.plug();
    try {
      return fn();
    } finally {
      this.unplug();
    }
  }

  // ---------------------------------------------------------------- completion

  /**
   * Take every completion the controller posted; returns how many. Polling callers may drive
   * this themselves (e.g. from a tight loop of their own); the queue also calls it.
   */
  poll(): number {
    return this.reap(false);
  }

  /**
   * Take completions. Callbacks run inside; promise continuations run after. Commands submitted
   * meanwhile share one doorbell: rung at the end here (`deferUnplug` false), or, when the event
   * loop drives us, in a microtask queued behind the continuations the completions released.
   */
  private reap(deferUnplug: boolean): number {
    if (this.reaping || this.deadReason !== null) return 0;
    this.reaping = true;
    let n = 0;
    const cq = this.cq;
    try {
      // A caller's callback may close the controller (which frees this memory): stop then.
      while (this.deadReason === null) {
        const head = this.cqHead;
        // The status word is read once, full width, before the rest of the entry. On x86 a plain
        // load does that (Atomics.load is a builtin call in Node 20): V8 cannot narrow it to a
        // byte test, as the value has three uses (phase, CID, status), x86 keeps loads in order,
        // and test/unit/v8-codegen.test.ts checks the optimized code. Elsewhere: Atomics (acquire).
        const dw3 = PLAIN_CQ_LOAD ? cq[head * 4 + 3]! : Atomics.load(cq, head * 4 + 3);
        if ((dw3 & CQE_PHASE) !== this.phase) break;
        const result = cq[head * 4]!;
        if (head + 1 === this.cqEntries) {
          this.cqHead = 0;
          this.phase ^= CQE_PHASE;
        } else {
          this.cqHead = head + 1;
        }
        // A queue whose reactions ring at once (doorbellEvery 1: depth 3 or less) holds nothing,
        // and needs no microtask to release it (a then(): 96 B per pass, per I/O at QD1).
        if (n === 0 && deferUnplug && !this.autoPlugged) this.autoPlugged = this.doorbellEvery > 1;
        else if (n === 0 && !deferUnplug) this.plugged++;
        n++;
        this.complete(dw3 & 0xffff, dw3 >>> 17, result);
      }
    } catch (err) {
      // The queue memory went away under us (device released without the controller hearing of
      // it: its views are detached): that is the device being gone, not a bug to surface.
      if (!this.memoryLost()) throw err;
      this.reaping = false;
      this.host.queueFault(this, err as Error);
      return n;
    } finally {
      this.reaping = false;
      if (n > 0 && this.deadReason === null) {
        // Consistent even when a caller's callback threw: every entry taken counts. Interrupt
        // queues acknowledge every pass; polled ones once the threshold is reached.
        this.unacked += n;
        if (this.vector !== null || this.unacked >= this.ackThreshold) {
          this.unacked = 0;
          this.ringCq();
        }
        this.completed += n;
        if (this.waitHead !== null) this.pump();
        if (deferUnplug) {
          if (this.autoPlugged) void RESOLVED.then(this.unplugAutoBound);
        } else {
          this.unplug();
        }
      }
    }
    if (this.busy === 0 && this.vectorRefd) this.refVector(false);
    return n;
  }

  // ---------------------------------------------------------------- completion modes

  /** Take completions from this MSI-X vector (the controller created the CQ with it). */
  attachVector(vector: InterruptVector): void {
    this.detachVector();
    this.vector = vector;
    vector.on('interrupt', this.onInterruptBound);
    vector.once('close', this.onVectorCloseBound);
    if (this.busy > 0) this.refVector(true);
    this.poll();
  }

  /** Back to polling (the CQ may still raise its vector; nobody listens). */
  detachVector(): void {
    const v = this.vector;
    if (!v) return;
    if (this.vectorRefd) this.refVector(false);
    v.off('interrupt', this.onInterruptBound);
    v.off('close', this.onVectorCloseBound);
    this.vector = null;
    if (this.busy > 0) this.schedulePoll();
  }

  // ---------------------------------------------------------------- lifecycle (controller)

  /** @internal Stop submitting (controller reset in progress); requests wait. */
  suspend(): void {
    this.suspended = true;
  }

  /**
   * @internal Fail every command the controller holds (it is being reset or is gone); requests
   * not yet started keep waiting for resume(), unless `failWaiting`.
   */
  abortAll(error: Error, failWaiting: boolean): void {
    const done: Request[] = [];
    for (let cid = 0; cid < this.depth; cid++) {
      const state = this.slotState[cid]!;
      if (state === SLOT_FREE) continue;
      const r = this.slotReq[cid];
      this.releaseSlot(cid);
      if (state === SLOT_BUSY && r !== null) {
        if (r.failure === null) r.failure = error;
        r.pending--;
        if (r.pending === 0 && r.done === r.length) done.push(r);
      }
    }
    // Waiting requests already partly sent cannot be half-redone: they fail too.
    let prev: Request | null = null;
    for (let r = this.waitHead; r !== null;) {
      const next: Request | null = r.next;
      if (failWaiting || r.done > 0) {
        if (prev === null) this.waitHead = next;
        else prev.next = next;
        if (this.waitTail === r) this.waitTail = prev;
        r.next = null;
        if (r.failure === null) r.failure = error;
        if (r.pending === 0) done.push(r);
      } else {
        prev = r;
      }
      r = next;
    }
    // A caller's callback that throws must not leave the others unsettled: report it afterwards.
    for (const r of done) {
      try {
        this.finish(r);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }

  /** @internal The controller was reset: the rings start over (recreate the queue, then resume). */
  resetRings(): void {
    this.sqTail = 0;
    this.cqHead = 0;
    this.phase = CQE_PHASE;
    this.cq.fill(0);
    this.sqDirty = false;
    this.unrung = 0;
    this.unacked = 0;
  }

  /** @internal Submissions may go again. */
  resume(): void {
    this.suspended = false;
    this.pump();
  }

  /** @internal Fail everything for good and free the memory (queue deleted, controller closed or gone). */
  destroy(error: Error): void {
    if (this.deadReason) return;
    // Dead first: callers told below may submit again, and must be refused, not queued.
    this.deadReason = error;
    this.detachVector();
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    for (const m of [this.sqMem, this.cqMem, this.prpMem, this.bounceMem, this.dsmMem]) {
      if (m && !m.freed) {
        try {
          m.free();
        } catch {
          // The device (and its DMA space) may be closed already.
        }
      }
    }
    this.abortAll(error, true);
  }

  get destroyed(): boolean {
    return this.deadReason !== null;
  }

  // ---------------------------------------------------------------- internals

  private take(): Request {
    const r = this.pool;
    if (r !== null) {
      this.pool = r.next;
      r.next = null;
      return r;
    }
    return new Request();
  }

  private release(r: Request): void {
    r.view = null;
    r.resolve = null;
    r.callback = null;
    r.failure = null;
    r.status = 0;
    r.result = 0;
    r.pending = 0;
    r.done = 0;
    r.cdw12Flags = 0;
    r.dataLength = 0;
    r.next = this.pool;
    this.pool = r;
  }

  private start(r: Request, callback: CompletionCallback | null): Promise<number> | undefined {
    let promise: Promise<number> | undefined;
    if (callback !== null) {
      r.callback = callback;
    } else {
      promise = promiseFor(r);
    }
    if (this.deadReason !== null || r.failure !== null) {
      r.failure ??= this.deadReason;
      if (callback === null) {
        this.finish(r);
      } else {
        // Never call back from inside the submitting call (a caller that resubmits on error
        // would recurse): the error arrives on the microtask queue, as completions do.
        const error = r.failure!;
        this.release(r);
        queueMicrotask(() => callback(error, 0));
      }
      return promise;
    }
    if (this.waitHead === null && this.freeTop > 0 && !this.suspended) {
      // Nothing waits and a slot is free (the common case): straight into the SQ, without the
      // wait list and two calls (a few ns per I/O natively).
      try {
        this.writeCommand(r, this.freeSlots[--this.freeTop]!);
        // A request that takes more commands waits for the rest at the head of the list.
        if (r.done < r.length) {
          this.waitHead = this.waitTail = r;
          if (this.freeTop > 0) {
            this.pumpWaiting(); // writes at least one more command, then does what wrote() does
            return promise;
          }
        }
        this.wrote();
      } catch (err) {
        // As in pump(); a request no slot holds yet waits, so the queue's destruction fails it.
        if (r.pending === 0 && this.waitHead !== r) {
          if (this.waitTail === null) this.waitHead = r;
          else this.waitTail.next = r;
          this.waitTail = r;
        }
        this.host.queueFault(this, err as Error);
      }
      return promise;
    }
    // FIFO: behind whatever already waits, so big requests cannot be overtaken forever.
    if (this.waitTail === null) this.waitHead = r;
    else this.waitTail.next = r;
    this.waitTail = r;
    this.pump();
    return promise;
  }

  /** Hand waiting requests to free slots; one doorbell for all of it. */
  private pump(): void {
    if (this.suspended || this.deadReason !== null) return;
    try {
      this.pumpWaiting();
    } catch (err) {
      // Bounce memory detached or a doorbell refused: the device is gone (the controller
      // decides), and every request here is failed by the queue's destruction.
      this.host.queueFault(this, err as Error);
    }
  }

  private pumpWaiting(): void {
    let wrote = false;
    let r = this.waitHead;
    while (r !== null && this.freeTop > 0) {
      if (r.failure !== null || r.status !== 0) {
        // A part already failed: send no more of it; it finishes when its parts in flight do.
        this.waitHead = r.next;
        if (this.waitHead === null) this.waitTail = null;
        r.next = null;
        r.done = r.length;
        if (r.pending === 0) this.finish(r);
        r = this.waitHead;
        continue;
      }
      const cid = this.freeSlots[--this.freeTop]!;
      this.writeCommand(r, cid);
      wrote = true;
      if (r.done >= r.length) {
        this.waitHead = r.next;
        if (this.waitHead === null) this.waitTail = null;
        r.next = null;
        r = this.waitHead;
      }
    }
    if (wrote) this.wrote();
  }

  /** Commands were written to the SQ: the doorbell (now or held), and completions looked for. */
  private wrote(): void {
    if (this.plugged > 0) this.sqDirty = true;
    else if (this.autoPlugged && this.unrung < this.doorbellEvery) this.sqDirty = true;
    else this.ringSq();
    if (this.vector === null) this.schedulePoll();
    else if (!this.vectorRefd) this.refVector(true);
  }

  private unplugAuto(): void {
    this.autoPlugged = false;
    if (this.plugged === 0 && this.sqDirty && this.deadReason === null) this.ringSq();
  }

  private ringSq(): void {
    this.sqDirty = false;
    this.unrung = 0;
    this.doorbells++;
    try {
      this.host.regs.write32(this.sqDoorbell, this.sqTail);
    } catch (err) {
      this.host.queueFault(this, err as Error);
    }
  }

  private ringCq(): void {
    try {
      this.host.regs.write32(this.cqDoorbell, this.cqHead);
    } catch (err) {
      this.host.queueFault(this, err as Error);
    }
  }

  /** Our DMA memory was released (the device closed or removed): its views are detached. */
  private memoryLost(): boolean {
    return this.cqMem.freed || this.sqMem.freed || (this.bounceMem !== null && this.bounceMem.freed);
  }

  /** Build the next command of `r` in slot `cid` at the SQ tail. */
  private writeCommand(r: Request, cid: number): void {
    const sq = this.sq;
    const b = this.sqTail * 16;
    let dataIova = 0;
    let dataLength = 0;
    let cdw10 = 0;
    let cdw11 = 0;
    let cdw12 = 0;
    let cdw13 = 0;
    let cdw14 = 0;
    let cdw15 = 0;
    let n: number;
    if (r.kind === KIND_RW) {
      const blockSize = r.blockSize;
      n = r.length - r.done;
      if (n > r.chunk) n = r.chunk;
      const lba = r.done === 0 ? r.lba : r.lba + r.done / blockSize;
      cdw10 = lba >>> 0;
      if (lba > 0xffffffff) cdw11 = (lba - cdw10) / TWO32;
      cdw12 = ((n / blockSize - 1) | r.cdw12Flags) >>> 0;
      if (r.opcode !== NVM_WRITE_ZEROES) {
        dataLength = n;
        if (r.view !== null) {
          const off = cid * this.bounceChunkBytes;
          dataIova = this.bounceMem!.iova + off;
          this.slotViewOffset[cid] = r.done;
          if (r.opcode === NVM_WRITE) this.copyIn(r.view, r.done, n, off);
        } else {
          dataIova = r.iova + r.done;
          // Never more pages than maxTransfer / page: an unaligned start costs one extra
          // command rather than one extra page (QEMU refuses commands of over 1024 pages).
          // (n is a whole number of blocks: at most the raw limit means at most the rounded one.)
          let limit = this.host.maxTransfer - pageOffset(dataIova, this.pageMask);
          if (n > limit) {
            limit -= limit % blockSize;
            if (limit < blockSize) limit = blockSize;
            if (n > limit) {
              n = limit;
              cdw12 = ((n / blockSize - 1) | r.cdw12Flags) >>> 0;
            }
          }
          dataLength = n;
        }
      }
    } else if (r.kind === KIND_DSM) {
      n = r.length - r.done;
      if (n > r.chunk) n = r.chunk;
      const lba = r.lba + r.done;
      const d = this.dsm!;
      const o = cid * 4;
      d[o] = 0; // context attributes
      d[o + 1] = n; // length in blocks
      d[o + 2] = lba >>> 0;
      d[o + 3] = (lba - (lba >>> 0)) / TWO32;
      dataIova = this.dsmMem!.iova + cid * DSM_RANGE_SIZE;
      dataLength = DSM_RANGE_SIZE;
      cdw10 = 0; // one range (0's based)
      cdw11 = DSM_DEALLOCATE;
    } else {
      n = 1;
      dataIova = r.iova;
      dataLength = r.dataLength;
      cdw10 = r.cdw10;
      cdw11 = r.cdw11;
      cdw12 = r.cdw12;
      cdw13 = r.cdw13;
      cdw14 = r.cdw14;
      cdw15 = r.cdw15;
    }
    r.done += n;
    r.pending++;
    this.slotReq[cid] = r;
    this.slotState[cid] = SLOT_BUSY;
    this.slotEpoch[cid] = this.epoch;
    this.slotLength[cid] = r.kind === KIND_RW ? n : 0;
    this.busy++;

    let prp1Lo = 0;
    let prp1Hi = 0;
    let prp2Lo = 0;
    let prp2Hi = 0;
    if (dataLength > 0) {
      prp1Lo = dataIova >>> 0;
      if (dataIova > 0xffffffff) prp1Hi = (dataIova - prp1Lo) / TWO32;
      // PRP2: nothing when the transfer fits the first page, the second page when it ends
      // there, else the slot's PRP list (built by prpList, which takes the IOVA from a field:
      // a double passed as an argument would be boxed, 16 bytes per command).
      const first = this.pageMask + 1 - pageOffset(dataIova, this.pageMask);
      if (dataLength > first) {
        let prp2: number;
        if (dataLength <= first + this.pageMask + 1) {
          prp2 = dataIova + first;
        } else {
          this.listIova = dataIova;
          this.prpList(cid, dataLength, first);
          prp2 = this.listIova;
        }
        prp2Lo = prp2 >>> 0;
        if (prp2 > 0xffffffff) prp2Hi = (prp2 - prp2Lo) / TWO32;
      }
    }
    sq[b] = (r.opcode | (cid << 16)) >>> 0;
    sq[b + 1] = r.nsid;
    sq[b + 2] = 0;
    sq[b + 3] = 0;
    sq[b + 4] = 0;
    sq[b + 5] = 0;
    sq[b + 6] = prp1Lo;
    sq[b + 7] = prp1Hi;
    sq[b + 8] = prp2Lo;
    sq[b + 9] = prp2Hi;
    sq[b + 10] = cdw10;
    sq[b + 11] = cdw11;
    sq[b + 12] = cdw12;
    sq[b + 13] = cdw13;
    sq[b + 14] = cdw14;
    sq[b + 15] = cdw15;
    if (++this.sqTail === this.entries) this.sqTail = 0;
    this.unrung++;
  }

  /**
   * The slot's PRP list for a transfer of `length` bytes at `this.listIova` whose first page
   * holds `first` of them: entries for every further page (a list longer than a page continues
   * in the next page through its last entry). Leaves the list's IOVA (PRP2) in `this.listIova`.
   */
  private prpList(cid: number, length: number, first: number): void {
    const page = this.pageMask + 1;
    const list = this.prp!;
    const listBase = this.prpMem!.iova + cid * this.prpSlotBytes;
    let w = (cid * this.prpSlotBytes) >>> 2;
    let at = listBase;
    let addr = this.listIova + first;
    let remaining = length - first;
    while (remaining > 0) {
      let v: number;
      if (pageOffset(at, this.pageMask) === page - 8 && remaining > page) {
        v = at + 8; // chain to the next list page
      } else {
        v = addr;
        addr += page;
        remaining -= page;
      }
      const lo = v >>> 0;
      list[w] = lo;
      list[w + 1] = (v - lo) / TWO32;
      w += 2;
      at += 8;
    }
    this.listIova = listBase;
  }

  private complete(cid: number, status: number, result: number): void {
    if (cid >= this.depth) return; // not ours: a controller bug; the timeout path will tell
    const state = this.slotState[cid]!;
    if (state === SLOT_FREE) return;
    const r = this.slotReq[cid]!;
    this.releaseSlot(cid);
    if (state === SLOT_ABANDONED) return; // its caller was already told it timed out
    if (status !== 0) {
      if (r.status === 0) r.status = status;
    } else if (r.view !== null && r.opcode === NVM_READ && r.failure === null) {
      // The slot's chunk stays as it is until the slot is reused (nothing submits before this).
      this.copyOut(r.view, this.slotViewOffset[cid]!, this.slotLength[cid]!, cid * this.bounceChunkBytes, cid);
    }
    r.result = result;
    if (--r.pending === 0 && r.done >= r.length) this.finish(r);
  }

  private releaseSlot(cid: number): void {
    this.slotReq[cid] = null;
    this.slotState[cid] = SLOT_FREE;
    this.freeSlots[this.freeTop++] = cid;
    this.busy--;
  }

  private finish(r: Request): void {
    let error = r.failure;
    if (error === null && r.status !== 0) error = this.statusError(r);
    const result = r.result;
    const callback = r.callback;
    const resolve = r.resolve;
    this.release(r);
    if (callback !== null) callback(error, result);
    else if (error !== null) resolve!(new Rejection(error) as unknown as PromiseLike<number>);
    else resolve!(result);
  }

  private statusError(r: Request): Error {
    const admin = this.qid === 0;
    const what = opcodeName(admin, r.opcode);
    const where = r.kind === KIND_RAW
      ? `${this.host.name} ${admin ? 'admin' : `queue ${this.qid}`}`
      : `${this.host.name} namespace ${r.nsid}, LBA ${r.lba}` + (r.kind === KIND_DSM ? ` (+${r.length} blocks)` : ` (+${r.length / r.blockSize} blocks)`);
    return new NvmeStatusError(what, r.status, where);
  }

  private ensureBounce(blockSize: number): void {
    if (this.bounce !== null && this.bounceChunkBytes % blockSize === 0) return;
    if (this.bounceMem !== null) {
      if (this.busy > 0) throw new UserpciError('EBUSY', `${this.host.name} queue ${this.qid}: bounce memory cannot be resized while commands are outstanding`);
      this.bounceMem.free();
    }
    // At most 8 MiB of bounce memory per queue, at least one block per slot.
    const page = this.host.pageSize;
    let chunk = Math.min(this.tuning.bounceChunk ?? 128 * 1024, this.host.maxTransfer, Math.floor((8 << 20) / this.depth / page) * page);
    chunk = Math.max(chunk - (chunk % blockSize), blockSize);
    this.bounceChunkBytes = chunk;
    this.bounceMem = this.host.allocDma(chunk * this.depth);
    this.bounce = new Uint8Array(this.bounceMem.buffer);
    this.bounceViews = new Array<Uint8Array | null>(this.depth).fill(null);
  }

  private copyIn(view: Uint8Array, offset: number, length: number, bounceOffset: number): void {
    if (offset === 0 && length === view.byteLength) this.bounce!.set(view, bounceOffset);
    else this.bounce!.set(view.subarray(offset, offset + length), bounceOffset);
  }

  private copyOut(view: Uint8Array, offset: number, length: number, bounceOffset: number, cid: number): void {
    // One cached view per slot: steady-state reads of one size allocate nothing here.
    let src = this.bounceViews[cid];
    if (src === null || src === undefined || src.byteLength !== length) {
      src = new Uint8Array(this.bounce!.buffer, bounceOffset, length);
      this.bounceViews[cid] = src;
    }
    view.set(src, offset);
  }

  /**
   * Polling passes chain as microtasks (an event-loop turn costs far more than a pass: 15 µs
   * against a few µs in a TCG guest), each after the continuations the previous pass released,
   * so it sees what they submitted. A pass that waited its whole spin budget for nothing, or
   * `pollBurst` passes in a row, hand over to the event loop (timers, sockets) via setImmediate.
   */
  private schedulePoll(): void {
    // Inside a pass, the pass schedules the next one itself, after the doorbell microtask.
    if (this.pollScheduled || this.inPoll) return;
    this.pollScheduled = true;
    if (this.burst < this.pollBurst) {
      this.burst++;
      void RESOLVED.then(this.pollTickBound);
    } else {
      setImmediate(this.pollLoopBound);
    }
  }

  /** One polling pass: take completions, spinning a little if there are none yet. */
  private pollTick(): void {
    this.pollScheduled = false;
    if (this.vector !== null || this.deadReason !== null) return;
    if (this.busy === 0) return;
    this.inPoll = true;
    try {
      this.pollPass();
    } finally {
      this.inPoll = false;
    }
    if (this.busy > 0) this.schedulePoll();
  }

  private pollPass(): void {
    let n = this.reap(true);
    if (n === 0 && this.pollSpinMs > 0) {
      // Plain reads of the phase word (RAM; the compiler does not hoist a polling load out of a
      // loop with calls in it); the full entry is read by reap.
      const cq = this.cq;
      const at = this.cqHead * 4 + 3;
      const phase = this.phase;
      // A short spin without the clock first (reading it costs as much as ten reads here).
      let found = false;
      for (let i = 0; i < 32; i++) {
        if ((cq[at]! & CQE_PHASE) === phase) {
          found = true;
          break;
        }
      }
      if (!found) {
        const start = performance.now();
        const deadline = start + this.pollSpinMs;
        let now = start;
        for (let i = 1; ; i++) {
          if ((cq[at]! & CQE_PHASE) === phase) break;
          if ((i & 15) === 0 && (now = performance.now()) > deadline) break;
        }
        if (now === start) now = performance.now();
        this.spinMs += now - start;
      }
      n = this.reap(true);
    }
    if (n === 0) {
      this.emptyPolls++;
      this.burst = this.pollBurst; // the device is slow right now: let the event loop run
    }
  }

  private onInterrupt(): void {
    this.reap(true);
  }

  private onVectorClose(): void {
    // Its MSI-X vector was switched off (fewer vectors enabled): fall back to polling.
    if (this.vector === null) return;
    this.vectorRefd = false;
    this.vector.off('interrupt', this.onInterruptBound);
    this.vector = null;
    if (this.busy > 0) this.schedulePoll();
  }

  /** While commands are outstanding, the vector keeps the process alive (as a pending poll would). */
  private refVector(on: boolean): void {
    const v = this.vector;
    if (!v || v.closed) {
      this.vectorRefd = false;
      return;
    }
    this.vectorRefd = on;
    if (on) v.ref();
    else v.unref();
  }

  /** Coarse clock for timeouts; also a safety net for a lost interrupt. */
  private tick(): void {
    this.epoch++;
    if (this.busy === 0 || this.deadReason !== null) {
      this.completedAtTick = this.completed;
      return;
    }
    if (this.vector !== null) this.poll();
    if (this.completed === this.completedAtTick && this.busy > 0) this.host.queueStalled(this);
    this.completedAtTick = this.completed;
    if (this.deadReason !== null || this.suspended) return;
    let expired = false;
    for (let cid = 0; cid < this.depth; cid++) {
      if (this.slotState[cid] !== SLOT_BUSY) continue;
      if (this.epoch - this.slotEpoch[cid]! < this.epochLimit) continue;
      const r = this.slotReq[cid]!;
      this.slotState[cid] = SLOT_ABANDONED;
      this.slotReq[cid] = null;
      expired = true;
      if (r.failure === null) {
        const what = opcodeName(this.qid === 0, r.opcode);
        r.failure = new UserpciError('ETIMEDOUT', `${this.host.name} ${this.qid === 0 ? 'admin queue' : `queue ${this.qid}`}: ${what} (CID ${cid}) not completed within ${this.timeoutMs} ms`);
      }
      if (--r.pending === 0 && r.done >= r.length) {
        // Out of the wait list if it was still there (partly submitted).
        this.unlinkWaiting(r);
        this.finish(r);
      }
    }
    if (expired) this.host.queueTimedOut(this);
  }

  private unlinkWaiting(target: Request): void {
    let prev: Request | null = null;
    for (let r = this.waitHead; r !== null; prev = r, r = r.next) {
      if (r !== target) continue;
      if (prev === null) this.waitHead = r.next;
      else prev.next = r.next;
      if (this.waitTail === r) this.waitTail = prev;
      r.next = null;
      return;
    }
  }

  /** @internal Readable state for tests and diagnostics. */
  debugState(): { sqTail: number; cqHead: number; phase: number; busy: number; free: number; waiting: number } {
    let waiting = 0;
    for (let r = this.waitHead; r !== null; r = r.next) waiting++;
    return { sqTail: this.sqTail, cqHead: this.cqHead, phase: this.phase >>> 16, busy: this.busy, free: this.freeTop, waiting };
  }
}

/**
 * `iova % pageSize` for a power-of-two page: the low 32 bits decide it, and `>>> 0` takes them
 * exactly for any integer below 2^53 (`%` on a double above 2^31 is a slow fprem loop).
 */
function pageOffset(iova: number, pageMask: number): number {
  return (iova >>> 0) & pageMask;
}

function nextPow2(n: number): number {
  let p = 8;
  while (p < n) p *= 2;
  return p;
}

