/**
 * Interrupt delivery for a served device, following vfio-pci's semantics so a driver sees the
 * same behaviour as with the kernel: one interrupt type active at a time (INTx, MSI or MSI-X);
 * INTx is level-triggered, masked automatically when it fires and delivered again on unmask if
 * the line is still asserted; MSI and MSI-X vectors signal the eventfd the client assigned.
 * Assigning eventfds enables the type in the emulated capability, as the host kernel would
 * program real hardware; a client writing the enable bits directly is honoured too.
 * MSI and MSI-X messages are memory writes: with Bus Master Enable clear the function cannot
 * send them, and an unmasked vector's message is dropped (as QEMU's disabled bus-master address
 * space drops it); a masked one still sets its pending bit. INTx is a wire, not a write: it
 * ignores bus mastering.
 */
import { native } from '../../native/index';
import { Errno, MAX_IRQ_VECTORS, Vfio, type SetIrqsMessage } from '../protocol/codec';
import { closeFds } from '../protocol/transport';
import {
  Command,
  ConfigReg,
  MsiControl,
  MsixControl,
  Status,
  findMsi,
  findMsix,
  type ConfigSpace,
  type MsiLayout,
  type MsixLayout,
} from '../../models/config-space';
import type { DeviceIrq } from '../../models/device-model';

const NONE = -1;
const MSIX_ENTRY = 16;
const MSIX_MASKED = 1;
const ENOTTY = 25;

export interface IrqInfoResult {
  count: number;
  flags: number;
}

export class InterruptController implements DeviceIrq {
  private active = NONE;
  private intxFd = -1;
  private intxMasked = false;
  private intxLine = false;
  private vectorFds: number[] = [];
  private errFd = -1;
  private reqFd = -1;
  private readonly msi: MsiLayout | undefined;
  private readonly msix: MsixLayout | undefined;
  /** MSI-X table and pending bits (the table lives in a BAR; the session routes accesses here). */
  private readonly msixTable: Uint8Array;
  private readonly msixPba: Uint8Array;

  constructor(private readonly config: ConfigSpace) {
    this.msi = findMsi(config);
    this.msix = findMsix(config);
    this.msixTable = new Uint8Array((this.msix?.vectors ?? 0) * MSIX_ENTRY);
    this.msixPba = new Uint8Array(Math.ceil((this.msix?.vectors ?? 0) / 64) * 8);
    this.resetTable();
    if (this.msi?.perVectorMask) config.onWrite(this.msi.maskOffset, 4, () => this.deliverPendingMsi());
    if (this.msix) config.onWrite(this.msix.offset + 2, 2, () => this.deliverPendingMsix());
    config.onWrite(ConfigReg.COMMAND, 2, () => this.evaluateIntx());
  }

  get layoutMsix(): MsixLayout | undefined {
    return this.msix;
  }

  // ---- device side ----------------------------------------------------------------------------

  get msiEnabled(): boolean {
    return this.msi !== undefined && (this.config.u16(this.msi.offset + 2) & MsiControl.ENABLE) !== 0;
  }

  get msixEnabled(): boolean {
    return this.msix !== undefined && (this.config.u16(this.msix.offset + 2) & MsixControl.ENABLE) !== 0;
  }

  get intxAsserted(): boolean {
    return this.intxLine;
  }

  setIntx(asserted: boolean): void {
    if (this.config.u8(ConfigReg.INTERRUPT_PIN) === 0) return;
    this.intxLine = asserted;
    const status = this.config.u16(ConfigReg.STATUS);
    this.config.setU16(ConfigReg.STATUS, asserted ? status | Status.INTERRUPT : status & ~Status.INTERRUPT);
    this.evaluateIntx();
  }

  notify(vector: number): void {
    if (this.msixEnabled) this.notifyMsix(vector);
    else if (this.msiEnabled) this.notifyMsi(vector);
  }

  private notifyMsi(vector: number): void {
    const msi = this.msi!;
    const enabled = 1 << ((this.config.u16(msi.offset + 2) >> MsiControl.MME_SHIFT) & 7);
    if (!Number.isInteger(vector) || vector < 0 || vector >= Math.min(enabled, msi.vectors)) return;
    if (msi.perVectorMask && (this.config.u32(msi.maskOffset) >>> vector) & 1) {
      this.config.setU32(msi.pendingOffset, (this.config.u32(msi.pendingOffset) | (1 << vector)) >>> 0);
      return;
    }
    if (this.mastering) this.signal(this.active === Vfio.PCI_MSI_IRQ_INDEX ? this.vectorFds[vector] : undefined);
  }

  private notifyMsix(vector: number): void {
    const msix = this.msix!;
    if (!Number.isInteger(vector) || vector < 0 || vector >= msix.vectors) return;
    const functionMasked = (this.config.u16(msix.offset + 2) & MsixControl.FUNCTION_MASK) !== 0;
    if (functionMasked || this.entryMasked(vector)) {
      this.msixPba[vector >> 3]! |= 1 << (vector & 7);
      return;
    }
    if (this.mastering) this.signal(this.active === Vfio.PCI_MSIX_IRQ_INDEX ? this.vectorFds[vector] : undefined);
  }

  /** Bus Master Enable: without it no memory write, so no MSI/MSI-X message, leaves the function. */
  private get mastering(): boolean {
    return (this.config.u16(ConfigReg.COMMAND) & Command.MASTER) !== 0;
  }

  private entryMasked(vector: number): boolean {
    return (this.msixTable[vector * MSIX_ENTRY + 12]! & MSIX_MASKED) !== 0;
  }

  private deliverPendingMsi(): void {
    const msi = this.msi!;
    const pending = this.config.u32(msi.pendingOffset);
    const mask = this.config.u32(msi.maskOffset);
    const ready = pending & ~mask;
    if (!ready) return;
    this.config.setU32(msi.pendingOffset, (pending & ~ready) >>> 0);
    for (let v = 0; v < 32; v++) if ((ready >>> v) & 1) this.notifyMsi(v);
  }

  private deliverPendingMsix(): void {
    const msix = this.msix!;
    if (!this.msixEnabled || (this.config.u16(msix.offset + 2) & MsixControl.FUNCTION_MASK) !== 0) return;
    for (let v = 0; v < msix.vectors; v++) {
      if ((this.msixPba[v >> 3]! >> (v & 7)) & 1 && !this.entryMasked(v)) {
        this.msixPba[v >> 3]! &= ~(1 << (v & 7));
        this.notifyMsix(v);
      }
    }
  }

  private evaluateIntx(): void {
    if (!this.intxLine || this.active !== Vfio.PCI_INTX_IRQ_INDEX || this.intxMasked) return;
    if (this.config.u16(ConfigReg.COMMAND) & Command.INTX_DISABLE) return;
    if (this.intxFd < 0) return;
    this.intxMasked = true; // automasked until the client unmasks, as vfio-pci does
    this.signal(this.intxFd);
  }

  private signal(fd: number | undefined): void {
    if (fd === undefined || fd < 0) return;
    try {
      native.eventfdWrite(fd, 1);
    } catch {
      // The client closed its end of the eventfd: nobody is listening, nothing to deliver.
    }
  }

  // ---- MSI-X table in a BAR -------------------------------------------------------------------

  /** True when [offset, offset+length) of BAR `bar` is the MSI-X table or PBA (served here). */
  claims(bar: number, offset: number, length: number): 'table' | 'pba' | undefined {
    const m = this.msix;
    if (!m) return undefined;
    if (bar === m.tableBar && offset >= m.tableOffset && offset + length <= m.tableOffset + this.msixTable.length) return 'table';
    if (bar === m.pbaBar && offset >= m.pbaOffset && offset + length <= m.pbaOffset + this.msixPba.length) return 'pba';
    return undefined;
  }

  readMsix(kind: 'table' | 'pba', offset: number, into: Uint8Array): void {
    const m = this.msix!;
    const [store, base] = kind === 'table' ? [this.msixTable, m.tableOffset] : [this.msixPba, m.pbaOffset];
    into.set(store.subarray(offset - base, offset - base + into.length));
  }

  writeMsix(kind: 'table' | 'pba', offset: number, from: Uint8Array): void {
    if (kind === 'pba') return; // read-only
    this.msixTable.set(from, offset - this.msix!.tableOffset);
    this.deliverPendingMsix();
  }

  private resetTable(): void {
    this.msixTable.fill(0);
    this.msixPba.fill(0);
    for (let v = 0; v < (this.msix?.vectors ?? 0); v++) this.msixTable[v * MSIX_ENTRY + 12] = MSIX_MASKED;
  }

  // ---- client side (VFIO_USER_DEVICE_GET_IRQ_INFO / SET_IRQS) ----------------------------------

  irqInfo(index: number): IrqInfoResult | undefined {
    switch (index) {
      case Vfio.PCI_INTX_IRQ_INDEX:
        return {
          count: this.config.u8(ConfigReg.INTERRUPT_PIN) ? 1 : 0,
          flags: Vfio.IRQ_INFO_EVENTFD | Vfio.IRQ_INFO_MASKABLE | Vfio.IRQ_INFO_AUTOMASKED,
        };
      case Vfio.PCI_MSI_IRQ_INDEX:
        return { count: this.msi?.vectors ?? 0, flags: Vfio.IRQ_INFO_EVENTFD | Vfio.IRQ_INFO_NORESIZE };
      case Vfio.PCI_MSIX_IRQ_INDEX:
        return { count: this.msix?.vectors ?? 0, flags: Vfio.IRQ_INFO_EVENTFD | Vfio.IRQ_INFO_NORESIZE };
      case Vfio.PCI_ERR_IRQ_INDEX:
        return { count: 0, flags: Vfio.IRQ_INFO_EVENTFD };
      case Vfio.PCI_REQ_IRQ_INDEX:
        return { count: 1, flags: Vfio.IRQ_INFO_EVENTFD };
      default:
        return undefined;
    }
  }

  /**
   * Apply a SET_IRQS request. Returns 0 or an errno. On success the eventfds are owned here; on
   * failure they are still the caller's to close.
   */
  setIrqs(m: SetIrqsMessage, fds: number[]): number {
    const info = this.irqInfo(m.index);
    if (!info) return Errno.EINVAL;
    const dataEventfd = (m.flags & Vfio.IRQ_SET_DATA_EVENTFD) !== 0;
    const dataNone = (m.flags & Vfio.IRQ_SET_DATA_NONE) !== 0;
    if (dataEventfd ? fds.length !== m.count && fds.length !== 0 : fds.length !== 0) return Errno.EINVAL;
    if (m.count === 0 && !dataNone) return Errno.EINVAL;
    if (m.start + m.count > info.count && !(m.count === 0 && m.start === 0)) return Errno.EINVAL;
    const action = m.flags & (Vfio.IRQ_SET_ACTION_MASK | Vfio.IRQ_SET_ACTION_UNMASK | Vfio.IRQ_SET_ACTION_TRIGGER);
    switch (m.index) {
      case Vfio.PCI_INTX_IRQ_INDEX:
        return this.setIntxIrqs(m, action, fds);
      case Vfio.PCI_MSI_IRQ_INDEX:
      case Vfio.PCI_MSIX_IRQ_INDEX:
        if (action !== Vfio.IRQ_SET_ACTION_TRIGGER) return ENOTTY;
        return this.setVectorTrigger(m, fds);
      default:
        if (action !== Vfio.IRQ_SET_ACTION_TRIGGER) return Errno.EINVAL;
        return this.setSingleTrigger(m, fds);
    }
  }

  private setIntxIrqs(m: SetIrqsMessage, action: number, fds: number[]): number {
    const isIntx = this.active === Vfio.PCI_INTX_IRQ_INDEX;
    if (action === Vfio.IRQ_SET_ACTION_TRIGGER) {
      if (isIntx && m.count === 0 && m.flags & Vfio.IRQ_SET_DATA_NONE) {
        this.disableAll();
        return 0;
      }
      if (!(isIntx || this.active === NONE) || m.start !== 0 || m.count !== 1) return Errno.EINVAL;
      if (m.flags & Vfio.IRQ_SET_DATA_EVENTFD) {
        this.replaceFd(this.intxFd, fds[0] ?? -1, (fd) => (this.intxFd = fd));
        if (!isIntx) {
          this.active = Vfio.PCI_INTX_IRQ_INDEX;
          this.intxMasked = false;
        }
        this.evaluateIntx();
        return 0;
      }
      if (!isIntx) return Errno.EINVAL;
      if (m.flags & Vfio.IRQ_SET_DATA_NONE || m.bools?.[0]) this.signal(this.intxFd); // loopback test trigger
      return 0;
    }
    if (!isIntx || m.start !== 0 || m.count !== 1) return Errno.EINVAL;
    if (m.flags & Vfio.IRQ_SET_DATA_EVENTFD) return Errno.EINVAL; // irqfd-style (un)mask is not offered
    const apply = (m.flags & Vfio.IRQ_SET_DATA_NONE) !== 0 || (m.bools?.[0] ?? 0) !== 0;
    if (!apply) return 0;
    if (action === Vfio.IRQ_SET_ACTION_MASK) this.intxMasked = true;
    else {
      this.intxMasked = false;
      this.evaluateIntx();
    }
    return 0;
  }

  private setVectorTrigger(m: SetIrqsMessage, fds: number[]): number {
    const isActive = this.active === m.index;
    if (isActive && m.count === 0 && m.flags & Vfio.IRQ_SET_DATA_NONE) {
      this.disableAll();
      return 0;
    }
    if (!(isActive || this.active === NONE)) return Errno.EINVAL;
    if (m.flags & Vfio.IRQ_SET_DATA_EVENTFD) {
      if (!isActive) this.enableVectors(m.index, m.start + m.count);
      else if (m.start + m.count > this.vectorFds.length) {
        return Errno.EINVAL; // NORESIZE: a bigger block needs disable and enable again
      }
      for (let i = 0; i < m.count; i++) {
        const v = m.start + i;
        this.replaceFd(this.vectorFds[v]!, fds[i] ?? -1, (fd) => (this.vectorFds[v] = fd));
        if (m.index === Vfio.PCI_MSIX_IRQ_INDEX) this.setMsixEntryMasked(v, fds[i] === undefined);
        else if (this.msi?.perVectorMask && fds[i] !== undefined) this.setMsiVectorMasked(v, false);
      }
      return 0;
    }
    if (!isActive) return Errno.EINVAL;
    for (let i = 0; i < m.count; i++) {
      if (m.flags & Vfio.IRQ_SET_DATA_NONE || m.bools?.[i]) this.signal(this.vectorFds[m.start + i]);
    }
    return 0;
  }

  private setSingleTrigger(m: SetIrqsMessage, fds: number[]): number {
    const current = m.index === Vfio.PCI_ERR_IRQ_INDEX ? this.errFd : this.reqFd;
    const set = (fd: number) => (m.index === Vfio.PCI_ERR_IRQ_INDEX ? (this.errFd = fd) : (this.reqFd = fd));
    if (m.flags & Vfio.IRQ_SET_DATA_EVENTFD) {
      this.replaceFd(current, fds[0] ?? -1, set);
      return 0;
    }
    if (m.count === 0) {
      this.replaceFd(current, -1, set);
      return 0;
    }
    this.signal(current);
    return 0;
  }

  private enableVectors(index: number, count: number): void {
    this.active = index;
    this.vectorFds = new Array<number>(Math.min(count, MAX_IRQ_VECTORS)).fill(-1);
    if (index === Vfio.PCI_MSI_IRQ_INDEX && this.msi) {
      const mme = Math.ceil(Math.log2(Math.max(1, count)));
      const control = this.config.u16(this.msi.offset + 2) & ~(7 << MsiControl.MME_SHIFT);
      this.config.setU16(this.msi.offset + 2, control | (mme << MsiControl.MME_SHIFT) | MsiControl.ENABLE);
    } else if (index === Vfio.PCI_MSIX_IRQ_INDEX && this.msix) {
      const control = this.config.u16(this.msix.offset + 2) & ~MsixControl.FUNCTION_MASK;
      this.config.setU16(this.msix.offset + 2, control | MsixControl.ENABLE);
    }
  }

  private setMsixEntryMasked(vector: number, masked: boolean): void {
    const at = vector * MSIX_ENTRY + 12;
    if (at >= this.msixTable.length) return;
    this.msixTable[at] = masked ? this.msixTable[at]! | MSIX_MASKED : this.msixTable[at]! & ~MSIX_MASKED;
    if (!masked) this.deliverPendingMsix();
  }

  private setMsiVectorMasked(vector: number, masked: boolean): void {
    const msi = this.msi!;
    const mask = this.config.u32(msi.maskOffset);
    this.config.setU32(msi.maskOffset, (masked ? mask | (1 << vector) : mask & ~(1 << vector)) >>> 0);
  }

  private replaceFd(current: number, next: number, store: (fd: number) => void): void {
    if (current >= 0 && current !== next) closeFds([current]);
    store(next);
  }

  /** Every index off and every eventfd closed (client gone, or the index disabled). */
  disableAll(): void {
    closeFds(this.vectorFds.filter((fd) => fd >= 0));
    this.vectorFds = [];
    if (this.intxFd >= 0) closeFds([this.intxFd]);
    this.intxFd = -1;
    this.intxMasked = false;
    if (this.active === Vfio.PCI_MSI_IRQ_INDEX && this.msi) {
      this.config.setU16(this.msi.offset + 2, this.config.u16(this.msi.offset + 2) & ~MsiControl.ENABLE);
    }
    if (this.active === Vfio.PCI_MSIX_IRQ_INDEX && this.msix) {
      this.config.setU16(this.msix.offset + 2, this.config.u16(this.msix.offset + 2) & ~MsixControl.ENABLE);
      for (let v = 0; v < this.msix.vectors; v++) this.setMsixEntryMasked(v, true);
    }
    this.active = NONE;
  }

  /** The client is gone: drop every fd it gave us, including the error and request notifiers. */
  disconnect(): void {
    this.disableAll();
    if (this.errFd >= 0) closeFds([this.errFd]);
    if (this.reqFd >= 0) closeFds([this.reqFd]);
    this.errFd = -1;
    this.reqFd = -1;
  }

  /** Device reset: interrupts off (the client must enable them again), table back to masked. */
  reset(): void {
    this.disableAll();
    this.resetTable();
    this.intxLine = false;
  }

  /** Ask the client to release the device (the VFIO request notifier), e.g. before shutdown. */
  requestRelease(): boolean {
    if (this.reqFd < 0) return false;
    this.signal(this.reqFd);
    return true;
  }
}
