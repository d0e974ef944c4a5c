/**
 * The proxy's host: a real PCI function held through kernel VFIO, served to one vfio-user client
 * at a time. What the client asks for goes to VFIO as directly as it can:
 * - regions VFIO lets us mmap are offered with the VFIO device fd, so the client maps the BAR
 *   itself (with a trace, nothing is offered for mmap, so every access passes here);
 * - DMA_MAP with an fd: the client's memory is mapped here and into the real IOMMU at the
 *   client's IOVA; without an fd it is refused (a real device cannot reach memory by messages);
 * - SET_IRQS: the client's eventfds go to VFIO_DEVICE_SET_IRQS (with a trace, through eventfds of
 *   ours that count and forward each interrupt);
 * - reset passes through.
 * When the client goes, the device's bus mastering is turned off before anything else (no DMA
 * into memory being unmapped), interrupts are disabled, every map leaves the IOMMU.
 */
import { native, constants, type WatchHandle } from '../../native/index';
import { VfioBackend } from '../../backends/vfio/vfio-backend';
import type { BackendDeviceInfo } from '../../device/backend';
import { PCI_COMMAND, PCI_COMMAND_MASTER } from '../../uapi/pci-regs';
import { DmaFlags, Errno, ProtocolError, Vfio, errnoName, type SetIrqsMessage } from '../protocol/codec';
import { closeFds } from '../protocol/transport';
import { errnoOf } from '../protocol/channel';
import type { RegionDescription } from '../server/device-host';
import type { IrqInfoResult } from '../server/interrupts';
import { DmaSpace, type RemoteDma } from '../server/dma';
import type { SessionHost } from '../server/session';
import type { TraceWriter } from './trace';

interface TracedVector {
  /** index * 0x10000 + vector */
  key: number;
  index: number;
  vector: number;
  ours: number;
  theirs: number;
  watch: WatchHandle;
}

export interface ProxyOptions {
  trace?: TraceWriter;
  log?: (message: string) => void;
}

export class ProxyHost implements SessionHost {
  private readonly traced = new Map<number, TracedVector>();
  private readonly trace: TraceWriter | undefined;
  private readonly log: (message: string) => void;
  /** The device's answers never change: asked of VFIO once, not on every access. */
  private readonly info: BackendDeviceInfo;
  private readonly regions: (RegionDescription | undefined)[] = [];
  private readonly dma: DmaSpace;

  constructor(
    readonly backend: VfioBackend,
    options: ProxyOptions = {},
  ) {
    this.trace = options.trace;
    this.log = options.log ?? (() => {});
    this.info = backend.deviceInfo();
    // The client's maps, each mapped here and put into the real IOMMU at the client's IOVA.
    // Past the container's IOVA allocator (src/dma): nothing in this process takes from it (no DmaSpace here, the CLI opens no other device, ProxyHost is not exported).
    this.dma = new DmaSpace(undefined, {
      map: (m) => backend.dmaMap({ iova: m.iova, size: m.size, vaddr: native.addressOf(m.memory), memory: m.memory, memoryIova: m.iova, deviceReads: m.readable, deviceWrites: m.writable }),
      unmap: (m) => {
        try {
          backend.dmaUnmap(m.iova, m.size);
          return true;
        } catch (err) {
          this.log(`IOMMU unmap of [0x${m.iova.toString(16)}, +0x${m.size.toString(16)}) failed: ${(err as Error).message}; its memory stays mapped here and the range is refused (EBUSY) to every later map`);
          return false;
        }
      },
    });
  }

  static open(address: string, options: ProxyOptions = {}): ProxyHost {
    return new ProxyHost(VfioBackend.open(address), options);
  }

  deviceInfo(): BackendDeviceInfo {
    return this.info;
  }

  clientAttached(_remote: RemoteDma): void {
    this.trace?.write({ ev: 'connect' });
  }

  clientDetached(): void {
    // Bus mastering off first: the device must not DMA into memory we are about to unmap.
    try {
      const cmd = new Uint8Array(2);
      this.backend.regionRead(Vfio.PCI_CONFIG_REGION_INDEX, PCI_COMMAND, cmd);
      cmd[0]! &= ~PCI_COMMAND_MASTER;
      this.backend.regionWrite(Vfio.PCI_CONFIG_REGION_INDEX, PCI_COMMAND, cmd);
      this.trace?.write({ ev: 'stop-dma', note: 'bus mastering off' });
    } catch (err) {
      this.log(`turning bus mastering off failed: ${(err as Error).message}`);
    }
    for (let index = 0; index < this.info.numIrqs; index++) {
      try {
        if (this.backend.irqInfo(index).count > 0) this.backend.disableIrqs(index);
      } catch {
        // not enabled, or not disableable: nothing routed there
      }
    }
    for (const t of this.traced.values()) this.stopTracing(t, true);
    this.dmaUnmapAll();
    this.trace?.write({ ev: 'disconnect' });
  }

  dispose(): void {
    this.clientDetached();
    this.backend.close();
    this.trace?.close();
  }

  // ---- DMA ------------------------------------------------------------------------------------

  dmaMap(iova: number, size: number, flags: number, fd: number | undefined, offset: number): number {
    const error = this.dma.map(iova, size, flags, fd, offset);
    if (fd === undefined) this.log(`refused a DMA map without fd at 0x${iova.toString(16)}: a real device reaches memory only through the IOMMU; share memory by fd`);
    else if (error === Errno.EBUSY) this.log(`refused a DMA map at [0x${iova.toString(16)}, +0x${size.toString(16)}): it overlaps a range whose IOMMU unmap failed earlier`);
    const read = (flags & DmaFlags.READ) !== 0;
    const write = (flags & DmaFlags.WRITE) !== 0;
    this.trace?.write({ ev: 'dma-map', iova, size, read, write, fd: fd !== undefined, ...(error ? { error: errnoName(error) } : {}) });
    return error;
  }

  dmaUnmap(iova: number, size: number): number {
    const error = this.dma.unmap(iova, size);
    this.trace?.write({ ev: 'dma-unmap', iova, size, ...(error ? { error: errnoName(error) } : {}) });
    return error;
  }

  dmaUnmapAll(): void {
    if (this.dma.count > 0) this.trace?.write({ ev: 'dma-unmap', iova: 0, size: 0, all: true });
    this.dma.clear();
  }

  // ---- regions --------------------------------------------------------------------------------

  regionInfo(index: number): RegionDescription | undefined {
    if (!Number.isInteger(index) || index < 0 || index >= this.info.numRegions) return undefined;
    let region = this.regions[index];
    if (region) return region;
    const r = this.backend.regionLayout(index);
    const rw = r.flags & (Vfio.REGION_INFO_FLAG_READ | Vfio.REGION_INFO_FLAG_WRITE);
    const mappable = (r.flags & Vfio.REGION_INFO_FLAG_MMAP) !== 0 && !this.trace && r.size > 0;
    region = {
      index,
      size: r.size,
      flags: rw | (mappable ? Vfio.REGION_INFO_FLAG_MMAP : 0),
      offset: r.offset,
      fd: mappable ? this.backend.deviceFd : undefined,
      sparseAreas: mappable ? r.sparseAreas : undefined,
    };
    this.regions[index] = region;
    return region;
  }

  regionSize(index: number): number {
    return this.regionInfo(index)?.size ?? 0;
  }

  regionRead(index: number, offset: number, into: Uint8Array): void {
    this.backend.regionRead(index, offset, into);
    this.trace?.write({ ev: 'read', region: index, offset, size: into.length, data: Buffer.from(into.buffer, into.byteOffset, into.byteLength).toString('hex') });
  }

  regionWrite(index: number, offset: number, from: Uint8Array): void {
    this.trace?.write({ ev: 'write', region: index, offset, size: from.length, data: Buffer.from(from.buffer, from.byteOffset, from.byteLength).toString('hex') });
    this.backend.regionWrite(index, offset, from);
  }

  // ---- interrupts -----------------------------------------------------------------------------

  irqInfo(index: number): IrqInfoResult | undefined {
    if (!Number.isInteger(index) || index < 0 || index >= this.info.numIrqs) return undefined;
    const info = this.backend.irqInfo(index);
    return { flags: info.flags, count: info.count };
  }

  setIrqs(m: SetIrqsMessage, fds: number[]): number {
    const error = this.passIrqs(m, fds);
    this.trace?.write({ ev: 'set-irqs', index: m.index, start: m.start, count: m.count, flags: m.flags, fds: fds.length, ...(error ? { error: errnoName(error) } : {}) });
    return error;
  }

  /**
   * The request goes to VFIO_DEVICE_SET_IRQS as it came (its layout is VFIO's); only the client's
   * eventfds travel beside it rather than in it. With a trace, trigger eventfds are ours, which
   * count and forward. Tracing of a vector changes only once VFIO has taken the new routing.
   */
  private passIrqs(m: SetIrqsMessage, fds: number[]): number {
    const action = m.flags & (Vfio.IRQ_SET_ACTION_MASK | Vfio.IRQ_SET_ACTION_UNMASK | Vfio.IRQ_SET_ACTION_TRIGGER);
    const withEventfds = (m.flags & Vfio.IRQ_SET_DATA_EVENTFD) !== 0;
    if (withEventfds ? fds.length !== 0 && fds.length !== m.count : fds.length !== 0) return Errno.EINVAL;
    let eventfds: number[] | undefined;
    const fresh: TracedVector[] = [];
    if (withEventfds) {
      // No fds with DATA_EVENTFD: the spec's de-assign of every vector in the range.
      eventfds = fds.length ? fds : new Array<number>(m.count).fill(-1);
      if (this.trace && action === Vfio.IRQ_SET_ACTION_TRIGGER) {
        eventfds = eventfds.map((theirs, i) => {
          if (theirs < 0) return -1;
          const t = this.traceVector(m.index, m.start + i, theirs);
          fresh.push(t);
          return t.ours;
        });
      }
    }
    try {
      this.backend.setIrqs({ action, index: m.index, start: m.start, count: m.count, eventfds, bools: m.bools && Array.from(m.bools, (b) => b !== 0) });
    } catch (err) {
      for (const t of fresh) this.stopTracing(t, false);
      return errnoOf(err);
    }
    if (action === Vfio.IRQ_SET_ACTION_TRIGGER) {
      // Vectors given other eventfds (or none), or the whole index turned off, forward no more.
      const off = (m.flags & Vfio.IRQ_SET_DATA_NONE) !== 0 && m.count === 0;
      for (const t of this.traced.values()) {
        if (t.index === m.index && (off || (withEventfds && t.vector >= m.start && t.vector < m.start + m.count))) this.stopTracing(t, true);
      }
      for (const t of fresh) this.traced.set(t.key, t);
    }
    // VFIO holds its own references; the client's eventfds stay open only where a trace forwards to them.
    if (fresh.length === 0) closeFds(fds);
    return 0;
  }

  /** A trace sees each interrupt: VFIO signals an eventfd of ours, which counts and forwards it. */
  private traceVector(index: number, vector: number, theirs: number): TracedVector {
    const ours = native.eventfd(0, constants.EFD_NONBLOCK);
    const watch = native.watch(ours, 1, true, (status, count) => {
      if (status < 0) return;
      this.trace?.write({ ev: 'irq', index, vector, count });
      try {
        native.eventfdWrite(theirs, count);
      } catch {
        // the client's eventfd is gone with the client
      }
    });
    native.watchRef(watch, false);
    return { key: index * 0x10000 + vector, index, vector, ours, theirs, watch };
  }

  /** Stop forwarding; the client's eventfd is closed only when it was ours to keep (`owned`). */
  private stopTracing(t: TracedVector, owned: boolean): void {
    native.watchStop(t.watch);
    closeFds(owned ? [t.ours, t.theirs] : [t.ours]);
    if (this.traced.get(t.key) === t) this.traced.delete(t.key);
  }

  reset(): void {
    try {
      this.backend.reset();
      this.trace?.write({ ev: 'reset' });
    } catch (err) {
      const errno = errnoOf(err);
      this.trace?.write({ ev: 'reset', error: errnoName(errno) });
      throw new ProtocolError(`reset failed: ${(err as Error).message}`, errno);
    }
  }
}
