/**
 * A model of QEMU's educational PCI device `edu` (QEMU docs/specs/edu.rst, hw/misc/edu.c),
 * faithful to what a driver can observe: the same IDs and config space, the same register
 * semantics including the odd corners (accesses of the wrong width read all ones and are ignored;
 * the DMA buffer is not readable through MMIO; DMA addresses are clamped to dma_mask, not
 * refused; DMA registers are frozen while a transfer runs), factorial computed asynchronously
 * with a busy bit, and interrupts over INTx (level) or MSI (one vector).
 *
 * Where QEMU would overrun its own buffer (a DMA range outside the 4 KiB buffer, which QEMU only
 * logs), this model logs and skips the copy instead.
 */
import { checkTimeoutMs, describeValue, optionsObject } from '../arguments';
import { InvalidArgumentError } from '../errors';
import { ConfigSpace, addMsiCapability } from './config-space';
import type { BarDefinition, DeviceContext, DeviceModel } from './device-model';

export const EDU_VENDOR_ID = 0x1234;
export const EDU_DEVICE_ID = 0x11e8;
export const EDU_REVISION = 0x10;
/** PCI_CLASS_OTHERS (0x00ff) as base class 0x00, subclass 0xff, programming interface 0. */
export const EDU_CLASS_CODE = 0x00ff00;
export const EDU_ID_VALUE = 0x010000ed;
export const EDU_BAR0_SIZE = 1 << 20;
export const EDU_DMA_START = 0x40000;
export const EDU_DMA_SIZE = 4096;
export const EDU_DEFAULT_DMA_MASK = (1n << 28n) - 1n;

export const EduReg = {
  ID: 0x00,
  LIVENESS: 0x04,
  FACTORIAL: 0x08,
  STATUS: 0x20,
  IRQ_STATUS: 0x24,
  IRQ_RAISE: 0x60,
  IRQ_ACK: 0x64,
  DMA_SRC: 0x80,
  DMA_DST: 0x88,
  DMA_COUNT: 0x90,
  DMA_CMD: 0x98,
} as const;

export const EduStatus = { COMPUTING: 0x01, IRQ_FACT: 0x80 } as const;
export const EduDmaCmd = { RUN: 0x1, TO_RAM: 0x2, IRQ: 0x4 } as const;
export const EduIrq = { FACTORIAL: 0x1, DMA: 0x100 } as const;

const ALL_ONES = 0xffff_ffff_ffff_ffffn;
const U64 = (1n << 64n) - 1n;

export interface EduOptions {
  /** QEMU's `dma_mask` property: DMA addresses are and-ed with it (default 28 bits). */
  dmaMask?: bigint | number;
  /** Delay between starting a DMA and doing it (QEMU: 100 ms of virtual time; default 0 = next turn of the loop). */
  dmaDelayMs?: number;
}

export class EduModel implements DeviceModel {
  readonly name = 'edu';
  readonly config: ConfigSpace;
  readonly bars: ReadonlyMap<number, BarDefinition>;
  readonly dmaMask: bigint;
  /** The device's 4 KiB DMA buffer (visible to tests; a driver reaches it only by DMA). */
  readonly dmaBuffer = new Uint8Array(EDU_DMA_SIZE);

  private context: DeviceContext | undefined;
  private readonly dmaDelayMs: number;
  private addr4 = 0;
  private fact = 0;
  private status = 0;
  private irqStatus = 0;
  private dmaSrc = 0n;
  private dmaDst = 0n;
  private dmaCount = 0n;
  private dmaCmd = 0n;
  private dmaTimer: NodeJS.Timeout | undefined;
  private factTimer: NodeJS.Immediate | undefined;
  private disposed = false;

  constructor(options: EduOptions = {}) {
    options = optionsObject(options, 'edu model options');
    const mask = options.dmaMask ?? EDU_DEFAULT_DMA_MASK;
    if (!(typeof mask === 'bigint' ? mask >= 0n : Number.isSafeInteger(mask) && mask >= 0)) throw new InvalidArgumentError(`edu dmaMask must be a non-negative integer, got ${describeValue(mask)}`);
    this.dmaMask = BigInt(mask) & U64;
    this.dmaDelayMs = options.dmaDelayMs ?? 0;
    checkTimeoutMs(this.dmaDelayMs, 'edu dmaDelayMs');
    this.config = new ConfigSpace({
      vendorId: EDU_VENDOR_ID,
      deviceId: EDU_DEVICE_ID,
      revision: EDU_REVISION,
      classCode: EDU_CLASS_CODE,
      // QEMU gives every device without its own subsystem IDs Red Hat's 1af4:1100.
      subsystemVendorId: 0x1af4,
      subsystemId: 0x1100,
      interruptPin: 1,
    });
    this.config.setBar(0, { size: EDU_BAR0_SIZE, kind: 'memory' });
    addMsiCapability(this.config, { vectors: 1, is64: true, perVectorMask: false });
    this.bars = new Map([[0, { handlers: { read: (o, d) => this.mmioRead(o, d), write: (o, d) => this.mmioWrite(o, d) } }]]);
  }

  attach(context: DeviceContext): void {
    this.context = context;
  }

  /** edu.c registers no reset handler: the registers survive a reset (config space does not). */
  reset(): void {}

  dispose(): void {
    this.disposed = true;
    if (this.dmaTimer) clearTimeout(this.dmaTimer);
    if (this.factTimer) clearImmediate(this.factTimer);
  }

  // ---- MMIO ----------------------------------------------------------------------------------

  private static validSize(offset: number, size: number): boolean {
    return offset < 0x80 ? size === 4 : size === 4 || size === 8;
  }

  private mmioRead(offset: number, data: Uint8Array): void {
    const size = data.length;
    let value = ALL_ONES;
    if (EduModel.validSize(offset, size)) {
      switch (offset) {
        case EduReg.ID: value = BigInt(EDU_ID_VALUE); break;
        case EduReg.LIVENESS: value = BigInt(this.addr4); break;
        case EduReg.FACTORIAL: value = BigInt(this.fact); break;
        case EduReg.STATUS: value = BigInt(this.status); break;
        case EduReg.IRQ_STATUS: value = BigInt(this.irqStatus); break;
        case EduReg.DMA_SRC: value = this.dmaSrc; break;
        case EduReg.DMA_DST: value = this.dmaDst; break;
        case EduReg.DMA_COUNT: value = this.dmaCount; break;
        case EduReg.DMA_CMD: value = this.dmaCmd; break;
        default: break;
      }
    }
    for (let i = 0; i < size; i++) data[i] = i < 8 ? Number((value >> BigInt(8 * i)) & 0xffn) : 0xff;
  }

  private mmioWrite(offset: number, data: Uint8Array): void {
    const size = data.length;
    if (!EduModel.validSize(offset, size)) return;
    let value = 0n;
    for (let i = size - 1; i >= 0; i--) value = (value << 8n) | BigInt(data[i]!);
    const low32 = Number(value & 0xffff_ffffn);
    switch (offset) {
      case EduReg.LIVENESS:
        this.addr4 = ~low32 >>> 0;
        break;
      case EduReg.FACTORIAL:
        if (this.status & EduStatus.COMPUTING) break;
        this.fact = low32;
        this.status |= EduStatus.COMPUTING;
        this.factTimer = setImmediate(() => this.computeFactorial());
        break;
      case EduReg.STATUS:
        if (low32 & EduStatus.IRQ_FACT) this.status |= EduStatus.IRQ_FACT;
        else this.status &= ~EduStatus.IRQ_FACT;
        break;
      case EduReg.IRQ_RAISE:
        this.raiseIrq(low32);
        break;
      case EduReg.IRQ_ACK:
        this.lowerIrq(low32);
        break;
      case EduReg.DMA_SRC:
        if (!this.dmaRunning) this.dmaSrc = value;
        break;
      case EduReg.DMA_DST:
        if (!this.dmaRunning) this.dmaDst = value;
        break;
      case EduReg.DMA_COUNT:
        if (!this.dmaRunning) this.dmaCount = value;
        break;
      case EduReg.DMA_CMD:
        if (!(value & BigInt(EduDmaCmd.RUN)) || this.dmaRunning) break;
        this.dmaCmd = value;
        this.dmaTimer = setTimeout(() => void this.runDma(), this.dmaDelayMs);
        break;
      default:
        break;
    }
  }

  private get dmaRunning(): boolean {
    return (this.dmaCmd & BigInt(EduDmaCmd.RUN)) !== 0n;
  }

  // ---- factorial -----------------------------------------------------------------------------

  private computeFactorial(): void {
    this.factTimer = undefined;
    if (this.disposed) return;
    let result = 1;
    for (let n = this.fact; n > 0; n--) result = Math.imul(result, n) >>> 0;
    this.fact = result;
    this.status &= ~EduStatus.COMPUTING;
    if (this.status & EduStatus.IRQ_FACT) this.raiseIrq(EduIrq.FACTORIAL);
  }

  // ---- interrupts ----------------------------------------------------------------------------

  private raiseIrq(value: number): void {
    this.irqStatus = (this.irqStatus | value) >>> 0;
    if (!this.irqStatus || !this.context) return;
    if (this.context.irq.msiEnabled) this.context.irq.notify(0);
    else this.context.irq.setIntx(true);
  }

  private lowerIrq(value: number): void {
    this.irqStatus = (this.irqStatus & ~value) >>> 0;
    if (!this.irqStatus && this.context && !this.context.irq.msiEnabled) this.context.irq.setIntx(false);
  }

  // ---- DMA -----------------------------------------------------------------------------------

  private clamp(address: bigint): bigint {
    const clamped = address & this.dmaMask;
    if (clamped !== address) this.log(`clamping DMA 0x${address.toString(16)} to 0x${clamped.toString(16)}`);
    return clamped;
  }

  /** Where QEMU only logs an out-of-buffer range, refuse the copy (QEMU would corrupt itself). */
  private bufferRange(start: bigint, count: bigint): [number, number] | undefined {
    const end = start + count;
    if (start >= BigInt(EDU_DMA_START) && end <= BigInt(EDU_DMA_START + EDU_DMA_SIZE) && end >= start) {
      return [Number(start) - EDU_DMA_START, Number(count)];
    }
    this.log(`DMA range 0x${start.toString(16)}+0x${count.toString(16)} is outside the DMA buffer; transfer skipped`);
    return undefined;
  }

  private async runDma(): Promise<void> {
    this.dmaTimer = undefined;
    if (this.disposed || !this.dmaRunning) return;
    const toRam = (this.dmaCmd & BigInt(EduDmaCmd.TO_RAM)) !== 0n;
    try {
      if (!toRam) {
        const range = this.bufferRange(this.dmaDst, this.dmaCount);
        if (range && range[1] > 0) {
          const data = await this.requireContext().dma.read(this.ramAddress(this.dmaSrc), range[1]);
          this.dmaBuffer.set(data, range[0]);
        }
      } else {
        const range = this.bufferRange(this.dmaSrc, this.dmaCount);
        if (range && range[1] > 0) {
          await this.requireContext().dma.write(this.ramAddress(this.dmaDst), this.dmaBuffer.slice(range[0], range[0] + range[1]));
        }
      }
    } catch (err) {
      // A DMA that faults (unmapped, not permitted, client gone) is dropped, as pci_dma_* failures are.
      this.log(`DMA failed: ${(err as Error).message}`);
    }
    if (this.disposed) return;
    this.dmaCmd &= ~BigInt(EduDmaCmd.RUN);
    if (this.dmaCmd & BigInt(EduDmaCmd.IRQ)) this.raiseIrq(EduIrq.DMA);
  }

  private ramAddress(address: bigint): number {
    const clamped = this.clamp(address);
    if (clamped > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`DMA address 0x${clamped.toString(16)} is beyond 2^53`);
    return Number(clamped);
  }

  private requireContext(): DeviceContext {
    if (!this.context) throw new Error('edu model is not attached to a server');
    return this.context;
  }

  private log(message: string): void {
    this.context?.log(message);
  }
}

export function createEduModel(options: EduOptions = {}): EduModel {
  return new EduModel(options);
}
