/**
 * A simulated virtio-net function behind the Backend interface, for the control queue: the real
 * PciDevice, DMA space, virtio PCI transport and VirtioNet driver run on top of it unchanged.
 * Config space carries the four virtio capabilities (common, notify, ISR, device) into BAR 4,
 * which stays unmapped so every register access reaches the simulator. Split rings only, no
 * MSI-X (the driver polls). The data queues are set up and never used; a doorbell on the control
 * queue makes the simulator walk its split ring in the driver's memory (through the DMA maps, as
 * a device behind an IOMMU would), record each command and answer it as `answer` says. QEMU's
 * virtio-net is in the guest run 'net'.
 */
import { InvalidArgumentError, RangeAccessError } from '../../src/errors';
import type { Backend, BackendDeviceInfo, BackendDmaMapRequest, BackendIrqInfo, BackendRegionInfo, IommuAperture } from '../../src/device/backend';
import { PciDevice } from '../../src/device/device';
import { DmaMapTable } from './dma-map-table';
import * as V from '../../src/drivers/virtio/constants';
import * as N from '../../src/drivers/virtio-net/constants';

/** How the device answers a control command: VIRTIO_NET_OK, VIRTIO_NET_ERR, or not at all (it keeps the buffers). */
export type ControlAnswer = 'ok' | 'err' | 'never';

export interface ControlCommand {
  cls: number;
  command: number;
  data: number[];
  /** Bytes the device may write (the ack), as the chain offered them. */
  writable: number;
}

export interface VirtioNetSimOptions {
  /** Offer CTRL_VQ; default true. */
  controlQueue?: boolean;
  /** Offer MQ with this many pairs (needs controlQueue); default 2. 0: no MQ. */
  maxQueuePairs?: number;
  /** Answer each control command; default 'ok'. */
  answer?: (command: ControlCommand) => ControlAnswer;
}

const BAR = 4;
const BAR_SIZE = 0x4000;
const COMMON = 0x0000;
const ISR = 0x1000;
const DEVICE = 0x2000;
const DEVICE_SIZE = 0x10;
const NOTIFY = 0x3000;
const NOTIFY_MULTIPLIER = 4;
const MAX_QUEUE = 256;

interface SimQueue {
  size: number;
  vector: number;
  enable: number;
  desc: number;
  driver: number;
  device: number;
  lastAvail: number;
  usedIdx: number;
}

export class VirtioNetSimulator implements Backend {
  readonly kind = 'vfio-user' as const;
  readonly name = 'virtio-net-sim';
  readonly config = new Uint8Array(256);
  /** Every control command the device took from its ring, in order. */
  readonly commands: ControlCommand[] = [];
  /** Doorbells rung on the control queue. */
  controlDoorbells = 0;
  answer: (command: ControlCommand) => ControlAnswer;
  readonly offered: bigint;
  readonly maxPairs: number;
  private readonly queues: SimQueue[];
  private readonly maps = new DmaMapTable();
  private status = 0;
  private deviceFeatureSelect = 0;
  private driverFeatureSelect = 0;
  private driverFeatures = 0n;
  private msixConfig = V.NO_VECTOR;
  private queueSelect = 0;

  constructor(options: VirtioNetSimOptions = {}) {
    const ctrl = options.controlQueue ?? true;
    const pairs = ctrl ? options.maxQueuePairs ?? 2 : 0;
    this.maxPairs = Math.max(1, pairs);
    this.answer = options.answer ?? (() => 'ok');
    let f = V.featureBit(V.F_VERSION_1) | V.featureBit(V.F_ACCESS_PLATFORM) | V.featureBit(N.NET_F_MAC);
    if (ctrl) f |= V.featureBit(N.NET_F_CTRL_VQ);
    if (pairs > 0) f |= V.featureBit(N.NET_F_MQ);
    this.offered = f;
    this.queues = Array.from({ length: 2 * this.maxPairs + (ctrl ? 1 : 0) }, () => this.freshQueue());
    const c = new DataView(this.config.buffer);
    c.setUint16(0x00, V.VIRTIO_VENDOR_ID, true);
    c.setUint16(0x02, V.MODERN_DEVICE_ID_BASE + N.VIRTIO_NET_DEVICE_TYPE, true);
    c.setUint16(0x06, 0x10, true); // a capability list
    c.setUint32(0x08, 0x02000001, true); // network controller, revision 1
    c.setUint32(0x10 + 4 * BAR, 0x4, true); // 64-bit memory BAR
    c.setUint16(0x2e, N.VIRTIO_NET_DEVICE_TYPE, true);
    c.setUint8(0x34, 0x40);
    const caps: [type: number, offset: number, size: number][] = [[V.CAP_COMMON, COMMON, V.COMMON_CFG_MIN_SIZE], [V.CAP_NOTIFY, NOTIFY, 0x1000], [V.CAP_ISR, ISR, 4], [V.CAP_DEVICE, DEVICE, DEVICE_SIZE]];
    let at = 0x40;
    for (const [i, [type, offset, size]] of caps.entries()) {
      const length = type === V.CAP_NOTIFY ? 20 : 16;
      c.setUint8(at, 0x09); // vendor-specific
      c.setUint8(at + 1, i + 1 < caps.length ? at + 0x18 : 0);
      c.setUint8(at + 2, length);
      c.setUint8(at + 3, type);
      c.setUint8(at + 4, BAR);
      c.setUint32(at + 8, offset, true);
      c.setUint32(at + 12, size, true);
      if (type === V.CAP_NOTIFY) c.setUint32(at + 16, NOTIFY_MULTIPLIER, true);
      at += 0x18;
    }
  }

  /** A PciDevice on this simulator, as openDevice would return for a function bound to vfio-pci. */
  static open(options: VirtioNetSimOptions = {}): { device: PciDevice; sim: VirtioNetSimulator } {
    const sim = new VirtioNetSimulator(options);
    const device = new PciDevice(sim, {});
    device.enable();
    return { device, sim };
  }

  /** The control queue's index: after the last possible pair. */
  get controlIndex(): number {
    return 2 * this.maxPairs;
  }

  private freshQueue(): SimQueue {
    return { size: MAX_QUEUE, vector: V.NO_VECTOR, enable: 0, desc: 0, driver: 0, device: 0, lastAvail: 0, usedIdx: 0 };
  }

  // ---------------------------------------------------------------- Backend

  mapsAnyMemory(): boolean {
    return true;
  }

  deviceInfo(): BackendDeviceInfo {
    return { numRegions: 9, numIrqs: 5, flags: 0x3, canReset: false };
  }

  regionInfo(index: number): BackendRegionInfo {
    const size = index === BAR ? BAR_SIZE : index === 7 ? this.config.length : 0;
    return { index, size, readable: size > 0, writable: size > 0, mappable: false, sparseAreas: undefined };
  }

  mapRegion(): ArrayBuffer {
    throw new InvalidArgumentError(`${this.name}: regions are not mappable`);
  }

  unmapRegion(): void {
    // Nothing is ever mapped.
  }

  regionRead(index: number, offset: number, into: Uint8Array): number {
    if (index === 7) {
      into.set(this.config.subarray(offset, offset + into.length));
      return into.length;
    }
    if (index !== BAR) throw new RangeAccessError(`${this.name}: no region ${index}`);
    let value = 0;
    if (offset >= COMMON && offset < COMMON + V.COMMON_CFG_MIN_SIZE) value = this.readCommon(offset - COMMON);
    else if (offset >= DEVICE && offset < DEVICE + DEVICE_SIZE) value = this.readDevice(offset - DEVICE, into.length);
    for (let i = 0; i < into.length; i++) into[i] = (value / 2 ** (8 * i)) & 0xff;
    return into.length;
  }

  regionWrite(index: number, offset: number, from: Uint8Array): number {
    if (index === 7) {
      this.config.set(from, offset);
      return from.length;
    }
    if (index !== BAR) throw new RangeAccessError(`${this.name}: no region ${index}`);
    let value = 0;
    for (let i = 0; i < from.length; i++) value += from[i]! * 2 ** (8 * i);
    if (offset >= COMMON && offset < COMMON + V.COMMON_CFG_MIN_SIZE) this.writeCommon(offset - COMMON, value);
    else if (offset >= NOTIFY && offset < NOTIFY + 0x1000) this.doorbell((offset - NOTIFY) / NOTIFY_MULTIPLIER);
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
    return { index, count: index === 0 ? 1 : 0, flags: 1 };
  }

  setIrqEventfds(): void {}
  disableIrqs(): void {}
  unmaskIrq(): void {}
  reset(): void {
    this.deviceReset();
  }
  close(): void {
    this.deviceReset();
  }

  // ---------------------------------------------------------------- registers

  private get selected(): SimQueue | undefined {
    return this.queues[this.queueSelect];
  }

  private readCommon(o: number): number {
    const q = this.selected;
    switch (o) {
      case V.COMMON_DEVICE_FEATURE_SELECT: return this.deviceFeatureSelect;
      case V.COMMON_DEVICE_FEATURE: return this.deviceFeatureSelect > 1 ? 0 : Number((this.offered >> BigInt(32 * this.deviceFeatureSelect)) & 0xffffffffn);
      case V.COMMON_MSIX_CONFIG: return this.msixConfig;
      case V.COMMON_NUM_QUEUES: return this.queues.length;
      case V.COMMON_DEVICE_STATUS: return this.status;
      case V.COMMON_CONFIG_GENERATION: return 0;
      case V.COMMON_QUEUE_SELECT: return this.queueSelect;
      case V.COMMON_QUEUE_SIZE: return q?.size ?? 0;
      case V.COMMON_QUEUE_MSIX_VECTOR: return q?.vector ?? V.NO_VECTOR;
      case V.COMMON_QUEUE_ENABLE: return q?.enable ?? 0;
      case V.COMMON_QUEUE_NOTIFY_OFF: return this.queueSelect;
      default: return 0;
    }
  }

  private writeCommon(o: number, value: number): void {
    const q = this.selected;
    const half = (old: number, high: boolean) => (high ? (old % 2 ** 32) + value * 2 ** 32 : Math.floor(old / 2 ** 32) * 2 ** 32 + value);
    switch (o) {
      case V.COMMON_DEVICE_FEATURE_SELECT: this.deviceFeatureSelect = value; break;
      case V.COMMON_DRIVER_FEATURE_SELECT: this.driverFeatureSelect = value; break;
      case V.COMMON_DRIVER_FEATURE: {
        const shift = BigInt(32 * this.driverFeatureSelect);
        this.driverFeatures = (this.driverFeatures & ~(0xffffffffn << shift)) | (BigInt(value) << shift);
        break;
      }
      case V.COMMON_MSIX_CONFIG: this.msixConfig = V.NO_VECTOR; break; // no MSI-X: the device answers NO_VECTOR
      case V.COMMON_DEVICE_STATUS:
        if (value === 0) this.deviceReset();
        // FEATURES_OK sticks only for a subset of what is offered.
        else this.status = (value & V.STATUS_FEATURES_OK) && (this.driverFeatures & ~this.offered) !== 0n ? value & ~V.STATUS_FEATURES_OK : value;
        break;
      case V.COMMON_QUEUE_SELECT: this.queueSelect = value; break;
      case V.COMMON_QUEUE_SIZE: if (q) q.size = value; break;
      case V.COMMON_QUEUE_MSIX_VECTOR: if (q) q.vector = V.NO_VECTOR; break;
      case V.COMMON_QUEUE_ENABLE: if (q) q.enable = value; break;
      case V.COMMON_QUEUE_DESC: case V.COMMON_QUEUE_DESC + 4: if (q) q.desc = half(q.desc, o !== V.COMMON_QUEUE_DESC); break;
      case V.COMMON_QUEUE_DRIVER: case V.COMMON_QUEUE_DRIVER + 4: if (q) q.driver = half(q.driver, o !== V.COMMON_QUEUE_DRIVER); break;
      case V.COMMON_QUEUE_DEVICE: case V.COMMON_QUEUE_DEVICE + 4: if (q) q.device = half(q.device, o !== V.COMMON_QUEUE_DEVICE); break;
      default: break;
    }
  }

  private readDevice(o: number, width: number): number {
    const cfg = new Uint8Array(DEVICE_SIZE);
    cfg.set([0x52, 0x54, 0x00, 0x12, 0x34, 0x56], N.CFG_MAC);
    new DataView(cfg.buffer).setUint16(N.CFG_MAX_VIRTQUEUE_PAIRS, this.maxPairs, true);
    let value = 0;
    for (let i = 0; i < width; i++) value += cfg[o + i]! * 2 ** (8 * i);
    return value;
  }

  private deviceReset(): void {
    this.status = 0;
    this.driverFeatures = 0n;
    for (let i = 0; i < this.queues.length; i++) this.queues[i] = this.freshQueue();
  }

  // ---------------------------------------------------------------- DMA and the control queue

  /** `length` bytes at an IOVA, inside one DMA map (a device faults on anything else). */
  private at(iova: number, length: number): Uint8Array {
    const bytes = this.maps.bytes(iova, length);
    if (bytes) return bytes;
    throw new RangeAccessError(`${this.name}: DMA to unmapped IOVA 0x${iova.toString(16)}`);
  }

  private doorbell(index: number): void {
    if (index !== this.controlIndex || this.queues.length <= index) return;
    this.controlDoorbells++;
    const q = this.queues[index]!;
    if (!q.enable || (this.status & V.STATUS_DRIVER_OK) === 0) return;
    const avail = new DataView(this.at(q.driver, 4 + 2 * q.size).slice().buffer);
    const availIdx = avail.getUint16(2, true);
    for (; q.lastAvail !== availIdx; q.lastAvail = (q.lastAvail + 1) & 0xffff) {
      const head = avail.getUint16(4 + 2 * (q.lastAvail % q.size), true);
      const readable: number[] = [];
      let ack: Uint8Array | undefined;
      let writable = 0;
      for (let id = head, hops = 0; hops < q.size; hops++) {
        const d = new DataView(this.at(q.desc + 16 * id, 16).slice().buffer);
        const addr = Number(d.getBigUint64(0, true));
        const len = d.getUint32(8, true);
        const flags = d.getUint16(12, true);
        if (flags & V.DESC_F_WRITE) {
          ack ??= this.at(addr, len);
          writable += len;
        } else readable.push(...this.at(addr, len));
        if (!(flags & V.DESC_F_NEXT)) break;
        id = d.getUint16(14, true);
      }
      const command: ControlCommand = { cls: readable[0] ?? -1, command: readable[1] ?? -1, data: readable.slice(2), writable };
      this.commands.push(command);
      const answer = this.answer(command);
      if (answer === 'never' || !ack) continue;
      ack[0] = answer === 'ok' ? N.CTRL_OK : 1; // VIRTIO_NET_ERR
      const used = new DataView(this.at(q.device, 4 + 8 * q.size).buffer, this.at(q.device, 1).byteOffset);
      used.setUint32(4 + 8 * (q.usedIdx % q.size), head, true);
      used.setUint32(8 + 8 * (q.usedIdx % q.size), 1, true);
      q.usedIdx = (q.usedIdx + 1) & 0xffff;
      used.setUint16(2, q.usedIdx, true);
    }
  }
}
