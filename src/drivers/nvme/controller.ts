/**
 * An NVMe controller driven from user space: bring-up (disable, admin queue, enable), Identify,
 * the number of I/O queues, I/O queue pairs polled or on MSI-X vectors, recovery by controller
 * reset (after a fatal status, a command timeout, or a function-level reset of the device), and
 * orderly shutdown.
 *
 *   const ctrl = await NvmeController.open('0000:00:04.0');
 *   const ns = await ctrl.namespace(1);
 *   await ns.write(0, data);           // plain buffer: copied through bounce memory
 *   const buf = ctrl.allocBuffer(1 << 20);
 *   await ns.readDma(0, buf, 0, 1 << 20); // DMA buffer: zero copy
 *   await ctrl.close();                // CC.SHN, then the device is released
 */
import { EventEmitter } from 'node:events';
import { checkInteger, checkTimeoutMs, describeValue, optionsObject } from '../../arguments';
import { InvalidArgumentError, UserpciError, DeviceGoneError } from '../../errors';
import { openDevice } from '../../device/open';
import { PciDevice } from '../../device/device';
import type { Region } from '../../device/region';
import { DmaBuffer } from '../../dma/dma-space';
import type { InterruptVector } from '../../irq/interrupt-vector';
import * as R from './registers';
import { NvmeQueue, type QueueHost, type QueueRef, type QueueTuning } from './queue';
import {
  IDENTIFY_SIZE, parseControllerIdentity, parseNamespaceIdentity, parseNamespaceList,
  type ControllerIdentity, type NamespaceIdentity,
} from './identify';
import { NvmeNamespace } from './namespace';

export interface NvmeControllerOptions {
  /** I/O queue pairs to ask the controller for (Set Features, Number of Queues); default 16. */
  queuePairs?: number;
  /** Admin queue depth (commands outstanding at once); default 31. */
  adminDepth?: number;
  /** Cap on one command's data transfer, bytes, below the controller's MDTS; default 4 MiB. */
  maxTransferBytes?: number;
  /** Admin command timeout, ms; default 10000. */
  adminTimeoutMs?: number;
  /**
   * The I/O queue pair created with the controller (the namespaces' default queue); false for
   * none. Default: depth 64, polled.
   */
  defaultQueue?: QueuePairOptions | false;
  /** DMA mask when opening by address; default 64 bits. */
  dmaMask?: number | bigint;
}

export interface QueuePairOptions extends QueueTuning {
  /** Commands outstanding at once (the SQ gets depth + 1 entries); default 64, at most CAP.MQES - 1. */
  depth?: number;
  /** Completion by MSI-X interrupt instead of polling. */
  interrupts?: boolean;
  /** The MSI-X vector (default: the queue id, shared modulo the vectors the device offers). */
  vector?: number;
}

export interface ControllerCapabilities {
  /** Largest queue, in entries. */
  maxQueueEntries: number;
  contiguousQueuesRequired: boolean;
  /** CAP.TO: how long CSTS.RDY may take to follow CC.EN, ms. */
  readyTimeoutMs: number;
  doorbellStride: number;
  subsystemResetSupported: boolean;
  minPageSize: number;
  maxPageSize: number;
  /** VS register, e.g. "1.4.0". */
  version: string;
}

/**
 * Queue tuning a caller gave, checked before the queue exists (a NaN or negative timeout would
 * time every command out, a NaN doorbell batch never ring).
 */
function checkQueueTuning(t: QueueTuning): void {
  checkTimeoutMs(t.timeoutMs, 'queue timeoutMs');
  if (t.timeoutMs !== undefined && t.timeoutMs < 1) throw new InvalidArgumentError(`queue timeoutMs must be at least 1 ms, got ${t.timeoutMs}`);
  if (t.pollSpinUs !== undefined && !(typeof t.pollSpinUs === 'number' && t.pollSpinUs >= 0 && t.pollSpinUs <= 1_000_000)) throw new InvalidArgumentError(`pollSpinUs must be 0..1000000 µs, got ${describeValue(t.pollSpinUs)}`);
  if (t.pollBurst !== undefined) checkInteger(t.pollBurst, 0, 1 << 20, 'pollBurst');
  if (t.doorbellEvery !== undefined) checkInteger(t.doorbellEvery, 1, 65536, 'doorbellEvery');
  if (t.bounceChunk !== undefined) checkInteger(t.bounceChunk, 1, 1 << 30, 'bounceChunk');
  if (t.cqAckBatch !== undefined && typeof t.cqAckBatch !== 'boolean') throw new InvalidArgumentError(`cqAckBatch must be true or false, got ${describeValue(t.cqAckBatch)}`);
}

/** A queue pair whose rings and memory another thread owns and drives (see reserveQueuePair). */
export interface ExternalQueueRings {
  sqIova: number;
  cqIova: number;
  /** SQ entries (depth + 1) and CQ entries. */
  entries: number;
  cqEntries: number;
}

/**
 * Who drives a reserved queue pair (see reserveQueuePair). A controller reset starts the pair's
 * rings over, which only the owner can follow: with suspend, reset and resume it rides through
 * the reset as the controller's own queues do (commands the controller held fail with EIO,
 * requests not yet sent wait and go out afterwards); without them a reset loses the pair.
 */
export interface ReservedQueueOwner {
  /** Called once when the controller cannot keep the pair (lost, closed, or not re-created after a reset): fail everything, stop. */
  lost(error: Error): void;
  /** A reset begins: send nothing more (NvmeQueue.suspend); completions may still come until the controller stops. */
  suspend?(): void;
  /**
   * The controller has stopped (CSTS.RDY 0: no more DMA, no completions): fail the commands it
   * held with `error`, keep the rest waiting, start the rings over (NvmeQueue.abortAll(error,
   * false), resetRings) and touch neither rings nor doorbells until resume(). Resolve once done:
   * the controller is enabled again only then. Rejecting gives the pair up.
   */
  reset?(error: Error): Promise<void>;
  /** The pair is on the controller again, over the same rings: go on (NvmeQueue.resume). */
  resume?(): void;
}

interface ReservedQueue {
  rings: ExternalQueueRings | null;
  owner: ReservedQueueOwner;
  /** lost() was called (once only). */
  gone: boolean;
}

interface QueueEntry {
  queue: NvmeQueue;
  /** MSI-X vector index, or -1 when polled. */
  vector: number;
  options: QueuePairOptions;
}

const DEFAULT_MAX_TRANSFER = 4 << 20;

/**
 * Events: 'lost' (error): the controller gave up because its device became unusable (removed,
 * reset by someone else, registers or queue memory gone, a fatal status a reset cannot clear).
 * Every I/O in flight and every later one has failed with that error (code ENODEV); close()
 * still releases what is left.
 */
export class NvmeController extends EventEmitter implements QueueHost, AsyncDisposable {
  readonly regs: Region;
  readonly name: string;
  readonly capabilities: ControllerCapabilities;
  readonly pageSize: number;
  readonly doorbellStride: number;
  /** Largest data transfer of one command, bytes. */
  maxTransfer: number;
  readonly maxQueueEntries: number;
  identity!: ControllerIdentity;
  /** I/O queue pairs the controller granted. */
  grantedQueuePairs = 0;
  admin!: NvmeQueue;
  /** The namespaces' default I/O queue, when one was created with the controller. */
  defaultQueue: NvmeQueue | undefined;

  private readonly entries = new Map<number, QueueEntry>();
  private readonly reserved = new Map<number, ReservedQueue>();
  private readonly registered = new WeakMap<ArrayBuffer, DmaBuffer>();
  private readonly namespaces = new Map<number, NvmeNamespace>();
  private identifyBuffer: DmaBuffer | undefined;
  private identifyLock: Promise<void> = Promise.resolve();
  private recovering: Promise<void> | null = null;
  private closed: Error | null = null;
  private closeDone = false;
  private readonly onRemovedBound = () => this.lose(`${this.name} was removed (the kernel took the device back)`);
  private requestedQueuePairs: number;
  /** Controller resets done to recover (fatal status, timeouts) or asked for. */
  resets = 0;

  /** Opens the device at a PCI address or vfio-user socket (or takes an open one) and brings the controller up. */
  static async open(target: string | PciDevice, options: NvmeControllerOptions = {}): Promise<NvmeController> {
    options = optionsObject(options, 'NvmeController.open options');
    if (typeof target !== 'string' && !(target instanceof PciDevice)) throw new InvalidArgumentError(`NvmeController.open takes a PCI address, a vfio-user socket path or an open PciDevice, got ${describeValue(target)}`);
    const owns = typeof target === 'string';
    const device = owns ? await openDevice(target, { dmaMask: options.dmaMask }) : target;
    let ctrl: NvmeController | undefined;
    try {
      ctrl = new NvmeController(device, owns, options);
      await ctrl.start();
      return ctrl;
    } catch (err) {
      if (ctrl) {
        ctrl.abandon(err as Error);
        device.off('removed', ctrl.onRemovedBound);
      }
      if (owns) device.close();
      throw err;
    }
  }

  private constructor(
    readonly device: PciDevice,
    private readonly ownsDevice: boolean,
    private readonly options: NvmeControllerOptions,
  ) {
    super();
    this.name = device.name;
    device.declareDmaWidth(64, 'nvme driver'); // NVMe PRPs and queue bases are 64-bit addresses
    const classCode = device.config.read32(0x08) >>> 8;
    if (classCode !== R.NVME_CLASS_CODE) {
      throw new UserpciError('ENODEV', `${device.name} is not an NVMe controller (class code ${classCode.toString(16).padStart(6, '0')}, expected 010802)`);
    }
    this.regs = device.bar(0);
    const lo = this.regs.read32(R.REG_CAP);
    const hi = this.regs.read32(R.REG_CAP_HI);
    if (lo === 0xffffffff && hi === 0xffffffff) throw new DeviceGoneError(`${this.name}: the controller reads all ones (gone or not powered)`);
    const vs = this.regs.read32(R.REG_VS);
    this.capabilities = {
      maxQueueEntries: R.capMqes(lo),
      contiguousQueuesRequired: R.capCqr(lo),
      readyTimeoutMs: R.capTimeoutMs(lo),
      doorbellStride: R.capDoorbellStride(hi),
      subsystemResetSupported: R.capNssrs(hi),
      minPageSize: R.capMpsMinBytes(hi),
      maxPageSize: R.capMpsMaxBytes(hi),
      version: `${vs >>> 16}.${(vs >>> 8) & 0xff}.${vs & 0xff}`,
    };
    if ((R.capCss(hi) & 1) === 0) throw new UserpciError('ENOTSUP', `${this.name} does not support the NVM command set (CAP.CSS 0x${R.capCss(hi).toString(16)})`);
    if (this.capabilities.minPageSize > 4096) {
      throw new UserpciError('ENOTSUP', `${this.name} needs memory pages of at least ${this.capabilities.minPageSize} bytes; this driver uses 4096`);
    }
    this.pageSize = 4096;
    this.maxQueueEntries = Math.min(this.capabilities.maxQueueEntries, 65536);
    this.doorbellStride = this.capabilities.doorbellStride;
    // Until Identify tells us MDTS, admin transfers are at most two pages (no PRP list).
    this.maxTransfer = 2 * this.pageSize;
    checkTimeoutMs(options.adminTimeoutMs, 'adminTimeoutMs');
    if (options.defaultQueue !== undefined && options.defaultQueue !== false) optionsObject(options.defaultQueue, 'defaultQueue');
    this.requestedQueuePairs = options.queuePairs ?? 16;
    if (!Number.isInteger(this.requestedQueuePairs) || this.requestedQueuePairs < 1 || this.requestedQueuePairs > 65535) {
      throw new InvalidArgumentError(`queuePairs must be 1..65535, got ${String(options.queuePairs)}`);
    }
    // The device releases itself when the kernel takes it back (its memory is unmapped before
    // 'removed' is emitted): stop using it at once.
    device.on('removed', this.onRemovedBound);
  }

  // ------------------------------------------------------------------ bring-up

  private async start(): Promise<void> {
    const adminDepth = this.options.adminDepth ?? 31;
    if (!Number.isInteger(adminDepth) || adminDepth < 1 || adminDepth > Math.min(4095, this.capabilities.maxQueueEntries - 1)) {
      throw new InvalidArgumentError(`adminDepth must be 1..${Math.min(4095, this.capabilities.maxQueueEntries - 1)}, got ${adminDepth}`);
    }
    await this.disable();
    // Quiesced (CC.EN=0, CSTS.RDY=0: the controller has stopped all DMA): now it may master the bus.
    this.device.enableBusMaster();
    this.admin = new NvmeQueue(this, 0, adminDepth, { timeoutMs: this.options.adminTimeoutMs ?? 10_000, pollSpinUs: 20 }, false);
    await this.enableWithAdminQueue();
    this.identity = await this.identifyController();
    const mdtsBytes = this.identity.mdts === 0 ? Infinity : 2 ** this.identity.mdts * this.capabilities.minPageSize;
    const cap = this.options.maxTransferBytes ?? DEFAULT_MAX_TRANSFER;
    if (!Number.isInteger(cap) || cap < this.pageSize) throw new InvalidArgumentError(`maxTransferBytes must be at least ${this.pageSize}`);
    this.maxTransfer = Math.min(mdtsBytes, cap - (cap % this.pageSize));
    if (this.identity.sqesMin > R.SQE_LOG2 || this.identity.cqesMin > R.CQE_LOG2) {
      throw new UserpciError('ENOTSUP', `${this.name} wants queue entries of 2^${this.identity.sqesMin}/2^${this.identity.cqesMin} bytes; this driver writes 64/16`);
    }
    await this.negotiateQueueCount();
    if (this.options.defaultQueue !== false) this.defaultQueue = await this.createQueuePair(this.options.defaultQueue ?? {});
  }

  /** CC.EN to 0 and wait for CSTS.RDY 0 (first letting a controller that is still becoming ready finish). */
  private async disable(): Promise<void> {
    const cc = this.regs.read32(R.REG_CC);
    const csts = this.regs.read32(R.REG_CSTS);
    if (csts === R.CSTS_GONE) throw new DeviceGoneError(`${this.name}: the controller reads all ones`);
    if ((cc & R.CC_EN) !== 0 && (csts & R.CSTS_RDY) === 0 && (csts & R.CSTS_CFS) === 0) {
      // Changing EN while RDY has not yet followed it is undefined: let it get ready first.
      await this.waitStatus(R.CSTS_RDY, R.CSTS_RDY, 'become ready before the reset', true);
    }
    if ((cc & R.CC_EN) !== 0) this.regs.write32(R.REG_CC, cc & ~R.CC_EN);
    await this.waitStatus(R.CSTS_RDY, 0, 'reset (CSTS.RDY to 0)', true);
  }

  private async enableWithAdminQueue(): Promise<void> {
    this.regs.write32(R.REG_AQA, ((this.admin.cqEntries - 1) << 16) | (this.admin.entries - 1));
    this.write64(R.REG_ASQ, this.admin.sqIova);
    this.write64(R.REG_ACQ, this.admin.cqIova);
    const cc = R.CC_EN | R.CC_CSS_NVM | R.ccMps(this.pageSize) | R.CC_AMS_RR | R.ccIosqes(R.SQE_LOG2) | R.ccIocqes(R.CQE_LOG2);
    this.regs.write32(R.REG_CC, cc);
    await this.waitStatus(R.CSTS_RDY, R.CSTS_RDY, 'become ready (CSTS.RDY to 1)', false);
  }

  /** 64-bit registers as two 32-bit halves, low first (the spec allows it; no BigInt). */
  private write64(offset: number, value: number): void {
    const lo = value >>> 0;
    this.regs.write32(offset, lo);
    this.regs.write32(offset + 4, (value - lo) / 0x1_0000_0000);
  }

  /** Poll CSTS until (CSTS & mask) === want, within CAP.TO. CFS fails at once unless ignored. */
  private async waitStatus(mask: number, want: number, what: string, ignoreFatal: boolean): Promise<number> {
    const deadline = Date.now() + this.capabilities.readyTimeoutMs;
    for (let i = 0; ; i++) {
      const csts = this.regs.read32(R.REG_CSTS);
      if (csts === R.CSTS_GONE) throw new DeviceGoneError(`${this.name}: the controller stopped answering (CSTS reads all ones) while waiting to ${what}`);
      if ((csts & mask) === want) return csts;
      if (!ignoreFatal && (csts & R.CSTS_CFS) !== 0) throw new UserpciError('EIO', `${this.name}: controller fatal status (CSTS.CFS) while waiting to ${what}`);
      if (Date.now() > deadline) {
        throw new UserpciError('ETIMEDOUT', `${this.name}: controller did not ${what} within CAP.TO = ${this.capabilities.readyTimeoutMs} ms (CSTS 0x${csts.toString(16)})`);
      }
      await delay(i < 20 ? 0 : i < 100 ? 1 : 10);
    }
  }

  private async negotiateQueueCount(): Promise<void> {
    const n = this.requestedQueuePairs - 1;
    const dw0 = await this.adminCommand(R.ADMIN_SET_FEATURES, 0, R.FEAT_NUMBER_OF_QUEUES, (n << 16) | n);
    const sq = (dw0 & 0xffff) + 1;
    const cq = (dw0 >>> 16) + 1;
    this.grantedQueuePairs = Math.min(this.requestedQueuePairs, sq, cq);
  }

  // ------------------------------------------------------------------ admin commands

  /** One admin command; resolves with completion dword 0. */
  adminCommand(opcode: number, nsid: number, cdw10 = 0, cdw11 = 0, cdw12 = 0, cdw13 = 0, cdw14 = 0, cdw15 = 0, dataIova = 0, dataLength = 0): Promise<number> {
    if (this.closed) return Promise.reject(this.closed);
    // A value the queue cannot store (a bigint, a fraction) would fault the admin queue, and with it the controller.
    try {
      checkInteger(opcode, 0, 0xff, 'admin opcode');
      // Dwords are 32-bit patterns: signed (`a | b`) or unsigned (`>>> 0`) alike.
      checkInteger(nsid, -0x8000_0000, 0xffffffff, 'nsid');
      const dwords = [cdw10, cdw11, cdw12, cdw13, cdw14, cdw15];
      for (let i = 0; i < dwords.length; i++) checkInteger(dwords[i], -0x8000_0000, 0xffffffff, `cdw${10 + i}`);
      checkInteger(dataIova, 0, Number.MAX_SAFE_INTEGER, 'data IOVA');
      checkInteger(dataLength, 0, this.maxTransfer, 'data length');
    } catch (err) {
      return Promise.reject(err);
    }
    return this.admin.command(opcode, nsid, cdw10, cdw11, cdw12, cdw13, cdw14, cdw15, dataIova, dataLength)!;
  }

  /** Identify with CNS `cns` into a 4096-byte copy. */
  async identify(cns: number, nsid = 0): Promise<Uint8Array> {
    this.checkOpen();
    checkInteger(cns, 0, 0xff, 'identify CNS');
    checkInteger(nsid, 0, 0xffffffff, 'nsid');
    const prev = this.identifyLock;
    let release!: () => void;
    this.identifyLock = new Promise<void>((r) => (release = r));
    await prev;
    try {
      this.checkOpen();
      this.identifyBuffer ??= this.allocDma(IDENTIFY_SIZE);
      const view = new Uint8Array(this.identifyBuffer.buffer, 0, IDENTIFY_SIZE);
      view.fill(0);
      await this.adminCommand(R.ADMIN_IDENTIFY, nsid, cns, 0, 0, 0, 0, 0, this.identifyBuffer.iova, IDENTIFY_SIZE);
      this.checkOpen(); // the buffer is freed (its view detached) if the controller was lost meanwhile
      return view.slice();
    } finally {
      release();
    }
  }

  async identifyController(): Promise<ControllerIdentity> {
    return parseControllerIdentity(await this.identify(R.CNS_CONTROLLER));
  }

  async identifyNamespace(nsid: number): Promise<NamespaceIdentity> {
    return parseNamespaceIdentity(nsid, await this.identify(R.CNS_NAMESPACE, nsid));
  }

  /** Active namespace ids (Identify CNS 02h; for controllers before NVMe 1.1, 1..NN). */
  async namespaceIds(): Promise<number[]> {
    try {
      const ids = parseNamespaceList(await this.identify(R.CNS_ACTIVE_NAMESPACES, 0));
      if (ids.length > 0 || this.identity.namespaceCount === 0) return ids;
    } catch (err) {
      if (!(err instanceof UserpciError) || err.code !== 'EINVAL') throw err;
    }
    const ids: number[] = [];
    for (let i = 1; i <= Math.min(this.identity.namespaceCount, 1024); i++) {
      const id = await this.identifyNamespace(i);
      if (id.blocks > 0) ids.push(i);
    }
    return ids;
  }

  /** A namespace to do I/O on (cached per id). */
  async namespace(nsid = 1): Promise<NvmeNamespace> {
    const cached = this.namespaces.get(nsid);
    if (cached) return cached;
    if (!Number.isInteger(nsid) || nsid < 1 || nsid >= 0xffffffff) throw new InvalidArgumentError(`namespace id must be 1..0xfffffffe, got ${nsid}`);
    const identity = await this.identifyNamespace(nsid);
    if (identity.blocks === 0) throw new UserpciError('ENOENT', `${this.name}: namespace ${nsid} is not active`);
    if (identity.blockSize === 0) throw new UserpciError('ENOTSUP', `${this.name}: namespace ${nsid} has an invalid LBA format`);
    if (identity.metadataSize > 0 && identity.extendedLba) {
      throw new UserpciError('ENOTSUP', `${this.name}: namespace ${nsid} interleaves ${identity.metadataSize} metadata bytes per block (extended LBA); not supported`);
    }
    const ns = new NvmeNamespace(this, identity);
    this.namespaces.set(nsid, ns);
    return ns;
  }

  // ------------------------------------------------------------------ I/O queues

  /** The I/O queue pairs in use. */
  get queues(): NvmeQueue[] {
    return [...this.entries.values()].map((e) => e.queue);
  }

  /** Create one I/O queue pair (a CQ, then its SQ). */
  async createQueuePair(options: QueuePairOptions = {}): Promise<NvmeQueue> {
    this.checkOpen();
    options = optionsObject(options, 'queue pair options');
    const maxDepth = Math.min(this.capabilities.maxQueueEntries - 1, 65535);
    const depth = options.depth ?? Math.min(64, maxDepth);
    if (!Number.isInteger(depth) || depth < 1 || depth > maxDepth) {
      throw new InvalidArgumentError(`queue depth must be 1..${maxDepth} (a queue holds one command fewer than its ${maxDepth + 1} entries, CAP.MQES + 1), got ${String(options.depth)}`);
    }
    checkQueueTuning(options);
    if (options.interrupts !== undefined && typeof options.interrupts !== 'boolean') throw new InvalidArgumentError(`interrupts must be true or false, got ${describeValue(options.interrupts)}`);
    if (options.vector !== undefined) checkInteger(options.vector, 0, 2047, 'MSI-X vector');
    const qid = this.freeQueueId();
    let vector = -1;
    if (options.interrupts) vector = this.prepareVector(qid, options.vector);
    const queue = new NvmeQueue(this, qid, depth, options);
    const entry: QueueEntry = { queue, vector, options };
    this.entries.set(qid, entry);
    try {
      await this.createQueueOnController(entry);
    } catch (err) {
      this.entries.delete(qid);
      queue.destroy(err as Error);
      throw err;
    }
    if (vector >= 0) queue.attachVector(this.device.interrupts.active[vector]!);
    return queue;
  }

  private freeQueueId(): number {
    let qid = 1;
    while (this.entries.has(qid) || this.reserved.has(qid)) qid++;
    if (qid > this.grantedQueuePairs) {
      throw new UserpciError('ENOSPC', `${this.name}: all ${this.grantedQueuePairs} I/O queue pairs the controller granted are in use`);
    }
    return qid;
  }

  /**
   * A queue id for a queue pair another thread drives (its own NvmeQueue over memory it shares
   * with this process's DMA space: ublk's per-queue threads). The thread builds its rings for
   * this id, then createReservedQueuePair() makes them known to the controller. The owner hears
   * of resets (suspend, reset once the controller stopped, resume once the pair is re-created
   * over the same rings) and of the controller's loss or close (lost); an owner that is a bare
   * `lost` function loses the pair at a reset.
   */
  reserveQueuePair(owner: ReservedQueueOwner | ((error: Error) => void)): number {
    this.checkOpen();
    const qid = this.freeQueueId();
    this.reserved.set(qid, { rings: null, owner: typeof owner === 'function' ? { lost: owner } : owner, gone: false });
    return qid;
  }

  /** Create the reserved queue pair `qid` on the controller (CQ, then SQ) with rings at these IOVAs. */
  async createReservedQueuePair(qid: number, rings: ExternalQueueRings): Promise<void> {
    const r = this.reserved.get(qid);
    if (!r || r.rings) throw new InvalidArgumentError(`${this.name}: queue ${qid} is not reserved, or already created`);
    await this.createRings(qid, rings, -1);
    r.rings = rings;
    r.gone = false;
  }

  /** Delete a reserved queue pair from the controller (when created) and give its id back. */
  async deleteReservedQueuePair(qid: number): Promise<void> {
    const r = this.reserved.get(qid);
    if (!r) return;
    this.reserved.delete(qid);
    if (r.rings && !this.closed) {
      await this.adminCommand(R.ADMIN_DELETE_IO_SQ, 0, qid);
      await this.adminCommand(R.ADMIN_DELETE_IO_CQ, 0, qid);
    }
  }

  private dropReserved(error: Error): void {
    const all = [...this.reserved.values()];
    for (const r of all) r.rings = null;
    for (const r of all) tellLost(r, error);
  }

  /**
   * A reset begins: each created reserved pair's owner stops sending (or, if it cannot follow a
   * reset, loses the pair). The pairs are off the controller until recreateReserved (rings null
   * meanwhile, so a deleteReservedQueuePair in between sends nothing).
   */
  private suspendReserved(reason: string): { qid: number; r: ReservedQueue; rings: ExternalQueueRings; ready: boolean }[] {
    const out = [];
    for (const [qid, r] of this.reserved) {
      const rings = r.rings;
      if (!rings) continue; // not on the controller yet: its creation goes out after the reset
      r.rings = null;
      const { suspend, reset, resume } = r.owner;
      if (!suspend || !reset || !resume) {
        tellLost(r, new UserpciError('EIO', `${this.name}: a controller reset (${reason}) ended queue ${qid}, which another thread drives`));
        continue;
      }
      try {
        suspend.call(r.owner);
      } catch {
        // its reset() below decides
      }
      out.push({ qid, r, rings, ready: false });
    }
    return out;
  }

  /** The controller has stopped: each suspended pair's owner fails what it held and starts its rings over. */
  private async resetReserved(pairs: ReturnType<NvmeController['suspendReserved']>, aborted: Error, reason: string): Promise<void> {
    await Promise.all(pairs.map(async (p) => {
      try {
        await p.r.owner.reset!(aborted);
        p.ready = true;
      } catch {
        tellLost(p.r, new UserpciError('EIO', `${this.name}: queue ${p.qid} could not follow a controller reset (${reason}): its owner is gone`));
      }
    }));
  }

  /** After the reset: each pair again on the controller over its rings, then its owner resumes. */
  private async recreateReserved(pairs: ReturnType<NvmeController['suspendReserved']>, reason: string): Promise<void> {
    for (const { qid, r, rings, ready } of pairs) {
      if (!ready || this.reserved.get(qid) !== r) continue; // given up, or deleted meanwhile
      try {
        await this.createRings(qid, rings, -1);
      } catch (err) {
        if (this.closed) throw this.closed;
        tellLost(r, new UserpciError('EIO', `${this.name}: queue ${qid} could not be re-created after a controller reset (${reason}): ${(err as Error).message}`));
        continue;
      }
      if (this.reserved.get(qid) !== r) {
        // Deleted while it was being re-created: take it off the controller again.
        await this.adminCommand(R.ADMIN_DELETE_IO_SQ, 0, qid).catch(() => undefined);
        await this.adminCommand(R.ADMIN_DELETE_IO_CQ, 0, qid).catch(() => undefined);
        continue;
      }
      r.rings = rings;
      try {
        r.owner.resume!();
      } catch {
        // the owner's business
      }
    }
  }

  /** Create up to `count` queue pairs (fewer when the controller granted fewer). */
  async createQueuePairs(count: number, options: QueuePairOptions = {}): Promise<NvmeQueue[]> {
    checkInteger(count, 1, 65535, 'queue pair count');
    const out: NvmeQueue[] = [];
    const free = this.grantedQueuePairs - this.entries.size;
    for (let i = 0; i < Math.min(count, free); i++) out.push(await this.createQueuePair(options));
    return out;
  }

  /** Delete a queue pair (SQ, then CQ); its outstanding commands are aborted by the controller. */
  async deleteQueuePair(queue: NvmeQueue): Promise<void> {
    if (!(queue instanceof NvmeQueue)) throw new InvalidArgumentError(`deleteQueuePair takes an NvmeQueue, got ${describeValue(queue)}`);
    const entry = this.entries.get(queue.qid);
    if (!entry || entry.queue !== queue) throw new InvalidArgumentError(`queue ${queue.qid} does not belong to ${this.name}`);
    try {
      await this.adminCommand(R.ADMIN_DELETE_IO_SQ, 0, queue.qid);
      await this.adminCommand(R.ADMIN_DELETE_IO_CQ, 0, queue.qid);
      queue.poll();
    } finally {
      this.entries.delete(queue.qid);
      if (this.defaultQueue === queue) this.defaultQueue = undefined;
      queue.destroy(new UserpciError('ECANCELED', `${this.name}: queue ${queue.qid} was deleted`));
    }
  }

  private createQueueOnController(entry: QueueEntry): Promise<void> {
    return this.createRings(entry.queue.qid, entry.queue, entry.vector);
  }

  private async createRings(qid: number, q: ExternalQueueRings, vector: number): Promise<void> {
    const ien = vector >= 0 ? R.CQ_IEN | (vector << 16) : 0;
    // Physically contiguous queues (PC = 1) are named by PRP1 alone, however many pages they
    // span: one page's worth of length keeps PRP2 zero (no PRP list, which the admin queue lacks).
    const page = this.pageSize;
    await this.adminCommand(R.ADMIN_CREATE_IO_CQ, 0, (((q.cqEntries - 1) << 16) | qid) >>> 0, (R.CQ_PC | ien) >>> 0, 0, 0, 0, 0, q.cqIova, page);
    try {
      await this.adminCommand(R.ADMIN_CREATE_IO_SQ, 0, (((q.entries - 1) << 16) | qid) >>> 0, ((qid << 16) | R.SQ_PC) >>> 0, 0, 0, 0, 0, q.sqIova, page);
    } catch (err) {
      await this.adminCommand(R.ADMIN_DELETE_IO_CQ, 0, qid).catch(() => undefined);
      throw err;
    }
  }

  /** Choose the vector for queue `qid` and make sure MSI-X has at least that many vectors on. */
  private prepareVector(qid: number, wanted: number | undefined): number {
    const offered = this.device.interrupts.info('msix').count;
    if (offered === 0) throw new UserpciError('ENOTSUP', `${this.name} offers no MSI-X vectors; create the queue without interrupts (polled)`);
    let vector = wanted ?? qid;
    if (wanted !== undefined && (!Number.isInteger(wanted) || wanted < 0 || wanted >= offered)) {
      throw new InvalidArgumentError(`${this.name}: MSI-X vector must be 0..${offered - 1}, got ${wanted}`);
    }
    if (vector >= offered) vector = offered === 1 ? 0 : 1 + ((qid - 1) % (offered - 1));
    const active = this.device.interrupts.mode === 'msix' ? this.device.interrupts.active.length : 0;
    if (active <= vector) this.setInterruptVectors(vector + 1);
    return vector;
  }

  /**
   * Switch MSI-X to `count` vectors (the device keeps vector objects across the change, so queues
   * stay attached; queues whose vector goes away fall back to polling). Completions that arrived
   * while the vectors were being re-routed are picked up here.
   */
  setInterruptVectors(count: number): readonly InterruptVector[] {
    const vectors = this.device.enableInterrupts('msix', count);
    for (const e of this.entries.values()) {
      if (e.vector < 0) continue;
      if (e.vector < vectors.length && e.queue.interruptVector !== vectors[e.vector]) e.queue.attachVector(vectors[e.vector]!);
      e.queue.poll();
    }
    return vectors;
  }

  // ------------------------------------------------------------------ DMA buffers

  /** QueueHost: queue memory (2 MiB pages for the big areas when the system has them: fewer IOMMU translations). */
  allocDma(size: number): DmaBuffer {
    return this.device.allocDma(size, { hugePages: 'auto' });
  }

  /**
   * A DMA buffer for zero-copy I/O. Views over its memory (`new Uint8Array(buf.buffer, ...)`)
   * passed to read()/write() are recognised and used in place.
   */
  allocBuffer(size: number, hugePages: 'auto' | 'always' | 'never' = 'auto'): DmaBuffer {
    this.checkOpen();
    const buf = this.device.allocDma(size, { hugePages });
    this.registered.set(buf.buffer, buf);
    return buf;
  }

  /** Let views over an existing DMA buffer of this device go zero copy too. */
  registerBuffer(buf: DmaBuffer): void {
    // Another device's IOVA means nothing (or something else) to this controller: its DMA would go astray.
    if (!(buf instanceof DmaBuffer) || !this.device.dma.owns(buf)) throw new InvalidArgumentError(`registerBuffer takes a DmaBuffer allocated on ${this.name}, got ${buf instanceof DmaBuffer ? "another device's" : describeValue(buf)}`);
    if (buf.freed) throw new DeviceGoneError('the DMA buffer was freed', 'EBADF');
    this.registered.set(buf.buffer, buf);
  }

  /** @internal The DMA buffer whose memory this is, if registered. */
  registeredBuffer(memory: ArrayBufferLike): DmaBuffer | undefined {
    return this.registered.get(memory as ArrayBuffer);
  }

  // ------------------------------------------------------------------ recovery

  /** QueueHost: a command timed out. Reset the controller (the driver's recovery), unless it is gone. */
  queueTimedOut(queue: QueueRef): void {
    const csts = this.safeStatus();
    const why = csts === R.CSTS_GONE ? 'gone' : (csts & R.CSTS_CFS) !== 0 ? 'fatal status (CSTS.CFS)' : `command timeout on queue ${queue.qid}`;
    void this.recover(why).catch(() => undefined);
  }

  /**
   * QueueHost: no progress for a tick. A fatal controller never completes anything: reset it
   * now. A controller that stopped answering, or that someone else reset (it is no longer ready
   * while we have queues on it: they are gone), will not either: give up.
   */
  queueStalled(queue: QueueRef): void {
    if (this.recovering || this.closed) return;
    const csts = this.safeStatus();
    if (csts === R.CSTS_GONE) this.lose(`${this.name} stopped answering (its registers read all ones or cannot be accessed)`);
    else if ((csts & R.CSTS_CFS) !== 0) this.queueTimedOut(queue);
    else if ((csts & R.CSTS_RDY) === 0) this.lose(`${this.name} was reset by someone else (CSTS.RDY is 0 under the driver's queues)`);
  }

  /** QueueHost: a register or queue-memory access failed. */
  queueFault(queue: QueueRef, error: Error): void {
    if (this.closed) return;
    const gone = this.device.closed || error instanceof DeviceGoneError || this.safeStatus() === R.CSTS_GONE;
    if (gone) {
      this.lose(`${this.name} is gone (${this.device.wasRemoved ? 'removed' : this.device.closed ? 'its device was closed' : error.message})`);
      return;
    }
    // Not a device loss: a fault of ours. Fail everything with it rather than throw into a poll.
    this.giveUp(new UserpciError('EIO', `${this.name} queue ${queue.qid}: ${error.message}`, { cause: error }));
  }

  /** The device is unusable: every command in flight and every later one fails with ENODEV. */
  private lose(why: string): void {
    this.giveUp(new DeviceGoneError(`${why}; its I/O fails with ENODEV`));
  }

  private giveUp(error: Error): void {
    if (this.closed) return;
    try {
      this.abandon(error);
    } finally {
      // Listeners hear of it outside whatever call noticed the loss.
      process.nextTick(() => this.emit('lost', error));
    }
  }

  /** Read CSTS; all ones if the read itself fails. */
  private safeStatus(): number {
    try {
      return this.regs.read32(R.REG_CSTS);
    } catch {
      return R.CSTS_GONE;
    }
  }

  /** Controller status now: ready, fatal, shutdown state. */
  status(): { ready: boolean; fatal: boolean; shutdown: 'normal' | 'in progress' | 'complete' | 'reserved'; raw: number } {
    const csts = this.regs.read32(R.REG_CSTS);
    const sh = (csts >>> 2) & 3;
    return { ready: (csts & R.CSTS_RDY) !== 0, fatal: (csts & R.CSTS_CFS) !== 0, shutdown: (['normal', 'in progress', 'complete', 'reserved'] as const)[sh]!, raw: csts };
  }

  /**
   * Reset the controller and bring it back with the same queues: commands in flight fail
   * (EIO) once the controller has stopped, requests not yet sent wait and go out afterwards;
   * reserved queue pairs whose owners follow resets likewise (ReservedQueueOwner). Used after CSTS.CFS and command
   * timeouts, and after `device.reset()` (a function-level reset leaves the controller disabled
   * but keeps the DMA mappings and MSI-X routing, so the same memory is used again).
   */
  recover(reason = 'reset requested'): Promise<void> {
    this.checkOpen();
    if (this.recovering) return this.recovering;
    this.recovering = this.doRecover(reason).finally(() => {
      this.recovering = null;
    });
    return this.recovering;
  }

  /** After `device.reset()`: re-initialise the controller (same as recover). */
  reinitialize(): Promise<void> {
    return this.recover('device reset');
  }

  private async doRecover(reason: string): Promise<void> {
    this.resets++;
    const all = [this.admin, ...this.queues];
    for (const q of all) q.suspend();
    const csts = this.safeStatus();
    if (csts === R.CSTS_GONE) {
      this.lose(`${this.name} stopped answering (CSTS reads all ones)`);
      throw this.closed!;
    }
    const aborted = new UserpciError('EIO', `${this.name}: command aborted by a controller reset (${reason})`);
    const reserved = this.suspendReserved(reason);
    try {
      this.device.enable(); // a function-level reset clears decoding and bus mastering
      await this.disable();
      // Stopped (CSTS.RDY 0): no more DMA nor completions. Only now do the commands it held fail,
      // as the kernel's driver cancels them after disabling: a caller told earlier could reuse a
      // buffer the controller was still writing. Queues other threads drive do the same first.
      for (const q of all) q.abortAll(aborted, false);
      await this.resetReserved(reserved, aborted, reason);
      if (this.closed) throw this.closed;
      this.admin.resetRings();
      await this.enableWithAdminQueue();
      this.admin.resume();
      await this.negotiateQueueCount();
      for (const e of this.entries.values()) {
        e.queue.resetRings();
        await this.createQueueOnController(e);
        e.queue.resume();
        e.queue.poll();
      }
      await this.recreateReserved(reserved, reason);
    } catch (err) {
      if (this.closed) throw this.closed;
      this.lose(`${this.name}: controller reset failed (${reason}): ${(err as Error).message}`);
      throw this.closed!;
    }
  }

  // ------------------------------------------------------------------ shutdown

  /**
   * Orderly shutdown: delete the I/O queues, set CC.SHN to normal and wait for CSTS.SHST to say
   * complete (within CAP.TO), then free the memory and, if this controller opened the device,
   * close it. Commands still outstanding fail with ECANCELED.
   */
  async close(): Promise<void> {
    if (this.closeDone) return;
    this.closeDone = true;
    this.device.off('removed', this.onRemovedBound);
    if (this.closed) {
      // Lost already: only the device is left to give back.
      if (this.ownsDevice && !this.device.closed) this.device.close();
      return;
    }
    const healthy = (() => {
      const csts = this.safeStatus();
      return csts !== R.CSTS_GONE && (csts & R.CSTS_CFS) === 0 && (csts & R.CSTS_RDY) !== 0;
    })();
    if (this.recovering) await this.recovering.catch(() => undefined);
    if (healthy && !this.device.closed) {
      // Reserved queues are deleted on the controller here; abandon() below tells their owners.
      for (const [qid, r] of this.reserved) {
        if (!r.rings) continue;
        r.rings = null;
        try {
          await this.adminCommand(R.ADMIN_DELETE_IO_SQ, 0, qid);
          await this.adminCommand(R.ADMIN_DELETE_IO_CQ, 0, qid);
        } catch {
          // Shutdown below still brings the controller to a safe state.
        }
      }
      for (const q of this.queues) {
        try {
          await this.adminCommand(R.ADMIN_DELETE_IO_SQ, 0, q.qid);
          await this.adminCommand(R.ADMIN_DELETE_IO_CQ, 0, q.qid);
        } catch {
          // Shutdown below still brings the controller to a safe state.
        }
      }
      try {
        const cc = this.regs.read32(R.REG_CC);
        this.regs.write32(R.REG_CC, (cc & ~R.CC_SHN_MASK) | R.CC_SHN_NORMAL);
        await this.waitStatus(R.CSTS_SHST_MASK, R.CSTS_SHST_COMPLETE, 'complete its shutdown (CSTS.SHST)', true);
      } catch {
        // A controller that does not finish shutting down is released anyway.
      }
    }
    this.abandon(new UserpciError('ECANCELED', `${this.name}: the NVMe controller was closed`));
    if (this.ownsDevice && !this.device.closed) this.device.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  get isClosed(): boolean {
    return this.closed !== null;
  }

  /** Why the controller no longer takes commands (closed, or lost), or null while it does. */
  get closeReason(): Error | null {
    return this.closed;
  }

  /** Fail everything and free every queue's memory; no more commands. */
  private abandon(reason: Error): void {
    if (this.closed) return;
    this.closed = reason;
    this.dropReserved(reason);
    this.reserved.clear();
    for (const e of this.entries.values()) e.queue.destroy(reason);
    this.entries.clear();
    this.defaultQueue = undefined;
    this.admin?.destroy(reason);
    if (this.identifyBuffer && !this.identifyBuffer.freed) {
      try {
        this.identifyBuffer.free();
      } catch {
        // Device already closed.
      }
    }
  }

  private checkOpen(): void {
    if (this.closed) throw this.closed;
  }
}

function tellLost(r: ReservedQueue, error: Error): void {
  if (r.gone) return;
  r.gone = true;
  try {
    r.owner.lost(error);
  } catch {
    // the owner's business
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => (ms === 0 ? setImmediate(resolve) : setTimeout(resolve, ms)));
}
