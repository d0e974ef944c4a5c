/**
 * Everything about a served device that outlives one client: the model, its config space,
 * interrupt routing, the client's DMA maps, and the routing of region accesses (config space,
 * MSI-X table, shared BAR memory, the model's register handlers). Sessions come and go on top.
 */
import { UserpciError } from '../../errors';
import { PCI_COMMAND, PCI_COMMAND_MASTER } from '../../uapi/pci-regs';
import { Vfio, type SetIrqsMessage, type SparseMmapArea } from '../protocol/codec';
import { InterruptController } from './interrupts';
import { DmaSpace, type RemoteDma } from './dma';
import type { IrqInfoResult } from './interrupts';
import type { SessionHost } from './session';
import type { BarDefinition, DeviceContext, DeviceModel } from '../../models/device-model';

const PAGE = 4096;

export interface RegionDescription {
  index: number;
  size: number;
  flags: number;
  /** Mmap offset in `fd`. */
  offset: number;
  fd: number | undefined;
  sparseAreas: SparseMmapArea[] | undefined;
}

export class DeviceHost implements DeviceContext, SessionHost {
  readonly interrupts: InterruptController;
  readonly dmaSpace = new DmaSpace();
  private remote: RemoteDma | undefined;
  private readonly logger: (message: string) => void;

  constructor(
    readonly model: DeviceModel,
    options: { log?: (message: string) => void } = {},
  ) {
    this.logger = options.log ?? (() => {});
    model.config.seal();
    this.interrupts = new InterruptController(model.config);
    model.attach(this);
  }

  // ---- DeviceContext (what the model sees) ---------------------------------------------------

  get irq(): InterruptController {
    return this.interrupts;
  }

  readonly dma = {
    read: (iova: number, length: number): Promise<Uint8Array> => {
      if (!this.remote) return Promise.reject(new UserpciError('ENODEV', 'DMA read with no client connected'));
      if (!this.busMaster) return Promise.reject(new UserpciError('EPERM', 'DMA read with bus mastering off'));
      return this.dmaSpace.read(iova, length, this.remote);
    },
    write: (iova: number, data: Uint8Array): Promise<void> => {
      if (!this.remote) return Promise.reject(new UserpciError('ENODEV', 'DMA write with no client connected'));
      if (!this.busMaster) return Promise.reject(new UserpciError('EPERM', 'DMA write with bus mastering off'));
      return this.dmaSpace.write(iova, data, this.remote);
    },
  };

  /** As on a PCI bus: a function whose Bus Master Enable is clear cannot start a transaction. */
  private get busMaster(): boolean {
    return (this.model.config.u16(PCI_COMMAND) & PCI_COMMAND_MASTER) !== 0;
  }

  get clientConnected(): boolean {
    return this.remote !== undefined;
  }

  log(message: string): void {
    this.logger(`${this.model.name}: ${message}`);
  }

  // ---- client lifecycle ----------------------------------------------------------------------

  clientAttached(remote: RemoteDma): void {
    this.remote = remote;
  }

  /** Per the spec: the client's maps and eventfds go, the device state stays. */
  clientDetached(): void {
    this.remote = undefined;
    // As vfio-pci does on release: the device may not master the bus for whoever comes next
    // until that client's driver has quiesced it and says so.
    this.model.config.setU16(PCI_COMMAND, this.model.config.u16(PCI_COMMAND) & ~PCI_COMMAND_MASTER);
    this.dmaSpace.clear();
    this.interrupts.disconnect();
  }

  deviceInfo(): { flags: number; numRegions: number; numIrqs: number } {
    return { flags: Vfio.DEVICE_FLAGS_PCI | Vfio.DEVICE_FLAGS_RESET, numRegions: Vfio.PCI_NUM_REGIONS, numIrqs: Vfio.PCI_NUM_IRQS };
  }

  dmaMap(iova: number, size: number, flags: number, fd: number | undefined, offset: number): number {
    return this.dmaSpace.map(iova, size, flags, fd, offset);
  }

  dmaUnmap(iova: number, size: number): number {
    return this.dmaSpace.unmap(iova, size);
  }

  dmaUnmapAll(): void {
    this.dmaSpace.clear();
  }

  irqInfo(index: number): IrqInfoResult | undefined {
    return this.interrupts.irqInfo(index);
  }

  setIrqs(m: SetIrqsMessage, fds: number[]): number {
    return this.interrupts.setIrqs(m, fds);
  }

  reset(): void {
    this.model.reset();
    this.model.config.reset();
    this.interrupts.reset();
  }

  // ---- regions -------------------------------------------------------------------------------

  regionInfo(index: number): RegionDescription | undefined {
    if (!Number.isInteger(index) || index < 0 || index >= Vfio.PCI_NUM_REGIONS) return undefined;
    const rw = Vfio.REGION_INFO_FLAG_READ | Vfio.REGION_INFO_FLAG_WRITE;
    if (index === Vfio.PCI_CONFIG_REGION_INDEX) {
      return { index, size: this.model.config.size, flags: rw, offset: 0, fd: undefined, sparseAreas: undefined };
    }
    const layout = index < 6 ? this.model.config.bars[index] : undefined;
    if (!layout) return { index, size: 0, flags: 0, offset: 0, fd: undefined, sparseAreas: undefined };
    const bar = this.model.bars.get(index);
    const shared = bar?.shared;
    if (!shared) return { index, size: layout.size, flags: rw, offset: 0, fd: undefined, sparseAreas: undefined };
    let areas = shared.areas ?? [{ offset: 0, size: layout.size }];
    const msix = this.interrupts.layoutMsix;
    if (msix) {
      // The MSI-X table and PBA are served here, never mapped: cut their pages out.
      if (msix.tableBar === index) areas = subtract(areas, pageSpan(msix.tableOffset, msix.vectors * 16));
      if (msix.pbaBar === index) areas = subtract(areas, pageSpan(msix.pbaOffset, Math.ceil(msix.vectors / 64) * 8));
    }
    const whole = areas.length === 1 && areas[0]!.offset === 0 && areas[0]!.size === layout.size;
    return {
      index,
      size: layout.size,
      flags: rw | (areas.length > 0 ? Vfio.REGION_INFO_FLAG_MMAP : 0),
      offset: shared.fdOffset ?? 0,
      fd: areas.length > 0 ? shared.fd : undefined,
      sparseAreas: whole ? undefined : areas,
    };
  }

  regionSize(index: number): number {
    if (index === Vfio.PCI_CONFIG_REGION_INDEX) return this.model.config.size;
    return (index < 6 && this.model.config.bars[index]?.size) || 0;
  }

  regionRead(index: number, offset: number, into: Uint8Array): void {
    if (index === Vfio.PCI_CONFIG_REGION_INDEX) {
      this.model.config.read(offset, into);
      return;
    }
    const claim = this.interrupts.claims(index, offset, into.length);
    if (claim) {
      this.interrupts.readMsix(claim, offset, into);
      return;
    }
    const bar = this.model.bars.get(index);
    const memory = sharedRange(bar, offset, into.length);
    if (memory) into.set(memory);
    else if (bar?.handlers) bar.handlers.read(offset, into);
    else into.fill(0xff); // nothing decodes this address: a PCI master abort reads all ones
  }

  regionWrite(index: number, offset: number, from: Uint8Array): void {
    if (index === Vfio.PCI_CONFIG_REGION_INDEX) {
      this.model.config.write(offset, from);
      return;
    }
    const claim = this.interrupts.claims(index, offset, from.length);
    if (claim) {
      this.interrupts.writeMsix(claim, offset, from);
      return;
    }
    const bar = this.model.bars.get(index);
    const memory = sharedRange(bar, offset, from.length);
    if (memory) memory.set(from);
    else bar?.handlers?.write(offset, from);
  }

  requestRelease(): boolean {
    return this.interrupts.requestRelease();
  }

  dispose(): void {
    this.clientDetached();
    this.model.dispose?.();
  }
}

/**
 * The shared memory behind [offset, offset+length) when the access lies inside one mappable area
 * (or the BAR has no handlers at all), so message accesses see what mapped accesses see.
 */
function sharedRange(bar: BarDefinition | undefined, offset: number, length: number): Uint8Array | undefined {
  const shared = bar?.shared;
  if (!shared) return undefined;
  if (offset + length > shared.memory.byteLength) return undefined;
  const inArea = (shared.areas ?? [{ offset: 0, size: shared.memory.byteLength }]).some((a) => offset >= a.offset && offset + length <= a.offset + a.size);
  if (!inArea && bar?.handlers) return undefined;
  return new Uint8Array(shared.memory, offset, length);
}

function pageSpan(offset: number, size: number): SparseMmapArea {
  const start = Math.floor(offset / PAGE) * PAGE;
  const end = Math.ceil((offset + size) / PAGE) * PAGE;
  return { offset: start, size: end - start };
}

function subtract(areas: SparseMmapArea[], hole: SparseMmapArea): SparseMmapArea[] {
  const out: SparseMmapArea[] = [];
  const holeEnd = hole.offset + hole.size;
  for (const a of areas) {
    const end = a.offset + a.size;
    if (holeEnd <= a.offset || end <= hole.offset) {
      out.push(a);
      continue;
    }
    if (a.offset < hole.offset) out.push({ offset: a.offset, size: hole.offset - a.offset });
    if (holeEnd < end) out.push({ offset: holeEnd, size: end - holeEnd });
  }
  return out;
}
