/**
 * An NVMe controller that completes every command instantly, in this process and on this thread,
 * for bench:native: it measures the driver's own CPU per I/O, with no device or emulator in the
 * way. BAR0 is a real memory mapping (a memfd mapped twice: the driver's Region takes its fast
 * path, doorbells are plain stores), queues are read and written in place in the driver's DMA
 * memory, and no data moves (reads complete without copying anything).
 *
 * The device works when run() is called: it looks at CC and every SQ tail doorbell and posts a
 * completion for each new command. Admin commands (bring-up) may allocate; I/O commands do not.
 */
import { native, constants } from '../../src/native/index';
import { InvalidArgumentError } from '../../src/errors';
import type { Backend, BackendDeviceInfo, BackendDmaMapRequest, BackendIrqInfo, BackendRegionInfo, IommuAperture } from '../../src/device/backend';
import { PciDevice } from '../../src/device/device';
import { DmaMapTable } from '../../test/support/dma-map-table';
import * as R from '../../src/drivers/nvme/registers';

const BAR0_SIZE = 0x4000;
const TWO32 = 0x1_0000_0000;
const BLOCKS = 1 << 24;

interface Queue {
  /** SQ: 16 dwords per entry; CQ: 4 dwords per entry. */
  ring: Uint32Array;
  size: number;
  head: number;
  tail: number;
  phase: number;
  cq: Queue | null;
  /** SQ: its id, for the completion entry. */
  id: number;
}

export class InstantNvme implements Backend {
  readonly kind = 'vfio-user' as const;
  readonly name = 'instant-nvme';
  /** Commands completed (admin and I/O). */
  completed = 0;
  private readonly memfd: number;
  /** The device's own mapping of BAR0. */
  private readonly regs: Uint32Array;
  private readonly regsBuffer: ArrayBuffer;
  private readonly config = new Uint8Array(256);
  private readonly maps = new DmaMapTable();
  private sqs: (Queue | null)[] = [];
  private cqs: (Queue | null)[] = [];
  private ready = false;

  constructor() {
    this.memfd = native.memfdCreate('instant-nvme-bar0', 0);
    native.ftruncate(this.memfd, BAR0_SIZE);
    this.regsBuffer = native.mmap(BAR0_SIZE, constants.PROT_READ | constants.PROT_WRITE, constants.MAP_SHARED, this.memfd, 0);
    this.regs = new Uint32Array(this.regsBuffer);
    const c = new DataView(this.config.buffer);
    c.setUint16(0x00, 0x1b36, true);
    c.setUint16(0x02, 0x0010, true);
    c.setUint32(0x08, (R.NVME_CLASS_CODE << 8) | 0x02, true);
    // CAP: MQES 4095 (4096 entries), CQR, TO 1 (500 ms), CSS NVM, MPSMIN 0 (4 KiB), DSTRD 0.
    this.regs[R.REG_CAP / 4] = (4095 | (1 << 16) | (1 << 24)) >>> 0;
    this.regs[R.REG_CAP_HI / 4] = 1 << 5;
    this.regs[R.REG_VS / 4] = 0x00010400;
  }

  /** A PciDevice on this device, as openDevice would give for hardware. */
  static open(): { device: PciDevice; nvme: InstantNvme } {
    const nvme = new InstantNvme();
    const device = new PciDevice(nvme, {});
    device.enable();
    return { device, nvme };
  }

  /**
   * Runs `work` with the device answering on the event loop meanwhile: for bring-up and close,
   * where the driver polls on its own and waits between polls. Measured loops call run() themselves.
   */
  async answering<T>(work: () => Promise<T>): Promise<T> {
    let on = true;
    const tick = () => {
      this.run();
      if (on) setImmediate(tick);
    };
    tick();
    try {
      return await work();
    } finally {
      on = false;
    }
  }

  /** Do what the device has been asked: controller enable/disable, then every SQ's new commands. */
  run(): void {
    const regs = this.regs;
    const cc = regs[R.REG_CC / 4]!;
    if (!this.ready && (cc & R.CC_EN) !== 0) this.enable();
    else if (this.ready && (cc & R.CC_EN) === 0) this.disable();
    if (!this.ready) return;
    if ((cc & R.CC_SHN_MASK) !== 0) regs[R.REG_CSTS / 4] = (regs[R.REG_CSTS / 4]! & ~R.CSTS_SHST_MASK) | R.CSTS_SHST_COMPLETE;
    const sqs = this.sqs;
    for (let qid = 0; qid < sqs.length; qid++) {
      const sq = sqs[qid];
      if (sq === null || sq === undefined) continue;
      const tail = regs[(R.REG_DOORBELL_BASE >>> 2) + 2 * qid]!;
      if (tail >= sq.size) continue;
      while (sq.head !== tail) {
        const e = sq.head * 16;
        sq.head = sq.head + 1 === sq.size ? 0 : sq.head + 1;
        const dw0 = sq.ring[e]!;
        const result = qid === 0 ? this.admin(sq.ring, e) : 0;
        this.post(sq.cq!, result, sq.head, qid, dw0 >>> 16, 0);
      }
    }
  }

  private post(cq: Queue, result: number, sqHead: number, sqid: number, cid: number, status: number): void {
    const r = cq.ring;
    const e = cq.tail * 4;
    r[e] = result;
    r[e + 1] = 0;
    r[e + 2] = (sqHead | (sqid << 16)) >>> 0;
    r[e + 3] = (cid | (cq.phase << 16) | (status << 17)) >>> 0;
    if (++cq.tail === cq.size) {
      cq.tail = 0;
      cq.phase ^= 1;
    }
    this.completed++;
  }

  private enable(): void {
    const aqa = this.regs[R.REG_AQA / 4]!;
    const acq = this.ring(this.reg64(R.REG_ACQ), ((aqa >>> 16) & 0xfff) + 1, 4);
    this.cqs = [acq];
    this.sqs = [this.ring(this.reg64(R.REG_ASQ), (aqa & 0xfff) + 1, 16)];
    this.sqs[0]!.cq = acq;
    this.ready = true;
    this.regs[R.REG_CSTS / 4] = R.CSTS_RDY;
  }

  private disable(): void {
    this.sqs = [];
    this.cqs = [];
    this.ready = false;
    this.regs[R.REG_CSTS / 4] = 0;
  }

  private reg64(offset: number): number {
    return this.regs[offset / 4]! + this.regs[offset / 4 + 1]! * TWO32;
  }

  private ring(iova: number, size: number, dwordsPerEntry: number): Queue {
    return { ring: this.view(iova, size * dwordsPerEntry * 4), size, head: 0, tail: 0, phase: 1, cq: null, id: 0 };
  }

  /** Uint32 view of DMA memory at an IOVA (the driver's own pages: nothing is copied). */
  private view(iova: number, length: number): Uint32Array {
    const bytes = this.maps.bytes(iova, length);
    if (bytes) return new Uint32Array(bytes.buffer, bytes.byteOffset, length / 4);
    throw new InvalidArgumentError(`instant-nvme: IOVA 0x${iova.toString(16)} (+${length}) is not mapped`);
  }

  /** Admin commands: just what the driver's bring-up and queue set-up use. Returns dword 0. */
  private admin(sq: Uint32Array, e: number): number {
    const opcode = sq[e]! & 0xff;
    const prp1 = sq[e + 6]! + sq[e + 7]! * TWO32;
    const cdw10 = sq[e + 10]!;
    const cdw11 = sq[e + 11]!;
    const qid = cdw10 & 0xffff;
    const size = (cdw10 >>> 16) + 1;
    switch (opcode) {
      case R.ADMIN_IDENTIFY: {
        const d = new DataView(this.view(prp1, 4096).buffer, this.view(prp1, 4096).byteOffset, 4096);
        for (let i = 0; i < 4096; i += 4) d.setUint32(i, 0);
        const cns = cdw10 & 0xff;
        if (cns === R.CNS_CONTROLLER) {
          d.setUint8(77, 5); // MDTS: 128 KiB
          d.setUint32(80, 0x00010400, true);
          d.setUint8(512, 0x66);
          d.setUint8(513, 0x44);
          d.setUint32(516, 1, true);
        } else if (cns === R.CNS_NAMESPACE) {
          for (const o of [0, 8, 16]) d.setUint32(o, BLOCKS, true);
          d.setUint32(128, 9 << 16, true); // LBA format 0: 512-byte blocks
        } else if (cns === R.CNS_ACTIVE_NAMESPACES) {
          d.setUint32(0, 1, true);
        }
        return 0;
      }
      case R.ADMIN_SET_FEATURES:
        return (cdw10 & 0xff) === R.FEAT_NUMBER_OF_QUEUES ? ((7 << 16) | 7) >>> 0 : 0;
      case R.ADMIN_CREATE_IO_CQ:
        this.cqs[qid] = this.ring(prp1, size, 4);
        return 0;
      case R.ADMIN_CREATE_IO_SQ: {
        const sq2 = this.ring(prp1, size, 16);
        sq2.cq = this.cqs[cdw11 >>> 16] ?? null;
        sq2.id = qid;
        this.sqs[qid] = sq2;
        return 0;
      }
      case R.ADMIN_DELETE_IO_SQ:
        this.sqs[qid] = null;
        return 0;
      case R.ADMIN_DELETE_IO_CQ:
        this.cqs[qid] = null;
        return 0;
      default:
        return 0;
    }
  }

  // ---------------------------------------------------------------- Backend

  /** The instant controller reads and writes the process's memory directly. */
  mapsAnyMemory(): boolean {
    return true;
  }

  deviceInfo(): BackendDeviceInfo {
    return { numRegions: 9, numIrqs: 0, flags: 0x3, canReset: false };
  }

  regionInfo(index: number): BackendRegionInfo {
    if (index === 0) return { index, size: BAR0_SIZE, readable: true, writable: true, mappable: true, sparseAreas: undefined };
    const size = index === 7 ? this.config.length : 0;
    return { index, size, readable: size > 0, writable: size > 0, mappable: false, sparseAreas: undefined };
  }

  mapRegion(index: number, offset: number, size: number): ArrayBuffer {
    if (index !== 0) throw new InvalidArgumentError(`instant-nvme: region ${index} is not mappable`);
    return native.mmap(size, constants.PROT_READ | constants.PROT_WRITE, constants.MAP_SHARED, this.memfd, offset);
  }

  unmapRegion(buffer: ArrayBuffer): void {
    native.munmap(buffer);
  }

  regionRead(index: number, offset: number, into: Uint8Array): number {
    if (index !== 7) return 0;
    into.set(this.config.subarray(offset, offset + into.length));
    return into.length;
  }

  regionWrite(index: number, offset: number, from: Uint8Array): number {
    if (index !== 7) return 0;
    this.config.set(from, offset);
    return from.length;
  }

  iommuAperture(): IommuAperture {
    return { domain: this, ranges: [{ start: 0x100000, end: 2 ** 44 - 1 }], pageSize: 4096 };
  }

  dmaMap(request: BackendDmaMapRequest): void {
    this.maps.add(request);
  }

  dmaUnmap(iova: number, size: number): void {
    this.maps.remove(iova, size);
  }

  irqInfo(index: number): BackendIrqInfo {
    return { index, count: 0, flags: 0 };
  }

  setIrqEventfds(): void {}

  disableIrqs(): void {}

  unmaskIrq(): void {}

  reset(): void {
    this.disable();
  }

  close(): void {
    this.disable();
    native.munmap(this.regsBuffer);
    native.close(this.memfd);
  }
}
