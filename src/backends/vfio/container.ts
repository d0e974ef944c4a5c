/**
 * The process's VFIO container: one IOMMU domain (type1v2) shared by every device the process
 * opens, as VFIO intends. Groups join it; the first group sets the IOMMU model; when the last
 * group leaves, the container closes and the kernel drops whatever mappings remain.
 */
import * as fs from 'node:fs';
import { native, constants } from '../../native/index';
import { UserpciError, wrapSystemError } from '../../errors';
import * as V from '../../uapi/vfio';

const VFIO_DEV = '/dev/vfio/vfio';

export class VfioContainer {
  private static current: VfioContainer | undefined;
  readonly fd: number;
  private readonly groups = new Map<number, { fd: number; users: number }>();
  private iommuSet = false;
  private ranges: { start: number; end: number }[] = [];
  private pageSize = constants.PAGE_SIZE;
  // Reused ioctl argument buffers: map/unmap sit on the streaming-DMA path.
  private readonly mapArg = new Uint8Array(V.VFIO_STRUCTS.vfio_iommu_type1_dma_map.sizeof);
  private readonly unmapArg = new Uint8Array(V.VFIO_STRUCTS.vfio_iommu_type1_dma_unmap.sizeof);

  /** The shared container, opened on first use. */
  static get(): VfioContainer {
    if (!VfioContainer.current) VfioContainer.current = new VfioContainer();
    return VfioContainer.current;
  }

  private constructor() {
    if (!fs.existsSync(VFIO_DEV)) {
      throw new UserpciError('ENODEV', `${VFIO_DEV} is missing: load VFIO (\`modprobe vfio-pci\`; kernel options CONFIG_VFIO, CONFIG_VFIO_PCI, CONFIG_VFIO_IOMMU_TYPE1)`);
    }
    try {
      this.fd = native.open(VFIO_DEV, constants.O_RDWR);
    } catch (err) {
      throw wrapSystemError(err, `opening ${VFIO_DEV}`, { EACCES: 'VFIO needs root or access to /dev/vfio' });
    }
    const version = native.ioctl(this.fd, V.VFIO_GET_API_VERSION);
    if (version !== V.VFIO_API_VERSION) {
      native.close(this.fd);
      throw new UserpciError('EIO', `unsupported VFIO API version ${version}`);
    }
    if (native.ioctl(this.fd, V.VFIO_CHECK_EXTENSION, V.VFIO_TYPE1v2_IOMMU) !== 1) {
      native.close(this.fd);
      throw new UserpciError('ENODEV', 'the kernel offers no type1v2 IOMMU: load vfio_iommu_type1 and enable the IOMMU (intel_iommu=on or amd_iommu=on)');
    }
  }

  /** Open a group (or take another reference) and attach it to this container. */
  attachGroup(group: number): number {
    const known = this.groups.get(group);
    if (known) {
      known.users++;
      return known.fd;
    }
    const path = `/dev/vfio/${group}`;
    let fd: number;
    try {
      fd = native.open(path, constants.O_RDWR);
    } catch (err) {
      throw wrapSystemError(err, `opening VFIO group ${group}`, {
        EBUSY: 'another process holds this IOMMU group',
        ENOENT: `${path} does not exist: is the device bound to vfio-pci? (userpci bind)`,
        EACCES: 'VFIO needs root or access to /dev/vfio',
      });
    }
    try {
      const status = V.decodeGroupStatus(this.ioctlBuffer(fd, V.VFIO_GROUP_GET_STATUS, V.encodeGroupStatus()));
      if (!status.viable) {
        throw new UserpciError('EBUSY', `IOMMU group ${group} is not viable: every device in it must be bound to vfio-pci (or to no driver)`);
      }
      native.ioctl(fd, V.VFIO_GROUP_SET_CONTAINER, new Int32Array([this.fd]));
      if (!this.iommuSet) {
        native.ioctl(this.fd, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU);
        this.iommuSet = true;
        this.readIommuInfo();
      }
    } catch (err) {
      native.close(fd);
      this.closeIfUnused();
      throw wrapSystemError(err, `attaching VFIO group ${group}`);
    }
    this.groups.set(group, { fd, users: 1 });
    return fd;
  }

  detachGroup(group: number): void {
    const known = this.groups.get(group);
    if (!known) return;
    if (--known.users > 0) return;
    this.groups.delete(group);
    try {
      native.ioctl(known.fd, V.VFIO_GROUP_UNSET_CONTAINER);
    } catch {
      // Closing the fd detaches it as well.
    }
    native.close(known.fd);
    this.closeIfUnused();
  }

  aperture(): { ranges: { start: number; end: number }[]; pageSize: number } {
    return { ranges: this.ranges, pageSize: this.pageSize };
  }

  mapDma(iova: number, size: number, vaddr: number, deviceReads: boolean, deviceWrites: boolean): void {
    const flags = (deviceReads ? V.VFIO_DMA_MAP_FLAG_READ : 0) | (deviceWrites ? V.VFIO_DMA_MAP_FLAG_WRITE : 0);
    V.encodeDmaMap({ flags, vaddr, iova, size }, this.mapArg);
    native.ioctl(this.fd, V.VFIO_IOMMU_MAP_DMA, this.mapArg);
  }

  unmapDma(iova: number, size: number): void {
    V.encodeDmaUnmap({ iova, size }, this.unmapArg);
    native.ioctl(this.fd, V.VFIO_IOMMU_UNMAP_DMA, this.unmapArg);
  }

  private readIommuInfo(): void {
    let info = V.decodeIommuInfo(this.ioctlBuffer(this.fd, V.VFIO_IOMMU_GET_INFO, V.encodeIommuInfo({ argsz: 256 })));
    if (!info.complete) info = V.decodeIommuInfo(this.ioctlBuffer(this.fd, V.VFIO_IOMMU_GET_INFO, V.encodeIommuInfo({ argsz: info.argsz })));
    if (info.minPageSize > 0) this.pageSize = info.minPageSize;
    // Without the IOVA-range capability nothing is known to be reserved; keep below 2^48, where
    // every x86-64 IOMMU can translate, and out of the x86 MSI window as the kernel would.
    this.ranges = info.iovaRanges ?? [
      { start: 0, end: 0xfedfffff },
      { start: 0xfef00000, end: 2 ** 48 - 1 },
    ];
  }

  private ioctlBuffer(fd: number, request: number, arg: Uint8Array): Uint8Array {
    native.ioctl(fd, request, arg);
    return arg;
  }

  private closeIfUnused(): void {
    if (this.groups.size > 0) return;
    native.close(this.fd);
    if (VfioContainer.current === this) VfioContainer.current = undefined;
  }
}
