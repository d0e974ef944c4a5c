/**
 * Emulated PCI configuration space for device models: the type-0 header, BAR registers that
 * answer sizing writes, a capability list, and per-bit write rules (read-only, read-write,
 * write-1-to-clear) so a client sees what real hardware would show it.
 */
import { checkInteger, describeValue, optionsObject } from '../arguments';
import { InvalidArgumentError, RangeAccessError } from '../errors';

export const PCI_CONFIG_SIZE = 256;
export const PCIE_CONFIG_SIZE = 4096;

export const ConfigReg = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION_ID: 0x08,
  CLASS_PROG: 0x09,
  CACHE_LINE_SIZE: 0x0c,
  LATENCY_TIMER: 0x0d,
  HEADER_TYPE: 0x0e,
  BAR0: 0x10,
  SUBSYSTEM_VENDOR_ID: 0x2c,
  SUBSYSTEM_ID: 0x2e,
  ROM_ADDRESS: 0x30,
  CAPABILITY_LIST: 0x34,
  INTERRUPT_LINE: 0x3c,
  INTERRUPT_PIN: 0x3d,
} as const;

export const Command = {
  IO: 1 << 0,
  MEMORY: 1 << 1,
  MASTER: 1 << 2,
  PARITY: 1 << 6,
  SERR: 1 << 8,
  INTX_DISABLE: 1 << 10,
} as const;

export const Status = {
  INTERRUPT: 1 << 3,
  CAP_LIST: 1 << 4,
} as const;

export const CapabilityId = { MSI: 0x05, MSIX: 0x11, EXP: 0x10, PM: 0x01 } as const;

export interface HeaderFields {
  vendorId: number;
  deviceId: number;
  revision?: number;
  /** 24-bit class code: base class << 16 | subclass << 8 | programming interface. */
  classCode: number;
  subsystemVendorId?: number;
  subsystemId?: number;
  /** 0 none, 1 INTA# .. 4 INTD#. */
  interruptPin?: number;
  /** 256 (conventional PCI) or 4096 (PCI Express). */
  size?: number;
}

export interface BarLayout {
  size: number;
  kind: 'memory' | 'io';
  is64: boolean;
  prefetchable: boolean;
}

export type ConfigWriteHook = (offset: number, length: number) => void;

export class ConfigSpace {
  readonly size: number;
  readonly bytes: Uint8Array;
  private readonly writable: Uint8Array;
  private readonly writeOneToClear: Uint8Array;
  private initial: Uint8Array | undefined;
  private readonly hooks: { start: number; end: number; hook: ConfigWriteHook }[] = [];
  private lastCapability = 0;
  private nextCapabilityOffset = 0x40;
  readonly bars: (BarLayout | undefined)[] = [undefined, undefined, undefined, undefined, undefined, undefined];

  constructor(header: HeaderFields) {
    if (header === null || typeof header !== 'object') throw new InvalidArgumentError(`a config space needs its header fields ({ vendorId, deviceId, classCode }), got ${describeValue(header)}`);
    for (const field of ['vendorId', 'deviceId', 'classCode', 'revision', 'subsystemVendorId', 'subsystemId'] as const) {
      const value = (header as unknown as Record<string, unknown>)[field];
      if (value !== undefined) checkInteger(value, 0, field === 'classCode' ? 0xffffff : field === 'revision' ? 0xff : 0xffff, field);
    }
    const size = header.size ?? PCI_CONFIG_SIZE;
    if (size !== PCI_CONFIG_SIZE && size !== PCIE_CONFIG_SIZE) throw new InvalidArgumentError(`config space is 256 or 4096 bytes, not ${size}`);
    this.size = size;
    this.bytes = new Uint8Array(size);
    this.writable = new Uint8Array(size);
    this.writeOneToClear = new Uint8Array(size);
    this.setU16(ConfigReg.VENDOR_ID, header.vendorId);
    this.setU16(ConfigReg.DEVICE_ID, header.deviceId);
    this.setU8(ConfigReg.REVISION_ID, header.revision ?? 0);
    this.setU8(ConfigReg.CLASS_PROG, header.classCode & 0xff);
    this.setU16(ConfigReg.CLASS_PROG + 1, (header.classCode >> 8) & 0xffff);
    this.setU16(ConfigReg.SUBSYSTEM_VENDOR_ID, header.subsystemVendorId ?? 0);
    this.setU16(ConfigReg.SUBSYSTEM_ID, header.subsystemId ?? 0);
    this.setU8(ConfigReg.INTERRUPT_PIN, header.interruptPin ?? 0);
    this.allowWrite(ConfigReg.COMMAND, 2, Command.IO | Command.MEMORY | Command.MASTER | Command.PARITY | Command.SERR | Command.INTX_DISABLE);
    // Status error bits are write-1-to-clear (detected parity, signalled/received aborts, SERR).
    this.allowWriteOneToClear(ConfigReg.STATUS, 2, 0xf900);
    this.allowWrite(ConfigReg.CACHE_LINE_SIZE, 1, 0xff);
    this.allowWrite(ConfigReg.LATENCY_TIMER, 1, 0xff);
    this.allowWrite(ConfigReg.INTERRUPT_LINE, 1, 0xff);
  }

  /** Declare BAR `index` (a 64-bit BAR takes index and index + 1). Sizes are powers of two. */
  setBar(index: number, layout: { size: number; kind?: 'memory' | 'io'; is64?: boolean; prefetchable?: boolean }): void {
    const kind = layout.kind ?? 'memory';
    const is64 = kind === 'memory' && (layout.is64 ?? false);
    const min = kind === 'io' ? 4 : 16;
    if (!Number.isInteger(index) || index < 0 || index > (is64 ? 4 : 5)) throw new InvalidArgumentError(`BAR index ${index} is out of range`);
    if (!Number.isSafeInteger(layout.size) || layout.size < min || !Number.isInteger(Math.log2(layout.size))) {
      throw new InvalidArgumentError(`BAR ${index} size ${layout.size} must be a power of two of at least ${min}`);
    }
    if (!is64 && layout.size > 0x8000_0000) throw new InvalidArgumentError(`BAR ${index}: a 32-bit BAR cannot be ${layout.size} bytes`);
    const bar: BarLayout = { size: layout.size, kind, is64, prefetchable: kind === 'memory' && (layout.prefetchable ?? false) };
    this.bars[index] = bar;
    const at = ConfigReg.BAR0 + 4 * index;
    const typeBits = kind === 'io' ? 0x1 : (is64 ? 0x4 : 0) | (bar.prefetchable ? 0x8 : 0);
    this.setU32(at, typeBits);
    const lowMask = layout.size >= 0x1_0000_0000 ? 0 : (~(layout.size - 1) >>> 0) & (kind === 'io' ? 0xfffffffc : 0xfffffff0);
    this.allowWrite(at, 4, lowMask);
    if (is64) {
      const highMask = layout.size > 0x1_0000_0000 ? (~(Math.floor(layout.size / 0x1_0000_0000) - 1) >>> 0) : 0xffffffff;
      this.allowWrite(at + 4, 4, highMask);
    }
  }

  /**
   * Append a capability of `length` bytes (id and next pointer are filled in); returns its offset.
   * `writeMask` (relative bytes) names the bits the client may change.
   */
  addCapability(id: number, length: number, writeMask?: Uint8Array): number {
    if (length < 2) throw new InvalidArgumentError('a capability is at least 2 bytes');
    const at = this.nextCapabilityOffset;
    if (at + length > PCI_CONFIG_SIZE) throw new RangeAccessError('no room left for another capability in the first 256 bytes');
    this.setU8(at, id);
    this.setU8(at + 1, 0);
    if (this.lastCapability === 0) {
      this.setU8(ConfigReg.CAPABILITY_LIST, at);
      this.setU16(ConfigReg.STATUS, this.u16(ConfigReg.STATUS) | Status.CAP_LIST);
    } else {
      this.setU8(this.lastCapability + 1, at);
    }
    this.lastCapability = at;
    this.nextCapabilityOffset = (at + length + 3) & ~3;
    if (writeMask) for (let i = 0; i < writeMask.length && i < length; i++) this.writable[at + i] = writeMask[i]!;
    return at;
  }

  /** Offset of the first capability with this id, or 0. Walks defensively (no loops). */
  findCapability(id: number): number {
    let at = this.bytes[ConfigReg.CAPABILITY_LIST]! & 0xfc;
    for (let n = 0; at !== 0 && n < 48; n++) {
      if (this.bytes[at] === id) return at;
      at = this.bytes[at + 1]! & 0xfc;
    }
    return 0;
  }

  /** Make bits writable by the client (mask over `length` bytes, little-endian). */
  allowWrite(offset: number, length: number, mask: number): void {
    for (let i = 0; i < length; i++) this.writable[offset + i] = Math.floor(mask / 2 ** (8 * i)) & 0xff;
  }

  allowWriteOneToClear(offset: number, length: number, mask: number): void {
    for (let i = 0; i < length; i++) this.writeOneToClear[offset + i] = Math.floor(mask / 2 ** (8 * i)) & 0xff;
  }

  /** Run `hook` after client writes that touch [offset, offset + length). */
  onWrite(offset: number, length: number, hook: ConfigWriteHook): void {
    this.hooks.push({ start: offset, end: offset + length, hook });
  }

  /** Remember the current contents as the power-on state that reset() restores. */
  seal(): void {
    this.initial = this.bytes.slice();
  }

  /** Back to the sealed power-on state (a function-level reset). */
  reset(): void {
    if (this.initial) this.bytes.set(this.initial);
  }

  /** A client read; bounds are the caller's to check. */
  read(offset: number, into: Uint8Array): void {
    this.check(offset, into.length);
    into.set(this.bytes.subarray(offset, offset + into.length));
  }

  /** A client write: only writable bits change, write-1-to-clear bits clear. */
  write(offset: number, from: Uint8Array): void {
    this.check(offset, from.length);
    for (let i = 0; i < from.length; i++) {
      const at = offset + i;
      const value = from[i]!;
      const w = this.writable[at]!;
      const c = this.writeOneToClear[at]!;
      let b = this.bytes[at]!;
      b = (b & ~w) | (value & w);
      b &= ~(value & c);
      this.bytes[at] = b;
    }
    const end = offset + from.length;
    for (const h of this.hooks) if (h.start < end && offset < h.end) h.hook(offset, from.length);
  }

  private check(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeAccessError(`config access [${offset}, +${length}) is outside ${this.size} bytes`);
    }
  }

  u8(offset: number): number {
    return this.bytes[offset]!;
  }

  u16(offset: number): number {
    return this.bytes[offset]! | (this.bytes[offset + 1]! << 8);
  }

  u32(offset: number): number {
    return (this.u16(offset) | (this.u16(offset + 2) << 16)) >>> 0;
  }

  setU8(offset: number, value: number): void {
    this.bytes[offset] = value & 0xff;
  }

  setU16(offset: number, value: number): void {
    this.bytes[offset] = value & 0xff;
    this.bytes[offset + 1] = (value >> 8) & 0xff;
  }

  setU32(offset: number, value: number): void {
    this.setU16(offset, value & 0xffff);
    this.setU16(offset + 2, (value >>> 16) & 0xffff);
  }
}

// ---- MSI and MSI-X capability layouts --------------------------------------------------------

export const MsiControl = {
  ENABLE: 1 << 0,
  /** Multiple Message Capable, bits 1-3 (log2 of vectors). */
  MMC_SHIFT: 1,
  /** Multiple Message Enable, bits 4-6. */
  MME_SHIFT: 4,
  ADDR64: 1 << 7,
  PER_VECTOR_MASK: 1 << 8,
} as const;

export interface MsiLayout {
  offset: number;
  vectors: number;
  is64: boolean;
  perVectorMask: boolean;
  /** Offsets of the mask and pending bit registers (0 without per-vector masking). */
  maskOffset: number;
  pendingOffset: number;
}

/** Add an MSI capability (1, 2, 4, 8, 16 or 32 vectors). */
export function addMsiCapability(config: ConfigSpace, options: { vectors?: number; is64?: boolean; perVectorMask?: boolean } = {}): MsiLayout {
  options = optionsObject(options, 'MSI capability options');
  const vectors = options.vectors ?? 1;
  const log2 = Math.log2(vectors);
  if (!Number.isInteger(log2) || log2 < 0 || log2 > 5) throw new InvalidArgumentError(`MSI vector count ${vectors} must be a power of two up to 32`);
  const is64 = options.is64 ?? true;
  const pvm = options.perVectorMask ?? false;
  const length = (is64 ? 14 : 10) + (pvm ? 10 : 0);
  const mask = new Uint8Array(length);
  // Control: enable and MME writable.
  mask[2] = 0x71;
  // Address (dword aligned), upper address, data.
  mask.set([0xfc, 0xff, 0xff, 0xff], 4);
  const dataAt = is64 ? 12 : 8;
  if (is64) mask.set([0xff, 0xff, 0xff, 0xff], 8);
  mask.set([0xff, 0xff], dataAt);
  let maskOffset = 0;
  let pendingOffset = 0;
  if (pvm) {
    const rel = dataAt + 4;
    for (let i = 0; i < 4; i++) mask[rel + i] = i * 8 < vectors ? (vectors >= (i + 1) * 8 ? 0xff : (1 << (vectors - i * 8)) - 1) : 0;
  }
  const offset = config.addCapability(CapabilityId.MSI, length, mask);
  config.setU16(offset + 2, (log2 << MsiControl.MMC_SHIFT) | (is64 ? MsiControl.ADDR64 : 0) | (pvm ? MsiControl.PER_VECTOR_MASK : 0));
  if (pvm) {
    maskOffset = offset + dataAt + 4;
    pendingOffset = maskOffset + 4;
  }
  return { offset, vectors, is64, perVectorMask: pvm, maskOffset, pendingOffset };
}

export const MsixControl = {
  TABLE_SIZE_MASK: 0x7ff,
  FUNCTION_MASK: 1 << 14,
  ENABLE: 1 << 15,
} as const;

export interface MsixLayout {
  offset: number;
  vectors: number;
  tableBar: number;
  tableOffset: number;
  pbaBar: number;
  pbaOffset: number;
}

/** Add an MSI-X capability; the table (16 bytes a vector) and PBA live in the BARs named. */
export function addMsixCapability(config: ConfigSpace, options: { vectors: number; tableBar: number; tableOffset: number; pbaBar: number; pbaOffset: number }): MsixLayout {
  if (options === null || typeof options !== 'object') throw new InvalidArgumentError(`MSI-X capability options must be an object, got ${describeValue(options)}`);
  const { vectors, tableBar, tableOffset, pbaBar, pbaOffset } = options;
  for (const [name, value] of Object.entries({ tableBar, pbaBar })) checkInteger(value, 0, 5, name);
  for (const [name, value] of Object.entries({ tableOffset, pbaOffset })) checkInteger(value, 0, 0xfffffff8, name);
  if (!Number.isInteger(vectors) || vectors < 1 || vectors > 2048) throw new InvalidArgumentError(`MSI-X vector count ${vectors} must be 1..2048`);
  if ((tableOffset & 7) !== 0 || (pbaOffset & 7) !== 0) throw new InvalidArgumentError('MSI-X table and PBA offsets must be 8-byte aligned');
  const mask = new Uint8Array(12);
  mask[3] = 0xc0; // enable and function mask
  const offset = config.addCapability(CapabilityId.MSIX, 12, mask);
  config.setU16(offset + 2, vectors - 1);
  config.setU32(offset + 4, (tableOffset | tableBar) >>> 0);
  config.setU32(offset + 8, (pbaOffset | pbaBar) >>> 0);
  return { offset, vectors, tableBar, tableOffset, pbaBar, pbaOffset };
}

/** Read an MSI capability already present in config space. */
export function findMsi(config: ConfigSpace): MsiLayout | undefined {
  const offset = config.findCapability(CapabilityId.MSI);
  if (!offset) return undefined;
  const control = config.u16(offset + 2);
  const is64 = (control & MsiControl.ADDR64) !== 0;
  const pvm = (control & MsiControl.PER_VECTOR_MASK) !== 0;
  const maskOffset = pvm ? offset + (is64 ? 16 : 12) : 0;
  return {
    offset,
    vectors: 1 << ((control >> MsiControl.MMC_SHIFT) & 7),
    is64,
    perVectorMask: pvm,
    maskOffset,
    pendingOffset: pvm ? maskOffset + 4 : 0,
  };
}

export function findMsix(config: ConfigSpace): MsixLayout | undefined {
  const offset = config.findCapability(CapabilityId.MSIX);
  if (!offset) return undefined;
  const table = config.u32(offset + 4);
  const pba = config.u32(offset + 8);
  return {
    offset,
    vectors: (config.u16(offset + 2) & MsixControl.TABLE_SIZE_MASK) + 1,
    tableBar: table & 7,
    tableOffset: (table & ~7) >>> 0,
    pbaBar: pba & 7,
    pbaOffset: (pba & ~7) >>> 0,
  };
}
