/**
 * A device's interrupt set-up. PCI allows one mode at a time (INTx, MSI or MSI-X); enabling one
 * switches the others off. Vector objects survive a change of vector count: the same eventfds
 * are routed again, so listeners and waits carry on.
 */
import { InvalidArgumentError, UserpciError, wrapSystemError } from '../errors';
import type { Backend } from '../device/backend';
import { InterruptVector, type InterruptKind } from './interrupt-vector';

export type InterruptMode = 'intx' | 'msi' | 'msix';

/** VFIO's PCI irq indices (vfio-user uses the same). */
export const IRQ_INDEX: Record<InterruptKind, number> = { intx: 0, msi: 1, msix: 2, err: 3, req: 4 };

export interface InterruptInfo {
  mode: InterruptKind;
  /** Vectors the device offers (0 when it has no such interrupt). */
  count: number;
  eventfd: boolean;
  maskable: boolean;
  automasked: boolean;
  /** The count can only change by disabling and enabling again. */
  noResize: boolean;
}

export class DeviceInterrupts {
  private activeMode: InterruptMode | undefined;
  private vectors: InterruptVector[] = [];
  private notifiers = new Map<'err' | 'req', InterruptVector>();

  constructor(private readonly backend: Backend) {}

  get mode(): InterruptMode | undefined {
    return this.activeMode;
  }

  /** The armed vectors of the active mode. */
  get active(): readonly InterruptVector[] {
    return this.vectors;
  }

  info(mode: InterruptKind): InterruptInfo {
    const index = IRQ_INDEX[mode];
    if (index === undefined) throw new InvalidArgumentError(`interrupt mode must be intx, msi, msix, err or req, got ${String(mode)}`);
    const none = { mode, count: 0, eventfd: false, maskable: false, automasked: false, noResize: true };
    if (index >= this.backend.deviceInfo().numIrqs) return none;
    let i;
    try {
      i = this.backend.irqInfo(index);
    } catch (err) {
      // vfio-pci answers EINVAL for an index the device cannot have (ERR without AER).
      if ((err as { code?: string }).code === 'EINVAL') return none;
      throw err;
    }
    return { mode, count: i.count, eventfd: (i.flags & 1) !== 0, maskable: (i.flags & 2) !== 0, automasked: (i.flags & 4) !== 0, noResize: (i.flags & 8) !== 0 };
  }

  /** Arm `count` vectors of `mode` (default: 1). Switches any other mode off first. */
  enable(mode: InterruptMode, count = 1): readonly InterruptVector[] {
    const offered = this.info(mode).count;
    if (offered === 0) throw new UserpciError('ENOTSUP', `${this.backend.name} has no ${mode.toUpperCase()} interrupt`);
    if (!Number.isInteger(count) || count < 1 || count > offered) {
      throw new InvalidArgumentError(`${this.backend.name} offers ${offered} ${mode.toUpperCase()} vector(s); asked for ${count}`);
    }
    if (mode === 'intx' && count !== 1) throw new InvalidArgumentError('INTx has exactly one vector');
    if (this.activeMode && this.activeMode !== mode) this.disable();
    const index = IRQ_INDEX[mode];
    const keep = this.activeMode === mode ? this.vectors.slice(0, count) : [];
    if (this.activeMode === mode) this.disableIndex(index); // a new count needs a fresh enable
    for (const v of this.vectors.slice(keep.length)) v.close();
    const vectors = keep;
    for (let i = vectors.length; i < count; i++) {
      const unmask = mode === 'intx' ? () => this.backend.unmaskIrq(index, 0) : undefined;
      vectors.push(new InterruptVector(mode, i, unmask, () => this.backend.irqCpus?.(index, i)));
    }
    try {
      this.backend.setIrqEventfds(index, 0, vectors.map((v) => v.fd));
    } catch (err) {
      for (const v of vectors) v.close();
      this.vectors = [];
      this.activeMode = undefined;
      throw wrapSystemError(err, `enabling ${count} ${mode.toUpperCase()} vector(s) on ${this.backend.name}`);
    }
    this.vectors = vectors;
    this.activeMode = mode;
    return vectors;
  }

  /** Switch the active mode off; its vectors' waits reject. */
  disable(reason?: Error): void {
    if (!this.activeMode) return;
    const index = IRQ_INDEX[this.activeMode];
    this.activeMode = undefined;
    try {
      this.disableIndex(index);
    } finally {
      for (const v of this.vectors) v.close(reason);
      this.vectors = [];
    }
  }

  /**
   * Subscribe to VFIO's device request (the kernel wants the device back: hot-unplug) or error
   * (AER) notification. Returns undefined when the backend does not offer it.
   */
  notifier(kind: 'err' | 'req'): InterruptVector | undefined {
    const existing = this.notifiers.get(kind);
    if (existing) return existing;
    if (this.info(kind).count === 0) return undefined;
    const v = new InterruptVector(kind, 0);
    try {
      this.backend.setIrqEventfds(IRQ_INDEX[kind], 0, [v.fd]);
    } catch {
      v.close();
      return undefined;
    }
    this.notifiers.set(kind, v);
    return v;
  }

  /** Everything off (device close or removal). */
  closeAll(reason: Error, talkToDevice: boolean): void {
    if (talkToDevice) {
      try {
        this.disable(reason);
      } catch {
        // The device may be gone already: disable() closed the vectors all the same.
      }
    } else {
      for (const v of this.vectors) v.close(reason);
      this.vectors = [];
      this.activeMode = undefined;
    }
    for (const [kind, v] of this.notifiers) {
      if (talkToDevice) ignore(() => this.disableIndex(IRQ_INDEX[kind]));
      v.close(reason);
    }
    this.notifiers.clear();
  }

  private disableIndex(index: number): void {
    this.backend.disableIrqs(index);
  }
}

function ignore(fn: () => void): void {
  try {
    fn();
  } catch {
    // Best effort during teardown.
  }
}
