/** virtio-net numbers (virtio specification 1.2, section 5.1). */

/** Device type in the virtio device-id space (PCI id 0x1041 modern, 0x1000 transitional). */
export const VIRTIO_NET_DEVICE_TYPE = 1;

// Feature bits.
export const NET_F_CSUM = 0; // the device takes packets with a partial checksum (NEEDS_CSUM)
export const NET_F_GUEST_CSUM = 1; // the device may hand us packets with partial or validated checksums
export const NET_F_CTRL_GUEST_OFFLOADS = 2;
export const NET_F_MTU = 3;
export const NET_F_MAC = 5;
export const NET_F_GUEST_TSO4 = 7;
export const NET_F_GUEST_TSO6 = 8;
export const NET_F_GUEST_ECN = 9;
export const NET_F_GUEST_UFO = 10;
export const NET_F_HOST_TSO4 = 11;
export const NET_F_HOST_TSO6 = 12;
export const NET_F_HOST_ECN = 13;
export const NET_F_HOST_UFO = 14;
export const NET_F_MRG_RXBUF = 15;
export const NET_F_STATUS = 16;
export const NET_F_CTRL_VQ = 17;
export const NET_F_CTRL_RX = 18;
export const NET_F_CTRL_VLAN = 19;
export const NET_F_GUEST_ANNOUNCE = 21;
export const NET_F_MQ = 22;
export const NET_F_CTRL_MAC_ADDR = 23;
export const NET_F_SPEED_DUPLEX = 63;

export const NET_FEATURE_NAMES: Readonly<Record<number, string>> = {
  [NET_F_CSUM]: 'CSUM', [NET_F_GUEST_CSUM]: 'GUEST_CSUM', [NET_F_CTRL_GUEST_OFFLOADS]: 'CTRL_GUEST_OFFLOADS',
  [NET_F_MTU]: 'MTU', [NET_F_MAC]: 'MAC', [NET_F_GUEST_TSO4]: 'GUEST_TSO4', [NET_F_GUEST_TSO6]: 'GUEST_TSO6',
  [NET_F_GUEST_ECN]: 'GUEST_ECN', [NET_F_GUEST_UFO]: 'GUEST_UFO', [NET_F_HOST_TSO4]: 'HOST_TSO4',
  [NET_F_HOST_TSO6]: 'HOST_TSO6', [NET_F_HOST_ECN]: 'HOST_ECN', [NET_F_HOST_UFO]: 'HOST_UFO',
  [NET_F_MRG_RXBUF]: 'MRG_RXBUF', [NET_F_STATUS]: 'STATUS', [NET_F_CTRL_VQ]: 'CTRL_VQ', [NET_F_CTRL_RX]: 'CTRL_RX',
  [NET_F_CTRL_VLAN]: 'CTRL_VLAN', [NET_F_GUEST_ANNOUNCE]: 'GUEST_ANNOUNCE', [NET_F_MQ]: 'MQ',
  [NET_F_CTRL_MAC_ADDR]: 'CTRL_MAC_ADDR', [NET_F_SPEED_DUPLEX]: 'SPEED_DUPLEX',
};

// Device configuration layout.
export const CFG_MAC = 0; // u8[6]
export const CFG_STATUS = 6; // le16, with NET_F_STATUS
export const CFG_MAX_VIRTQUEUE_PAIRS = 8; // le16, with NET_F_MQ
export const CFG_MTU = 10; // le16, with NET_F_MTU
export const STATUS_LINK_UP = 1;
export const STATUS_ANNOUNCE = 2;

/**
 * The header in front of every packet, both directions. With VERSION_1 it is always 12 bytes
 * (num_buffers is present whether or not MRG_RXBUF was negotiated).
 *   u8 flags, u8 gso_type, le16 hdr_len, le16 gso_size, le16 csum_start, le16 csum_offset, le16 num_buffers
 */
export const NET_HDR_SIZE = 12;
export const HDR_FLAGS = 0;
export const HDR_CSUM_START = 6;
export const HDR_CSUM_OFFSET = 8;
export const HDR_NUM_BUFFERS = 10;
/** The checksum from csum_start on is not yet computed; store it at csum_start + csum_offset. */
export const HDR_F_NEEDS_CSUM = 1;
/** (receive) The device checked the checksum already. */
export const HDR_F_DATA_VALID = 2;

// Control virtqueue.
export const CTRL_CLASS_MQ = 4;
export const CTRL_MQ_VQ_PAIRS_SET = 0;
export const CTRL_OK = 0;

/** An Ethernet header, and the largest frame a 1500-byte MTU allows (without FCS). */
export const ETH_HEADER = 14;
export const DEFAULT_MTU = 1500;
