/**
 * The facade a driver author uses. It sits on a Backend (kernel VFIO or vfio-user) and gives:
 * register access on BARs and config space, coherent DMA buffers and streaming maps under the
 * device's DMA mask, reset, and a teardown that stops the device's DMA before releasing memory.
 */
import { DeviceGoneError, InvalidArgumentError, UserpciError, wrapSystemError } from '../errors';
import type { Backend } from './backend';
import { Region } from './region';
import { EventEmitter } from 'node:events';
import { DmaSpace, type DmaAllocOptions, type DmaBuffer, type DmaDirection, type DmaMappable, type DmaMapping } from '../dma/dma-space';
import { DeviceInterrupts, type InterruptMode } from '../irq/device-interrupts';
import type { InterruptVector } from '../irq/interrupt-vector';

/** Region indices shared by VFIO and vfio-user for PCI devices. */
export const BAR_COUNT = 6;
export const ROM_REGION_INDEX = 6;
export const CONFIG_REGION_INDEX = 7;

const PCI_COMMAND = 0x04;
const PCI_COMMAND_IO = 0x1;
const PCI_COMMAND_MEMORY = 0x2;
const PCI_COMMAND_MASTER = 0x4;
const PCI_COMMAND_INTX_DISABLE = 0x400;

/** A PCI_COMMAND value with the INTx pin enabled (Interrupt Disable clear) or disabled. */
function withIntxPin(cmd: number, on: boolean): number {
  return on ? cmd & ~PCI_COMMAND_INTX_DISABLE : cmd | PCI_COMMAND_INTX_DISABLE;
}

export interface OpenOptions {
  /**
   * The device's DMA mask: every IOVA handed out lies at or below it. A number or bigint of the
   * form 2^n - 1 with 12 <= n <= 64. It is the caller's promise that the device drives that
   * many address bits: a device that drives fewer truncates the IOVA and DMAs into whatever is
   * mapped there. Give it when you know the device; otherwise the driver declares its device's
   * width (`declareDmaWidth`), as a kernel driver's probe calls dma_set_mask, and until then the
   * limit is the IOMMU's aperture.
   */
  dmaMask?: number | bigint;
  /** vfio-user only: how long connecting and the version handshake may take, in ms (default 10 s). */
  connectTimeoutMs?: number;
}

/** Check openDevice's options object itself (null, a number, a mask of the wrong type). */
export function checkOpenOptions(options: unknown): OpenOptions {
  if (options === undefined) return {};
  if (options === null || typeof options !== 'object') throw new InvalidArgumentError(`openDevice options must be an object like { dmaMask: 0xfffffff }, got ${options === null ? 'null' : typeof options}`);
  dmaLimitFromMask((options as OpenOptions).dmaMask);
  return options as OpenOptions;
}

/** Parse and check a DMA mask; returns the highest usable IOVA as a number. */
export function dmaLimitFromMask(mask: number | bigint | undefined): number {
  if (mask === undefined) return Number.MAX_SAFE_INTEGER;
  let m: bigint;
  if (typeof mask === 'bigint') m = mask;
  else if (typeof mask === 'number' && Number.isSafeInteger(mask)) m = BigInt(mask);
  else throw new InvalidArgumentError(`dmaMask must be an integer (a bigint above 2^53), got ${String(mask)}`);
  const bits = m.toString(2).length;
  if (m <= 0n || (m & (m + 1n)) !== 0n || bits < 12 || bits > 64) {
    throw new InvalidArgumentError(`dmaMask must be 2^n - 1 with 12 <= n <= 64 (e.g. 0xfffffff for 28 bits), got 0x${m.toString(16)}`);
  }
  return m > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(m);
}

/**
 * Events: 'removed' (the kernel asked for the device back, e.g. hot-unplug, or the vfio-user
 * server went away: the handle is already released when listeners run), 'device-error' (VFIO's error notification, e.g. AER).
 */
export interface PciDeviceEvents {
  removed: [];
  'device-error': [count: number];
}

export class PciDevice extends EventEmitter<PciDeviceEvents> implements AsyncDisposable, Disposable {
  readonly config: Region;
  readonly dma: DmaSpace;
  readonly interrupts: DeviceInterrupts;
  private readonly bars: (Region | undefined)[] = [];
  private closedReason: string | undefined;
  private removed = false;
  /** Whether the DMA mask came from the caller (a promise) or is still the aperture's default. */
  private readonly maskGiven: boolean;

  constructor(
    readonly backend: Backend,
    options: OpenOptions = {},
  ) {
    super();
    options = checkOpenOptions(options);
    const limit = dmaLimitFromMask(options.dmaMask);
    this.maskGiven = options.dmaMask !== undefined;
    this.config = new Region(backend, backend.regionInfo(CONFIG_REGION_INDEX), `${backend.name} config space`);
    this.dma = new DmaSpace(backend, limit);
    this.interrupts = new DeviceInterrupts(backend);
    this.interrupts.notifier('req')?.on('interrupt', () => this.revoke());
    this.interrupts.notifier('err')?.on('interrupt', (count: number) => this.emit('device-error', count));
    backend.onLost?.(() => this.revoke());
  }

  /** True once the device was taken away (hot-unplug or sysfs remove). */
  get wasRemoved(): boolean {
    return this.removed;
  }

  /** The PCI address (kernel VFIO) or the socket path (vfio-user). */
  get name(): string {
    return this.backend.name;
  }

  get kind(): 'vfio' | 'vfio-user' {
    return this.backend.kind;
  }

  get closed(): boolean {
    return this.closedReason !== undefined;
  }

  /** Highest IOVA this device can be given (its DMA mask, inclusive). */
  get dmaLimit(): number {
    return this.dma.limit;
  }

  get vendorId(): number {
    return this.config.read16(0x00);
  }

  get deviceId(): number {
    return this.config.read16(0x02);
  }

  /**
   * Turn on memory (and I/O) decoding, as pci_enable_device does: registers answer. Bus
   * mastering is a separate step (enableBusMaster), taken by the driver once its device is quiet.
   * INTx stays disabled (PCI_COMMAND's Interrupt Disable) unless INTx delivery is on: see intxLine.
   */
  enable(): void {
    let cmd = this.config.read16(PCI_COMMAND) | PCI_COMMAND_MEMORY;
    for (let i = 0; i < BAR_COUNT; i++) {
      const low = this.config.read32(0x10 + 4 * i);
      if (low & 1) cmd |= PCI_COMMAND_IO;
    }
    this.config.write16(PCI_COMMAND, withIntxPin(cmd, this.interrupts.mode === 'intx'));
  }

  /**
   * Let the device assert its INTx pin or not. A polled driver, or one on MSI/MSI-X, takes no
   * INTx, yet a device may still raise it (an NVMe controller does for every admin completion,
   * virtio after a reset): the pin then stays asserted, with no handler behind it, and on a line
   * shared with another device that device's driver sees an interrupt storm until the kernel
   * disables the line. So the pin is disabled unless INTx delivery is on (VFIO carries the bit
   * to the device while INTx is not in use, and masks it itself while it is).
   */
  private intxLine(on: boolean): void {
    const cmd = this.config.read16(PCI_COMMAND);
    const want = withIntxPin(cmd, on);
    if (want !== cmd) this.config.write16(PCI_COMMAND, want);
  }

  /**
   * Let the device master the bus (DMA, and MSI/MSI-X, which are writes too): the kernel's
   * pci_set_master. Off when openDevice returns, because a device may still be finishing work a
   * previous owner started; a driver calls this after it has quiesced its device (stopped its
   * engines, waited out what was running), so that nothing but its own DMA can follow.
   */
  enableBusMaster(): void {
    this.checkOpen();
    this.config.write16(PCI_COMMAND, this.config.read16(PCI_COMMAND) | PCI_COMMAND_MASTER);
  }

  /** Stop the device from mastering the bus: no DMA after this returns. */
  disableBusMaster(): void {
    this.config.write16(PCI_COMMAND, this.config.read16(PCI_COMMAND) & ~PCI_COMMAND_MASTER);
  }

  /** Whether the device may master the bus now. */
  get busMaster(): boolean {
    return (this.config.read16(PCI_COMMAND) & PCI_COMMAND_MASTER) !== 0;
  }

  /**
   * A driver states how many address bits its device drives for DMA (edu: 28, NVMe: 64). A mask
   * given to openDevice that is wider is refused (EINVAL: the device would truncate IOVAs into
   * other mappings); with no mask given, the limit becomes this width. Call it before mapping.
   */
  declareDmaWidth(bits: number, driver: string): void {
    this.checkOpen();
    if (!Number.isInteger(bits) || bits < 12 || bits > 64) throw new InvalidArgumentError(`DMA width must be 12..64 bits, got ${bits}`);
    const widest = bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1;
    if (this.dma.limit <= widest) return;
    if (this.maskGiven) {
      throw new InvalidArgumentError(`${driver}: ${this.name} drives ${bits} DMA address bits, but it was opened with dmaMask 0x${this.dma.limit.toString(16)}; a wider mask would let the device truncate IOVAs into other mappings (open it with dmaMask 0x${widest.toString(16)} or narrower)`);
    }
    this.dma.narrowLimit(widest);
  }

  /** Arm `count` vectors of INTx, MSI or MSI-X (one mode at a time). */
  enableInterrupts(mode: InterruptMode, count = 1): readonly InterruptVector[] {
    this.checkOpen();
    if (mode === 'intx') this.intxLine(true);
    try {
      return this.interrupts.enable(mode, count);
    } finally {
      this.intxLine(this.interrupts.mode === 'intx');
    }
  }

  disableInterrupts(): void {
    this.checkOpen();
    this.interrupts.disable();
    this.intxLine(false);
  }

  /** Register access on BAR n (lazily mapped; cached). */
  bar(n: number): Region {
    this.checkOpen();
    if (!Number.isInteger(n) || n < 0 || n >= BAR_COUNT) throw new InvalidArgumentError(`BAR index must be 0..5, got ${n}`);
    let region = this.bars[n];
    if (!region) {
      const info = this.backend.regionInfo(n);
      if (info.size === 0) throw new InvalidArgumentError(`${this.name} has no BAR ${n}`);
      region = new Region(this.backend, info, `${this.name} BAR${n}`);
      this.bars[n] = region;
    }
    return region;
  }

  /** Coherent DMA memory at an IOVA below the DMA mask. */
  allocDma(size: number, options?: DmaAllocOptions): DmaBuffer {
    this.checkOpen();
    return this.dma.allocate(size, options);
  }

  /**
   * Whether mapDma takes any memory of the process (kernel VFIO; a vfio-user server that serves
   * DMA_READ/DMA_WRITE), or only memory this library allocated, such as views of an allocDma
   * buffer: a real device lent by `userpci proxy` reaches memory only through its memfd, and
   * other memory is refused with ENOTSUP. Asked of the backend once (vfio-user: one map and unmap).
   */
  get mapsAnyMemory(): boolean {
    this.checkOpen();
    return this.backend.mapsAnyMemory();
  }

  /** Streaming map of memory the caller already has; the IOMMU enforces the direction. */
  mapDma(memory: DmaMappable, direction: DmaDirection): DmaMapping {
    this.checkOpen();
    return this.dma.map(memory, direction);
  }

  /**
   * Function-level (or the backend's) reset. Kept: every DMA mapping (they live in the IOMMU,
   * not the device) and the interrupt set-up (VFIO keeps the eventfds routed and restores the
   * MSI/MSI-X configuration around the reset). Lost: the device's own registers; decoding, and
   * bus mastering if it was on, are turned on again here. Work in flight is gone: drivers
   * re-initialise.
   */
  reset(): void {
    this.checkOpen();
    if (!this.backend.deviceInfo().canReset) throw new UserpciError('ENOTSUP', `${this.name} offers no reset (no FLR, PM or bus reset VFIO can use)`);
    const master = this.busMaster;
    try {
      this.backend.reset();
    } catch (err) {
      throw wrapSystemError(err, `resetting ${this.name}`);
    }
    this.enable();
    // As the kernel restores the command register after a reset: a reset device is quiet.
    if (master) this.enableBusMaster();
  }

  /** Stop DMA, release every mapping and locked page, unmap the regions, give the device back. */
  close(): void {
    this.release(`${this.name} is closed`);
  }

  /**
   * The kernel wants the device back (or a vfio-user server went away): fail every wait, detach every view over its regions (so
   * no JS access can fault), release it so the removal can finish, then tell listeners.
   */
  private revoke(): void {
    if (this.closedReason) return;
    this.removed = true;
    this.release(`${this.name} was removed`);
    this.emit('removed');
  }

  private release(reason: string): void {
    if (this.closedReason) return;
    this.closedReason = reason;
    const gone = new DeviceGoneError(reason);
    try {
      this.disableBusMaster();
    } catch {
      // A device already gone cannot master the bus either.
    }
    this.interrupts.closeAll(gone, true);
    this.dma.releaseAll(reason);
    for (const bar of this.bars) bar?.revoke(reason);
    this.config.revoke(reason);
    this.backend.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  private checkOpen(): void {
    if (this.closedReason) throw new DeviceGoneError(this.closedReason);
  }
}
