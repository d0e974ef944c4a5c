/**
 * Reference driver for QEMU's edu device: identification, liveness, factorial and its DMA
 * engine, all polled here. It runs unchanged on kernel VFIO and on the vfio-user model.
 *
 * Bring-up follows a kernel driver's probe: declare the DMA width (edu drives 28 address bits),
 * quiesce the device (a DMA a previous owner started runs on to its end, and edu cannot be
 * reset), and only then let it master the bus. While bus mastering is off, such a leftover DMA
 * goes nowhere; once on, only this driver's own transfers can follow.
 */
import { checkBytes, checkInteger, checkTimeoutMs, describeValue, optionsObject } from '../../arguments';
import { InvalidArgumentError, UserpciError } from '../../errors';
import type { PciDevice } from '../../device/device';
import type { Region } from '../../device/region';
import type { DmaBuffer } from '../../dma/dma-space';
import type { InterruptVector } from '../../irq/interrupt-vector';
import * as R from './registers';

export interface EduIdentity {
  id: number;
  major: number;
  minor: number;
}

export interface PollOptions {
  /** Give up after this many milliseconds (default 5000). */
  timeoutMs?: number;
}

export class EduDriver {
  readonly regs: Region;
  /** Staging memory for copyToDevice/copyFromDevice; allocated on first use. */
  private staging: DmaBuffer | undefined;
  /** One transfer at a time: the engine has a single set of registers. */
  private dmaInFlight = false;
  /** Set by useInterrupts: completions are then awaited on it instead of polled. */
  private vector: InterruptVector | undefined;
  /** Set while a previous owner's DMA is still running: bus mastering waits for it. */
  private quiescing: Promise<void> | undefined;

  /** The DMA address bits QEMU's edu drives (its dma_mask property defaults to 28 bits). */
  static readonly DMA_BITS = 28;

  constructor(readonly device: PciDevice) {
    if (device.vendorId !== R.EDU_VENDOR_ID || device.deviceId !== R.EDU_DEVICE_ID) {
      throw new UserpciError('ENODEV', `${device.name} is not an edu device (ids ${hex(device.vendorId, 4)}:${hex(device.deviceId, 4)})`);
    }
    device.declareDmaWidth(EduDriver.DMA_BITS, 'edu driver');
    device.enable();
    this.regs = device.bar(0);
    const identity = this.identify();
    if ((identity.id & 0xff) !== 0xed) throw new UserpciError('EIO', `${device.name}: unexpected edu ID register ${hex(identity.id, 8)}`);
    if (device.busMaster) return; // already quiesced and enabled (a second driver object on one open)
    // Quiesce: nothing raises interrupts nobody handles, no stale completion bit is left...
    this.regs.write32(R.REG_STATUS, 0);
    this.acknowledgeInterrupt();
    // ...and no DMA runs. The usual case: idle, so mastering goes on at once (MSIs need it too).
    if ((this.regs.read32(R.REG_DMA_CMD) & R.DMA_CMD_START) === 0) device.enableBusMaster();
    else {
      this.quiescing = this.pollUntilClear(R.REG_DMA_CMD, R.DMA_CMD_START, {}, 'previous owner\'s DMA').then(() => {
        this.acknowledgeInterrupt();
        device.enableBusMaster();
        this.quiescing = undefined;
      });
      this.quiescing.catch(() => {}); // reported by whoever awaits ready()
    }
  }

  /**
   * Resolves once the device is quiet and may master the bus: at once, unless a DMA a previous
   * owner started was still running at open (edu cannot be reset), which is waited out with bus
   * mastering off so that it lands nowhere. DMA and factorial wait for it by themselves.
   */
  async ready(): Promise<void> {
    if (this.quiescing) await this.quiescing;
  }

  identify(): EduIdentity {
    const id = this.regs.read32(R.REG_ID);
    return { id, major: id >>> 24, minor: (id >>> 16) & 0xff };
  }

  /** The device inverts what we write: proves it decodes full-width writes and reads. */
  checkLiveness(value = 0x5a5aa5a5): boolean {
    checkInteger(value, 0, 0xffffffff, 'edu liveness value');
    this.regs.write32(R.REG_LIVENESS, value >>> 0);
    return this.regs.read32(R.REG_LIVENESS) === (~value >>> 0);
  }

  /**
   * Take completions by interrupt from now on (INTx or MSI), or go back to polling with
   * undefined. Returns the vector, whose events the caller may watch too.
   *
   * factorial() and dma() end as soon as the interrupt status shows their bit, which can be
   * before the vector has read the MSI (the status is read first): that MSI arrives afterwards,
   * to 'interrupt' listeners, or into `pending` with none, where it ends the next wait() at once.
   * A listener for it keeps the process alive only if something else does (InterruptVector).
   */
  useInterrupts(mode: 'intx' | 'msi' | undefined): InterruptVector | undefined {
    if (mode === undefined) {
      this.device.disableInterrupts();
      this.vector = undefined;
      this.regs.write32(R.REG_STATUS, 0);
      return undefined;
    }
    this.vector = this.device.enableInterrupts(mode, 1)[0];
    return this.vector;
  }

  /** n! modulo 2^32: polled, or by interrupt after useInterrupts(). */
  async factorial(n: number, options: PollOptions = {}): Promise<number> {
    if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new InvalidArgumentError(`factorial input must be a 32-bit unsigned integer, got ${n}`);
    checkPollOptions(options);
    await this.ready();
    if (this.vector) {
      // A completion bit left by an earlier user (or a polled run) must not end this wait early.
      this.regs.write32(R.REG_IRQ_ACK, R.IRQ_FACTORIAL);
      this.regs.write32(R.REG_STATUS, R.STATUS_IRQ_ON_FACTORIAL);
      this.regs.write32(R.REG_FACTORIAL, n);
      await this.awaitInterrupt(R.IRQ_FACTORIAL, options, 'factorial');
    } else {
      // The device keeps its status across opens: make sure it raises nothing nobody handles.
      this.regs.write32(R.REG_STATUS, 0);
      this.regs.write32(R.REG_FACTORIAL, n);
      await this.pollUntilClear(R.REG_STATUS, R.STATUS_COMPUTING, options, 'factorial');
    }
    return this.regs.read32(R.REG_FACTORIAL);
  }

  /**
   * Start the device's DMA engine. `ramIova` is an IOVA the device may use; `deviceOffset` an
   * offset into the device's 4 KiB buffer. Resolves when the engine reports completion.
   */
  async dma(direction: 'to-device' | 'from-device', ramIova: number, deviceOffset: number, length: number, options: PollOptions = {}): Promise<void> {
    checkDmaArguments(direction, ramIova, deviceOffset, length);
    checkPollOptions(options);
    if (this.dmaInFlight) throw new UserpciError('EBUSY', `${this.device.name}: a DMA of this driver is already running`);
    this.dmaInFlight = true;
    try {
      await this.ready();
      const byInterrupt = this.vector !== undefined;
      if (byInterrupt) this.regs.write32(R.REG_IRQ_ACK, R.IRQ_DMA); // no stale completion bit
      this.startDma(direction, ramIova, deviceOffset, length, byInterrupt);
      if (byInterrupt) await this.awaitInterrupt(R.IRQ_DMA, options, 'DMA');
      else await this.pollUntilClear(R.REG_DMA_CMD, R.DMA_CMD_START, options, 'DMA');
    } finally {
      this.dmaInFlight = false;
    }
  }

  /** Program and start a DMA without waiting (for interrupt-driven completion). */
  startDma(direction: 'to-device' | 'from-device', ramIova: number, deviceOffset: number, length: number, raiseIrq: boolean): void {
    checkDmaArguments(direction, ramIova, deviceOffset, length);
    if (this.regs.read32(R.REG_DMA_CMD) & R.DMA_CMD_START) throw new UserpciError('EBUSY', `${this.device.name}: a DMA is already running`);
    if (this.quiescing) throw new UserpciError('EBUSY', `${this.device.name}: a previous owner's DMA is still running; await driver.ready() first`);
    const deviceAddress = R.DMA_BUFFER_ADDRESS + deviceOffset;
    const toRam = direction === 'from-device';
    this.regs.write64(R.REG_DMA_SRC, toRam ? deviceAddress : ramIova);
    this.regs.write64(R.REG_DMA_DST, toRam ? ramIova : deviceAddress);
    this.regs.write64(R.REG_DMA_COUNT, length);
    this.regs.write32(R.REG_DMA_CMD, R.DMA_CMD_START | (toRam ? R.DMA_CMD_TO_RAM : 0) | (raiseIrq ? R.DMA_CMD_IRQ : 0));
  }

  /** Copy bytes into the device's buffer through a coherent DMA buffer. */
  async copyToDevice(bytes: Uint8Array, deviceOffset = 0, options: PollOptions = {}): Promise<void> {
    checkBytes(bytes, 'copyToDevice bytes');
    checkDmaArguments('to-device', 0, deviceOffset, bytes.length);
    const staging = this.stagingBuffer();
    new Uint8Array(staging.buffer).set(bytes);
    await this.dma('to-device', staging.iova, deviceOffset, bytes.length, options);
  }

  /** Copy bytes out of the device's buffer through a coherent DMA buffer. */
  async copyFromDevice(deviceOffset: number, length: number, options: PollOptions = {}): Promise<Uint8Array> {
    checkDmaArguments('from-device', 0, deviceOffset, length);
    const staging = this.stagingBuffer();
    await this.dma('from-device', staging.iova, deviceOffset, length, options);
    return new Uint8Array(staging.buffer, 0, length).slice();
  }

  /** Raise an interrupt with the given status bits (the device's self-test; MSI needs ready()). */
  raiseInterrupt(bits: number): void {
    checkInteger(bits, 0, 0xffffffff, 'edu interrupt status bits');
    this.regs.write32(R.REG_IRQ_RAISE, bits >>> 0);
  }

  /** Read and acknowledge the interrupt status: the device lowers its line when it reaches 0. */
  acknowledgeInterrupt(): number {
    const status = this.regs.read32(R.REG_IRQ_STATUS);
    if (status !== 0) this.regs.write32(R.REG_IRQ_ACK, status);
    return status;
  }

  /** Free the driver's own DMA memory (the device itself stays open). */
  release(): void {
    if (this.staging && !this.staging.freed && !this.device.closed) this.staging.free();
    this.staging = undefined;
  }

  private stagingBuffer(): DmaBuffer {
    if (!this.staging || this.staging.freed) this.staging = this.device.allocDma(R.DMA_BUFFER_SIZE);
    return this.staging;
  }

  /**
   * Wait until the device reports `bit` in its interrupt status. Every status seen is
   * acknowledged before the line is unmasked (INTx would fire again at once otherwise).
   */
  private async awaitInterrupt(bit: number, options: PollOptions, what: string): Promise<void> {
    const vector = this.vector!;
    const timeoutMs = options.timeoutMs ?? 5000;
    for (let delivered = false; ; delivered = true) {
      const status = this.acknowledgeInterrupt();
      // A delivered INTx leaves the line masked by VFIO even when its status was already taken
      // (an earlier wait saw the bit first): unmask after every delivery, not only on a status.
      if (status !== 0 || delivered) vector.unmask();
      if (status & bit) return;
      try {
        await vector.wait({ timeoutMs });
      } catch (err) {
        if ((err as { code?: string }).code === 'ETIMEDOUT') {
          const late = this.regs.read32(R.REG_IRQ_STATUS);
          throw new UserpciError('ETIMEDOUT', `${this.device.name}: no edu ${what} interrupt in ${timeoutMs} ms (interrupt status now 0x${late.toString(16)}, ${vector.total} interrupts seen)`);
        }
        throw err;
      }
    }
  }

  /** Busy-poll briefly (most operations finish in microseconds), then yield to the event loop. */
  private async pollUntilClear(offset: number, bit: number, options: PollOptions, what: string): Promise<void> {
    const deadline = Date.now() + (options.timeoutMs ?? 5000);
    for (let spins = 0; ; spins++) {
      if ((this.regs.read32(offset) & bit) === 0) return;
      if (spins >= 64) {
        if (Date.now() > deadline) throw new UserpciError('ETIMEDOUT', `${this.device.name}: edu ${what} did not complete in ${options.timeoutMs ?? 5000} ms`);
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
    }
  }
}

/** What startDma programs, checked before anything is written: a wrong direction would DMA the other way. */
function checkDmaArguments(direction: unknown, ramIova: number, deviceOffset: number, length: number): void {
  if (direction !== 'to-device' && direction !== 'from-device') throw new InvalidArgumentError(`edu DMA direction must be 'to-device' or 'from-device', got ${describeValue(direction)}`);
  if (!Number.isInteger(length) || length <= 0 || !Number.isInteger(deviceOffset) || deviceOffset < 0 || deviceOffset + length > R.DMA_BUFFER_USABLE) {
    throw new InvalidArgumentError(`edu DMA must stay inside the first ${R.DMA_BUFFER_USABLE} bytes of its buffer (offset ${String(deviceOffset)}, length ${String(length)})`);
  }
  if (!Number.isSafeInteger(ramIova) || ramIova < 0) throw new InvalidArgumentError(`bad IOVA ${String(ramIova)}`);
  if (ramIova + length - 1 > R.EDU_DEFAULT_DMA_MASK) throw new InvalidArgumentError(`IOVA 0x${ramIova.toString(16)} + ${length} is beyond the 28 bits edu drives`);
}

function checkPollOptions(options: PollOptions): void {
  checkTimeoutMs(optionsObject(options, 'edu poll options').timeoutMs, 'edu timeoutMs');
}

function hex(value: number, digits: number): string {
  return `0x${value.toString(16).padStart(digits, '0')}`;
}
