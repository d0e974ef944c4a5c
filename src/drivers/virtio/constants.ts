/**
 * Virtio 1.x numbers the PCI transport and split and packed virtqueues need (virtio specification 1.2,
 * sections 2 and 4.1). Values only; the layouts are described where they are used.
 */

/** Device status bits (spec 2.1). */
export const STATUS_ACKNOWLEDGE = 1;
export const STATUS_DRIVER = 2;
export const STATUS_DRIVER_OK = 4;
export const STATUS_FEATURES_OK = 8;
export const STATUS_DEVICE_NEEDS_RESET = 64;
export const STATUS_FAILED = 128;

/** Feature bits every device type shares (spec 6). */
export const F_RING_INDIRECT_DESC = 28;
export const F_RING_EVENT_IDX = 29;
export const F_VERSION_1 = 32;
/** The device's DMA goes through the platform's IOMMU: without it, it would use guest-physical addresses and bypass VFIO. */
export const F_ACCESS_PLATFORM = 33;
export const F_RING_PACKED = 34;
export const F_IN_ORDER = 35;
export const F_ORDER_PLATFORM = 36;
export const F_SR_IOV = 37;
export const F_NOTIFICATION_DATA = 38;
export const F_RING_RESET = 40;

/** Vendor-specific capability cfg_type values (spec 4.1.4). */
export const CAP_COMMON = 1;
export const CAP_NOTIFY = 2;
export const CAP_ISR = 3;
export const CAP_DEVICE = 4;
export const CAP_PCI_CFG = 5;

/** Offsets in the common configuration structure (spec 4.1.4.3). */
export const COMMON_DEVICE_FEATURE_SELECT = 0x00; // le32
export const COMMON_DEVICE_FEATURE = 0x04; // le32, read-only
export const COMMON_DRIVER_FEATURE_SELECT = 0x08; // le32
export const COMMON_DRIVER_FEATURE = 0x0c; // le32
export const COMMON_MSIX_CONFIG = 0x10; // le16
export const COMMON_NUM_QUEUES = 0x12; // le16, read-only
export const COMMON_DEVICE_STATUS = 0x14; // u8
export const COMMON_CONFIG_GENERATION = 0x15; // u8, read-only
export const COMMON_QUEUE_SELECT = 0x16; // le16
export const COMMON_QUEUE_SIZE = 0x18; // le16
export const COMMON_QUEUE_MSIX_VECTOR = 0x1a; // le16
export const COMMON_QUEUE_ENABLE = 0x1c; // le16
export const COMMON_QUEUE_NOTIFY_OFF = 0x1e; // le16, read-only
export const COMMON_QUEUE_DESC = 0x20; // le64
export const COMMON_QUEUE_DRIVER = 0x28; // le64 (the available ring)
export const COMMON_QUEUE_DEVICE = 0x30; // le64 (the used ring)
/** Size of the structure before the 1.2 additions (queue_notify_data, queue_reset). */
export const COMMON_CFG_MIN_SIZE = 0x38;

/** "No MSI-X vector" for msix_config and queue_msix_vector; the device also answers it when it cannot map one. */
export const NO_VECTOR = 0xffff;

/** ISR status bits (read clears them; only used without MSI-X). */
export const ISR_QUEUE = 1;
export const ISR_CONFIG = 2;

/** Split virtqueue descriptor flags (spec 2.7.5). */
export const DESC_F_NEXT = 1;
export const DESC_F_WRITE = 2;
export const DESC_F_INDIRECT = 4;
/** avail.flags: the driver does not want interrupts for this queue. */
export const AVAIL_F_NO_INTERRUPT = 1;
/** used.flags: the device does not need notifications for this queue. */
export const USED_F_NO_NOTIFY = 1;
/** Largest split queue. */
export const MAX_QUEUE_SIZE = 32768;

/**
 * Packed virtqueue descriptor flags (spec 2.8.1): available when AVAIL matches the driver's wrap
 * counter and USED does not; used when both match the device's.
 */
export const PACKED_DESC_F_AVAIL = 1 << 7;
export const PACKED_DESC_F_USED = 1 << 15;
/** Event suppression flags of a packed virtqueue (spec 2.8.10). */
export const RING_EVENT_FLAGS_ENABLE = 0;
export const RING_EVENT_FLAGS_DISABLE = 1;
/** Only with RING_EVENT_IDX: an event at one descriptor position. */
export const RING_EVENT_FLAGS_DESC = 2;
/** Largest packed queue (2^15 entries). */
export const MAX_PACKED_QUEUE_SIZE = 32768;

/** Modern (virtio 1.x only) PCI device ids are 0x1040 + the virtio device type. */
export const VIRTIO_VENDOR_ID = 0x1af4;
export const MODERN_DEVICE_ID_BASE = 0x1040;
/** Transitional devices' ids, 0x1000..0x103f, with the device type in the subsystem id. */
export const TRANSITIONAL_ID_FIRST = 0x1000;
export const TRANSITIONAL_ID_LAST = 0x103f;

export const FEATURE_NAMES: Readonly<Record<number, string>> = {
  [F_RING_INDIRECT_DESC]: 'RING_INDIRECT_DESC',
  [F_RING_EVENT_IDX]: 'RING_EVENT_IDX',
  [F_VERSION_1]: 'VERSION_1',
  [F_ACCESS_PLATFORM]: 'ACCESS_PLATFORM',
  [F_RING_PACKED]: 'RING_PACKED',
  [F_IN_ORDER]: 'IN_ORDER',
  [F_ORDER_PLATFORM]: 'ORDER_PLATFORM',
  [F_SR_IOV]: 'SR_IOV',
  [F_NOTIFICATION_DATA]: 'NOTIFICATION_DATA',
  [F_RING_RESET]: 'RING_RESET',
};

/** A 64-bit feature set as a bigint with bit n set for feature n. */
export function hasFeature(features: bigint, bit: number): boolean {
  return ((features >> BigInt(bit)) & 1n) === 1n;
}

export function featureBit(bit: number): bigint {
  return 1n << BigInt(bit);
}

/** Names of the set bits, with a device-specific table first. */
export function featureNames(features: bigint, deviceNames: Readonly<Record<number, string>> = {}): string[] {
  const out: string[] = [];
  for (let bit = 0; bit < 64; bit++) {
    if (hasFeature(features, bit)) out.push(deviceNames[bit] ?? FEATURE_NAMES[bit] ?? `bit${bit}`);
  }
  return out;
}
