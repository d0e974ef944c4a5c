/**
 * A simulated NVMe controller behind the Backend interface: the real PciDevice, Region, DMA
 * space and interrupt code run on top of it, and so does the NVMe driver, unchanged. It exists
 * to test the driver without a device (PRP lists, splitting, errors, timeouts, fatal status,
 * reset, shutdown) and to run a driver under a debugger.
 *
 * It keeps BAR0 unmapped so every register access reaches it (regionRead/regionWrite); queue
 * memory and data are read and written through the DMA mappings the driver makes. Commands run
 * on the event loop after a doorbell (setImmediate), like a device that is fast but not instant.
 * MSI-X vectors are eventfds written with native.eventfdWrite, as VFIO would.
 *
 * It checks what a strict controller checks: queue ids and sizes, PRP alignment and chaining,
 * MDTS, LBA ranges, namespace ids; and it can inject faults (drop commands, fail them with a
 * status, raise CSTS.CFS for a moment or for good, signal VFIO's device request as a removal
 * does, make BAR accesses read all ones or throw, reset itself behind the driver's back).
 * A sparse disk (1 MiB chunks on first write) lets it have terabyte namespaces.
 */
import { native } from '../../src/native/index';
import { DeviceGoneError, InvalidArgumentError, RangeAccessError } from '../../src/errors';
import type { Backend, BackendDeviceInfo, BackendDmaMapRequest, BackendIrqInfo, BackendRegionInfo, IommuAperture } from '../../src/device/backend';
import { PciDevice } from '../../src/device/device';
import * as R from '../../src/drivers/nvme/registers';

export interface SimulatorOptions {
  /** Namespace 1: blocks and block size (512 or 4096); default 8192 blocks of 512 bytes. */
  blocks?: number;
  blockSize?: number;
  /** MDTS as reported (2^mdts pages; 0 = unlimited); default 5 (128 KiB). */
  mdts?: number;
  /** CAP.MQES + 1; default 1024. */
  maxQueueEntries?: number;
  /** I/O queue pairs granted; default 8. */
  maxQueuePairs?: number;
  msixVectors?: number;
  /** CAP.DSTRD; default 0 (4-byte doorbell stride). */
  doorbellStrideShift?: number;
  /** ONCS: Dataset Management and Write Zeroes; default both. */
  oncs?: number;
  /** Volatile write cache present; default true. */
  volatileWriteCache?: boolean;
  /** Ms CSTS.RDY takes to follow CC.EN; default 0. */
  readyDelayMs?: number;
  /** CAP.TO in 500 ms units; default 2. */
  timeoutUnits?: number;
  /**
   * Keep the disk in 1 MiB chunks allocated on first write (reads of untouched blocks are
   * zeroes), so a namespace of terabytes costs only what is written. Default: above 256 MiB.
   * `disk` is then unavailable; use readDisk().
   */
  sparse?: boolean;
}

interface SimQueue {
  id: number;
  base: number;
  size: number;
  head: number;
  tail: number;
  /** SQ: the CQ it completes on. CQ: phase, vector. */
  cqid: number;
  phase: number;
  interrupts: boolean;
  vector: number;
}

export interface SimCommandRecord {
  qid: number;
  opcode: number;
  cid: number;
  nsid: number;
  prp1: number;
  prp2: number;
  cdw10: number;
  cdw11: number;
  cdw12: number;
  /** Data pages touched by the transfer, as the PRPs named them. */
  segments: [number, number][] | null;
  status: number;
}

const REGION_BAR0_SIZE = 0x4000;
const SPARSE_CHUNK = 1 << 20;
const IRQ_REQ = 4;
const TWO32 = 0x1_0000_0000;
const SC_INVALID_OPCODE = 0x01;
const SC_INVALID_FIELD = 0x02;
const SC_DATA_TRANSFER = 0x04;
const SC_INVALID_NAMESPACE = 0x0b;
const SC_PRP_OFFSET = 0x13;
const SC_LBA_RANGE = 0x80;
const SCT_COMMAND = 0x100;

/** How BAR accesses behave after a fault: 'ones' reads all ones and drops writes (a device gone from the bus), 'throw' fails every access as a vfio-user client that lost its server does. */
export type BarFault = 'ones' | 'throw';

export class NvmeSimulator implements Backend {
  readonly kind = 'vfio-user' as const;
  readonly name: string;
  private readonly flatDisk: Uint8Array | undefined;
  private readonly chunks = new Map<number, Uint8Array>();
  readonly blockSize: number;
  readonly blocks: number;
  readonly config = new Uint8Array(256);
  /** Every command executed (most recent last; capped). */
  readonly log: SimCommandRecord[] = [];
  /** Doorbell writes (SQ tail) seen. */
  sqDoorbellWrites = 0;
  cqDoorbellWrites = 0;
  /** Commands dropped on purpose (never completed) so far. */
  dropped = 0;
  /** CC writes with SHN set. */
  shutdowns = 0;
  /** Times the controller went from enabled to disabled. */
  disables = 0;
  resets = 0;

  private readonly opts: Required<SimulatorOptions>;
  private cc = 0;
  private csts = 0;
  private aqa = 0;
  private asq = 0;
  private acq = 0;
  private intms = 0;
  private readonly sqs = new Map<number, SimQueue>();
  private readonly cqs = new Map<number, SimQueue>();
  private readonly maps: { iova: number; size: number; memory: Uint8Array; memoryIova: number; writes: boolean }[] = [];
  private msixFds: number[] = [];
  private scheduled = false;
  private dropNextCount = 0;
  private failNextStatus: number[] = [];
  private closedFlag = false;
  private barFault: BarFault | undefined;
  private fatalSticks = false;
  private reqFd = -1;
  private readyTimer: NodeJS.Timeout | undefined;
  /** Completions waiting for room in a full CQ. */
  private readonly backlog: { cqid: number; dw0: number; sqhd: number; sqid: number; cid: number; status: number }[] = [];

  constructor(options: SimulatorOptions = {}, name = 'nvme-sim') {
    this.name = name;
    this.opts = {
      blocks: options.blocks ?? 8192,
      blockSize: options.blockSize ?? 512,
      mdts: options.mdts ?? 5,
      maxQueueEntries: options.maxQueueEntries ?? 1024,
      maxQueuePairs: options.maxQueuePairs ?? 8,
      msixVectors: options.msixVectors ?? 8,
      doorbellStrideShift: options.doorbellStrideShift ?? 0,
      oncs: options.oncs ?? (R.ONCS_DATASET_MANAGEMENT | R.ONCS_WRITE_ZEROES),
      volatileWriteCache: options.volatileWriteCache ?? true,
      readyDelayMs: options.readyDelayMs ?? 0,
      timeoutUnits: options.timeoutUnits ?? 2,
      sparse: options.sparse ?? false,
    };
    this.blockSize = this.opts.blockSize;
    this.blocks = this.opts.blocks;
    const bytes = this.blocks * this.blockSize;
    this.flatDisk = (options.sparse ?? bytes > 256 << 20) ? undefined : new Uint8Array(bytes);
    const c = new DataView(this.config.buffer);
    c.setUint16(0x00, 0x1b36, true); // Red Hat, as QEMU's
    c.setUint16(0x02, 0x0010, true);
    c.setUint32(0x08, (R.NVME_CLASS_CODE << 8) | 0x02, true);
    c.setUint32(0x10, 0x4, true); // 64-bit memory BAR
  }

  /** A PciDevice on this simulator, as openDevice would return for real hardware. */
  static open(options: SimulatorOptions = {}): { device: PciDevice; sim: NvmeSimulator } {
    const sim = new NvmeSimulator(options);
    const device = new PciDevice(sim, {});
    device.enable();
    return { device, sim };
  }

  // ---------------------------------------------------------------- fault injection

  /** The next `n` I/O or admin commands are taken from the SQ but never completed. */
  dropNext(n = 1): void {
    this.dropNextCount += n;
  }

  /** The next commands complete with these status fields (sc | sct << 8). */
  failNext(...statuses: number[]): void {
    this.failNextStatus.push(...statuses);
  }

  /** Set CSTS.CFS: the controller stops processing until it is reset (for good with `sticky`: every enable fails). */
  raiseFatal(sticky = false): void {
    this.csts |= R.CSTS_CFS;
    if (sticky) this.fatalSticks = true;
  }

  /**
   * The kernel wants the device back (sysfs remove, hot-unplug): VFIO signals the device-request
   * eventfd and waits for the user to release the device. The device works until then.
   */
  requestRemoval(): boolean {
    if (this.reqFd < 0) return false;
    native.eventfdWrite(this.reqFd, 1);
    return true;
  }

  /** The device stops answering: no more completions, and BAR accesses fail as `how` says. */
  failBar(how: BarFault): void {
    this.barFault = how;
  }

  /** Someone else resets the function (sysfs reset, another tool): the controller forgets everything. */
  externalReset(): void {
    this.reset();
  }

  /** The namespace's bytes (the whole disk unless sparse). */
  get disk(): Uint8Array {
    if (!this.flatDisk) throw new RangeError(`${this.name}: a sparse disk has no flat image; use readDisk()`);
    return this.flatDisk;
  }

  /** Copy of `length` bytes at byte `offset` of the namespace. */
  readDisk(offset: number, length: number): Uint8Array {
    if (this.flatDisk) return this.flatDisk.slice(offset, offset + length);
    const out = new Uint8Array(length);
    for (let done = 0; done < length;) {
      const at = offset + done;
      const chunk = this.chunks.get(Math.floor(at / SPARSE_CHUNK));
      const inChunk = at % SPARSE_CHUNK;
      const n = Math.min(length - done, SPARSE_CHUNK - inChunk);
      if (chunk) out.set(chunk.subarray(inChunk, inChunk + n), done);
      done += n;
    }
    return out;
  }

  private writeDisk(offset: number, data: Uint8Array): void {
    if (this.flatDisk) {
      this.flatDisk.set(data, offset);
      return;
    }
    for (let done = 0; done < data.length;) {
      const at = offset + done;
      const key = Math.floor(at / SPARSE_CHUNK);
      let chunk = this.chunks.get(key);
      if (!chunk) this.chunks.set(key, (chunk = new Uint8Array(SPARSE_CHUNK)));
      const inChunk = at % SPARSE_CHUNK;
      const n = Math.min(data.length - done, SPARSE_CHUNK - inChunk);
      chunk.set(data.subarray(done, done + n), inChunk);
      done += n;
    }
  }

  private zeroDisk(offset: number, length: number): void {
    if (this.flatDisk) this.flatDisk.fill(0, offset, offset + length);
    else this.writeDisk(offset, new Uint8Array(length));
  }

  get enabled(): boolean {
    return (this.cc & R.CC_EN) !== 0;
  }

  get ioQueueCount(): number {
    return this.sqs.size - (this.sqs.has(0) ? 1 : 0);
  }

  // ---------------------------------------------------------------- Backend

  /** The simulated controller reads and writes the process's memory directly. */
  mapsAnyMemory(): boolean {
    return true;
  }

  deviceInfo(): BackendDeviceInfo {
    return { numRegions: 9, numIrqs: 5, flags: 0x3, canReset: true };
  }

  regionInfo(index: number): BackendRegionInfo {
    const size = index === 0 ? REGION_BAR0_SIZE : index === 7 ? this.config.length : 0;
    return { index, size, readable: size > 0, writable: size > 0, mappable: false, sparseAreas: undefined };
  }

  mapRegion(): ArrayBuffer {
    throw new InvalidArgumentError(`${this.name}: regions are not mappable`);
  }

  unmapRegion(): void {
    // Nothing is ever mapped.
  }

  regionRead(index: number, offset: number, into: Uint8Array): number {
    this.checkOpen();
    if (this.barFault !== undefined && index === 0) {
      if (this.barFault === 'throw') throw new DeviceGoneError(`${this.name}: server connection lost (simulated)`);
      into.fill(0xff);
      return into.length;
    }
    if (index === 7) {
      into.set(this.config.subarray(offset, offset + into.length));
      return into.length;
    }
    if (index !== 0) throw new RangeAccessError(`${this.name}: no region ${index}`);
    const v = new DataView(into.buffer, into.byteOffset, into.byteLength);
    if (into.length === 4) v.setUint32(0, this.readReg(offset), true);
    else if (into.length === 8) {
      v.setUint32(0, this.readReg(offset), true);
      v.setUint32(4, this.readReg(offset + 4), true);
    } else into.fill(0);
    return into.length;
  }

  regionWrite(index: number, offset: number, from: Uint8Array): number {
    this.checkOpen();
    if (this.barFault !== undefined && index === 0) {
      if (this.barFault === 'throw') throw new DeviceGoneError(`${this.name}: server connection lost (simulated)`);
      return from.length;
    }
    if (index === 7) {
      this.config.set(from, offset);
      return from.length;
    }
    if (index !== 0) throw new RangeAccessError(`${this.name}: no region ${index}`);
    const v = new DataView(from.buffer, from.byteOffset, from.byteLength);
    if (from.length === 4) this.writeReg(offset, v.getUint32(0, true));
    else if (from.length === 8) {
      this.writeReg(offset, v.getUint32(0, true));
      this.writeReg(offset + 4, v.getUint32(4, true));
    }
    return from.length;
  }

  iommuAperture(): IommuAperture {
    return { domain: this, ranges: [{ start: 0x100000, end: 2 ** 44 - 1 }], pageSize: 4096 };
  }

  dmaMap(request: BackendDmaMapRequest): void {
    this.maps.push({ iova: request.memoryIova, size: request.memory.byteLength, memory: request.memory, memoryIova: request.memoryIova, writes: request.deviceWrites });
  }

  dmaUnmap(iova: number, size: number): void {
    const i = this.maps.findIndex((m) => m.iova >= iova && m.iova < iova + size);
    if (i >= 0) this.maps.splice(i, 1);
  }

  irqInfo(index: number): BackendIrqInfo {
    const count = index === 0 ? 1 : index === 2 ? this.opts.msixVectors : index === IRQ_REQ ? 1 : 0;
    return { index, count, flags: 1 };
  }

  setIrqEventfds(index: number, start: number, fds: number[]): void {
    if (index === IRQ_REQ) {
      this.reqFd = fds[0] ?? -1;
      return;
    }
    if (index !== 2) return;
    if (fds.length === 0) {
      this.msixFds = [];
      return;
    }
    for (let i = 0; i < fds.length; i++) this.msixFds[start + i] = fds[i]!;
  }

  disableIrqs(index: number): void {
    if (index === IRQ_REQ) this.reqFd = -1;
    if (index === 2) this.msixFds = [];
  }

  unmaskIrq(): void {
    // MSI-X only here.
  }

  /** Function-level reset: the controller forgets everything; DMA maps and MSI-X routing stay (as VFIO keeps them). */
  reset(): void {
    this.resets++;
    this.controllerReset();
    this.cc = 0;
    this.csts = 0;
    this.aqa = 0;
    this.asq = 0;
    this.acq = 0;
  }

  close(): void {
    this.closedFlag = true;
    this.controllerReset();
    if (this.readyTimer) clearTimeout(this.readyTimer);
  }

  // ---------------------------------------------------------------- registers

  private readReg(offset: number): number {
    const o = this.opts;
    switch (offset) {
      case R.REG_CAP: return ((o.maxQueueEntries - 1) | (1 << 16) | (o.timeoutUnits << 24)) >>> 0;
      case R.REG_CAP_HI: return (o.doorbellStrideShift | (1 << 5) | (4 << 20)) >>> 0;
      case R.REG_VS: return 0x00010400;
      case R.REG_INTMS: case R.REG_INTMC: return this.intms;
      case R.REG_CC: return this.cc;
      case R.REG_CSTS: return this.csts;
      case R.REG_AQA: return this.aqa;
      case R.REG_ASQ: return this.asq % TWO32;
      case R.REG_ASQ + 4: return Math.floor(this.asq / TWO32);
      case R.REG_ACQ: return this.acq % TWO32;
      case R.REG_ACQ + 4: return Math.floor(this.acq / TWO32);
      default: return 0;
    }
  }

  private writeReg(offset: number, value: number): void {
    if (offset >= R.REG_DOORBELL_BASE) {
      this.doorbell(offset, value);
      return;
    }
    switch (offset) {
      case R.REG_CC: this.writeCc(value); break;
      case R.REG_AQA: this.aqa = value; break;
      case R.REG_ASQ: this.asq = Math.floor(this.asq / TWO32) * TWO32 + value; break;
      case R.REG_ASQ + 4: this.asq = value * TWO32 + (this.asq % TWO32); break;
      case R.REG_ACQ: this.acq = Math.floor(this.acq / TWO32) * TWO32 + value; break;
      case R.REG_ACQ + 4: this.acq = value * TWO32 + (this.acq % TWO32); break;
      case R.REG_INTMS: this.intms |= value; break;
      case R.REG_INTMC: this.intms &= ~value; break;
      default: break;
    }
  }

  private writeCc(value: number): void {
    const was = this.cc;
    this.cc = value >>> 0;
    if ((value & R.CC_SHN_MASK) !== 0 && (was & R.CC_SHN_MASK) === 0) {
      this.shutdowns++;
      this.csts = (this.csts & ~R.CSTS_SHST_MASK) | R.CSTS_SHST_COMPLETE;
    }
    if ((was & R.CC_EN) === 0 && (value & R.CC_EN) !== 0) {
      const ok = !this.fatalSticks && this.enable();
      const set = () => {
        this.csts = ok ? (this.csts | R.CSTS_RDY) : (this.csts | R.CSTS_CFS);
      };
      if (this.opts.readyDelayMs > 0) this.readyTimer = setTimeout(set, this.opts.readyDelayMs);
      else set();
    } else if ((was & R.CC_EN) !== 0 && (value & R.CC_EN) === 0) {
      this.disables++;
      this.controllerReset();
      this.csts = this.fatalSticks ? R.CSTS_CFS : 0;
    }
  }

  private enable(): boolean {
    const mps = (this.cc >>> 7) & 0xf;
    const iosqes = (this.cc >>> 16) & 0xf;
    const iocqes = (this.cc >>> 20) & 0xf;
    if (mps !== 0 || (iosqes !== 0 && iosqes !== 6) || (iocqes !== 0 && iocqes !== 4)) return false;
    if (this.asq % 4096 !== 0 || this.acq % 4096 !== 0 || this.asq === 0 || this.acq === 0) return false;
    const sqSize = (this.aqa & 0xfff) + 1;
    const cqSize = ((this.aqa >>> 16) & 0xfff) + 1;
    if (sqSize < 2 || cqSize < 2) return false;
    this.cqs.set(0, { id: 0, base: this.acq, size: cqSize, head: 0, tail: 0, cqid: 0, phase: 1, interrupts: true, vector: 0 });
    this.sqs.set(0, { id: 0, base: this.asq, size: sqSize, head: 0, tail: 0, cqid: 0, phase: 0, interrupts: false, vector: 0 });
    this.csts &= ~R.CSTS_SHST_MASK;
    return true;
  }

  private controllerReset(): void {
    this.sqs.clear();
    this.cqs.clear();
    this.backlog.length = 0;
  }

  private doorbell(offset: number, value: number): void {
    const stride = 4 << this.opts.doorbellStrideShift;
    const index = (offset - R.REG_DOORBELL_BASE) / stride;
    if (!Number.isInteger(index)) return;
    const qid = index >>> 1;
    if ((index & 1) === 0) {
      this.sqDoorbellWrites++;
      const sq = this.sqs.get(qid);
      if (!sq || value >= sq.size) return; // a real controller posts an async event; we ignore it
      sq.tail = value;
      this.schedule();
    } else {
      this.cqDoorbellWrites++;
      const cq = this.cqs.get(qid);
      if (!cq || value >= cq.size) return;
      cq.head = value;
      if (this.backlog.length > 0) this.schedule();
    }
  }

  private schedule(): void {
    if (this.scheduled || this.closedFlag) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.process();
    });
  }

  // ---------------------------------------------------------------- command processing

  private process(): void {
    if (this.closedFlag || this.barFault !== undefined || (this.csts & R.CSTS_CFS) !== 0 || (this.csts & R.CSTS_RDY) === 0) return;
    this.drainBacklog();
    for (const sq of [...this.sqs.values()]) {
      while (sq.head !== sq.tail && this.sqs.get(sq.id) === sq) {
        const sqe = this.readDma(sq.base + sq.head * 64, 64);
        sq.head = (sq.head + 1) % sq.size;
        if (!sqe) {
          this.csts |= R.CSTS_CFS; // cannot even fetch the command
          return;
        }
        const dw = new Uint32Array(sqe.slice().buffer);
        const cid = dw[0]! >>> 16;
        if (this.dropNextCount > 0) {
          this.dropNextCount--;
          this.dropped++;
          continue;
        }
        let status: number;
        let result = 0;
        const record: SimCommandRecord = {
          qid: sq.id, opcode: dw[0]! & 0xff, cid, nsid: dw[1]!, prp1: dw[6]! + dw[7]! * TWO32, prp2: dw[8]! + dw[9]! * TWO32,
          cdw10: dw[10]!, cdw11: dw[11]!, cdw12: dw[12]!, segments: null, status: 0,
        };
        if (this.failNextStatus.length > 0) status = this.failNextStatus.shift()!;
        else [status, result] = sq.id === 0 ? this.admin(dw, record) : this.io(dw, record);
        record.status = status;
        this.log.push(record);
        if (this.log.length > 10000) this.log.splice(0, 5000);
        this.post(sq.cqid, result, sq.head, sq.id, cid, status);
        if ((this.csts & R.CSTS_CFS) !== 0) return;
      }
    }
  }

  private post(cqid: number, dw0: number, sqhd: number, sqid: number, cid: number, status: number): void {
    const cq = this.cqs.get(cqid);
    if (!cq) return;
    if ((cq.tail + 1) % cq.size === cq.head) {
      this.backlog.push({ cqid, dw0, sqhd, sqid, cid, status });
      return;
    }
    const entry = new Uint32Array([dw0 >>> 0, 0, (sqhd | (sqid << 16)) >>> 0, (cid | (cq.phase << 16) | (status << 17)) >>> 0]);
    if (!this.writeDma(cq.base + cq.tail * 16, new Uint8Array(entry.buffer))) {
      this.csts |= R.CSTS_CFS;
      return;
    }
    cq.tail++;
    if (cq.tail === cq.size) {
      cq.tail = 0;
      cq.phase ^= 1;
    }
    if (cq.interrupts) {
      const fd = this.msixFds[cq.vector];
      if (fd !== undefined && fd >= 0) native.eventfdWrite(fd, 1);
    }
  }

  private drainBacklog(): void {
    const pending = this.backlog.splice(0);
    for (const c of pending) this.post(c.cqid, c.dw0, c.sqhd, c.sqid, c.cid, c.status);
  }

  private admin(dw: Uint32Array, rec: SimCommandRecord): [number, number] {
    const opcode = dw[0]! & 0xff;
    const qid = dw[10]! & 0xffff;
    const qsize = (dw[10]! >>> 16) + 1;
    switch (opcode) {
      case R.ADMIN_IDENTIFY: {
        const data = this.identifyData(dw[10]! & 0xff, dw[1]!);
        if (!data) return [SC_INVALID_NAMESPACE, 0];
        return [this.toHost(rec, data), 0];
      }
      case R.ADMIN_SET_FEATURES: {
        if ((dw[10]! & 0xff) === R.FEAT_NUMBER_OF_QUEUES) {
          if (this.sqs.size > 1 || this.cqs.size > 1) return [0x0c, 0]; // command sequence error after queues exist
          const n = this.opts.maxQueuePairs - 1;
          return [0, ((n << 16) | n) >>> 0];
        }
        return [0, 0];
      }
      case R.ADMIN_GET_FEATURES: return [0, 0];
      case R.ADMIN_CREATE_IO_CQ: {
        if (qid === 0 || qid > this.opts.maxQueuePairs || this.cqs.has(qid)) return [SCT_COMMAND | 0x01, 0];
        if (qsize < 2 || qsize > this.opts.maxQueueEntries) return [SCT_COMMAND | 0x02, 0];
        const ien = (dw[11]! & R.CQ_IEN) !== 0;
        const vector = dw[11]! >>> 16;
        if (ien && vector >= this.opts.msixVectors) return [SCT_COMMAND | 0x08, 0];
        if (rec.prp1 % 4096 !== 0 || (dw[11]! & R.CQ_PC) === 0) return [SC_INVALID_FIELD, 0];
        this.cqs.set(qid, { id: qid, base: rec.prp1, size: qsize, head: 0, tail: 0, cqid: qid, phase: 1, interrupts: ien, vector });
        return [0, 0];
      }
      case R.ADMIN_CREATE_IO_SQ: {
        const cqid = dw[11]! >>> 16;
        if (qid === 0 || qid > this.opts.maxQueuePairs || this.sqs.has(qid)) return [SCT_COMMAND | 0x01, 0];
        if (!this.cqs.has(cqid) || cqid === 0) return [SCT_COMMAND | 0x00, 0];
        if (qsize < 2 || qsize > this.opts.maxQueueEntries) return [SCT_COMMAND | 0x02, 0];
        if (rec.prp1 % 4096 !== 0) return [SC_INVALID_FIELD, 0];
        this.sqs.set(qid, { id: qid, base: rec.prp1, size: qsize, head: 0, tail: 0, cqid, phase: 0, interrupts: false, vector: 0 });
        return [0, 0];
      }
      case R.ADMIN_DELETE_IO_SQ: {
        if (qid === 0 || !this.sqs.has(qid)) return [SCT_COMMAND | 0x01, 0];
        this.sqs.delete(qid);
        return [0, 0];
      }
      case R.ADMIN_DELETE_IO_CQ: {
        if (qid === 0 || !this.cqs.has(qid)) return [SCT_COMMAND | 0x01, 0];
        for (const sq of this.sqs.values()) if (sq.cqid === qid && sq.id !== 0) return [SCT_COMMAND | 0x0c, 0];
        this.cqs.delete(qid);
        return [0, 0];
      }
      default:
        return [SC_INVALID_OPCODE, 0];
    }
  }

  private identifyData(cns: number, nsid: number): Uint8Array | null {
    const d = new Uint8Array(4096);
    const v = new DataView(d.buffer);
    const text = (off: number, len: number, s: string) => {
      for (let i = 0; i < len; i++) d[off + i] = i < s.length ? s.charCodeAt(i) : 0x20;
    };
    if (cns === R.CNS_CONTROLLER) {
      v.setUint16(0, 0x1b36, true);
      v.setUint16(2, 0x1af4, true);
      text(4, 20, 'SIM0001');
      text(24, 40, 'userpci NVMe simulator');
      text(64, 8, '1.0');
      d[77] = this.opts.mdts;
      v.setUint16(78, 1, true);
      v.setUint32(80, 0x00010400, true);
      d[512] = 0x66;
      d[513] = 0x44;
      v.setUint32(516, 1, true);
      v.setUint16(520, this.opts.oncs, true);
      d[525] = this.opts.volatileWriteCache ? 1 : 0;
      return d;
    }
    if (cns === R.CNS_NAMESPACE) {
      if (nsid !== 1) return null;
      v.setUint32(0, this.blocks % TWO32, true);
      v.setUint32(4, Math.floor(this.blocks / TWO32), true);
      v.setUint32(8, this.blocks % TWO32, true);
      v.setUint32(16, this.blocks % TWO32, true);
      d[25] = 1; // two formats
      const current = this.blockSize === 4096 ? 1 : 0;
      d[26] = current;
      v.setUint32(128, 9 << 16, true);
      v.setUint32(132, 12 << 16, true);
      return d;
    }
    if (cns === R.CNS_ACTIVE_NAMESPACES) {
      if (nsid < 1) v.setUint32(0, 1, true);
      return d;
    }
    return null;
  }

  private io(dw: Uint32Array, rec: SimCommandRecord): [number, number] {
    const opcode = dw[0]! & 0xff;
    if (dw[1] !== 1) return [SC_INVALID_NAMESPACE, 0];
    const slba = dw[10]! + dw[11]! * TWO32;
    switch (opcode) {
      case R.NVM_FLUSH: return [0, 0];
      case R.NVM_READ:
      case R.NVM_WRITE: {
        const nlb = (dw[12]! & 0xffff) + 1;
        if (slba + nlb > this.blocks) return [SC_LBA_RANGE, 0];
        const length = nlb * this.blockSize;
        if (this.opts.mdts > 0 && length > 4096 * 2 ** this.opts.mdts) return [SC_INVALID_FIELD, 0];
        const start = slba * this.blockSize;
        if (opcode === R.NVM_READ) return [this.toHost(rec, this.flatDisk ? this.flatDisk.subarray(start, start + length) : this.readDisk(start, length)), 0];
        if (this.flatDisk) return [this.fromHost(rec, this.flatDisk.subarray(start, start + length)), 0];
        const data = new Uint8Array(length);
        const st = this.fromHost(rec, data);
        if (st === 0) this.writeDisk(start, data);
        return [st, 0];
      }
      case R.NVM_WRITE_ZEROES: {
        const nlb = (dw[12]! & 0xffff) + 1;
        if (slba + nlb > this.blocks) return [SC_LBA_RANGE, 0];
        this.zeroDisk(slba * this.blockSize, nlb * this.blockSize);
        return [0, 0];
      }
      case R.NVM_DATASET_MANAGEMENT: {
        if ((this.opts.oncs & R.ONCS_DATASET_MANAGEMENT) === 0) return [SC_INVALID_OPCODE, 0];
        const nr = (dw[10]! & 0xff) + 1;
        const ranges = new Uint8Array(nr * 16);
        const st = this.fromHost(rec, ranges);
        if (st !== 0) return [st, 0];
        const rv = new DataView(ranges.buffer);
        for (let i = 0; i < nr; i++) {
          const len = rv.getUint32(i * 16 + 4, true);
          const lba = rv.getUint32(i * 16 + 8, true) + rv.getUint32(i * 16 + 12, true) * TWO32;
          if (lba + len > this.blocks) return [SC_LBA_RANGE, 0];
          if ((dw[11]! & R.DSM_DEALLOCATE) !== 0) this.zeroDisk(lba * this.blockSize, len * this.blockSize);
        }
        return [0, 0];
      }
      default:
        return [SC_INVALID_OPCODE, 0];
    }
  }

  /** The pages a PRP pair names for `length` bytes; a status when they break the rules. */
  private prpSegments(prp1: number, prp2: number, length: number): [number, number][] | number {
    const page = 4096;
    if (prp1 % 4 !== 0) return SC_PRP_OFFSET;
    const segs: [number, number][] = [];
    const first = Math.min(length, page - (prp1 % page));
    segs.push([prp1, first]);
    let rem = length - first;
    if (rem === 0) return segs;
    if (rem <= page) {
      if (prp2 % page !== 0) return SC_PRP_OFFSET;
      segs.push([prp2, rem]);
      return segs;
    }
    if (prp2 % 8 !== 0) return SC_PRP_OFFSET;
    let at = prp2;
    while (rem > 0) {
      const e = this.readDma(at, 8);
      if (!e) return SC_DATA_TRANSFER;
      const ev = new DataView(e.buffer, e.byteOffset, 8);
      const entry = ev.getUint32(0, true) + ev.getUint32(4, true) * TWO32;
      if (at % page === page - 8 && rem > page) {
        if (entry % page !== 0) return SC_PRP_OFFSET;
        at = entry; // next list page
        continue;
      }
      if (entry % page !== 0) return SC_PRP_OFFSET;
      const n = Math.min(page, rem);
      segs.push([entry, n]);
      rem -= n;
      at += 8;
    }
    return segs;
  }

  private toHost(rec: SimCommandRecord, data: Uint8Array): number {
    const segs = this.prpSegments(rec.prp1, rec.prp2, data.length);
    if (typeof segs === 'number') return segs;
    rec.segments = segs;
    let off = 0;
    for (const [iova, len] of segs) {
      if (!this.writeDma(iova, data.subarray(off, off + len))) return SC_DATA_TRANSFER;
      off += len;
    }
    return 0;
  }

  private fromHost(rec: SimCommandRecord, into: Uint8Array): number {
    const segs = this.prpSegments(rec.prp1, rec.prp2, into.length);
    if (typeof segs === 'number') return segs;
    rec.segments = segs;
    let off = 0;
    for (const [iova, len] of segs) {
      const src = this.readDma(iova, len);
      if (!src) return SC_DATA_TRANSFER;
      into.set(src, off);
      off += len;
    }
    return 0;
  }

  private findMap(iova: number, length: number) {
    for (const m of this.maps) if (iova >= m.memoryIova && iova + length <= m.memoryIova + m.memory.byteLength) return m;
    return undefined;
  }

  private readDma(iova: number, length: number): Uint8Array | undefined {
    const m = this.findMap(iova, length);
    return m ? m.memory.subarray(iova - m.memoryIova, iova - m.memoryIova + length) : undefined;
  }

  private writeDma(iova: number, data: Uint8Array): boolean {
    const m = this.findMap(iova, data.length);
    if (!m || !m.writes) return false;
    m.memory.set(data, iova - m.memoryIova);
    return true;
  }

  private checkOpen(): void {
    if (this.closedFlag) throw new RangeAccessError(`${this.name} is closed`);
  }
}
