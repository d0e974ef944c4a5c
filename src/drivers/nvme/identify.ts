/**
 * Decoders for the 4096-byte Identify data structures (controller, namespace, active namespace
 * list). Multi-byte fields are little endian; 64-bit counts are combined from two 32-bit halves
 * into a number (exact below 2^53, which any real namespace is).
 */
import { ONCS_DATASET_MANAGEMENT, ONCS_WRITE_ZEROES } from './registers';

export const IDENTIFY_SIZE = 4096;

export interface ControllerIdentity {
  vendorId: number;
  subsystemVendorId: number;
  serial: string;
  model: string;
  firmware: string;
  /** Maximum Data Transfer Size as the controller reports it: 2^mdts minimum pages; 0 = no limit. */
  mdts: number;
  controllerId: number;
  /** The version the controller claims (VER field), e.g. "1.4.0"; empty when not reported. */
  version: string;
  /** Required / maximum submission and completion queue entry sizes, as powers of two. */
  sqesMin: number;
  sqesMax: number;
  cqesMin: number;
  cqesMax: number;
  /** Commands the controller can have outstanding in all its queues (0 = not reported). */
  maxCommands: number;
  /** Number of namespaces (the highest valid namespace id). */
  namespaceCount: number;
  /** Optional NVM Command Support bits. */
  oncs: number;
  supportsDatasetManagement: boolean;
  supportsWriteZeroes: boolean;
  /** A volatile write cache is present: Flush matters. */
  volatileWriteCache: boolean;
}

export interface LbaFormat {
  index: number;
  /** Logical block size in bytes. */
  blockSize: number;
  /** Metadata bytes per block. */
  metadataSize: number;
  /** Relative performance, 0 best .. 3 degraded. */
  relativePerformance: number;
}

export interface NamespaceIdentity {
  nsid: number;
  /** Namespace size in logical blocks. */
  blocks: number;
  capacityBlocks: number;
  utilizationBlocks: number;
  /** Every format the namespace offers. */
  lbaFormats: LbaFormat[];
  /** The format in use. */
  formatIndex: number;
  blockSize: number;
  metadataSize: number;
  /** Metadata transferred at the end of each block's data (extended LBA) rather than separately. */
  extendedLba: boolean;
  /** Namespace features: thin provisioning, deallocated-block errors etc. (NSFEAT). */
  features: number;
}

function ascii(bytes: Uint8Array, start: number, length: number): string {
  let s = '';
  for (let i = start; i < start + length; i++) {
    const c = bytes[i]!;
    s += c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : ' ';
  }
  return s.trim();
}

function u64(view: DataView, offset: number): number {
  return view.getUint32(offset, true) + view.getUint32(offset + 4, true) * 0x1_0000_0000;
}

export function parseControllerIdentity(data: Uint8Array): ControllerIdentity {
  const v = new DataView(data.buffer, data.byteOffset, IDENTIFY_SIZE);
  const ver = v.getUint32(80, true);
  const sqes = data[512]!;
  const cqes = data[513]!;
  const oncs = v.getUint16(520, true);
  return {
    vendorId: v.getUint16(0, true),
    subsystemVendorId: v.getUint16(2, true),
    serial: ascii(data, 4, 20),
    model: ascii(data, 24, 40),
    firmware: ascii(data, 64, 8),
    mdts: data[77]!,
    controllerId: v.getUint16(78, true),
    version: ver === 0 ? '' : `${ver >>> 16}.${(ver >>> 8) & 0xff}.${ver & 0xff}`,
    sqesMin: sqes & 0xf,
    sqesMax: sqes >>> 4,
    cqesMin: cqes & 0xf,
    cqesMax: cqes >>> 4,
    maxCommands: v.getUint16(514, true),
    namespaceCount: v.getUint32(516, true),
    oncs,
    supportsDatasetManagement: (oncs & ONCS_DATASET_MANAGEMENT) !== 0,
    supportsWriteZeroes: (oncs & ONCS_WRITE_ZEROES) !== 0,
    volatileWriteCache: (data[525]! & 1) === 1,
  };
}

export function parseNamespaceIdentity(nsid: number, data: Uint8Array): NamespaceIdentity {
  const v = new DataView(data.buffer, data.byteOffset, IDENTIFY_SIZE);
  const nlbaf = data[25]! + 1;
  const flbas = data[26]!;
  const lbaFormats: LbaFormat[] = [];
  for (let i = 0; i < Math.min(nlbaf, 64); i++) {
    const d = v.getUint32(128 + 4 * i, true);
    const lbads = (d >>> 16) & 0xff;
    // A shift, not 2 ** n (a heap number): the block size reaches the I/O path's integer arithmetic.
    lbaFormats.push({ index: i, metadataSize: d & 0xffff, blockSize: lbads >= 9 && lbads < 32 ? (lbads < 30 ? 1 << lbads : 2 ** lbads) : 0, relativePerformance: (d >>> 24) & 3 });
  }
  // FLBAS: format index in bits 3:0, with bits 6:5 as its upper bits when more than 16 formats exist.
  const formatIndex = (flbas & 0xf) | (nlbaf > 16 ? ((flbas >>> 5) & 3) << 4 : 0);
  const format = lbaFormats[formatIndex];
  return {
    nsid,
    blocks: u64(v, 0),
    capacityBlocks: u64(v, 8),
    utilizationBlocks: u64(v, 16),
    features: data[24]!,
    lbaFormats,
    formatIndex,
    blockSize: format?.blockSize ?? 0,
    metadataSize: format?.metadataSize ?? 0,
    extendedLba: ((flbas >>> 4) & 1) === 1,
  };
}

/** Active namespace list: up to 1024 ids, ascending, ended by a zero. */
export function parseNamespaceList(data: Uint8Array): number[] {
  const v = new DataView(data.buffer, data.byteOffset, IDENTIFY_SIZE);
  const ids: number[] = [];
  for (let i = 0; i < 1024; i++) {
    const id = v.getUint32(4 * i, true);
    if (id === 0) break;
    ids.push(id);
  }
  return ids;
}
