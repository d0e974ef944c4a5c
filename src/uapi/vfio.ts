/**
 * The VFIO kernel ABI (<linux/vfio.h>) in TypeScript: constants, ioctl numbers, struct layouts,
 * and little-endian encoders/decoders for the structs a type1 container/group backend exchanges.
 *
 * Conventions:
 * - Every layout lives in VFIO_STRUCTS, and the codecs read offsets from there, so the table that
 *   test/fixtures/abi/vfio-abi.c checks against the C compiler is the one the code really uses.
 * - Encoders write into a caller-provided buffer (to reuse memory) or a fresh one, zero the bytes
 *   they own, fill argsz, and return a Uint8Array over exactly those bytes.
 * - u64 fields that hold addresses, sizes or offsets decode to numbers and throw RangeError at or
 *   above 2^53; bitmaps (page-size sets) decode to bigint since their high bits are routinely set.
 * - Capability chains are decoded, never fetched: the two-step exchange (ask, learn the needed
 *   argsz, ask again) belongs to the backend; decoders report `complete: false` when it is needed.
 */
import { InvalidArgumentError, MalformedConfigError } from '../errors';
import { _IO } from './ioctl';

// ---------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------

export const VFIO_API_VERSION = 0;

/** ioctl magic (';') and the first VFIO ioctl nr. */
export const VFIO_TYPE = 0x3b;
export const VFIO_BASE = 100;

// Extensions (VFIO_CHECK_EXTENSION arguments, VFIO_SET_IOMMU types).
export const VFIO_TYPE1_IOMMU = 1;
export const VFIO_SPAPR_TCE_IOMMU = 2;
export const VFIO_TYPE1v2_IOMMU = 3;
export const VFIO_DMA_CC_IOMMU = 4;
export const VFIO_EEH = 5;
export const VFIO_TYPE1_NESTING_IOMMU = 6;
export const VFIO_SPAPR_TCE_v2_IOMMU = 7;
export const VFIO_NOIOMMU_IOMMU = 8;
export const VFIO_UNMAP_ALL = 9;
export const VFIO_UPDATE_VADDR = 10;

// ioctls. VFIO passes sizes through argsz, not the ioctl number, so all are _IO (size field 0).
export const VFIO_GET_API_VERSION = _IO(VFIO_TYPE, VFIO_BASE + 0);
export const VFIO_CHECK_EXTENSION = _IO(VFIO_TYPE, VFIO_BASE + 1);
export const VFIO_SET_IOMMU = _IO(VFIO_TYPE, VFIO_BASE + 2);
export const VFIO_GROUP_GET_STATUS = _IO(VFIO_TYPE, VFIO_BASE + 3);
export const VFIO_GROUP_SET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 4);
export const VFIO_GROUP_UNSET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 5);
export const VFIO_GROUP_GET_DEVICE_FD = _IO(VFIO_TYPE, VFIO_BASE + 6);
export const VFIO_DEVICE_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 7);
export const VFIO_DEVICE_GET_REGION_INFO = _IO(VFIO_TYPE, VFIO_BASE + 8);
export const VFIO_DEVICE_GET_IRQ_INFO = _IO(VFIO_TYPE, VFIO_BASE + 9);
export const VFIO_DEVICE_SET_IRQS = _IO(VFIO_TYPE, VFIO_BASE + 10);
export const VFIO_DEVICE_RESET = _IO(VFIO_TYPE, VFIO_BASE + 11);
export const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12);
export const VFIO_DEVICE_PCI_HOT_RESET = _IO(VFIO_TYPE, VFIO_BASE + 13);
export const VFIO_DEVICE_IOEVENTFD = _IO(VFIO_TYPE, VFIO_BASE + 16);
export const VFIO_DEVICE_FEATURE = _IO(VFIO_TYPE, VFIO_BASE + 17);
// The container ioctls reuse nrs of device ioctls; they go to a different fd.
export const VFIO_IOMMU_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12);
export const VFIO_IOMMU_MAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 13);
export const VFIO_IOMMU_UNMAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 14);

// struct vfio_group_status.flags
export const VFIO_GROUP_FLAGS_VIABLE = 1 << 0;
export const VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1;

// struct vfio_device_info.flags
export const VFIO_DEVICE_FLAGS_RESET = 1 << 0;
export const VFIO_DEVICE_FLAGS_PCI = 1 << 1;
export const VFIO_DEVICE_FLAGS_PLATFORM = 1 << 2;
export const VFIO_DEVICE_FLAGS_AMBA = 1 << 3;
export const VFIO_DEVICE_FLAGS_CCW = 1 << 4;
export const VFIO_DEVICE_FLAGS_AP = 1 << 5;
export const VFIO_DEVICE_FLAGS_FSL_MC = 1 << 6;
export const VFIO_DEVICE_FLAGS_CAPS = 1 << 7;

// struct vfio_region_info.flags
export const VFIO_REGION_INFO_FLAG_READ = 1 << 0;
export const VFIO_REGION_INFO_FLAG_WRITE = 1 << 1;
export const VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;
export const VFIO_REGION_INFO_FLAG_CAPS = 1 << 3;

// Region info capability IDs
export const VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1;
export const VFIO_REGION_INFO_CAP_TYPE = 2;
/** No payload: its presence says the MSI-X table BAR may be mmapped whole. */
export const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3;

// Region types (VFIO_REGION_INFO_CAP_TYPE), for device-specific regions at index >= 9.
export const VFIO_REGION_TYPE_PCI_VENDOR_TYPE = 0x80000000;
export const VFIO_REGION_TYPE_PCI_VENDOR_MASK = 0xffff;
export const VFIO_REGION_TYPE_GFX = 1;
export const VFIO_REGION_TYPE_CCW = 2;

// struct vfio_irq_info.flags
export const VFIO_IRQ_INFO_EVENTFD = 1 << 0;
export const VFIO_IRQ_INFO_MASKABLE = 1 << 1;
export const VFIO_IRQ_INFO_AUTOMASKED = 1 << 2;
export const VFIO_IRQ_INFO_NORESIZE = 1 << 3;

// struct vfio_irq_set.flags: exactly one DATA_* and one ACTION_* bit.
export const VFIO_IRQ_SET_DATA_NONE = 1 << 0;
export const VFIO_IRQ_SET_DATA_BOOL = 1 << 1;
export const VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2;
export const VFIO_IRQ_SET_ACTION_MASK = 1 << 3;
export const VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4;
export const VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5;
export const VFIO_IRQ_SET_DATA_TYPE_MASK = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD;
export const VFIO_IRQ_SET_ACTION_TYPE_MASK =
  VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER;

// vfio-pci region indices (fixed ABI)
export const VFIO_PCI_BAR0_REGION_INDEX = 0;
export const VFIO_PCI_BAR1_REGION_INDEX = 1;
export const VFIO_PCI_BAR2_REGION_INDEX = 2;
export const VFIO_PCI_BAR3_REGION_INDEX = 3;
export const VFIO_PCI_BAR4_REGION_INDEX = 4;
export const VFIO_PCI_BAR5_REGION_INDEX = 5;
export const VFIO_PCI_ROM_REGION_INDEX = 6;
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;
export const VFIO_PCI_VGA_REGION_INDEX = 8;
export const VFIO_PCI_NUM_REGIONS = 9;

// vfio-pci irq indices
export const VFIO_PCI_INTX_IRQ_INDEX = 0;
export const VFIO_PCI_MSI_IRQ_INDEX = 1;
export const VFIO_PCI_MSIX_IRQ_INDEX = 2;
export const VFIO_PCI_ERR_IRQ_INDEX = 3;
export const VFIO_PCI_REQ_IRQ_INDEX = 4;
export const VFIO_PCI_NUM_IRQS = 5;

// struct vfio_iommu_type1_info.flags
export const VFIO_IOMMU_INFO_PGSIZES = 1 << 0;
export const VFIO_IOMMU_INFO_CAPS = 1 << 1;

// IOMMU info capability IDs
export const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1;
export const VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2;
export const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3;

// struct vfio_iommu_type1_dma_map.flags ("READ" = the device may read the memory)
export const VFIO_DMA_MAP_FLAG_READ = 1 << 0;
export const VFIO_DMA_MAP_FLAG_WRITE = 1 << 1;
export const VFIO_DMA_MAP_FLAG_VADDR = 1 << 2;

// struct vfio_iommu_type1_dma_unmap.flags
export const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0;
export const VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1;
export const VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2;

// ---------------------------------------------------------------------------------------------
// Struct layouts
// ---------------------------------------------------------------------------------------------

export interface StructLayout<F extends string> {
  /** sizeof(struct ...), including tail padding; flexible arrays start at their own offset. */
  readonly sizeof: number;
  /** offsetof(struct ..., field) for each field the codecs touch (C field names). */
  readonly at: Readonly<Record<F, number>>;
}

function layout<F extends string>(sizeof: number, at: Record<F, number>): StructLayout<F> {
  return Object.freeze({ sizeof, at: Object.freeze(at) });
}

export const VFIO_STRUCTS = Object.freeze({
  vfio_info_cap_header: layout(8, { id: 0, version: 2, next: 4 }),
  vfio_group_status: layout(8, { argsz: 0, flags: 4 }),
  vfio_device_info: layout(20, { argsz: 0, flags: 4, num_regions: 8, num_irqs: 12, cap_offset: 16 }),
  vfio_region_info: layout(32, { argsz: 0, flags: 4, index: 8, cap_offset: 12, size: 16, offset: 24 }),
  vfio_region_sparse_mmap_area: layout(16, { offset: 0, size: 8 }),
  vfio_region_info_cap_sparse_mmap: layout(16, { header: 0, nr_areas: 8, reserved: 12, areas: 16 }),
  vfio_region_info_cap_type: layout(16, { header: 0, type: 8, subtype: 12 }),
  vfio_irq_info: layout(16, { argsz: 0, flags: 4, index: 8, count: 12 }),
  vfio_irq_set: layout(20, { argsz: 0, flags: 4, index: 8, start: 12, count: 16, data: 20 }),
  vfio_pci_dependent_device: layout(8, { group_id: 0, segment: 4, bus: 6, devfn: 7 }),
  vfio_pci_hot_reset_info: layout(12, { argsz: 0, flags: 4, count: 8, devices: 12 }),
  vfio_pci_hot_reset: layout(12, { argsz: 0, flags: 4, count: 8, group_fds: 12 }),
  // 4 bytes of tail padding after cap_offset (the u64 aligns the struct to 8).
  vfio_iommu_type1_info: layout(24, { argsz: 0, flags: 4, iova_pgsizes: 8, cap_offset: 16 }),
  vfio_iova_range: layout(16, { start: 0, end: 8 }),
  vfio_iommu_type1_info_cap_iova_range: layout(16, { header: 0, nr_iovas: 8, reserved: 12, iova_ranges: 16 }),
  vfio_iommu_type1_info_cap_migration: layout(32, {
    header: 0,
    flags: 8,
    pgsize_bitmap: 16,
    max_dirty_bitmap_size: 24,
  }),
  vfio_iommu_type1_info_dma_avail: layout(12, { header: 0, avail: 8 }),
  vfio_iommu_type1_dma_map: layout(32, { argsz: 0, flags: 4, vaddr: 8, iova: 16, size: 24 }),
  vfio_iommu_type1_dma_unmap: layout(24, { argsz: 0, flags: 4, iova: 8, size: 16, data: 24 }),
});

const CAP_HEADER = VFIO_STRUCTS.vfio_info_cap_header;
const GROUP_STATUS = VFIO_STRUCTS.vfio_group_status;
const DEVICE_INFO = VFIO_STRUCTS.vfio_device_info;
const REGION_INFO = VFIO_STRUCTS.vfio_region_info;
const SPARSE_AREA = VFIO_STRUCTS.vfio_region_sparse_mmap_area;
const CAP_SPARSE_MMAP = VFIO_STRUCTS.vfio_region_info_cap_sparse_mmap;
const CAP_TYPE = VFIO_STRUCTS.vfio_region_info_cap_type;
const IRQ_INFO = VFIO_STRUCTS.vfio_irq_info;
const IRQ_SET = VFIO_STRUCTS.vfio_irq_set;
const DEPENDENT_DEVICE = VFIO_STRUCTS.vfio_pci_dependent_device;
const HOT_RESET_INFO = VFIO_STRUCTS.vfio_pci_hot_reset_info;
const HOT_RESET = VFIO_STRUCTS.vfio_pci_hot_reset;
const IOMMU_INFO = VFIO_STRUCTS.vfio_iommu_type1_info;
const IOVA_RANGE = VFIO_STRUCTS.vfio_iova_range;
const CAP_IOVA_RANGE = VFIO_STRUCTS.vfio_iommu_type1_info_cap_iova_range;
const CAP_MIGRATION = VFIO_STRUCTS.vfio_iommu_type1_info_cap_migration;
const CAP_DMA_AVAIL = VFIO_STRUCTS.vfio_iommu_type1_info_dma_avail;
const DMA_MAP = VFIO_STRUCTS.vfio_iommu_type1_dma_map;
const DMA_UNMAP = VFIO_STRUCTS.vfio_iommu_type1_dma_unmap;

/**
 * Every ioctl number, struct size, field offset and constant the TS side relies on, keyed by its C
 * name; the ABI test compares it entry by entry with what the C compiler says.
 */
export interface VfioAbiTable {
  ioctls: Readonly<Record<string, number>>;
  sizes: Readonly<Record<string, number>>;
  offsets: Readonly<Record<string, number>>;
  constants: Readonly<Record<string, number>>;
}

function buildAbiTable(): VfioAbiTable {
  const sizes: Record<string, number> = {};
  const offsets: Record<string, number> = {};
  for (const [name, struct] of Object.entries(VFIO_STRUCTS) as [string, StructLayout<string>][]) {
    sizes[name] = struct.sizeof;
    for (const [field, offset] of Object.entries(struct.at)) offsets[`${name}.${field}`] = offset;
  }
  return Object.freeze({
    ioctls: Object.freeze({
      VFIO_GET_API_VERSION,
      VFIO_CHECK_EXTENSION,
      VFIO_SET_IOMMU,
      VFIO_GROUP_GET_STATUS,
      VFIO_GROUP_SET_CONTAINER,
      VFIO_GROUP_UNSET_CONTAINER,
      VFIO_GROUP_GET_DEVICE_FD,
      VFIO_DEVICE_GET_INFO,
      VFIO_DEVICE_GET_REGION_INFO,
      VFIO_DEVICE_GET_IRQ_INFO,
      VFIO_DEVICE_SET_IRQS,
      VFIO_DEVICE_RESET,
      VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
      VFIO_DEVICE_PCI_HOT_RESET,
      VFIO_DEVICE_IOEVENTFD,
      VFIO_DEVICE_FEATURE,
      VFIO_IOMMU_GET_INFO,
      VFIO_IOMMU_MAP_DMA,
      VFIO_IOMMU_UNMAP_DMA,
    }),
    sizes: Object.freeze(sizes),
    offsets: Object.freeze(offsets),
    constants: Object.freeze({
      VFIO_API_VERSION,
      VFIO_TYPE,
      VFIO_BASE,
      VFIO_TYPE1_IOMMU,
      VFIO_SPAPR_TCE_IOMMU,
      VFIO_TYPE1v2_IOMMU,
      VFIO_DMA_CC_IOMMU,
      VFIO_EEH,
      VFIO_TYPE1_NESTING_IOMMU,
      VFIO_SPAPR_TCE_v2_IOMMU,
      VFIO_NOIOMMU_IOMMU,
      VFIO_UNMAP_ALL,
      VFIO_UPDATE_VADDR,
      VFIO_GROUP_FLAGS_VIABLE,
      VFIO_GROUP_FLAGS_CONTAINER_SET,
      VFIO_DEVICE_FLAGS_RESET,
      VFIO_DEVICE_FLAGS_PCI,
      VFIO_DEVICE_FLAGS_PLATFORM,
      VFIO_DEVICE_FLAGS_AMBA,
      VFIO_DEVICE_FLAGS_CCW,
      VFIO_DEVICE_FLAGS_AP,
      VFIO_DEVICE_FLAGS_FSL_MC,
      VFIO_DEVICE_FLAGS_CAPS,
      VFIO_REGION_INFO_FLAG_READ,
      VFIO_REGION_INFO_FLAG_WRITE,
      VFIO_REGION_INFO_FLAG_MMAP,
      VFIO_REGION_INFO_FLAG_CAPS,
      VFIO_REGION_INFO_CAP_SPARSE_MMAP,
      VFIO_REGION_INFO_CAP_TYPE,
      VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
      VFIO_REGION_TYPE_PCI_VENDOR_TYPE,
      VFIO_REGION_TYPE_PCI_VENDOR_MASK,
      VFIO_REGION_TYPE_GFX,
      VFIO_REGION_TYPE_CCW,
      VFIO_IRQ_INFO_EVENTFD,
      VFIO_IRQ_INFO_MASKABLE,
      VFIO_IRQ_INFO_AUTOMASKED,
      VFIO_IRQ_INFO_NORESIZE,
      VFIO_IRQ_SET_DATA_NONE,
      VFIO_IRQ_SET_DATA_BOOL,
      VFIO_IRQ_SET_DATA_EVENTFD,
      VFIO_IRQ_SET_ACTION_MASK,
      VFIO_IRQ_SET_ACTION_UNMASK,
      VFIO_IRQ_SET_ACTION_TRIGGER,
      VFIO_IRQ_SET_DATA_TYPE_MASK,
      VFIO_IRQ_SET_ACTION_TYPE_MASK,
      VFIO_PCI_BAR0_REGION_INDEX,
      VFIO_PCI_BAR1_REGION_INDEX,
      VFIO_PCI_BAR2_REGION_INDEX,
      VFIO_PCI_BAR3_REGION_INDEX,
      VFIO_PCI_BAR4_REGION_INDEX,
      VFIO_PCI_BAR5_REGION_INDEX,
      VFIO_PCI_ROM_REGION_INDEX,
      VFIO_PCI_CONFIG_REGION_INDEX,
      VFIO_PCI_VGA_REGION_INDEX,
      VFIO_PCI_NUM_REGIONS,
      VFIO_PCI_INTX_IRQ_INDEX,
      VFIO_PCI_MSI_IRQ_INDEX,
      VFIO_PCI_MSIX_IRQ_INDEX,
      VFIO_PCI_ERR_IRQ_INDEX,
      VFIO_PCI_REQ_IRQ_INDEX,
      VFIO_PCI_NUM_IRQS,
      VFIO_IOMMU_INFO_PGSIZES,
      VFIO_IOMMU_INFO_CAPS,
      VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
      VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
      VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
      VFIO_DMA_MAP_FLAG_READ,
      VFIO_DMA_MAP_FLAG_WRITE,
      VFIO_DMA_MAP_FLAG_VADDR,
      VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
      VFIO_DMA_UNMAP_FLAG_ALL,
      VFIO_DMA_UNMAP_FLAG_VADDR,
    }),
  });
}

export const VFIO_ABI: VfioAbiTable = buildAbiTable();

// ---------------------------------------------------------------------------------------------
// Buffer helpers
// ---------------------------------------------------------------------------------------------

/** Anything the native ioctl wrapper can hand back: an ArrayBuffer or a view (Buffer included). */
export type AbiBuffer = ArrayBufferLike | ArrayBufferView;

const TWO_POW_32 = 2 ** 32;
/** Highest value of the high word of a u64 that still leaves the whole value below 2^53. */
const SAFE_HIGH_WORD_LIMIT = 2 ** (53 - 32);

function viewOf(buf: AbiBuffer): DataView {
  return ArrayBuffer.isView(buf) ? new DataView(buf.buffer, buf.byteOffset, buf.byteLength) : new DataView(buf);
}

/** Zeroed bytes for an encoder: the first `length` bytes of `target`, or a new buffer. */
function claim(length: number, target: AbiBuffer | undefined, what: string): { bytes: Uint8Array; view: DataView } {
  let bytes: Uint8Array;
  if (target === undefined) {
    bytes = new Uint8Array(length);
  } else {
    const available = target.byteLength;
    if (available < length) {
      throw new InvalidArgumentError(`${what} needs ${length} bytes, the target buffer has ${available}`);
    }
    bytes = ArrayBuffer.isView(target)
      ? new Uint8Array(target.buffer, target.byteOffset, length)
      : new Uint8Array(target, 0, length);
    bytes.fill(0);
  }
  return { bytes, view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength) };
}

function requireBytes(view: DataView, length: number, what: string): void {
  if (view.byteLength < length) {
    throw new MalformedConfigError(`${what} is truncated: ${view.byteLength} bytes, needs at least ${length}`);
  }
}

function checkU32(value: number, what: string): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new InvalidArgumentError(`${what} must be a u32, got ${value}`);
  }
  return value;
}

function writeU32(view: DataView, offset: number, value: number, what: string): void {
  view.setUint32(offset, checkU32(value, what), true);
}

function writeU64(view: DataView, offset: number, value: number | bigint, what: string): void {
  if (typeof value === 'bigint') {
    if (value < 0n || value > 0xffff_ffff_ffff_ffffn) throw new InvalidArgumentError(`${what} must be a u64, got ${value}`);
    view.setBigUint64(offset, value, true);
    return;
  }
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new InvalidArgumentError(`${what} must be a non-negative safe integer, got ${value}`);
  }
  // Two u32 writes avoid a BigInt allocation per call (DMA map/unmap can be frequent).
  view.setUint32(offset, value % TWO_POW_32, true);
  view.setUint32(offset + 4, Math.floor(value / TWO_POW_32), true);
}

/** Decode a u64 as a number; values of 2^53 and above would lose bits, so they are refused. */
function readU64(view: DataView, offset: number, what: string): number {
  const low = view.getUint32(offset, true);
  const high = view.getUint32(offset + 4, true);
  if (high >= SAFE_HIGH_WORD_LIMIT) {
    throw new RangeError(`${what} is 0x${view.getBigUint64(offset, true).toString(16)}, not representable below 2^53`);
  }
  return high * TWO_POW_32 + low;
}

function alignUp8(value: number): number {
  return Math.ceil(value / 8) * 8;
}

// ---------------------------------------------------------------------------------------------
// Capability chains
// ---------------------------------------------------------------------------------------------

/** One struct vfio_info_cap_header; `offset` is where it sits, from the start of the info struct. */
export interface VfioCapabilityHeader {
  id: number;
  version: number;
  offset: number;
  next: number;
}

/**
 * Walk a capability chain starting at `firstOffset` (0 = no capabilities). Offsets, `next`
 * included, count from the start of the info struct, which is the start of `buf`. Every header
 * must lie within [minOffset, limit): a header overlapping the fixed struct, a pointer past the
 * end, or a chain that revisits an offset is malformed.
 */
export function walkCapabilityChain(
  buf: AbiBuffer,
  firstOffset: number,
  options: { minOffset?: number; limit?: number } = {},
): VfioCapabilityHeader[] {
  const view = viewOf(buf);
  const limit = Math.min(options.limit ?? view.byteLength, view.byteLength);
  const minOffset = options.minOffset ?? 0;
  const headers: VfioCapabilityHeader[] = [];
  const visited = new Set<number>();
  let offset = firstOffset;
  let from = 'cap_offset';
  while (offset !== 0) {
    if (offset < minOffset || offset + CAP_HEADER.sizeof > limit) {
      throw new MalformedConfigError(
        `capability chain: ${from} points to ${offset}, outside the capability area [${minOffset}, ${limit})`,
      );
    }
    if (visited.has(offset)) {
      throw new MalformedConfigError(`capability chain: loop, ${from} points back to offset ${offset}`);
    }
    visited.add(offset);
    const header: VfioCapabilityHeader = {
      id: view.getUint16(offset + CAP_HEADER.at.id, true),
      version: view.getUint16(offset + CAP_HEADER.at.version, true),
      offset,
      next: view.getUint32(offset + CAP_HEADER.at.next, true),
    };
    headers.push(header);
    from = `next of capability ${header.id} at offset ${offset}`;
    offset = header.next;
  }
  return headers;
}

/** A capability to append after an info struct: its header is written by the chain encoder. */
interface CapabilityWriter {
  id: number;
  version: number;
  /** Total size including the 8-byte header. */
  size: number;
  writeBody(view: DataView, offset: number): void;
}

/** Size of the fixed struct plus its capabilities, each placed at an 8-byte boundary as the kernel does. */
function chainEnd(start: number, caps: readonly CapabilityWriter[]): number {
  let end = start;
  for (const cap of caps) end = alignUp8(end) + cap.size;
  return end;
}

function writeCapabilityChain(view: DataView, start: number, caps: readonly CapabilityWriter[]): void {
  const offsets: number[] = [];
  let end = start;
  for (const cap of caps) {
    offsets.push(alignUp8(end));
    end = alignUp8(end) + cap.size;
  }
  caps.forEach((cap, i) => {
    const offset = offsets[i]!;
    view.setUint16(offset + CAP_HEADER.at.id, cap.id, true);
    view.setUint16(offset + CAP_HEADER.at.version, cap.version, true);
    view.setUint32(offset + CAP_HEADER.at.next, offsets[i + 1] ?? 0, true);
    cap.writeBody(view, offset);
  });
}

/**
 * Whether an info reply carries its capabilities. The kernel answers a too-small argsz by setting
 * argsz to the size it needs and cap_offset to 0 (keeping the CAPS flag); the caller then asks again.
 */
function capabilitiesComplete(view: DataView, argsz: number, flags: number, capsFlag: number, capOffset: number): boolean {
  if ((flags & capsFlag) === 0) return true;
  return capOffset !== 0 && argsz <= view.byteLength;
}

function requireCapBody(cap: VfioCapabilityHeader, size: number, limit: number, what: string): void {
  if (cap.offset + size > limit) {
    throw new MalformedConfigError(`${what} capability at offset ${cap.offset} needs ${size} bytes, runs past ${limit}`);
  }
}

// ---------------------------------------------------------------------------------------------
// struct vfio_group_status
// ---------------------------------------------------------------------------------------------

export interface VfioGroupStatus {
  argsz: number;
  flags: number;
  /** All devices in the group are bound to vfio (or nothing): the group may be used. */
  viable: boolean;
  containerSet: boolean;
}

/** With no arguments: the VFIO_GROUP_GET_STATUS request. */
export function encodeGroupStatus(fields: { argsz?: number; flags?: number } = {}, target?: AbiBuffer): Uint8Array {
  const { bytes, view } = claim(GROUP_STATUS.sizeof, target, 'vfio_group_status');
  writeU32(view, GROUP_STATUS.at.argsz, fields.argsz ?? GROUP_STATUS.sizeof, 'argsz');
  writeU32(view, GROUP_STATUS.at.flags, fields.flags ?? 0, 'flags');
  return bytes;
}

export function decodeGroupStatus(buf: AbiBuffer): VfioGroupStatus {
  const view = viewOf(buf);
  requireBytes(view, GROUP_STATUS.sizeof, 'vfio_group_status');
  const flags = view.getUint32(GROUP_STATUS.at.flags, true);
  return {
    argsz: view.getUint32(GROUP_STATUS.at.argsz, true),
    flags,
    viable: (flags & VFIO_GROUP_FLAGS_VIABLE) !== 0,
    containerSet: (flags & VFIO_GROUP_FLAGS_CONTAINER_SET) !== 0,
  };
}

// ---------------------------------------------------------------------------------------------
// struct vfio_device_info
// ---------------------------------------------------------------------------------------------

export interface VfioDeviceInfoFields {
  /** Defaults to sizeof; pass more to leave room for capabilities (the buffer grows to match). */
  argsz?: number;
  flags?: number;
  numRegions?: number;
  numIrqs?: number;
  capOffset?: number;
}

export interface VfioDeviceInfo {
  argsz: number;
  flags: number;
  numRegions: number;
  numIrqs: number;
  capOffset: number;
  /** False when the capabilities did not fit: ask again with argsz = this.argsz. */
  complete: boolean;
  /** Raw headers (device capabilities are bus specific, e.g. zPCI); decode bodies with the offsets. */
  capabilities: VfioCapabilityHeader[];
}

/** With no arguments: the VFIO_DEVICE_GET_INFO request. */
export function encodeDeviceInfo(fields: VfioDeviceInfoFields = {}, target?: AbiBuffer): Uint8Array {
  const argsz = checkU32(fields.argsz ?? DEVICE_INFO.sizeof, 'argsz');
  const { bytes, view } = claim(Math.max(argsz, DEVICE_INFO.sizeof), target, 'vfio_device_info');
  writeU32(view, DEVICE_INFO.at.argsz, argsz, 'argsz');
  writeU32(view, DEVICE_INFO.at.flags, fields.flags ?? 0, 'flags');
  writeU32(view, DEVICE_INFO.at.num_regions, fields.numRegions ?? 0, 'num_regions');
  writeU32(view, DEVICE_INFO.at.num_irqs, fields.numIrqs ?? 0, 'num_irqs');
  writeU32(view, DEVICE_INFO.at.cap_offset, fields.capOffset ?? 0, 'cap_offset');
  return bytes;
}

export function decodeDeviceInfo(buf: AbiBuffer): VfioDeviceInfo {
  const view = viewOf(buf);
  requireBytes(view, DEVICE_INFO.sizeof, 'vfio_device_info');
  const argsz = view.getUint32(DEVICE_INFO.at.argsz, true);
  const flags = view.getUint32(DEVICE_INFO.at.flags, true);
  const capOffset = view.getUint32(DEVICE_INFO.at.cap_offset, true);
  const complete = capabilitiesComplete(view, argsz, flags, VFIO_DEVICE_FLAGS_CAPS, capOffset);
  const capabilities =
    complete && (flags & VFIO_DEVICE_FLAGS_CAPS) !== 0
      ? walkCapabilityChain(view, capOffset, { minOffset: DEVICE_INFO.sizeof, limit: argsz })
      : [];
  return {
    argsz,
    flags,
    numRegions: view.getUint32(DEVICE_INFO.at.num_regions, true),
    numIrqs: view.getUint32(DEVICE_INFO.at.num_irqs, true),
    capOffset,
    complete,
    capabilities,
  };
}

// ---------------------------------------------------------------------------------------------
// struct vfio_region_info and its capabilities
// ---------------------------------------------------------------------------------------------

/** A part of a region that may be mmapped; offset is relative to the region's start. */
export interface VfioSparseMmapArea {
  offset: number;
  size: number;
}

export interface VfioRegionType {
  type: number;
  subtype: number;
}

export interface VfioRegionInfoFields {
  /** Defaults to what the fields and capabilities need; pass more to leave room for the reply. */
  argsz?: number;
  flags?: number;
  index: number;
  /** Ignored when capabilities are given: they are placed right after the struct. */
  capOffset?: number;
  size?: number;
  offset?: number;
  sparseMmapAreas?: readonly VfioSparseMmapArea[];
  regionType?: VfioRegionType;
  msixMappable?: boolean;
}

export interface VfioRegionInfo {
  argsz: number;
  flags: number;
  index: number;
  capOffset: number;
  size: number;
  /** Offset of the region within the device fd, for pread/pwrite/mmap. */
  offset: number;
  /** False when the capabilities did not fit: ask again with argsz = this.argsz. */
  complete: boolean;
  capabilities: VfioCapabilityHeader[];
  /** Present when the region is mmappable only in these parts (e.g. around an MSI-X table). */
  sparseMmapAreas: VfioSparseMmapArea[] | undefined;
  regionType: VfioRegionType | undefined;
  msixMappable: boolean;
}

function regionCapabilityWriters(fields: VfioRegionInfoFields): CapabilityWriter[] {
  const caps: CapabilityWriter[] = [];
  const areas = fields.sparseMmapAreas;
  if (areas !== undefined) {
    caps.push({
      id: VFIO_REGION_INFO_CAP_SPARSE_MMAP,
      version: 1,
      size: CAP_SPARSE_MMAP.sizeof + areas.length * SPARSE_AREA.sizeof,
      writeBody(view, at) {
        view.setUint32(at + CAP_SPARSE_MMAP.at.nr_areas, areas.length, true);
        areas.forEach((area, i) => {
          const areaAt = at + CAP_SPARSE_MMAP.at.areas + i * SPARSE_AREA.sizeof;
          writeU64(view, areaAt + SPARSE_AREA.at.offset, area.offset, `sparse mmap area ${i} offset`);
          writeU64(view, areaAt + SPARSE_AREA.at.size, area.size, `sparse mmap area ${i} size`);
        });
      },
    });
  }
  const regionType = fields.regionType;
  if (regionType !== undefined) {
    caps.push({
      id: VFIO_REGION_INFO_CAP_TYPE,
      version: 1,
      size: CAP_TYPE.sizeof,
      writeBody(view, at) {
        writeU32(view, at + CAP_TYPE.at.type, regionType.type, 'region type');
        writeU32(view, at + CAP_TYPE.at.subtype, regionType.subtype, 'region subtype');
      },
    });
  }
  if (fields.msixMappable === true) {
    caps.push({ id: VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, version: 1, size: CAP_HEADER.sizeof, writeBody() {} });
  }
  return caps;
}

/**
 * Request: `encodeRegionInfo({ index })`, or `{ index, argsz: 256 }` to leave room for
 * capabilities. Reply (a vfio-user server, tests): all fields, capabilities included.
 */
export function encodeRegionInfo(fields: VfioRegionInfoFields, target?: AbiBuffer): Uint8Array {
  const caps = regionCapabilityWriters(fields);
  const natural = chainEnd(REGION_INFO.sizeof, caps);
  const argsz = checkU32(fields.argsz ?? natural, 'argsz');
  const { bytes, view } = claim(Math.max(argsz, natural), target, 'vfio_region_info');
  const capsFlag = caps.length > 0 ? VFIO_REGION_INFO_FLAG_CAPS : 0;
  writeU32(view, REGION_INFO.at.argsz, argsz, 'argsz');
  writeU32(view, REGION_INFO.at.flags, ((fields.flags ?? 0) | capsFlag) >>> 0, 'flags');
  writeU32(view, REGION_INFO.at.index, fields.index, 'index');
  writeU32(view, REGION_INFO.at.cap_offset, caps.length > 0 ? alignUp8(REGION_INFO.sizeof) : (fields.capOffset ?? 0), 'cap_offset');
  writeU64(view, REGION_INFO.at.size, fields.size ?? 0, 'size');
  writeU64(view, REGION_INFO.at.offset, fields.offset ?? 0, 'offset');
  writeCapabilityChain(view, REGION_INFO.sizeof, caps);
  return bytes;
}

export function decodeRegionInfo(buf: AbiBuffer): VfioRegionInfo {
  const view = viewOf(buf);
  requireBytes(view, REGION_INFO.sizeof, 'vfio_region_info');
  const argsz = view.getUint32(REGION_INFO.at.argsz, true);
  const flags = view.getUint32(REGION_INFO.at.flags, true);
  const capOffset = view.getUint32(REGION_INFO.at.cap_offset, true);
  const complete = capabilitiesComplete(view, argsz, flags, VFIO_REGION_INFO_FLAG_CAPS, capOffset);
  const info: VfioRegionInfo = {
    argsz,
    flags,
    index: view.getUint32(REGION_INFO.at.index, true),
    capOffset,
    size: readU64(view, REGION_INFO.at.size, 'region size'),
    offset: readU64(view, REGION_INFO.at.offset, 'region offset'),
    complete,
    capabilities: [],
    sparseMmapAreas: undefined,
    regionType: undefined,
    msixMappable: false,
  };
  if (!complete || (flags & VFIO_REGION_INFO_FLAG_CAPS) === 0) return info;

  const limit = Math.min(argsz, view.byteLength);
  info.capabilities = walkCapabilityChain(view, capOffset, { minOffset: REGION_INFO.sizeof, limit });
  for (const cap of info.capabilities) {
    switch (cap.id) {
      case VFIO_REGION_INFO_CAP_SPARSE_MMAP: {
        requireCapBody(cap, CAP_SPARSE_MMAP.sizeof, limit, 'sparse mmap');
        const count = view.getUint32(cap.offset + CAP_SPARSE_MMAP.at.nr_areas, true);
        requireCapBody(cap, CAP_SPARSE_MMAP.sizeof + count * SPARSE_AREA.sizeof, limit, `sparse mmap (${count} areas)`);
        const areas: VfioSparseMmapArea[] = [];
        for (let i = 0; i < count; i++) {
          const areaAt = cap.offset + CAP_SPARSE_MMAP.at.areas + i * SPARSE_AREA.sizeof;
          areas.push({
            offset: readU64(view, areaAt + SPARSE_AREA.at.offset, `sparse mmap area ${i} offset`),
            size: readU64(view, areaAt + SPARSE_AREA.at.size, `sparse mmap area ${i} size`),
          });
        }
        info.sparseMmapAreas = areas;
        break;
      }
      case VFIO_REGION_INFO_CAP_TYPE:
        requireCapBody(cap, CAP_TYPE.sizeof, limit, 'region type');
        info.regionType = {
          type: view.getUint32(cap.offset + CAP_TYPE.at.type, true),
          subtype: view.getUint32(cap.offset + CAP_TYPE.at.subtype, true),
        };
        break;
      case VFIO_REGION_INFO_CAP_MSIX_MAPPABLE:
        info.msixMappable = true;
        break;
      default:
        // Unknown capabilities stay available as raw headers.
        break;
    }
  }
  return info;
}

// ---------------------------------------------------------------------------------------------
// struct vfio_irq_info
// ---------------------------------------------------------------------------------------------

export interface VfioIrqInfo {
  argsz: number;
  flags: number;
  index: number;
  count: number;
}

/** Request: `encodeIrqInfo({ index })`. */
export function encodeIrqInfo(
  fields: { argsz?: number; flags?: number; index: number; count?: number },
  target?: AbiBuffer,
): Uint8Array {
  const { bytes, view } = claim(IRQ_INFO.sizeof, target, 'vfio_irq_info');
  writeU32(view, IRQ_INFO.at.argsz, fields.argsz ?? IRQ_INFO.sizeof, 'argsz');
  writeU32(view, IRQ_INFO.at.flags, fields.flags ?? 0, 'flags');
  writeU32(view, IRQ_INFO.at.index, fields.index, 'index');
  writeU32(view, IRQ_INFO.at.count, fields.count ?? 0, 'count');
  return bytes;
}

export function decodeIrqInfo(buf: AbiBuffer): VfioIrqInfo {
  const view = viewOf(buf);
  requireBytes(view, IRQ_INFO.sizeof, 'vfio_irq_info');
  return {
    argsz: view.getUint32(IRQ_INFO.at.argsz, true),
    flags: view.getUint32(IRQ_INFO.at.flags, true),
    index: view.getUint32(IRQ_INFO.at.index, true),
    count: view.getUint32(IRQ_INFO.at.count, true),
  };
}

// ---------------------------------------------------------------------------------------------
// struct vfio_irq_set
// ---------------------------------------------------------------------------------------------

export interface VfioIrqSetFields {
  /** One of VFIO_IRQ_SET_ACTION_MASK / _UNMASK / _TRIGGER; the DATA_* bit follows from the payload. */
  action: number;
  index: number;
  start?: number;
  /** Defaults to the payload length; with no payload (DATA_NONE) it defaults to 0. */
  count?: number;
  /** DATA_EVENTFD payload: one fd per vector from `start`; -1 detaches that vector. */
  eventfds?: readonly number[];
  /** DATA_BOOL payload: one u8 per vector from `start`. */
  bools?: readonly boolean[];
}

export interface VfioIrqSet {
  argsz: number;
  flags: number;
  index: number;
  start: number;
  count: number;
  /** flags & VFIO_IRQ_SET_ACTION_TYPE_MASK */
  action: number;
  /** flags & VFIO_IRQ_SET_DATA_TYPE_MASK */
  dataType: number;
  eventfds: number[] | undefined;
  bools: boolean[] | undefined;
}

function isSingleBit(value: number, mask: number): boolean {
  const bits = value & mask;
  return value === bits && bits !== 0 && (bits & (bits - 1)) === 0;
}

export function encodeIrqSet(fields: VfioIrqSetFields, target?: AbiBuffer): Uint8Array {
  if (!isSingleBit(fields.action, VFIO_IRQ_SET_ACTION_TYPE_MASK)) {
    throw new InvalidArgumentError(`irq set action must be exactly one VFIO_IRQ_SET_ACTION_* bit, got 0x${fields.action.toString(16)}`);
  }
  if (fields.eventfds !== undefined && fields.bools !== undefined) {
    throw new InvalidArgumentError('irq set takes eventfds or bools, not both');
  }
  let dataType = VFIO_IRQ_SET_DATA_NONE;
  let payloadLength = 0;
  let elementSize = 0;
  if (fields.eventfds !== undefined) {
    dataType = VFIO_IRQ_SET_DATA_EVENTFD;
    payloadLength = fields.eventfds.length;
    elementSize = 4;
  } else if (fields.bools !== undefined) {
    dataType = VFIO_IRQ_SET_DATA_BOOL;
    payloadLength = fields.bools.length;
    elementSize = 1;
  }
  const count = checkU32(fields.count ?? payloadLength, 'count');
  if (dataType !== VFIO_IRQ_SET_DATA_NONE && count !== payloadLength) {
    throw new InvalidArgumentError(`irq set count ${count} does not match its ${payloadLength} payload entries`);
  }
  const argsz = IRQ_SET.sizeof + payloadLength * elementSize;
  const { bytes, view } = claim(argsz, target, 'vfio_irq_set');
  writeU32(view, IRQ_SET.at.argsz, argsz, 'argsz');
  writeU32(view, IRQ_SET.at.flags, dataType | fields.action, 'flags');
  writeU32(view, IRQ_SET.at.index, fields.index, 'index');
  writeU32(view, IRQ_SET.at.start, fields.start ?? 0, 'start');
  writeU32(view, IRQ_SET.at.count, count, 'count');
  fields.eventfds?.forEach((fd, i) => {
    if (!Number.isInteger(fd) || fd < -1 || fd > 0x7fffffff) {
      throw new InvalidArgumentError(`eventfd ${i} must be a file descriptor or -1, got ${fd}`);
    }
    view.setInt32(IRQ_SET.at.data + i * 4, fd, true);
  });
  fields.bools?.forEach((value, i) => view.setUint8(IRQ_SET.at.data + i, value ? 1 : 0));
  return bytes;
}

/** Attach eventfds to vectors start.. of an irq index (-1 = leave that vector without one). */
export function encodeIrqSetEventfds(index: number, eventfds: readonly number[], start = 0, target?: AbiBuffer): Uint8Array {
  return encodeIrqSet({ action: VFIO_IRQ_SET_ACTION_TRIGGER, index, start, eventfds }, target);
}

/** Turn an irq index off entirely (DATA_NONE | ACTION_TRIGGER with count 0). */
export function encodeIrqDisable(index: number, target?: AbiBuffer): Uint8Array {
  return encodeIrqSet({ action: VFIO_IRQ_SET_ACTION_TRIGGER, index, start: 0, count: 0 }, target);
}

export function decodeIrqSet(buf: AbiBuffer): VfioIrqSet {
  const view = viewOf(buf);
  requireBytes(view, IRQ_SET.sizeof, 'vfio_irq_set');
  const argsz = view.getUint32(IRQ_SET.at.argsz, true);
  const flags = view.getUint32(IRQ_SET.at.flags, true);
  const count = view.getUint32(IRQ_SET.at.count, true);
  const dataType = flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
  const action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
  if (!isSingleBit(dataType, VFIO_IRQ_SET_DATA_TYPE_MASK) || !isSingleBit(action, VFIO_IRQ_SET_ACTION_TYPE_MASK)) {
    throw new MalformedConfigError(`vfio_irq_set flags 0x${flags.toString(16)} need one DATA_* and one ACTION_* bit`);
  }
  const set: VfioIrqSet = {
    argsz,
    flags,
    index: view.getUint32(IRQ_SET.at.index, true),
    start: view.getUint32(IRQ_SET.at.start, true),
    count,
    action,
    dataType,
    eventfds: undefined,
    bools: undefined,
  };
  const elementSize = dataType === VFIO_IRQ_SET_DATA_EVENTFD ? 4 : dataType === VFIO_IRQ_SET_DATA_BOOL ? 1 : 0;
  if (elementSize === 0) return set;
  const needed = IRQ_SET.sizeof + count * elementSize;
  if (argsz < needed || view.byteLength < needed) {
    throw new MalformedConfigError(
      `vfio_irq_set payload of ${count} entries needs ${needed} bytes; argsz is ${argsz}, buffer ${view.byteLength}`,
    );
  }
  if (elementSize === 4) {
    set.eventfds = Array.from({ length: count }, (_, i) => view.getInt32(IRQ_SET.at.data + i * 4, true));
  } else {
    set.bools = Array.from({ length: count }, (_, i) => view.getUint8(IRQ_SET.at.data + i) !== 0);
  }
  return set;
}

// ---------------------------------------------------------------------------------------------
// struct vfio_pci_hot_reset_info / vfio_pci_hot_reset
// ---------------------------------------------------------------------------------------------

/** A device that a hot reset would also reset (same slot or bus). */
export interface VfioPciDependentDevice {
  groupId: number;
  segment: number;
  bus: number;
  devfn: number;
}

export interface VfioPciHotResetInfo {
  argsz: number;
  flags: number;
  /** Number of affected devices; set by the kernel even when argsz was too small (ENOSPC). */
  count: number;
  /** False when `devices` did not fit: ask again with room for `count` devices. */
  complete: boolean;
  devices: VfioPciDependentDevice[];
}

/** Room for `count` dependent devices: the argsz a hot-reset-info request needs. */
export function hotResetInfoArgsz(count: number): number {
  return HOT_RESET_INFO.sizeof + count * DEPENDENT_DEVICE.sizeof;
}

/** Request: `encodeHotResetInfo({ argsz: hotResetInfoArgsz(n) })`; reply: with `devices`. */
export function encodeHotResetInfo(
  fields: { argsz?: number; flags?: number; count?: number; devices?: readonly VfioPciDependentDevice[] } = {},
  target?: AbiBuffer,
): Uint8Array {
  const devices = fields.devices ?? [];
  const natural = hotResetInfoArgsz(devices.length);
  const argsz = checkU32(fields.argsz ?? natural, 'argsz');
  const { bytes, view } = claim(Math.max(argsz, natural), target, 'vfio_pci_hot_reset_info');
  writeU32(view, HOT_RESET_INFO.at.argsz, argsz, 'argsz');
  writeU32(view, HOT_RESET_INFO.at.flags, fields.flags ?? 0, 'flags');
  writeU32(view, HOT_RESET_INFO.at.count, fields.count ?? devices.length, 'count');
  devices.forEach((device, i) => {
    const at = HOT_RESET_INFO.at.devices + i * DEPENDENT_DEVICE.sizeof;
    writeU32(view, at + DEPENDENT_DEVICE.at.group_id, device.groupId, 'group_id');
    view.setUint16(at + DEPENDENT_DEVICE.at.segment, device.segment, true);
    view.setUint8(at + DEPENDENT_DEVICE.at.bus, device.bus);
    view.setUint8(at + DEPENDENT_DEVICE.at.devfn, device.devfn);
  });
  return bytes;
}

export function decodeHotResetInfo(buf: AbiBuffer): VfioPciHotResetInfo {
  const view = viewOf(buf);
  requireBytes(view, HOT_RESET_INFO.sizeof, 'vfio_pci_hot_reset_info');
  const argsz = view.getUint32(HOT_RESET_INFO.at.argsz, true);
  const count = view.getUint32(HOT_RESET_INFO.at.count, true);
  const complete = hotResetInfoArgsz(count) <= Math.min(argsz, view.byteLength);
  const devices: VfioPciDependentDevice[] = [];
  if (complete) {
    for (let i = 0; i < count; i++) {
      const at = HOT_RESET_INFO.at.devices + i * DEPENDENT_DEVICE.sizeof;
      devices.push({
        groupId: view.getUint32(at + DEPENDENT_DEVICE.at.group_id, true),
        segment: view.getUint16(at + DEPENDENT_DEVICE.at.segment, true),
        bus: view.getUint8(at + DEPENDENT_DEVICE.at.bus),
        devfn: view.getUint8(at + DEPENDENT_DEVICE.at.devfn),
      });
    }
  }
  return { argsz, flags: view.getUint32(HOT_RESET_INFO.at.flags, true), count, complete, devices };
}

/** VFIO_DEVICE_PCI_HOT_RESET argument: the group fds that prove ownership of every affected device. */
export function encodePciHotReset(groupFds: readonly number[], target?: AbiBuffer): Uint8Array {
  const argsz = HOT_RESET.sizeof + groupFds.length * 4;
  const { bytes, view } = claim(argsz, target, 'vfio_pci_hot_reset');
  writeU32(view, HOT_RESET.at.argsz, argsz, 'argsz');
  writeU32(view, HOT_RESET.at.count, groupFds.length, 'count');
  groupFds.forEach((fd, i) => {
    if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) throw new InvalidArgumentError(`group fd ${i} is invalid: ${fd}`);
    view.setInt32(HOT_RESET.at.group_fds + i * 4, fd, true);
  });
  return bytes;
}

export function decodePciHotReset(buf: AbiBuffer): { argsz: number; flags: number; groupFds: number[] } {
  const view = viewOf(buf);
  requireBytes(view, HOT_RESET.sizeof, 'vfio_pci_hot_reset');
  const argsz = view.getUint32(HOT_RESET.at.argsz, true);
  const count = view.getUint32(HOT_RESET.at.count, true);
  const needed = HOT_RESET.sizeof + count * 4;
  if (argsz < needed || view.byteLength < needed) {
    throw new MalformedConfigError(`vfio_pci_hot_reset with ${count} fds needs ${needed} bytes; argsz is ${argsz}, buffer ${view.byteLength}`);
  }
  return {
    argsz,
    flags: view.getUint32(HOT_RESET.at.flags, true),
    groupFds: Array.from({ length: count }, (_, i) => view.getInt32(HOT_RESET.at.group_fds + i * 4, true)),
  };
}

// ---------------------------------------------------------------------------------------------
// struct vfio_iommu_type1_info and its capabilities
// ---------------------------------------------------------------------------------------------

/** An inclusive IOVA range as numbers, clamped to what a JS number holds exactly. */
export interface VfioIovaRange {
  start: number;
  /** Inclusive. */
  end: number;
}

/** An inclusive IOVA range exactly as the kernel reported it. */
export interface VfioIovaRangeRaw {
  start: bigint;
  end: bigint;
}

export interface VfioIommuMigrationCap {
  flags: number;
  pgsizeBitmap: bigint;
  maxDirtyBitmapSize: number;
}

export interface VfioIommuInfoFields {
  /** Defaults to what the fields and capabilities need; pass more to leave room for the reply. */
  argsz?: number;
  flags?: number;
  iovaPgsizes?: bigint;
  /** Ignored when capabilities are given. */
  capOffset?: number;
  iovaRanges?: readonly { start: number | bigint; end: number | bigint }[];
  migration?: VfioIommuMigrationCap;
  dmaAvailable?: number;
}

export interface VfioIommuInfo {
  argsz: number;
  flags: number;
  /** Bitmap of supported IOMMU page sizes (bit n set = 2^n bytes); high bits are usually set. */
  iovaPgsizes: bigint;
  /** Smallest supported page size in bytes, the granule of every map; 0 if not reported. */
  minPageSize: number;
  capOffset: number;
  /** False when the capabilities did not fit: ask again with argsz = this.argsz. */
  complete: boolean;
  capabilities: VfioCapabilityHeader[];
  /**
   * Usable IOVA ranges as numbers: ends above 2^53-1 are clamped to Number.MAX_SAFE_INTEGER and
   * ranges starting there are dropped, since IOVAs are numbers in this project. Undefined when the
   * kernel did not report ranges (no restriction known).
   */
  iovaRanges: VfioIovaRange[] | undefined;
  /** The same ranges, unclamped. */
  iovaRangesRaw: VfioIovaRangeRaw[] | undefined;
  migration: VfioIommuMigrationCap | undefined;
  /** How many more DMA mappings the container accepts (the kernel's dma_entry_limit). */
  dmaAvailable: number | undefined;
}

function iommuCapabilityWriters(fields: VfioIommuInfoFields): CapabilityWriter[] {
  const caps: CapabilityWriter[] = [];
  const ranges = fields.iovaRanges;
  if (ranges !== undefined) {
    caps.push({
      id: VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
      version: 1,
      size: CAP_IOVA_RANGE.sizeof + ranges.length * IOVA_RANGE.sizeof,
      writeBody(view, at) {
        view.setUint32(at + CAP_IOVA_RANGE.at.nr_iovas, ranges.length, true);
        ranges.forEach((range, i) => {
          const rangeAt = at + CAP_IOVA_RANGE.at.iova_ranges + i * IOVA_RANGE.sizeof;
          writeU64(view, rangeAt + IOVA_RANGE.at.start, range.start, `iova range ${i} start`);
          writeU64(view, rangeAt + IOVA_RANGE.at.end, range.end, `iova range ${i} end`);
        });
      },
    });
  }
  const migration = fields.migration;
  if (migration !== undefined) {
    caps.push({
      id: VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
      version: 1,
      size: CAP_MIGRATION.sizeof,
      writeBody(view, at) {
        writeU32(view, at + CAP_MIGRATION.at.flags, migration.flags, 'migration flags');
        writeU64(view, at + CAP_MIGRATION.at.pgsize_bitmap, migration.pgsizeBitmap, 'pgsize_bitmap');
        writeU64(view, at + CAP_MIGRATION.at.max_dirty_bitmap_size, migration.maxDirtyBitmapSize, 'max_dirty_bitmap_size');
      },
    });
  }
  const dmaAvailable = fields.dmaAvailable;
  if (dmaAvailable !== undefined) {
    caps.push({
      id: VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
      version: 1,
      size: CAP_DMA_AVAIL.sizeof,
      writeBody(view, at) {
        writeU32(view, at + CAP_DMA_AVAIL.at.avail, dmaAvailable, 'dma avail');
      },
    });
  }
  return caps;
}

/** Request: `encodeIommuInfo()`, or `{ argsz: 4096 }` to leave room for capabilities. */
export function encodeIommuInfo(fields: VfioIommuInfoFields = {}, target?: AbiBuffer): Uint8Array {
  const caps = iommuCapabilityWriters(fields);
  const natural = chainEnd(IOMMU_INFO.sizeof, caps);
  const argsz = checkU32(fields.argsz ?? natural, 'argsz');
  const { bytes, view } = claim(Math.max(argsz, natural), target, 'vfio_iommu_type1_info');
  const capsFlag = caps.length > 0 ? VFIO_IOMMU_INFO_CAPS : 0;
  writeU32(view, IOMMU_INFO.at.argsz, argsz, 'argsz');
  writeU32(view, IOMMU_INFO.at.flags, ((fields.flags ?? 0) | capsFlag) >>> 0, 'flags');
  writeU64(view, IOMMU_INFO.at.iova_pgsizes, fields.iovaPgsizes ?? 0n, 'iova_pgsizes');
  writeU32(view, IOMMU_INFO.at.cap_offset, caps.length > 0 ? alignUp8(IOMMU_INFO.sizeof) : (fields.capOffset ?? 0), 'cap_offset');
  writeCapabilityChain(view, IOMMU_INFO.sizeof, caps);
  return bytes;
}

const MAX_SAFE_BIG = BigInt(Number.MAX_SAFE_INTEGER);

export function decodeIommuInfo(buf: AbiBuffer): VfioIommuInfo {
  const view = viewOf(buf);
  requireBytes(view, IOMMU_INFO.sizeof, 'vfio_iommu_type1_info');
  const argsz = view.getUint32(IOMMU_INFO.at.argsz, true);
  const flags = view.getUint32(IOMMU_INFO.at.flags, true);
  const capOffset = view.getUint32(IOMMU_INFO.at.cap_offset, true);
  const iovaPgsizes = view.getBigUint64(IOMMU_INFO.at.iova_pgsizes, true);
  const complete = capabilitiesComplete(view, argsz, flags, VFIO_IOMMU_INFO_CAPS, capOffset);
  const info: VfioIommuInfo = {
    argsz,
    flags,
    iovaPgsizes,
    // x & -x isolates the lowest set bit.
    minPageSize: (flags & VFIO_IOMMU_INFO_PGSIZES) !== 0 ? Number(iovaPgsizes & -iovaPgsizes) : 0,
    capOffset,
    complete,
    capabilities: [],
    iovaRanges: undefined,
    iovaRangesRaw: undefined,
    migration: undefined,
    dmaAvailable: undefined,
  };
  if (!complete || (flags & VFIO_IOMMU_INFO_CAPS) === 0) return info;

  const limit = Math.min(argsz, view.byteLength);
  info.capabilities = walkCapabilityChain(view, capOffset, { minOffset: IOMMU_INFO.sizeof, limit });
  for (const cap of info.capabilities) {
    switch (cap.id) {
      case VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: {
        requireCapBody(cap, CAP_IOVA_RANGE.sizeof, limit, 'iova range');
        const count = view.getUint32(cap.offset + CAP_IOVA_RANGE.at.nr_iovas, true);
        requireCapBody(cap, CAP_IOVA_RANGE.sizeof + count * IOVA_RANGE.sizeof, limit, `iova range (${count} ranges)`);
        const raw: VfioIovaRangeRaw[] = [];
        for (let i = 0; i < count; i++) {
          const rangeAt = cap.offset + CAP_IOVA_RANGE.at.iova_ranges + i * IOVA_RANGE.sizeof;
          raw.push({
            start: view.getBigUint64(rangeAt + IOVA_RANGE.at.start, true),
            end: view.getBigUint64(rangeAt + IOVA_RANGE.at.end, true),
          });
        }
        info.iovaRangesRaw = raw;
        info.iovaRanges = raw
          .filter((range) => range.start <= MAX_SAFE_BIG && range.start <= range.end)
          .map((range) => ({ start: Number(range.start), end: Number(range.end < MAX_SAFE_BIG ? range.end : MAX_SAFE_BIG) }));
        break;
      }
      case VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION:
        requireCapBody(cap, CAP_MIGRATION.sizeof, limit, 'migration');
        info.migration = {
          flags: view.getUint32(cap.offset + CAP_MIGRATION.at.flags, true),
          pgsizeBitmap: view.getBigUint64(cap.offset + CAP_MIGRATION.at.pgsize_bitmap, true),
          maxDirtyBitmapSize: readU64(view, cap.offset + CAP_MIGRATION.at.max_dirty_bitmap_size, 'max_dirty_bitmap_size'),
        };
        break;
      case VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
        requireCapBody(cap, CAP_DMA_AVAIL.sizeof, limit, 'dma avail');
        info.dmaAvailable = view.getUint32(cap.offset + CAP_DMA_AVAIL.at.avail, true);
        break;
      default:
        break;
    }
  }
  return info;
}

// ---------------------------------------------------------------------------------------------
// struct vfio_iommu_type1_dma_map / vfio_iommu_type1_dma_unmap
// ---------------------------------------------------------------------------------------------

export interface VfioDmaMap {
  /** VFIO_DMA_MAP_FLAG_READ/WRITE: what the device may do with the memory. */
  flags: number;
  /** Process virtual address of the memory. */
  vaddr: number;
  iova: number;
  size: number;
}

export function encodeDmaMap(map: VfioDmaMap & { argsz?: number }, target?: AbiBuffer): Uint8Array {
  const { bytes, view } = claim(DMA_MAP.sizeof, target, 'vfio_iommu_type1_dma_map');
  writeU32(view, DMA_MAP.at.argsz, map.argsz ?? DMA_MAP.sizeof, 'argsz');
  writeU32(view, DMA_MAP.at.flags, map.flags, 'flags');
  writeU64(view, DMA_MAP.at.vaddr, map.vaddr, 'vaddr');
  writeU64(view, DMA_MAP.at.iova, map.iova, 'iova');
  writeU64(view, DMA_MAP.at.size, map.size, 'size');
  return bytes;
}

export function decodeDmaMap(buf: AbiBuffer): VfioDmaMap & { argsz: number } {
  const view = viewOf(buf);
  requireBytes(view, DMA_MAP.sizeof, 'vfio_iommu_type1_dma_map');
  return {
    argsz: view.getUint32(DMA_MAP.at.argsz, true),
    flags: view.getUint32(DMA_MAP.at.flags, true),
    vaddr: readU64(view, DMA_MAP.at.vaddr, 'vaddr'),
    iova: readU64(view, DMA_MAP.at.iova, 'iova'),
    size: readU64(view, DMA_MAP.at.size, 'size'),
  };
}

export interface VfioDmaUnmap {
  flags?: number;
  iova: number;
  /** On return the kernel stores here how many bytes it actually unmapped. */
  size: number;
}

export function encodeDmaUnmap(unmap: VfioDmaUnmap & { argsz?: number }, target?: AbiBuffer): Uint8Array {
  const { bytes, view } = claim(DMA_UNMAP.sizeof, target, 'vfio_iommu_type1_dma_unmap');
  writeU32(view, DMA_UNMAP.at.argsz, unmap.argsz ?? DMA_UNMAP.sizeof, 'argsz');
  writeU32(view, DMA_UNMAP.at.flags, unmap.flags ?? 0, 'flags');
  writeU64(view, DMA_UNMAP.at.iova, unmap.iova, 'iova');
  writeU64(view, DMA_UNMAP.at.size, unmap.size, 'size');
  return bytes;
}

export function decodeDmaUnmap(buf: AbiBuffer): Required<VfioDmaUnmap> & { argsz: number } {
  const view = viewOf(buf);
  requireBytes(view, DMA_UNMAP.sizeof, 'vfio_iommu_type1_dma_unmap');
  return {
    argsz: view.getUint32(DMA_UNMAP.at.argsz, true),
    flags: view.getUint32(DMA_UNMAP.at.flags, true),
    iova: readU64(view, DMA_UNMAP.at.iova, 'iova'),
    size: readU64(view, DMA_UNMAP.at.size, 'size'),
  };
}
