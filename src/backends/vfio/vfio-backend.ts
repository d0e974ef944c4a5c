/**
 * Backend over the kernel's VFIO: a device fd obtained through its IOMMU group, in the shared
 * type1v2 container. Region access is mmap where VFIO allows it and pread/pwrite at the
 * region's offset in the device fd elsewhere; DMA maps go to the container; interrupts are
 * eventfds handed to VFIO_DEVICE_SET_IRQS.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native, constants } from '../../native/index';
import { InvalidArgumentError, UserpciError, wrapSystemError } from '../../errors';
import { formatPciAddress, parsePciAddress } from '../../pci/address';
import { kernelIrqCpus } from '../../irq/irq-affinity';
import { boundDriver, groupBlockers, iommuGroupOf, VFIO_DRIVER } from '../../pci/bind';
import * as V from '../../uapi/vfio';
import type { Backend, BackendDeviceInfo, BackendDmaMapRequest, BackendIrqInfo, BackendRegionInfo, IommuAperture } from '../../device/backend';
import { VfioContainer } from './container';

/** Devices this process has open: VFIO lets a process open a device twice; we refuse, clearly. */
const openDevices = new Set<string>();

export class VfioBackend implements Backend {
  readonly kind = 'vfio' as const;
  /** VFIO_IOMMU_MAP_DMA pins the pages and charges them to RLIMIT_MEMLOCK. */
  readonly pinsDmaMemory = true;
  private readonly regionCache = new Map<number, V.VfioRegionInfo>();
  private readonly mappings = new Set<ArrayBuffer>();
  private closed = false;

  private constructor(
    readonly name: string,
    private readonly group: number,
    private readonly container: VfioContainer,
    private readonly fd: number,
    private readonly info: V.VfioDeviceInfo,
  ) {}

  static open(addressText: string, sysfsRoot = '/sys'): VfioBackend {
    const address = formatPciAddress(parsePciAddress(addressText));
    const sysDir = path.join(sysfsRoot, 'bus/pci/devices', address);
    if (!fs.existsSync(sysDir)) throw new UserpciError('ENOENT', `no PCI device at ${address}`);
    const group = iommuGroupOf(address, { sysfsRoot });
    if (group === undefined) {
      throw new UserpciError('ENODEV', `${address} has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on on the kernel command line) and load vfio-pci`);
    }
    const driver = boundDriver(address, { sysfsRoot });
    if (driver !== VFIO_DRIVER) {
      const owner = driver ? `is bound to the ${driver} driver` : 'is bound to no driver';
      throw new UserpciError('EBUSY', `${address} ${owner}; bind it to vfio-pci first (\`userpci bind ${address}\`)`);
    }
    const blockers = groupBlockers(address, { sysfsRoot });
    if (blockers.length > 0) {
      throw new UserpciError('EBUSY', `IOMMU group ${group} of ${address} also holds ${blockers.map((b) => `${b.address} (${b.driver})`).join(', ')}`);
    }
    if (openDevices.has(address)) throw new UserpciError('EBUSY', `${address} is already open in this process`);
    const container = VfioContainer.get();
    const groupFd = container.attachGroup(group);
    let fd: number;
    try {
      fd = native.ioctl(groupFd, V.VFIO_GROUP_GET_DEVICE_FD, address);
    } catch (err) {
      container.detachGroup(group);
      throw wrapSystemError(err, `opening ${address} through VFIO`, { EBUSY: 'the device is in use by another process' });
    }
    try {
      const infoArg = V.encodeDeviceInfo({ argsz: 256 });
      native.ioctl(fd, V.VFIO_DEVICE_GET_INFO, infoArg);
      const info = V.decodeDeviceInfo(infoArg);
      if ((info.flags & V.VFIO_DEVICE_FLAGS_PCI) === 0) throw new UserpciError('ENODEV', `${address} is not a VFIO PCI device`);
      openDevices.add(address);
      return new VfioBackend(address, group, container, fd, info);
    } catch (err) {
      native.close(fd);
      container.detachGroup(group);
      throw wrapSystemError(err, `querying ${address}`);
    }
  }

  /** The VFIO device fd (the proxy passes it to its client, which mmaps BARs from it). */
  get deviceFd(): number {
    return this.fd;
  }

  /** A region's raw VFIO description: its offset in the device fd, flags, sparse areas. */
  regionLayout(index: number): { offset: number; size: number; flags: number; sparseAreas: { offset: number; size: number }[] | undefined } {
    const r = this.rawRegionInfo(index);
    return { offset: r.offset, size: r.size, flags: r.flags, sparseAreas: r.sparseMmapAreas };
  }

  /** VFIO_IOMMU_MAP_DMA takes any virtual address of the process. */
  mapsAnyMemory(): boolean {
    return true;
  }

  deviceInfo(): BackendDeviceInfo {
    return {
      numRegions: this.info.numRegions,
      numIrqs: this.info.numIrqs,
      flags: this.info.flags,
      canReset: (this.info.flags & V.VFIO_DEVICE_FLAGS_RESET) !== 0,
    };
  }

  regionInfo(index: number): BackendRegionInfo {
    const r = this.rawRegionInfo(index);
    return {
      index,
      size: r.size,
      readable: (r.flags & V.VFIO_REGION_INFO_FLAG_READ) !== 0,
      writable: (r.flags & V.VFIO_REGION_INFO_FLAG_WRITE) !== 0,
      mappable: (r.flags & V.VFIO_REGION_INFO_FLAG_MMAP) !== 0,
      sparseAreas: r.sparseMmapAreas,
    };
  }

  mapRegion(index: number, offset: number, size: number): ArrayBuffer {
    const r = this.rawRegionInfo(index);
    if (offset < 0 || offset + size > r.size) throw new InvalidArgumentError(`mapping 0x${size.toString(16)} bytes at 0x${offset.toString(16)} exceeds region ${index}`);
    const prot = ((r.flags & V.VFIO_REGION_INFO_FLAG_READ) ? constants.PROT_READ : 0) | ((r.flags & V.VFIO_REGION_INFO_FLAG_WRITE) ? constants.PROT_WRITE : 0);
    try {
      const buffer = native.mmap(size, prot, constants.MAP_SHARED, this.fd, r.offset + offset);
      this.mappings.add(buffer);
      return buffer;
    } catch (err) {
      throw wrapSystemError(err, `mapping region ${index} of ${this.name}`);
    }
  }

  unmapRegion(buffer: ArrayBuffer): void {
    if (!this.mappings.delete(buffer)) return;
    native.munmap(buffer);
  }

  regionRead(index: number, offset: number, into: Uint8Array): number {
    const r = this.rawRegionInfo(index);
    try {
      return native.pread(this.fd, into, r.offset + offset);
    } catch (err) {
      throw wrapSystemError(err, `reading region ${index} of ${this.name} at 0x${offset.toString(16)}`);
    }
  }

  regionWrite(index: number, offset: number, from: Uint8Array): number {
    const r = this.rawRegionInfo(index);
    try {
      return native.pwrite(this.fd, from, r.offset + offset);
    } catch (err) {
      throw wrapSystemError(err, `writing region ${index} of ${this.name} at 0x${offset.toString(16)}`);
    }
  }

  iommuAperture(): IommuAperture {
    return { domain: this.container, ...this.container.aperture() };
  }

  dmaMap(request: BackendDmaMapRequest): void {
    this.container.mapDma(request.iova, request.size, request.vaddr, request.deviceReads, request.deviceWrites);
  }

  dmaUnmap(iova: number, size: number): void {
    try {
      this.container.unmapDma(iova, size);
    } catch (err) {
      throw wrapSystemError(err, `unmapping IOVA 0x${iova.toString(16)}`);
    }
  }

  irqInfo(index: number): BackendIrqInfo {
    const arg = V.encodeIrqInfo({ index });
    try {
      native.ioctl(this.fd, V.VFIO_DEVICE_GET_IRQ_INFO, arg);
    } catch (err) {
      throw wrapSystemError(err, `querying interrupt index ${index} of ${this.name}`);
    }
    const info = V.decodeIrqInfo(arg);
    return { index, count: info.count, flags: info.flags };
  }

  setIrqEventfds(index: number, start: number, fds: number[]): void {
    this.ioctlSetIrqs(V.encodeIrqSetEventfds(index, fds, start), `routing interrupt index ${index}`);
  }

  disableIrqs(index: number): void {
    this.ioctlSetIrqs(V.encodeIrqDisable(index), `disabling interrupt index ${index}`);
  }

  unmaskIrq(index: number, vector: number): void {
    this.ioctlSetIrqs(V.encodeIrqSet({ action: V.VFIO_IRQ_SET_ACTION_UNMASK, index, start: vector, count: 1 }), `unmasking interrupt ${index}.${vector}`);
  }

  /** Any VFIO_DEVICE_SET_IRQS (the proxy passes its client's requests through as they come). */
  setIrqs(fields: V.VfioIrqSetFields): void {
    this.ioctlSetIrqs(V.encodeIrqSet(fields), `setting interrupts ${fields.index}.${fields.start ?? 0}`);
  }

  /** vfio-pci names its IRQs vfio-intx(ADDR), vfio-msi[N](ADDR) and vfio-msix[N](ADDR). */
  irqCpus(index: number, vector: number): number[] | undefined {
    const kind = index === 0 ? 'intx' : index === 1 ? 'msi' : index === 2 ? 'msix' : undefined;
    if (kind === undefined) return undefined;
    return kernelIrqCpus(kind === 'intx' ? `vfio-intx(${this.name})` : `vfio-${kind}[${vector}](${this.name})`);
  }

  reset(): void {
    native.ioctl(this.fd, V.VFIO_DEVICE_RESET);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const m of this.mappings) native.munmap(m);
    this.mappings.clear();
    native.close(this.fd);
    openDevices.delete(this.name);
    this.container.detachGroup(this.group);
  }

  private ioctlSetIrqs(arg: Uint8Array, doing: string): void {
    try {
      native.ioctl(this.fd, V.VFIO_DEVICE_SET_IRQS, arg);
    } catch (err) {
      throw wrapSystemError(err, `${doing} of ${this.name}`);
    }
  }

  private rawRegionInfo(index: number): V.VfioRegionInfo {
    let r = this.regionCache.get(index);
    if (r) return r;
    if (!Number.isInteger(index) || index < 0 || index >= this.info.numRegions) {
      throw new InvalidArgumentError(`${this.name} has regions 0..${this.info.numRegions - 1}, not ${index}`);
    }
    try {
      let arg = V.encodeRegionInfo({ index, argsz: 256 });
      native.ioctl(this.fd, V.VFIO_DEVICE_GET_REGION_INFO, arg);
      r = V.decodeRegionInfo(arg);
      if (!r.complete) {
        // The capabilities did not fit: the kernel told us how much room they need.
        arg = V.encodeRegionInfo({ index, argsz: r.argsz });
        native.ioctl(this.fd, V.VFIO_DEVICE_GET_REGION_INFO, arg);
        r = V.decodeRegionInfo(arg);
      }
    } catch (err) {
      throw wrapSystemError(err, `querying region ${index} of ${this.name}`);
    }
    this.regionCache.set(index, r);
    return r;
  }
}
