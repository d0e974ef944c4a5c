/**
 * The vfio-user wire format (QEMU docs/interop/vfio-user.rst): message header, command numbers,
 * and encoders/decoders for every payload this project speaks. Pure functions over bytes, shared
 * by the client and the server. Data is host-endian (little-endian on every machine we run on).
 *
 * Decoders never trust the peer: a payload too short, a count that disagrees with the data, a
 * 64-bit number beyond 2^53 all throw a ProtocolError carrying the errno to answer with.
 */
import * as V from '../../uapi/vfio';
import { UserpciError, toErrorCode } from '../../errors';

export const PROTOCOL_MAJOR = 0;
/** Highest minor we speak; a peer proposing less gets its own minor back (QEMU proposes 0). */
export const PROTOCOL_MINOR = 2;

export const HEADER_SIZE = 16;

export const Command = {
  VERSION: 1,
  DMA_MAP: 2,
  DMA_UNMAP: 3,
  DEVICE_GET_INFO: 4,
  DEVICE_GET_REGION_INFO: 5,
  DEVICE_GET_REGION_IO_FDS: 6,
  DEVICE_GET_IRQ_INFO: 7,
  DEVICE_SET_IRQS: 8,
  REGION_READ: 9,
  REGION_WRITE: 10,
  DMA_READ: 11,
  DMA_WRITE: 12,
  DEVICE_RESET: 13,
  REGION_WRITE_MULTI: 15,
  DEVICE_FEATURE: 16,
  MIG_DATA_READ: 17,
  MIG_DATA_WRITE: 18,
} as const;

const commandNames = new Map<number, string>(Object.entries(Command).map(([name, n]) => [n, name]));

export function commandName(command: number): string {
  return commandNames.get(command) ?? `command ${command}`;
}

/** Header flags: bits 0-3 type, bit 4 no-reply, bit 5 error. */
export const MessageFlags = {
  TYPE_MASK: 0xf,
  TYPE_COMMAND: 0,
  TYPE_REPLY: 1,
  NO_REPLY: 0x10,
  ERROR: 0x20,
} as const;

/** linux/vfio.h values the protocol reuses. */
export const Vfio = {
  DEVICE_FLAGS_RESET: 1 << 0,
  DEVICE_FLAGS_PCI: 1 << 1,
  REGION_INFO_FLAG_READ: 1 << 0,
  REGION_INFO_FLAG_WRITE: 1 << 1,
  REGION_INFO_FLAG_MMAP: 1 << 2,
  REGION_INFO_FLAG_CAPS: 1 << 3,
  REGION_INFO_CAP_SPARSE_MMAP: 1,
  REGION_INFO_CAP_TYPE: 2,
  IRQ_INFO_EVENTFD: 1 << 0,
  IRQ_INFO_MASKABLE: 1 << 1,
  IRQ_INFO_AUTOMASKED: 1 << 2,
  IRQ_INFO_NORESIZE: 1 << 3,
  IRQ_SET_DATA_NONE: 1 << 0,
  IRQ_SET_DATA_BOOL: 1 << 1,
  IRQ_SET_DATA_EVENTFD: 1 << 2,
  IRQ_SET_ACTION_MASK: 1 << 3,
  IRQ_SET_ACTION_UNMASK: 1 << 4,
  IRQ_SET_ACTION_TRIGGER: 1 << 5,
  PCI_BAR0_REGION_INDEX: 0,
  PCI_ROM_REGION_INDEX: 6,
  PCI_CONFIG_REGION_INDEX: 7,
  PCI_VGA_REGION_INDEX: 8,
  PCI_NUM_REGIONS: 9,
  PCI_INTX_IRQ_INDEX: 0,
  PCI_MSI_IRQ_INDEX: 1,
  PCI_MSIX_IRQ_INDEX: 2,
  PCI_ERR_IRQ_INDEX: 3,
  PCI_REQ_IRQ_INDEX: 4,
  PCI_NUM_IRQS: 5,
} as const;

export const DmaFlags = { READ: 1 << 0, WRITE: 1 << 1 } as const;
/** DMA_UNMAP flags (linux/vfio.h values): a dirty bitmap (migration, unsupported here), or every map at once. */
export const DmaUnmapFlags = { GET_DIRTY_BITMAP: 1 << 0, ALL: 1 << 1 } as const;

/** Errno values sent in error replies (Linux numbering: the protocol carries host errnos). */
export const Errno = {
  EPERM: 1, ENOENT: 2, EIO: 5, E2BIG: 7, EBADF: 9, EAGAIN: 11, ENOMEM: 12, EACCES: 13, EFAULT: 14,
  EBUSY: 16, EEXIST: 17, ENODEV: 19, EINVAL: 22, ENOSPC: 28, ERANGE: 34, ENOSYS: 38, EPROTO: 71,
  EOVERFLOW: 75, EMSGSIZE: 90, ENOTSUP: 95, ECONNRESET: 104, ETIMEDOUT: 110,
} as const;

const errnoNames = new Map<number, string>(Object.entries(Errno).map(([name, n]) => [n, name]));

export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `errno ${errno}`;
}

/**
 * A malformed or unacceptable message. `errno` is what an error reply should carry; `fatal`
 * means the byte stream can no longer be trusted (framing broken) and the connection must close.
 */
export class ProtocolError extends UserpciError {
  readonly errnoValue: number;
  readonly fatal: boolean;

  constructor(message: string, errno: number = Errno.EINVAL, fatal = false) {
    super(fatal ? 'EPROTO' : toErrorCode(errnoName(errno)), message);
    this.name = 'ProtocolError';
    this.errnoValue = errno;
    this.fatal = fatal;
  }
}

/** A failure the peer reported in an error reply. */
export class RemoteError extends UserpciError {
  constructor(command: number, errno: number) {
    const code = errno === 0 ? 'EIO' : errnoName(errno);
    super(toErrorCode(code), `vfio-user ${commandName(command)} failed on the server: ${code}`, { errno });
    this.name = 'RemoteError';
  }
}

// ---- header ----------------------------------------------------------------------------------

export interface MessageHeader {
  id: number;
  command: number;
  /** Whole message size, header included. */
  size: number;
  flags: number;
  error: number;
}

export function encodeHeader(header: MessageHeader, into: Uint8Array = new Uint8Array(HEADER_SIZE)): Uint8Array {
  const v = view(into);
  v.setUint16(0, header.id, true);
  v.setUint16(2, header.command, true);
  v.setUint32(4, header.size, true);
  v.setUint32(8, header.flags, true);
  v.setUint32(12, header.error, true);
  return into;
}

export function decodeHeader(bytes: Uint8Array): MessageHeader {
  if (bytes.byteLength < HEADER_SIZE) throw new ProtocolError(`short header: ${bytes.byteLength} bytes`, Errno.EINVAL, true);
  const v = view(bytes);
  const header = {
    id: v.getUint16(0, true),
    command: v.getUint16(2, true),
    size: v.getUint32(4, true),
    flags: v.getUint32(8, true),
    error: v.getUint32(12, true),
  };
  if (header.size < HEADER_SIZE) throw new ProtocolError(`message size ${header.size} is smaller than its header`, Errno.EINVAL, true);
  return header;
}

export function isReply(header: MessageHeader): boolean {
  return (header.flags & MessageFlags.TYPE_MASK) === MessageFlags.TYPE_REPLY;
}

export function isError(header: MessageHeader): boolean {
  return (header.flags & MessageFlags.ERROR) !== 0;
}

// ---- helpers ---------------------------------------------------------------------------------

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function need(payload: Uint8Array, size: number, what: string): DataView {
  if (payload.byteLength < size) throw new ProtocolError(`${what}: payload of ${payload.byteLength} bytes, expected at least ${size}`);
  return view(payload);
}

/** A u64 field as a number; anything at or above 2^53 is refused rather than rounded. */
export function getU64(v: DataView, offset: number): number {
  const lo = v.getUint32(offset, true);
  const hi = v.getUint32(offset + 4, true);
  if (hi > 0x1fffff) throw new ProtocolError(`64-bit value 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')} is beyond 2^53`, Errno.ERANGE);
  return hi * 0x1_0000_0000 + lo;
}

export function setU64(v: DataView, offset: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new ProtocolError(`cannot encode ${value} as u64`, Errno.ERANGE);
  v.setUint32(offset, value % 0x1_0000_0000, true);
  v.setUint32(offset + 4, Math.floor(value / 0x1_0000_0000), true);
}

/** An argsz below the struct's fixed part leaves no room for what it describes (or its reply). */
function checkArgsz(argsz: number, size: number, what: string): number {
  if (argsz < size) throw new ProtocolError(`${what} argsz ${argsz} is below the ${size}-byte struct`);
  return argsz;
}

/**
 * Run a uapi/vfio codec on a payload whose layout vfio-user shares with VFIO: its complaints
 * (a truncated struct, a u64 beyond 2^53, a capability chain that loops) become ProtocolErrors.
 */
function viaVfio<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw new ProtocolError(`${what}: ${(err as Error).message}`, err instanceof RangeError ? Errno.ERANGE : Errno.EINVAL);
  }
}

function alloc(size: number): [Uint8Array, DataView] {
  const bytes = new Uint8Array(size);
  return [bytes, view(bytes)];
}

// ---- VERSION ---------------------------------------------------------------------------------

export interface TwinSocketCapability {
  supported: boolean;
  fdIndex?: number;
}

export interface Capabilities {
  /** Fds the sender can receive in one message (default 1). */
  maxMsgFds: number;
  /** Largest data count in one READ/WRITE message the sender accepts (default 1 MiB). */
  maxDataXferSize: number;
  /** Largest number of DMA maps at once (default 65535). */
  maxDmaMaps: number;
  /** Page sizes for DMA maps, or'ed (default 4096). */
  pgsizes: number;
  twinSocket: TwinSocketCapability | undefined;
  writeMultiple: boolean;
}

export const DEFAULT_CAPABILITIES: Readonly<Capabilities> = Object.freeze({
  maxMsgFds: 1,
  maxDataXferSize: 1 << 20,
  maxDmaMaps: 65535,
  pgsizes: 4096,
  twinSocket: undefined,
  writeMultiple: false,
});

export interface VersionMessage {
  major: number;
  minor: number;
  capabilities: Capabilities;
  /** The capability names the sender actually wrote (the rest are defaults): a reply may name only these. */
  named: Set<keyof Capabilities>;
}

/** Upper bound on the JSON we accept: real capability objects are a few hundred bytes. */
const MAX_VERSION_JSON = 64 * 1024;

export function encodeVersion(message: { major: number; minor: number; capabilities?: Partial<Capabilities> }): Uint8Array {
  const caps = message.capabilities;
  let json = '';
  if (caps) {
    const out: Record<string, unknown> = {};
    if (caps.maxMsgFds !== undefined) out.max_msg_fds = caps.maxMsgFds;
    if (caps.maxDataXferSize !== undefined) out.max_data_xfer_size = caps.maxDataXferSize;
    if (caps.maxDmaMaps !== undefined) out.max_dma_maps = caps.maxDmaMaps;
    if (caps.pgsizes !== undefined) out.pgsizes = caps.pgsizes;
    if (caps.twinSocket !== undefined) {
      out.twin_socket = caps.twinSocket.fdIndex === undefined
        ? { supported: caps.twinSocket.supported }
        : { supported: caps.twinSocket.supported, fd_index: caps.twinSocket.fdIndex };
    }
    if (caps.writeMultiple) out.write_multiple = true;
    json = JSON.stringify({ capabilities: out });
  }
  const text = Buffer.from(json, 'utf8');
  const [bytes, v] = alloc(4 + (json ? text.length + 1 : 0));
  v.setUint16(0, message.major, true);
  v.setUint16(2, message.minor, true);
  if (json) bytes.set(text, 4); // the trailing NUL is already zero
  return bytes;
}

function nonNegativeInteger(value: unknown, name: string, max: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0 || value > max) {
    throw new ProtocolError(`VERSION capability ${name} must be an integer in [0, ${max}], got ${JSON.stringify(value)}`);
  }
  return value;
}

export function decodeVersion(payload: Uint8Array): VersionMessage {
  const v = need(payload, 4, 'VERSION');
  const major = v.getUint16(0, true);
  const minor = v.getUint16(2, true);
  const capabilities: Capabilities = { ...DEFAULT_CAPABILITIES };
  const named = new Set<keyof Capabilities>();
  let data = payload.subarray(4);
  // The JSON is NUL-terminated (the spec counts the NUL in the data); trailing NULs are tolerated.
  const end = data.indexOf(0);
  if (end < 0 && data.length > 0) throw new ProtocolError('VERSION data lacks its terminating NUL');
  data = data.subarray(0, Math.max(0, end));
  if (data.length > MAX_VERSION_JSON) throw new ProtocolError(`VERSION JSON of ${data.length} bytes is too large`, Errno.E2BIG);
  if (data.length > 0) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8'));
    } catch {
      throw new ProtocolError('VERSION data is not valid JSON');
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new ProtocolError('VERSION data must be a JSON object');
    const caps = (parsed as Record<string, unknown>).capabilities;
    if (caps !== undefined) {
      if (typeof caps !== 'object' || caps === null || Array.isArray(caps)) throw new ProtocolError('VERSION capabilities must be an object');
      const c = caps as Record<string, unknown>;
      if (c.max_msg_fds !== undefined) named.add('maxMsgFds');
      if (c.max_msg_fds !== undefined) capabilities.maxMsgFds = nonNegativeInteger(c.max_msg_fds, 'max_msg_fds', 0xffff);
      if (c.max_data_xfer_size !== undefined) named.add('maxDataXferSize');
      if (c.max_data_xfer_size !== undefined) capabilities.maxDataXferSize = nonNegativeInteger(c.max_data_xfer_size, 'max_data_xfer_size', Number.MAX_SAFE_INTEGER);
      if (c.max_dma_maps !== undefined) named.add('maxDmaMaps');
      if (c.max_dma_maps !== undefined) capabilities.maxDmaMaps = nonNegativeInteger(c.max_dma_maps, 'max_dma_maps', Number.MAX_SAFE_INTEGER);
      if (c.pgsizes !== undefined) named.add('pgsizes');
      if (c.pgsizes !== undefined) capabilities.pgsizes = nonNegativeInteger(c.pgsizes, 'pgsizes', Number.MAX_SAFE_INTEGER);
      if (c.twin_socket !== undefined) named.add('twinSocket');
      if (c.twin_socket !== undefined) {
        const t = c.twin_socket;
        if (typeof t !== 'object' || t === null || Array.isArray(t)) throw new ProtocolError('twin_socket must be an object');
        const ts = t as Record<string, unknown>;
        const twin: TwinSocketCapability = { supported: ts.supported === true };
        if (ts.fd_index !== undefined) twin.fdIndex = nonNegativeInteger(ts.fd_index, 'twin_socket.fd_index', 0xffff);
        capabilities.twinSocket = twin;
      }
      if (c.write_multiple !== undefined) named.add('writeMultiple');
      if (c.write_multiple !== undefined) capabilities.writeMultiple = c.write_multiple === true;
    }
  }
  if (capabilities.maxDataXferSize === 0) throw new ProtocolError('max_data_xfer_size of 0 allows no transfer at all');
  return { major, minor, capabilities, named };
}

/** The smallest page size a pgsizes bitmap allows (its lowest set bit). */
export function smallestPageSize(pgsizes: number): number {
  if (!Number.isSafeInteger(pgsizes) || pgsizes <= 0) throw new ProtocolError(`pgsizes ${pgsizes} names no page size`);
  let size = 1;
  while (size <= pgsizes && (Math.floor(pgsizes / size) & 1) === 0) size *= 2;
  return size;
}

// ---- DMA_MAP / DMA_UNMAP ---------------------------------------------------------------------

export interface DmaMapMessage {
  flags: number;
  /** Offset in the fd sent with the message (0 without fd). */
  offset: number;
  address: number;
  size: number;
}

export const DMA_MAP_SIZE = V.VFIO_STRUCTS.vfio_iommu_type1_dma_map.sizeof;

/** VFIO's struct vfio_iommu_type1_dma_map, with the offset into the passed fd where vaddr was. */
export function encodeDmaMap(m: DmaMapMessage): Uint8Array {
  return V.encodeDmaMap({ flags: m.flags, vaddr: m.offset, iova: m.address, size: m.size });
}

export function decodeDmaMap(payload: Uint8Array): DmaMapMessage {
  const m = viaVfio('DMA_MAP', () => V.decodeDmaMap(payload));
  checkArgsz(m.argsz, DMA_MAP_SIZE, 'DMA_MAP');
  return { flags: m.flags, offset: m.vaddr, address: m.iova, size: m.size };
}

export interface DmaUnmapMessage {
  argsz: number;
  flags: number;
  address: number;
  size: number;
}

export const DMA_UNMAP_SIZE = V.VFIO_STRUCTS.vfio_iommu_type1_dma_unmap.sizeof;

/** VFIO's struct vfio_iommu_type1_dma_unmap as it is. */
export function encodeDmaUnmap(m: { flags?: number; address: number; size: number; argsz?: number }): Uint8Array {
  return V.encodeDmaUnmap({ argsz: m.argsz, flags: m.flags, iova: m.address, size: m.size });
}

export function decodeDmaUnmap(payload: Uint8Array): DmaUnmapMessage {
  const m = viaVfio('DMA_UNMAP', () => V.decodeDmaUnmap(payload));
  // argsz is the room for the reply, which echoes the 24-byte entry.
  checkArgsz(m.argsz, DMA_UNMAP_SIZE, 'DMA_UNMAP');
  return { argsz: m.argsz, flags: m.flags, address: m.iova, size: m.size };
}

// ---- DEVICE_GET_INFO -------------------------------------------------------------------------

export interface DeviceInfoMessage {
  argsz: number;
  flags: number;
  numRegions: number;
  numIrqs: number;
}

/** VFIO's struct vfio_device_info without cap_offset: 16 bytes, not the kernel's 20, so its own codec. */
export const DEVICE_INFO_SIZE = 16;

export function encodeDeviceInfo(m: DeviceInfoMessage): Uint8Array {
  const [bytes, v] = alloc(DEVICE_INFO_SIZE);
  v.setUint32(0, m.argsz, true);
  v.setUint32(4, m.flags, true);
  v.setUint32(8, m.numRegions, true);
  v.setUint32(12, m.numIrqs, true);
  return bytes;
}

export function decodeDeviceInfo(payload: Uint8Array): DeviceInfoMessage {
  const v = need(payload, DEVICE_INFO_SIZE, 'DEVICE_GET_INFO');
  return { argsz: checkArgsz(v.getUint32(0, true), DEVICE_INFO_SIZE, 'DEVICE_GET_INFO'), flags: v.getUint32(4, true), numRegions: v.getUint32(8, true), numIrqs: v.getUint32(12, true) };
}

// ---- DEVICE_GET_REGION_INFO ------------------------------------------------------------------

export type SparseMmapArea = V.VfioSparseMmapArea;

export type RegionInfoMessage = Pick<V.VfioRegionInfo, 'argsz' | 'flags' | 'index' | 'capOffset' | 'size' | 'offset'> & {
  /** Decoded from the capability chain; undefined when no sparse-mmap capability came with it. */
  sparseAreas?: SparseMmapArea[];
};

export const REGION_INFO_SIZE = V.VFIO_STRUCTS.vfio_region_info.sizeof;
/** A region with more sparse areas than this is not a real device: refuse it rather than allocate. */
export const MAX_SPARSE_AREAS = 1024;

export function encodeRegionInfoRequest(index: number, argsz: number): Uint8Array {
  return V.encodeRegionInfo({ index, argsz }).subarray(0, REGION_INFO_SIZE);
}

/** Bytes a full reply needs: the fixed part plus a sparse-mmap capability when there are areas. */
export function regionInfoFullSize(sparseAreas: SparseMmapArea[] | undefined): number {
  return V.encodeRegionInfo({ index: 0, sparseMmapAreas: sparseAreas }).byteLength;
}

/**
 * Encode a region info reply for a client that allows `clientArgsz` bytes. vfio-user carries
 * struct vfio_region_info as the kernel lays it out, so the uapi codec writes it. When the
 * capabilities do not fit, the reply is the fixed part only with argsz naming the size needed,
 * as VFIO does.
 */
export function encodeRegionInfoReply(m: Omit<RegionInfoMessage, 'argsz' | 'capOffset'>, clientArgsz: number): { bytes: Uint8Array; complete: boolean } {
  const full = V.encodeRegionInfo({ index: m.index, flags: m.flags, size: m.size, offset: m.offset, sparseMmapAreas: m.sparseAreas });
  if (clientArgsz >= full.byteLength) return { bytes: full, complete: true };
  const bytes = full.slice(0, REGION_INFO_SIZE);
  new DataView(bytes.buffer).setUint32(V.VFIO_STRUCTS.vfio_region_info.at.cap_offset, 0, true);
  return { bytes, complete: false };
}

export function decodeRegionInfoRequest(payload: Uint8Array): { argsz: number; index: number } {
  const v = need(payload, REGION_INFO_SIZE, 'DEVICE_GET_REGION_INFO');
  return { argsz: checkArgsz(v.getUint32(0, true), REGION_INFO_SIZE, 'DEVICE_GET_REGION_INFO'), index: v.getUint32(8, true) };
}

/** Decode a reply; the uapi decoder walks the capability chain defensively (bounds, loops). */
export function decodeRegionInfoReply(payload: Uint8Array): RegionInfoMessage {
  need(payload, REGION_INFO_SIZE, 'DEVICE_GET_REGION_INFO reply');
  const info = viaVfio('region info reply', () => V.decodeRegionInfo(payload));
  if (info.sparseMmapAreas && info.sparseMmapAreas.length > MAX_SPARSE_AREAS) {
    throw new ProtocolError(`sparse mmap capability claims ${info.sparseMmapAreas.length} areas`, Errno.E2BIG);
  }
  return {
    argsz: info.argsz,
    flags: info.flags,
    index: info.index,
    capOffset: info.capOffset,
    size: info.size,
    offset: info.offset,
    ...(info.sparseMmapAreas ? { sparseAreas: info.sparseMmapAreas } : {}),
  };
}

// ---- DEVICE_GET_IRQ_INFO ---------------------------------------------------------------------

export type IrqInfoMessage = V.VfioIrqInfo;

export const IRQ_INFO_SIZE = V.VFIO_STRUCTS.vfio_irq_info.sizeof;

/** VFIO's struct vfio_irq_info as it is. */
export function encodeIrqInfo(m: IrqInfoMessage): Uint8Array {
  return V.encodeIrqInfo(m);
}

export function decodeIrqInfo(payload: Uint8Array): IrqInfoMessage {
  const m = viaVfio('DEVICE_GET_IRQ_INFO', () => V.decodeIrqInfo(payload));
  checkArgsz(m.argsz, IRQ_INFO_SIZE, 'DEVICE_GET_IRQ_INFO');
  return m;
}

// ---- DEVICE_SET_IRQS -------------------------------------------------------------------------

export interface SetIrqsMessage {
  flags: number;
  index: number;
  start: number;
  count: number;
  /** With DATA_BOOL: one byte per vector. */
  bools?: Uint8Array;
}

/** VFIO's struct vfio_irq_set, but eventfds travel as SCM_RIGHTS fds, not in the data: its own codec. */
export const SET_IRQS_SIZE = V.VFIO_STRUCTS.vfio_irq_set.sizeof;
/** VFIO's own bound on vectors per index (MSI-X allows 2048). */
export const MAX_IRQ_VECTORS = 2048;

export function encodeSetIrqs(m: SetIrqsMessage): Uint8Array {
  const extra = m.bools ? m.bools.length : 0;
  const [bytes, v] = alloc(SET_IRQS_SIZE + extra);
  v.setUint32(0, SET_IRQS_SIZE + extra, true);
  v.setUint32(4, m.flags, true);
  v.setUint32(8, m.index, true);
  v.setUint32(12, m.start, true);
  v.setUint32(16, m.count, true);
  if (m.bools) bytes.set(m.bools, SET_IRQS_SIZE);
  return bytes;
}

export function decodeSetIrqs(payload: Uint8Array): SetIrqsMessage {
  const v = need(payload, SET_IRQS_SIZE, 'DEVICE_SET_IRQS');
  const argsz = v.getUint32(0, true);
  // argsz is the size of the request including its data: never less than the fixed part, never more than was sent.
  if (argsz < SET_IRQS_SIZE || argsz > payload.byteLength) throw new ProtocolError(`SET_IRQS argsz ${argsz} does not describe a ${payload.byteLength}-byte request`);
  const m: SetIrqsMessage = { flags: v.getUint32(4, true), index: v.getUint32(8, true), start: v.getUint32(12, true), count: v.getUint32(16, true) };
  const data = m.flags & (Vfio.IRQ_SET_DATA_NONE | Vfio.IRQ_SET_DATA_BOOL | Vfio.IRQ_SET_DATA_EVENTFD);
  const action = m.flags & (Vfio.IRQ_SET_ACTION_MASK | Vfio.IRQ_SET_ACTION_UNMASK | Vfio.IRQ_SET_ACTION_TRIGGER);
  if (popcount(data) !== 1 || popcount(action) !== 1) throw new ProtocolError(`SET_IRQS flags 0x${m.flags.toString(16)} must name one data type and one action`);
  if (m.count > MAX_IRQ_VECTORS || m.start > MAX_IRQ_VECTORS) throw new ProtocolError(`SET_IRQS range ${m.start}+${m.count} is beyond any device`);
  if (data === Vfio.IRQ_SET_DATA_BOOL) {
    if (argsz < SET_IRQS_SIZE + m.count) throw new ProtocolError('SET_IRQS bool data is shorter than count');
    m.bools = payload.slice(SET_IRQS_SIZE, SET_IRQS_SIZE + m.count);
  }
  return m;
}

function popcount(x: number): number {
  let n = 0;
  for (let b = x; b; b &= b - 1) n++;
  return n;
}

// ---- REGION_READ / REGION_WRITE --------------------------------------------------------------

export interface RegionAccessMessage {
  offset: number;
  region: number;
  count: number;
  /** Present in write requests and read replies. */
  data?: Uint8Array;
}

export const REGION_ACCESS_SIZE = 16;

export function encodeRegionAccess(m: RegionAccessMessage): Uint8Array {
  const [bytes, v] = alloc(REGION_ACCESS_SIZE);
  setU64(v, 0, m.offset);
  v.setUint32(8, m.region, true);
  v.setUint32(12, m.count, true);
  return bytes;
}

/** Decode; with `withData`, the data must be exactly `count` bytes (the view shares the payload). */
export function decodeRegionAccess(payload: Uint8Array, withData: boolean): RegionAccessMessage {
  const v = need(payload, REGION_ACCESS_SIZE, 'REGION access');
  const m: RegionAccessMessage = { offset: getU64(v, 0), region: v.getUint32(8, true), count: v.getUint32(12, true) };
  if (withData) {
    if (payload.byteLength !== REGION_ACCESS_SIZE + m.count) {
      throw new ProtocolError(`REGION access carries ${payload.byteLength - REGION_ACCESS_SIZE} data bytes but count says ${m.count}`);
    }
    m.data = payload.subarray(REGION_ACCESS_SIZE);
  }
  return m;
}

// ---- DMA_READ / DMA_WRITE (server -> client) -------------------------------------------------

export interface DmaAccessMessage {
  address: number;
  count: number;
  data?: Uint8Array;
}

export const DMA_ACCESS_SIZE = 16;

export function encodeDmaAccess(m: DmaAccessMessage): Uint8Array {
  const [bytes, v] = alloc(DMA_ACCESS_SIZE);
  setU64(v, 0, m.address);
  setU64(v, 8, m.count);
  return bytes;
}

/**
 * Decode a DMA access. The spec gives the DMA_WRITE reply a u32 count (12 bytes) while libvfio-user
 * sends u64 (16): accept both when `liberalCount` is set. With `withData` the data is the rest.
 */
export function decodeDmaAccess(payload: Uint8Array, withData: boolean, liberalCount = false): DmaAccessMessage {
  if (liberalCount && payload.byteLength >= 12 && payload.byteLength < DMA_ACCESS_SIZE) {
    const v = view(payload);
    return { address: getU64(v, 0), count: v.getUint32(8, true) };
  }
  const v = need(payload, DMA_ACCESS_SIZE, 'DMA access');
  const m: DmaAccessMessage = { address: getU64(v, 0), count: getU64(v, 8) };
  if (withData) {
    if (payload.byteLength !== DMA_ACCESS_SIZE + m.count) {
      throw new ProtocolError(`DMA access carries ${payload.byteLength - DMA_ACCESS_SIZE} data bytes but count says ${m.count}`);
    }
    m.data = payload.subarray(DMA_ACCESS_SIZE);
  }
  return m;
}

// ---- REGION_WRITE_MULTI ----------------------------------------------------------------------

export interface WriteMultiEntry {
  offset: number;
  region: number;
  count: number;
  data: Uint8Array;
}

/** Each entry: offset u64, region u32, count u32, 8 data bytes (count at most 8). */
export const WRITE_MULTI_ENTRY_SIZE = 24;
/** The spec's senders coalesce a socket's worth of small writes; more than this is not a real client. */
export const MAX_WRITE_MULTI = 4096;

export function encodeWriteMulti(entries: { offset: number; region: number; data: Uint8Array }[]): Uint8Array {
  const [bytes, v] = alloc(8 + entries.length * WRITE_MULTI_ENTRY_SIZE);
  setU64(v, 0, entries.length);
  entries.forEach((e, i) => {
    const at = 8 + i * WRITE_MULTI_ENTRY_SIZE;
    if (e.data.length > 8) throw new ProtocolError('REGION_WRITE_MULTI entries carry at most 8 bytes');
    setU64(v, at, e.offset);
    v.setUint32(at + 8, e.region, true);
    v.setUint32(at + 12, e.data.length, true);
    bytes.set(e.data, at + 16);
  });
  return bytes;
}

export function decodeWriteMulti(payload: Uint8Array): WriteMultiEntry[] {
  const v = need(payload, 8, 'REGION_WRITE_MULTI');
  const n = getU64(v, 0);
  if (n > MAX_WRITE_MULTI) throw new ProtocolError(`REGION_WRITE_MULTI of ${n} writes`, Errno.E2BIG);
  if (payload.byteLength !== 8 + n * WRITE_MULTI_ENTRY_SIZE) throw new ProtocolError(`REGION_WRITE_MULTI of ${n} writes needs ${8 + n * WRITE_MULTI_ENTRY_SIZE} bytes, got ${payload.byteLength}`);
  const out: WriteMultiEntry[] = [];
  for (let i = 0; i < n; i++) {
    const at = 8 + i * WRITE_MULTI_ENTRY_SIZE;
    const count = v.getUint32(at + 12, true);
    if (count > 8) throw new ProtocolError(`REGION_WRITE_MULTI entry ${i} has count ${count} (at most 8)`);
    out.push({ offset: getU64(v, at), region: v.getUint32(at + 8, true), count, data: payload.subarray(at + 16, at + 16 + count) });
  }
  return out;
}

export function encodeWriteMultiReply(count: number): Uint8Array {
  const [bytes, v] = alloc(8);
  setU64(v, 0, count);
  return bytes;
}
