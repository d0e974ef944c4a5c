/**
 * One ublk queue: its own io_uring on /dev/ublkcN, `depth` tags, each with an I/O buffer whose
 * address rides in every FETCH/COMMIT_AND_FETCH command (the kernel copies write data into it
 * before handing the request over, and read data out of it on commit). With a device that
 * provides DMA buffers (allocIoBuffer) that copy is the only one: the device transfers straight
 * from and into them. Requests are read from the queue's descriptor array, mapped read-only.
 *
 * Commits produced in one turn are submitted together: one io_uring_enter per batch. That call
 * returns with the requests the kernel queued for us meanwhile already in the CQ (the task's
 * pending work runs on its way back), so they are served at once, without an event-loop turn.
 * The requests of one drain reach the device together (plug/unplug: one NVMe doorbell).
 *
 * A device with the callback path (startIo) serves reads and writes without a promise or any
 * allocation per request: each tag's completion callback and buffer handle are made once, here;
 * everything else goes through the device's promise methods.
 */
import { wrapSystemError } from '../../errors';
import { IoUring } from '../../io-uring/io-uring';
import { constants as C, native } from '../../native';
import * as U from '../../uapi/ublk';
import type { UblkBlockDevice, UblkIoDone } from './block-device';

const EIO = 5;
/** Microtasks are queued with then() on a settled promise: queueMicrotask allocates per call. */
const RESOLVED = Promise.resolve();
const EOPNOTSUPP = 95;
const ERRNO: Record<string, number> = { EPERM: 1, EIO: 5, ENOMEM: 12, EACCES: 13, EBUSY: 16, ENODEV: 19, EINVAL: 22, ENOSPC: 28, EROFS: 30, ENOTSUP: 95, EOPNOTSUPP: 95, ETIMEDOUT: 110 };

export interface UblkQueueStats {
  requests: number;
  errors: number;
  /** Requests served on the device's callback path (no promise). */
  callbacks: number;
  /** Spins for the next request after the queue emptied, and how many of them found one. */
  spins: number;
  spinHits: number;
}

export class UblkQueue {
  readonly ring: IoUring;
  private readonly descs: ArrayBuffer;
  private readonly descU32: Uint32Array;
  private readonly buffers: Uint8Array[] = [];
  private readonly addrs: number[] = [];
  /** Per tag: the device's handle of its buffer, the op and byte count in flight, its callback. */
  private readonly handles: Float64Array;
  private readonly ops: Uint8Array;
  private readonly lengths: Int32Array;
  private readonly doneFns: UblkIoDone[] = [];
  /** Tags whose fetch the kernel still holds (not aborted). */
  private live = 0;
  private inflight = 0;
  private submitScheduled = false;
  private idleWaiters: (() => void)[] = [];
  private abortedWaiters: (() => void)[] = [];
  readonly stats: UblkQueueStats = { requests: 0, errors: 0, callbacks: 0, spins: 0, spinHits: 0 };
  private readonly idleSpinMs: number;
  private readonly plugBatch = {
    begin: (): void => this.device.plug?.(),
    end: (): void => this.device.unplug?.(),
  };

  constructor(
    readonly qid: number,
    readonly depth: number,
    private readonly cdevFd: number,
    readonly device: UblkBlockDevice,
    readonly bufferSize: number,
    private readonly onError: (e: Error) => void,
    /** After a commit leaves no request in flight, spin this long for the next one (see spinForRequest). */
    idleSpinUs = 0,
    /** The ring defers the kernel's work to our enters (IoUringOptions.deferTaskrun). */
    deferTaskrun = false,
  ) {
    this.idleSpinMs = idleSpinUs / 1000;
    const descBytes = Math.ceil((depth * U.IO_DESC_SIZE) / C.PAGE_SIZE) * C.PAGE_SIZE;
    const maxCmdBuf = Math.ceil((U.UBLK_MAX_QUEUE_DEPTH * U.IO_DESC_SIZE) / C.PAGE_SIZE) * C.PAGE_SIZE;
    try {
      this.descs = native.mmap(descBytes, C.PROT_READ, C.MAP_SHARED | C.MAP_POPULATE, cdevFd, U.UBLKSRV_CMD_BUF_OFFSET + qid * maxCmdBuf);
    } catch (e) {
      throw wrapSystemError(e, `mapping ublk queue ${qid}'s descriptors`);
    }
    this.descU32 = new Uint32Array(this.descs);
    this.handles = new Float64Array(depth).fill(-1);
    this.ops = new Uint8Array(depth);
    this.lengths = new Int32Array(depth);
    try {
      this.ring = new IoUring(depth, { deferTaskrun });
    } catch (e) {
      native.munmap(this.descs);
      throw e;
    }
    try {
      for (let tag = 0; tag < depth; tag++) {
        const buf = device.allocIoBuffer ? device.allocIoBuffer(bufferSize) : new Uint8Array(bufferSize);
        this.buffers.push(buf);
        this.addrs.push(native.addressOf(buf));
        if (device.startIo && device.ioBufferHandle) this.handles[tag] = device.ioBufferHandle(buf);
        this.doneFns.push((err) => this.done(tag, err));
      }
    } catch (e) {
      // The descriptor mapping holds /dev/ublkcN open (DEL_DEV waits for its release): undo all of it.
      this.close();
      throw e;
    }
  }

  /** Hands every tag to the kernel (FETCH_REQ) and starts serving on the event loop. */
  start(): void {
    this.ring.onCompletion((tag, res) => this.onCompletion(tag, res), true, this.device.plug && this.device.unplug ? this.plugBatch : null);
    for (let tag = 0; tag < this.depth; tag++) this.prep(U.UBLK_U_IO_FETCH_REQ, tag, 0);
    this.live = this.depth;
    this.ring.submit();
  }

  /** Resolves when no request is being served. */
  idle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /** Resolves when the kernel has given back every tag (after STOP_DEV, or at once if none is held). */
  aborted(): Promise<void> {
    if (this.live === 0) return Promise.resolve();
    return new Promise((r) => this.abortedWaiters.push(r));
  }

  close(): void {
    this.ring.close();
    if (this.descs.byteLength > 0) native.munmap(this.descs);
    for (const w of this.abortedWaiters.splice(0)) w();
    const buffers = this.buffers.splice(0);
    if (this.device.freeIoBuffer) for (const b of buffers) this.device.freeIoBuffer(b);
  }

  private prep(op: number, tag: number, result: number): void {
    const cmd = this.ring.prepUringCmd(this.cdevFd, op, tag);
    const v = this.ring.sqeView;
    v.setUint16(cmd + U.IO_CMD.q_id, this.qid, true);
    v.setUint16(cmd + U.IO_CMD.tag, tag, true);
    v.setInt32(cmd + U.IO_CMD.result, result, true);
    const addr = this.addrs[tag]!;
    v.setUint32(cmd + U.IO_CMD.addr, addr % 2 ** 32, true);
    v.setUint32(cmd + U.IO_CMD.addr + 4, Math.floor(addr / 2 ** 32), true);
  }

  private onCompletion(tag: number, res: number): void {
    if (res === U.UBLK_IO_RES_OK) {
      this.serve(tag);
      return;
    }
    // ABORT (-ENODEV: the device is stopping) or a refused command: the tag is back with us.
    if (res !== U.UBLK_IO_RES_ABORT) this.onError(new Error(`ublk queue ${this.qid} tag ${tag}: command failed with ${res}`));
    if (--this.live === 0) for (const w of this.abortedWaiters.splice(0)) w();
  }

  private serve(tag: number): void {
    const d = (tag * U.IO_DESC_SIZE) >> 2;
    const opFlags = this.descU32[d]!;
    const sectors = this.descU32[d + 1]!;
    const start = this.descU32[d + 2]! + this.descU32[d + 3]! * 2 ** 32;
    const op = opFlags & 0xff;
    const fua = (opFlags & U.UBLK_IO_F_FUA) !== 0;
    const offset = start * 512;
    const length = sectors * 512;
    this.inflight++;
    this.stats.requests++;
    const handle = this.handles[tag]!;
    if (handle >= 0) {
      this.ops[tag] = op;
      this.lengths[tag] = length;
      if (this.device.startIo!(op, offset, length, fua, handle, this.doneFns[tag]!)) {
        this.stats.callbacks++;
        return;
      }
    }
    this.run(op, offset, length, fua, tag).then(
      (result) => this.commit(tag, result),
      (err) => this.commit(tag, this.errno(err)),
    );
  }

  /** The callback path's end of a request. */
  private done(tag: number, err: Error | null): void {
    if (err !== null) {
      this.commit(tag, this.errno(err));
      return;
    }
    const op = this.ops[tag]!;
    this.commit(tag, op === U.UBLK_IO_OP_READ || op === U.UBLK_IO_OP_WRITE ? this.lengths[tag]! : 0);
  }

  private errno(err: unknown): number {
    this.stats.errors++;
    const code = (err as { code?: string } | null)?.code;
    return -(code !== undefined && ERRNO[code] ? ERRNO[code]! : EIO);
  }

  private async run(op: number, offset: number, length: number, fua: boolean, tag: number): Promise<number> {
    const dev = this.device;
    switch (op) {
      case U.UBLK_IO_OP_READ: {
        const buf = this.buffers[tag]!.subarray(0, length);
        if (dev.readInto) await dev.readInto(offset, buf);
        else buf.set(await dev.read(offset, length));
        return length;
      }
      case U.UBLK_IO_OP_WRITE:
        await dev.write(offset, this.buffers[tag]!.subarray(0, length), fua);
        return length;
      case U.UBLK_IO_OP_FLUSH:
        await dev.flush();
        return 0;
      case U.UBLK_IO_OP_DISCARD:
        await dev.trim(offset, length);
        return 0;
      case U.UBLK_IO_OP_WRITE_ZEROES:
        await dev.writeZeroes(offset, length, fua);
        return 0;
      default:
        return -EOPNOTSUPP;
    }
  }

  private commit(tag: number, result: number): void {
    this.inflight--;
    if (this.ring.isClosed) return;
    this.prep(U.UBLK_U_IO_COMMIT_AND_FETCH_REQ, tag, result);
    if (!this.submitScheduled) {
      this.submitScheduled = true;
      void RESOLVED.then(this.submitBatch);
    }
    if (this.inflight === 0) for (const w of this.idleWaiters.splice(0)) w();
  }

  private readonly submitBatch = (): void => {
    this.submitScheduled = false;
    if (this.ring.isClosed) return;
    try {
      this.ring.submit();
    } catch (e) {
      this.onError(e as Error);
      return;
    }
    if (this.ring.drain() === 0 && this.inflight === 0 && this.idleSpinMs > 0) this.spinForRequest();
  };

  /**
   * The commit just made may let the client send its next request at once (at QD1 it is
   * waiting for this one): look for it in the CQ for a short while rather than sleep in the
   * event loop, whose wake-up costs a scheduler round trip, an eventfd and an event-loop turn.
   * The kernel posts it while we spin (its task work interrupts this thread).
   */
  private spinForRequest(): void {
    const ring = this.ring;
    this.stats.spins++;
    const deadline = performance.now() + this.idleSpinMs;
    for (let i = 1; ; i++) {
      if (ring.ready) {
        this.stats.spinHits++;
        ring.drain();
        return;
      }
      if ((i & 15) === 0 && performance.now() > deadline) return;
    }
  }
}
