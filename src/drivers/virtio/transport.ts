/**
 * The virtio 1.x PCI transport ("modern" interface, spec 4.1): the device describes four register
 * blocks with vendor-specific capabilities (common configuration, notifications, ISR status,
 * device-specific configuration), each a window into one of its BARs. Through them the driver
 * resets the device, negotiates features, walks the status handshake, and sets up virtqueues in
 * DMA memory, then rings a queue's doorbell to tell the device about new buffers.
 *
 * Legacy (pre-1.0, I/O port) devices are not supported: a transitional device is driven through
 * its modern capabilities like any other, and VERSION_1 is required.
 */
import { DeviceGoneError, InvalidArgumentError, UserpciError } from '../../errors';
import type { PciDevice } from '../../device/device';
import type { Region } from '../../device/region';
import type { DmaBuffer } from '../../dma/dma-space';
import { parseConfigSpace } from '../../pci/config-space';
import type { VirtioCapabilityFields } from '../../pci/capabilities';
import * as C from './constants';
import { SplitQueue, splitQueueLayout } from './split-queue';
import { PackedQueue, packedQueueLayout } from './packed-queue';
import type { Virtqueue } from './virtqueue';

interface Window {
  region: Region;
  /** Offset of the block inside its BAR. */
  base: number;
  size: number;
}

export interface QueueSetup {
  /** Entries wanted; the device's maximum caps it (power of two). */
  size: number;
  /** MSI-X vector for this queue's interrupts, or NO_VECTOR for none (polled). */
  msixVector?: number;
}

/** Where a modern virtio device's registers live, read from its capability list. */
export interface VirtioLayout {
  common: VirtioCapabilityFields;
  notify: VirtioCapabilityFields & { notifyOffMultiplier: number };
  isr: VirtioCapabilityFields | undefined;
  device: VirtioCapabilityFields | undefined;
}

/** Finds the first capability of each virtio type (the spec lets a device offer several; the first is preferred). */
export function findVirtioLayout(configBytes: Uint8Array, name: string): VirtioLayout {
  const cfg = parseConfigSpace(configBytes);
  const caps = cfg.capabilities.map((c) => c.fields).filter((f): f is VirtioCapabilityFields => f?.kind === 'virtio' && f.bar < 6);
  const first = (type: number) => caps.find((c) => c.cfgType === type);
  const common = first(C.CAP_COMMON);
  const notify = first(C.CAP_NOTIFY);
  if (!common || !notify || notify.notifyOffMultiplier === undefined) {
    throw new UserpciError('ENOTSUP', `${name} has no virtio 1.x common/notify capabilities (a legacy-only device; use disable-legacy=on or a modern device)`);
  }
  if (common.size < C.COMMON_CFG_MIN_SIZE) throw new UserpciError('EILSEQ', `${name}: virtio common configuration is only ${common.size} bytes`);
  return { common, notify: notify as VirtioLayout['notify'], isr: first(C.CAP_ISR), device: first(C.CAP_DEVICE) };
}

/** The virtio device type of a PCI function (1 net, 2 block, 4 rng, ...), or undefined if not virtio. */
export function virtioDeviceType(vendorId: number, deviceId: number, subsystemId: number): number | undefined {
  if (vendorId !== C.VIRTIO_VENDOR_ID) return undefined;
  if (deviceId >= C.MODERN_DEVICE_ID_BASE && deviceId <= C.MODERN_DEVICE_ID_BASE + 0x3f) return deviceId - C.MODERN_DEVICE_ID_BASE;
  if (deviceId >= C.TRANSITIONAL_ID_FIRST && deviceId <= C.TRANSITIONAL_ID_LAST) return subsystemId;
  return undefined;
}

const RESET_TIMEOUT_MS = 5000;

export class VirtioPciTransport {
  readonly deviceType: number;
  readonly layout: VirtioLayout;
  private readonly common: Window;
  private readonly notifyWindow: Window;
  private readonly isrWindow: Window | undefined;
  private readonly deviceWindow: Window | undefined;
  private readonly queueMemory: DmaBuffer[] = [];
  /** Features both sides agreed on (after negotiate()). */
  negotiated = 0n;

  constructor(readonly device: PciDevice) {
    const type = virtioDeviceType(device.vendorId, device.deviceId, device.config.read16(0x2e));
    if (type === undefined) {
      throw new UserpciError('ENODEV', `${device.name} is not a virtio device (${device.vendorId.toString(16)}:${device.deviceId.toString(16)})`);
    }
    this.deviceType = type;
    const bytes = device.config.readBytes(0, 256);
    this.layout = findVirtioLayout(bytes, device.name);
    const win = (cap: VirtioCapabilityFields): Window => {
      const region = device.bar(cap.bar);
      if (cap.offset + cap.size > region.size) throw new UserpciError('EILSEQ', `${device.name}: virtio ${cap.cfgTypeName} block ends past BAR${cap.bar}`);
      return { region, base: cap.offset, size: cap.size };
    };
    this.common = win(this.layout.common);
    this.notifyWindow = win(this.layout.notify);
    this.isrWindow = this.layout.isr && win(this.layout.isr);
    this.deviceWindow = this.layout.device && win(this.layout.device);
  }

  get name(): string {
    return this.device.name;
  }

  // ------------------------------------------------------------------ status

  get status(): number {
    return this.common.region.read8(this.common.base + C.COMMON_DEVICE_STATUS);
  }

  private setStatus(bits: number): void {
    this.common.region.write8(this.common.base + C.COMMON_DEVICE_STATUS, bits);
  }

  private addStatus(bits: number): void {
    this.setStatus(this.status | bits);
  }

  /**
   * Writing 0 resets the device: it forgets features, queues and vectors and stops using every
   * buffer it was given. The device may take time; it reads back 0 when done (spec 4.1.4.3.2).
   */
  async reset(): Promise<void> {
    this.setStatus(0);
    const deadline = Date.now() + RESET_TIMEOUT_MS;
    for (let spins = 0; this.status !== 0; spins++) {
      if (this.device.closed) throw new DeviceGoneError(`${this.name} went away during reset`);
      if (Date.now() > deadline) throw new UserpciError('ETIMEDOUT', `${this.name}: virtio reset did not complete in ${RESET_TIMEOUT_MS} ms (status 0x${this.status.toString(16)})`);
      await new Promise((r) => (spins < 100 ? setImmediate(r) : setTimeout(r, 1)));
    }
    this.negotiated = 0n;
    this.freeQueueMemory();
  }

  /** Tell the device we gave up on it (status FAILED); it stays so until the next reset. */
  fail(): void {
    try {
      this.addStatus(C.STATUS_FAILED);
    } catch {
      // Gone already.
    }
  }

  get needsReset(): boolean {
    return (this.status & C.STATUS_DEVICE_NEEDS_RESET) !== 0;
  }

  // ------------------------------------------------------------------ features

  /** The 64 feature bits the device offers (two 32-bit windows). */
  deviceFeatures(): bigint {
    const r = this.common.region;
    const b = this.common.base;
    r.write32(b + C.COMMON_DEVICE_FEATURE_SELECT, 0);
    const lo = r.read32(b + C.COMMON_DEVICE_FEATURE);
    r.write32(b + C.COMMON_DEVICE_FEATURE_SELECT, 1);
    const hi = r.read32(b + C.COMMON_DEVICE_FEATURE);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  /**
   * ACKNOWLEDGE, DRIVER, then write the features we take: `wanted` as far as the device offers
   * them. Every bit of `required` must be offered, else ENOTSUP names the missing ones. Then
   * FEATURES_OK, read back: a device that clears it refused the set (spec 3.1.1).
   */
  negotiate(wanted: bigint, required: bigint, deviceNames: Readonly<Record<number, string>> = {}): bigint {
    this.setStatus(C.STATUS_ACKNOWLEDGE);
    this.addStatus(C.STATUS_DRIVER);
    const offered = this.deviceFeatures();
    const missing = required & ~offered;
    if (missing !== 0n) {
      this.fail();
      const hint = C.hasFeature(missing, C.F_ACCESS_PLATFORM)
        ? ' (without ACCESS_PLATFORM the device bypasses the IOMMU and cannot use IOVAs: QEMU needs iommu_platform=on)'
        : C.hasFeature(missing, C.F_VERSION_1) ? ' (a legacy device)' : '';
      throw new UserpciError('ENOTSUP', `${this.name} does not offer ${C.featureNames(missing, deviceNames).join(', ')}${hint}`);
    }
    const take = (wanted | required) & offered;
    const r = this.common.region;
    const b = this.common.base;
    r.write32(b + C.COMMON_DRIVER_FEATURE_SELECT, 0);
    r.write32(b + C.COMMON_DRIVER_FEATURE, Number(take & 0xffffffffn));
    r.write32(b + C.COMMON_DRIVER_FEATURE_SELECT, 1);
    r.write32(b + C.COMMON_DRIVER_FEATURE, Number(take >> 32n));
    this.addStatus(C.STATUS_FEATURES_OK);
    if ((this.status & C.STATUS_FEATURES_OK) === 0) {
      this.fail();
      throw new UserpciError('ENOTSUP', `${this.name} refused the feature set ${C.featureNames(take, deviceNames).join(', ')}`);
    }
    this.negotiated = take;
    return take;
  }

  /** Set-up done: the device may use the queues from now on. */
  driverOk(): void {
    this.addStatus(C.STATUS_DRIVER_OK);
  }

  // ------------------------------------------------------------------ queues

  get queueCount(): number {
    return this.common.region.read16(this.common.base + C.COMMON_NUM_QUEUES);
  }

  /** The largest size the device allows for queue `index` (0: the queue does not exist). */
  maxQueueSize(index: number): number {
    const r = this.common.region;
    r.write16(this.common.base + C.COMMON_QUEUE_SELECT, index);
    return r.read16(this.common.base + C.COMMON_QUEUE_SIZE);
  }

  /** The ring format negotiate() settled on: packed when both sides took RING_PACKED. */
  get ringFormat(): 'split' | 'packed' {
    return C.hasFeature(this.negotiated, C.F_RING_PACKED) ? 'packed' : 'split';
  }

  /** RING_EVENT_IDX negotiated: every queue set up from now on suppresses doorbells and interrupts by event index. */
  get eventIdx(): boolean {
    return C.hasFeature(this.negotiated, C.F_RING_EVENT_IDX);
  }

  /**
   * Puts queue `index` in fresh DMA memory, in the negotiated ring format, tells the device where
   * its three parts are, routes its interrupts, and enables it. Between FEATURES_OK and DRIVER_OK only.
   */
  setupQueue(index: number, setup: QueueSetup): Virtqueue {
    const r = this.common.region;
    const b = this.common.base;
    if (!Number.isInteger(index) || index < 0 || index >= this.queueCount) throw new InvalidArgumentError(`${this.name} has no virtqueue ${index}`);
    r.write16(b + C.COMMON_QUEUE_SELECT, index);
    const max = r.read16(b + C.COMMON_QUEUE_SIZE);
    if (max === 0) throw new UserpciError('ENOTSUP', `${this.name}: virtqueue ${index} is not available`);
    if (r.read16(b + C.COMMON_QUEUE_ENABLE) !== 0) throw new UserpciError('EBUSY', `${this.name}: virtqueue ${index} is already enabled (reset first)`);
    let size = Math.min(setup.size, max);
    size = 2 ** Math.floor(Math.log2(size)); // the split ring needs a power of two (the packed one does not mind)
    const packed = this.ringFormat === 'packed';
    const eventIdx = this.eventIdx;
    const bytes = packed ? packedQueueLayout(size).bytes : splitQueueLayout(size).bytes;
    const memory = this.device.allocDma(bytes);
    this.queueMemory.push(memory);
    new Uint8Array(memory.buffer).fill(0);
    const notifyOff = r.read16(b + C.COMMON_QUEUE_NOTIFY_OFF);
    const doorbell = notifyOff * this.layout.notify.notifyOffMultiplier;
    if (doorbell + 2 > this.notifyWindow.size) throw new UserpciError('EILSEQ', `${this.name}: virtqueue ${index}'s doorbell lies outside the notify block`);
    const bar = this.notifyWindow.region;
    const at = this.notifyWindow.base + doorbell;
    const notify = () => bar.write16(at, index);
    let queue: Virtqueue;
    r.write16(b + C.COMMON_QUEUE_SIZE, size);
    if (packed) {
      const q = new PackedQueue(index, size, memory.buffer, 0, memory.iova, notify, eventIdx);
      this.write64(C.COMMON_QUEUE_DESC, q.descIova);
      this.write64(C.COMMON_QUEUE_DRIVER, q.driverIova);
      this.write64(C.COMMON_QUEUE_DEVICE, q.deviceIova);
      queue = q;
    } else {
      const q = new SplitQueue(index, size, memory.buffer, 0, memory.iova, notify, eventIdx);
      this.write64(C.COMMON_QUEUE_DESC, q.descIova);
      this.write64(C.COMMON_QUEUE_DRIVER, q.availIova);
      this.write64(C.COMMON_QUEUE_DEVICE, q.usedIova);
      queue = q;
    }
    const vector = setup.msixVector ?? C.NO_VECTOR;
    r.write16(b + C.COMMON_QUEUE_MSIX_VECTOR, vector);
    if (r.read16(b + C.COMMON_QUEUE_MSIX_VECTOR) !== vector) {
      throw new UserpciError('EIO', `${this.name}: virtqueue ${index} refused MSI-X vector ${vector} (MSI-X not enabled, or too few vectors)`);
    }
    r.write16(b + C.COMMON_QUEUE_ENABLE, 1);
    return queue;
  }

  /** Route configuration-change interrupts to an MSI-X vector (or NO_VECTOR). */
  setConfigVector(vector: number): void {
    const r = this.common.region;
    r.write16(this.common.base + C.COMMON_MSIX_CONFIG, vector);
    if (r.read16(this.common.base + C.COMMON_MSIX_CONFIG) !== vector) {
      throw new UserpciError('EIO', `${this.name} refused MSI-X vector ${vector} for configuration changes`);
    }
  }

  /** ISR status (reading clears it): ISR_QUEUE, ISR_CONFIG. Only meaningful without MSI-X. */
  readIsr(): number {
    if (!this.isrWindow) return 0;
    return this.isrWindow.region.read8(this.isrWindow.base);
  }

  private write64(offset: number, value: number): void {
    // The spec lets the driver write 64-bit fields as two 32-bit halves, low first.
    const r = this.common.region;
    r.write32(this.common.base + offset, value >>> 0);
    r.write32(this.common.base + offset + 4, (value / 0x1_0000_0000) >>> 0);
  }

  // ------------------------------------------------------------------ device configuration

  get deviceConfigSize(): number {
    return this.deviceWindow?.size ?? 0;
  }

  /**
   * Reads device-specific configuration consistently: the device bumps config_generation when it
   * changes the fields, so the reads are repeated until the generation holds still (spec 4.1.4.3.1).
   */
  readDeviceConfig<T>(read: (cfg: DeviceConfigReader) => T): T {
    const w = this.deviceWindow;
    if (!w) throw new UserpciError('ENOTSUP', `${this.name} has no device-specific configuration`);
    const reader: DeviceConfigReader = {
      u8: (o) => w.region.read8(w.base + this.inConfig(o, 1)),
      u16: (o) => w.region.read16(w.base + this.inConfig(o, 2)),
      u32: (o) => w.region.read32(w.base + this.inConfig(o, 4)),
    };
    const gen = () => this.common.region.read8(this.common.base + C.COMMON_CONFIG_GENERATION);
    for (let tries = 0; tries < 100; tries++) {
      const before = gen();
      const value = read(reader);
      if (gen() === before) return value;
    }
    throw new UserpciError('EAGAIN', `${this.name}: device configuration kept changing while read`);
  }

  private inConfig(offset: number, width: number): number {
    if (offset + width > this.deviceConfigSize) throw new UserpciError('ERANGE', `${this.name}: device configuration has ${this.deviceConfigSize} bytes, read at ${offset}`);
    return offset;
  }

  /** Frees queue memory (only after a reset: the device must no longer use it). */
  private freeQueueMemory(): void {
    for (const m of this.queueMemory.splice(0)) if (!m.freed) m.free();
  }

  /** Reset the device so it stops using our memory, then free that memory. Best effort on a gone device. */
  async shutdown(): Promise<void> {
    if (this.device.closed) return;
    try {
      await this.reset();
    } catch {
      // A gone or stuck device: closing the PciDevice turns bus mastering off anyway.
    }
  }
}

export interface DeviceConfigReader {
  u8(offset: number): number;
  u16(offset: number): number;
  u32(offset: number): number;
}
