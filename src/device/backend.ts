/**
 * The one interface both backends implement: kernel VFIO (a PCI address) and vfio-user (a socket).
 * It mirrors VFIO's own model (regions, DMA map/unmap, irq indices with eventfds, reset) so that
 * the device facade above it, and every driver above that, cannot tell which one it runs on.
 */

export interface BackendDeviceInfo {
  numRegions: number;
  numIrqs: number;
  /** VFIO_DEVICE_FLAGS_* (RESET, PCI, ...). */
  flags: number;
  canReset: boolean;
}

export interface SparseArea {
  offset: number;
  size: number;
}

export interface BackendRegionInfo {
  index: number;
  size: number;
  readable: boolean;
  writable: boolean;
  /** True when (part of) the region can be mapped into the process. */
  mappable: boolean;
  /**
   * The parts that may be mapped, relative to the region start. Undefined with `mappable` means
   * the whole region; an empty list means nothing can be (every access goes through messages).
   */
  sparseAreas: SparseArea[] | undefined;
}

export interface BackendIrqInfo {
  index: number;
  count: number;
  /** VFIO_IRQ_INFO_* flags: EVENTFD, MASKABLE, AUTOMASKED, NORESIZE. */
  flags: number;
}

export interface BackendDmaMapRequest {
  /** Page-aligned IOVA of the mapping. */
  iova: number;
  /** Page-aligned length. */
  size: number;
  /** Page-aligned process virtual address of the memory (what VFIO_IOMMU_MAP_DMA takes). */
  vaddr: number;
  /**
   * The bytes the caller owns inside [vaddr, vaddr+size): a streaming map of a JS buffer covers
   * whole pages, but only these bytes are the caller's. `memoryIova` is the IOVA of memory[0].
   * vfio-user serves DMA_READ/DMA_WRITE for memory without fd from this view, and only from it.
   */
  memory: Uint8Array;
  memoryIova: number;
  /** When the memory is a mapping of a shareable file (memfd), its fd and offset: vfio-user passes these to the server. */
  fd?: number;
  fdOffset?: number;
  /** Device may read (to-device). */
  deviceReads: boolean;
  /** Device may write (from-device). */
  deviceWrites: boolean;
}

export interface IommuAperture {
  /**
   * Identity of the IOVA space: devices whose backends return the same object share one IOMMU
   * domain (a VFIO container) and so must share one IOVA allocator.
   */
  domain: object;
  /** Usable IOVA ranges, inclusive ends; reserved windows (x86 MSI) are already excluded. */
  ranges: { start: number; end: number }[];
  /** Smallest mapping granule (bytes). */
  pageSize: number;
}

export interface Backend {
  readonly kind: 'vfio' | 'vfio-user';
  /** A human-readable name: the PCI address or the socket path. */
  readonly name: string;
  /**
   * True when dmaMap pins the process's pages itself and charges them to RLIMIT_MEMLOCK (kernel
   * VFIO): DMA memory is then not mlocked as well, and pages of a read-only ('to-device') map
   * are faulted in writable before the pin. False or absent when the peer reaches memory by fd or by messages (vfio-user).
   */
  readonly pinsDmaMemory?: boolean;
  /**
   * Whether dmaMap reaches any memory of the process (kernel VFIO pins it; a vfio-user server
   * reaches memory without an fd by DMA_READ/DMA_WRITE), or only memory with an fd: a vfio-user
   * server whose device is real (`userpci proxy`) refuses the rest with ENOTSUP.
   */
  mapsAnyMemory(): boolean;
  deviceInfo(): BackendDeviceInfo;
  regionInfo(index: number): BackendRegionInfo;
  /** mmap [offset, offset+size) of a region; the ArrayBuffer is released with unmapRegion. */
  mapRegion(index: number, offset: number, size: number): ArrayBuffer;
  unmapRegion(buffer: ArrayBuffer): void;
  /** Slow path: access through the kernel or messages. Returns bytes transferred. */
  regionRead(index: number, offset: number, into: Uint8Array): number;
  regionWrite(index: number, offset: number, from: Uint8Array): number;
  iommuAperture(): IommuAperture;
  dmaMap(request: BackendDmaMapRequest): void;
  dmaUnmap(iova: number, size: number): void;
  irqInfo(index: number): BackendIrqInfo;
  /** Route vectors [start, start+fds.length) of an irq index to eventfds (-1 = none); fds=[] with count 0 disables the index. */
  setIrqEventfds(index: number, start: number, fds: number[]): void;
  /** Disable every vector of an index. */
  disableIrqs(index: number): void;
  /** Unmask (INTx after the driver acknowledged the device). */
  unmaskIrq(index: number, vector: number): void;
  /**
   * CPUs the host kernel takes this vector's interrupt on (kernel VFIO: its IRQ's effective
   * affinity), where a handler thread is best woken; undefined when unknown (vfio-user).
   */
  irqCpus?(index: number, vector: number): number[] | undefined;
  reset(): void;
  close(): void;
  /**
   * Register the one listener told when the backend loses its device by itself (a vfio-user
   * server that died or broke the protocol). The facade then releases the device as for a
   * hot-unplug. Kernel VFIO has no such path (its request notifier does that job).
   */
  onLost?(listener: (reason: Error) => void): void;
}

/** What a Region needs of its backend (a queue thread maps a BAR with no whole Backend behind it). */
export type RegionBackend = Pick<Backend, 'mapRegion' | 'unmapRegion' | 'regionRead' | 'regionWrite'>;
