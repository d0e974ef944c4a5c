/**
 * Parser of a PCI function's configuration space, from the bytes sysfs `config` (or VFIO's config
 * region, or a vfio-user server) returns: the header, BARs, and both capability lists.
 *
 * Malformed lists are a fact of life (broken firmware, a device dropping off the bus and reading
 * all-ones, hand-edited dumps), and someone inspecting such a device wants to see what *can* be
 * read. So by default the parser keeps every capability it reached before the problem, stops that
 * list, and records a warning (offset + message). With `{ strict: true }` the first problem throws
 * a MalformedConfigError instead, for code that must not act on a half-read list. Either way every
 * walk is bounded (a visited set per list), so no input can make it loop.
 */
import { checkBytes, describeValue, optionsObject } from '../arguments.js';
import { InvalidArgumentError, MalformedConfigError } from '../errors.js';
import * as regs from '../uapi/pci-regs.js';
import {
  type CapabilityFields,
  type ExtendedCapabilityFields,
  capabilityName,
  decodeCapability,
  decodeExtendedCapability,
  extendedCapabilityName,
} from './capabilities.js';

export interface ParseConfigOptions {
  /**
   * BAR sizes in bytes by BAR index (0-5), as the kernel measured them (sysfs `resource`).
   * Config space alone cannot tell a BAR's size: sizing writes all-ones to the BAR.
   */
  readonly barSizes?: readonly (number | undefined)[];
  /** Expansion ROM size in bytes, from the same source. */
  readonly romSize?: number;
  /** Throw MalformedConfigError on the first malformed list instead of recording a warning. */
  readonly strict?: boolean;
}

export interface ConfigWarning {
  /** Config-space offset where the problem was found. */
  readonly offset: number;
  readonly message: string;
}

export interface Bar {
  readonly index: number;
  /** Config-space offset of the BAR register. */
  readonly registerOffset: number;
  readonly kind: 'memory' | 'io';
  readonly is64Bit: boolean;
  readonly prefetchable: boolean;
  /** Legacy memory BAR type that must be placed below 1 MiB. */
  readonly below1M: boolean;
  /** Bus address programmed in the BAR (64-bit BARs span two registers, hence bigint). */
  readonly address: bigint;
  /** Bytes; undefined when no size source was given. */
  readonly size: number | undefined;
}

export interface ExpansionRom {
  readonly registerOffset: number;
  readonly address: bigint;
  readonly enabled: boolean;
  readonly size: number | undefined;
}

export interface AddressWindow {
  readonly base: bigint;
  readonly limit: bigint;
}

export interface BridgeHeader {
  readonly primaryBus: number;
  readonly secondaryBus: number;
  readonly subordinateBus: number;
  readonly secondaryLatencyTimer: number;
  readonly secondaryStatus: number;
  readonly bridgeControl: number;
  /** Undefined when the window is closed (base above limit). */
  readonly ioWindow: AddressWindow | undefined;
  readonly memoryWindow: AddressWindow | undefined;
  readonly prefetchableWindow: (AddressWindow & { readonly is64Bit: boolean }) | undefined;
}

export interface Capability {
  readonly offset: number;
  readonly id: number;
  readonly name: string;
  /** Next pointer as read (low two bits masked). */
  readonly next: number;
  readonly fields?: CapabilityFields;
}

export interface ExtendedCapability {
  readonly offset: number;
  readonly id: number;
  readonly version: number;
  readonly name: string;
  readonly next: number;
  readonly fields?: ExtendedCapabilityFields;
}

export interface ConfigSpace {
  /** Bytes that were available to parse: 64 (unprivileged sysfs read), 256 or 4096. */
  readonly length: number;
  readonly vendorId: number;
  readonly deviceId: number;
  readonly command: number;
  readonly status: number;
  readonly revision: number;
  /** 24-bit class code: base class, subclass, programming interface. */
  readonly classCode: number;
  readonly baseClass: number;
  readonly subclass: number;
  readonly progIf: number;
  readonly cacheLineSize: number;
  readonly latencyTimer: number;
  /** 0 endpoint, 1 PCI-to-PCI bridge, 2 CardBus bridge; without the multi-function bit. */
  readonly headerType: number;
  readonly multiFunction: boolean;
  readonly bist: number;
  readonly interruptLine: number;
  /** 0 none, 1..4 INTA..INTD. */
  readonly interruptPin: number;
  /** Type 0 header only. */
  readonly subsystemVendorId: number | undefined;
  readonly subsystemId: number | undefined;
  readonly bridge: BridgeHeader | undefined;
  readonly bars: readonly Bar[];
  readonly expansionRom: ExpansionRom | undefined;
  /**
   * False when the status register announces a list but the bytes given end before 256, so the
   * list could not be read whole (an unprivileged sysfs read gives 64).
   */
  readonly capabilitiesReadable: boolean;
  readonly capabilities: readonly Capability[];
  /** False when fewer than 4096 bytes were given, so any extended list could not be read whole. */
  readonly extendedCapabilitiesReadable: boolean;
  readonly extendedCapabilities: readonly ExtendedCapability[];
  readonly warnings: readonly ConfigWarning[];
}

/** Parse config-space bytes. Fewer than the 64-byte header is a MalformedConfigError. */
export function parseConfigSpace(bytes: Uint8Array, options: ParseConfigOptions = {}): ConfigSpace {
  checkBytes(bytes, 'config space');
  options = optionsObject(options, 'parseConfigSpace options');
  if (bytes.length < regs.PCI_CFG_SIZE_UNPRIVILEGED) {
    throw new MalformedConfigError(
      `config space is ${bytes.length} bytes; the header alone needs ${regs.PCI_CFG_SIZE_UNPRIVILEGED}`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const warnings: ConfigWarning[] = [];
  const problem = (offset: number, message: string): void => {
    if (options.strict) throw new MalformedConfigError(message);
    warnings.push({ offset, message });
  };

  const vendorId = view.getUint16(regs.PCI_VENDOR_ID, true);
  const status = view.getUint16(regs.PCI_STATUS, true);
  const headerByte = view.getUint8(regs.PCI_HEADER_TYPE);
  const headerType = headerByte & regs.PCI_HEADER_TYPE_MASK;
  const classWord = view.getUint16(regs.PCI_CLASS_DEVICE, true);
  const progIf = view.getUint8(regs.PCI_CLASS_PROG);
  if (vendorId === 0xffff) {
    problem(regs.PCI_VENDOR_ID, 'vendor ID reads 0xffff: the function did not answer (removed, powered off or in reset)');
  }
  if (headerType > regs.PCI_HEADER_TYPE_CARDBUS) {
    problem(regs.PCI_HEADER_TYPE, `unknown header type ${headerType}`);
  }

  const isNormal = headerType === regs.PCI_HEADER_TYPE_NORMAL;
  const barCount =
    headerType === regs.PCI_HEADER_TYPE_NORMAL
      ? regs.PCI_BAR_COUNT_NORMAL
      : headerType === regs.PCI_HEADER_TYPE_BRIDGE
        ? regs.PCI_BAR_COUNT_BRIDGE
        : headerType === regs.PCI_HEADER_TYPE_CARDBUS
          ? regs.PCI_BAR_COUNT_CARDBUS
          : 0;
  const romRegister =
    headerType === regs.PCI_HEADER_TYPE_NORMAL
      ? regs.PCI_ROM_ADDRESS
      : headerType === regs.PCI_HEADER_TYPE_BRIDGE
        ? regs.PCI_ROM_ADDRESS1
        : undefined;

  const capabilityPointerOffset =
    headerType === regs.PCI_HEADER_TYPE_CARDBUS ? regs.PCI_CB_CAPABILITY_LIST : regs.PCI_CAPABILITY_LIST;
  const hasCapabilityList = (status & regs.PCI_STATUS_CAP_LIST) !== 0 && headerType <= regs.PCI_HEADER_TYPE_CARDBUS;
  const capabilitiesReadable = !hasCapabilityList || bytes.length >= regs.PCI_CFG_SIZE;

  // With the header alone (an unprivileged sysfs read) there is nothing to walk; a capture cut
  // anywhere after it is walked as far as it goes.
  const capabilities =
    hasCapabilityList && bytes.length > regs.PCI_CFG_SIZE_UNPRIVILEGED
      ? walkCapabilities(bytes, view.getUint8(capabilityPointerOffset), capabilityPointerOffset, vendorId, problem)
      : [];
  const extendedCapabilities =
    bytes.length > regs.PCI_CFG_SIZE ? walkExtendedCapabilities(bytes, problem) : [];

  return {
    length: bytes.length,
    vendorId,
    deviceId: view.getUint16(regs.PCI_DEVICE_ID, true),
    command: view.getUint16(regs.PCI_COMMAND, true),
    status,
    revision: view.getUint8(regs.PCI_REVISION_ID),
    classCode: (classWord << 8) | progIf,
    baseClass: classWord >> 8,
    subclass: classWord & 0xff,
    progIf,
    cacheLineSize: view.getUint8(regs.PCI_CACHE_LINE_SIZE),
    latencyTimer: view.getUint8(regs.PCI_LATENCY_TIMER),
    headerType,
    multiFunction: (headerByte & regs.PCI_HEADER_TYPE_MULTI_FUNCTION) !== 0,
    bist: view.getUint8(regs.PCI_BIST),
    interruptLine: view.getUint8(regs.PCI_INTERRUPT_LINE),
    interruptPin: view.getUint8(regs.PCI_INTERRUPT_PIN),
    subsystemVendorId: isNormal ? view.getUint16(regs.PCI_SUBSYSTEM_VENDOR_ID, true) : undefined,
    subsystemId: isNormal ? view.getUint16(regs.PCI_SUBSYSTEM_ID, true) : undefined,
    bridge: headerType === regs.PCI_HEADER_TYPE_BRIDGE ? parseBridgeHeader(view) : undefined,
    bars: parseBars(view, barCount, options.barSizes ?? [], problem),
    expansionRom: romRegister === undefined ? undefined : parseExpansionRom(view, romRegister, options.romSize),
    capabilitiesReadable,
    capabilities,
    extendedCapabilitiesReadable: bytes.length >= regs.PCI_CFG_SIZE_EXPRESS,
    extendedCapabilities,
    warnings,
  };
}

export function findCapability(config: ConfigSpace, id: number): Capability | undefined {
  checkParsed(config);
  return config.capabilities.find((capability) => capability.id === id);
}

export function findExtendedCapability(config: ConfigSpace, id: number): ExtendedCapability | undefined {
  checkParsed(config);
  return config.extendedCapabilities.find((capability) => capability.id === id);
}

type ProblemSink = (offset: number, message: string) => void;

function hex(value: number): string {
  return `0x${value.toString(16)}`;
}

function parseBars(view: DataView, count: number, sizes: readonly (number | undefined)[], problem: ProblemSink): Bar[] {
  const bars: Bar[] = [];
  for (let index = 0; index < count; index++) {
    const registerOffset = regs.PCI_BASE_ADDRESS_0 + 4 * index;
    const raw = view.getUint32(registerOffset, true);
    const size = sizes[index];
    if ((raw & regs.PCI_BASE_ADDRESS_SPACE_IO) !== 0) {
      bars.push({
        index,
        registerOffset,
        kind: 'io',
        is64Bit: false,
        prefetchable: false,
        below1M: false,
        address: BigInt((raw & regs.PCI_BASE_ADDRESS_IO_MASK) >>> 0),
        size,
      });
      continue;
    }
    const memoryType = raw & regs.PCI_BASE_ADDRESS_MEM_TYPE_MASK;
    let is64Bit = memoryType === regs.PCI_BASE_ADDRESS_MEM_TYPE_64;
    let high = 0;
    if (is64Bit) {
      if (index + 1 < count) {
        high = view.getUint32(registerOffset + 4, true);
      } else {
        problem(registerOffset, `BAR ${index} is 64-bit but is the last BAR; its upper half is missing`);
        is64Bit = false;
      }
    }
    // An unimplemented BAR reads zero and has no size: not worth listing.
    if (raw !== 0 || high !== 0 || (size ?? 0) > 0) {
      bars.push({
        index,
        registerOffset,
        kind: 'memory',
        is64Bit,
        prefetchable: (raw & regs.PCI_BASE_ADDRESS_MEM_PREFETCH) !== 0,
        below1M: memoryType === regs.PCI_BASE_ADDRESS_MEM_TYPE_1M,
        address: (BigInt(high) << 32n) | BigInt((raw & regs.PCI_BASE_ADDRESS_MEM_MASK) >>> 0),
        size,
      });
    }
    if (is64Bit) index++; // the upper half is not a BAR of its own
  }
  return bars;
}

function parseExpansionRom(view: DataView, registerOffset: number, size: number | undefined): ExpansionRom | undefined {
  const raw = view.getUint32(registerOffset, true);
  const address = (raw & regs.PCI_ROM_ADDRESS_MASK) >>> 0;
  if (address === 0 && (size ?? 0) === 0) return undefined;
  return { registerOffset, address: BigInt(address), enabled: (raw & regs.PCI_ROM_ADDRESS_ENABLE) !== 0, size };
}

function parseBridgeHeader(view: DataView): BridgeHeader {
  const ioBase = view.getUint8(regs.PCI_IO_BASE);
  const ioLimit = view.getUint8(regs.PCI_IO_LIMIT);
  const io32 = (ioBase & regs.PCI_IO_RANGE_TYPE_MASK) === regs.PCI_IO_RANGE_TYPE_32;
  const ioUpperBase = io32 ? view.getUint16(regs.PCI_IO_BASE_UPPER16, true) : 0;
  const ioUpperLimit = io32 ? view.getUint16(regs.PCI_IO_LIMIT_UPPER16, true) : 0;
  const ioWindow = window(
    BigInt(ioUpperBase * 0x10000 + ((ioBase & 0xf0) << 8)),
    BigInt(ioUpperLimit * 0x10000 + ((ioLimit & 0xf0) << 8) + 0xfff),
  );

  const memoryBase = view.getUint16(regs.PCI_MEMORY_BASE, true);
  const memoryLimit = view.getUint16(regs.PCI_MEMORY_LIMIT, true);
  const memoryWindow = window(
    BigInt(((memoryBase & 0xfff0) << 16) >>> 0),
    BigInt((((memoryLimit & 0xfff0) << 16) | 0xfffff) >>> 0),
  );

  const prefetchBase = view.getUint16(regs.PCI_PREF_MEMORY_BASE, true);
  const prefetchLimit = view.getUint16(regs.PCI_PREF_MEMORY_LIMIT, true);
  const prefetch64 = (prefetchBase & regs.PCI_PREF_RANGE_TYPE_MASK) === regs.PCI_PREF_RANGE_TYPE_64;
  const prefetchUpperBase = prefetch64 ? view.getUint32(regs.PCI_PREF_BASE_UPPER32, true) : 0;
  const prefetchUpperLimit = prefetch64 ? view.getUint32(regs.PCI_PREF_LIMIT_UPPER32, true) : 0;
  const prefetchWindow = window(
    (BigInt(prefetchUpperBase) << 32n) | BigInt(((prefetchBase & 0xfff0) << 16) >>> 0),
    (BigInt(prefetchUpperLimit) << 32n) | BigInt((((prefetchLimit & 0xfff0) << 16) | 0xfffff) >>> 0),
  );

  return {
    primaryBus: view.getUint8(regs.PCI_PRIMARY_BUS),
    secondaryBus: view.getUint8(regs.PCI_SECONDARY_BUS),
    subordinateBus: view.getUint8(regs.PCI_SUBORDINATE_BUS),
    secondaryLatencyTimer: view.getUint8(regs.PCI_SEC_LATENCY_TIMER),
    secondaryStatus: view.getUint16(regs.PCI_SEC_STATUS, true),
    bridgeControl: view.getUint16(regs.PCI_BRIDGE_CONTROL, true),
    ioWindow,
    memoryWindow,
    prefetchableWindow: prefetchWindow && { ...prefetchWindow, is64Bit: prefetch64 },
  };
}

function window(base: bigint, limit: bigint): AddressWindow | undefined {
  return base <= limit ? { base, limit } : undefined;
}

function walkCapabilities(
  bytes: Uint8Array,
  firstPointer: number,
  pointerOffset: number,
  vendorId: number,
  problem: ProblemSink,
): Capability[] {
  // Standard capabilities must fit in the first 256 bytes; bounding the view makes a capability
  // that runs past them throw instead of decoding extended-space bytes.
  const limit = Math.min(bytes.length, regs.PCI_CFG_SIZE);
  const view = new DataView(bytes.buffer, bytes.byteOffset, limit);
  const capabilities: Capability[] = [];
  const visited = new Set<number>();
  let from = pointerOffset;
  let pointer = firstPointer & regs.PCI_CAP_POINTER_MASK;
  while (pointer !== 0) {
    if (pointer < regs.PCI_STD_HEADER_SIZEOF) {
      problem(from, `capability pointer at ${hex(from)} is ${hex(pointer)}, inside the 64-byte header`);
      break;
    }
    if (pointer + 2 > limit) {
      problem(from, `capability pointer at ${hex(from)} is ${hex(pointer)}, past the ${limit} bytes of config space`);
      break;
    }
    if (visited.has(pointer)) {
      problem(from, `capability list loops: the pointer at ${hex(from)} leads back to ${hex(pointer)}`);
      break;
    }
    visited.add(pointer);
    const id = view.getUint8(pointer + regs.PCI_CAP_LIST_ID);
    const next = view.getUint8(pointer + regs.PCI_CAP_LIST_NEXT) & regs.PCI_CAP_POINTER_MASK;
    if (id === 0xff) {
      // Linux stops here too: all-ones means the function stopped answering mid-walk.
      problem(pointer, `capability at ${hex(pointer)} has ID 0xff (all-ones read)`);
      break;
    }
    const name = capabilityName(id);
    let fields: CapabilityFields | undefined;
    try {
      fields = decodeCapability(id, view, pointer, { vendorId });
    } catch (error) {
      if (!(error instanceof RangeError)) throw error;
      problem(pointer, `${name} capability at ${hex(pointer)} runs past the ${limit} bytes of config space`);
    }
    capabilities.push(fields === undefined ? { offset: pointer, id, name, next } : { offset: pointer, id, name, next, fields });
    from = pointer + regs.PCI_CAP_LIST_NEXT;
    pointer = next;
  }
  return capabilities;
}

function walkExtendedCapabilities(bytes: Uint8Array, problem: ProblemSink): ExtendedCapability[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const start = regs.PCI_EXT_CAP_START;
  if (start + regs.PCI_EXT_CAP_HEADER_SIZE > bytes.length) {
    problem(start, `extended config space truncated: ${bytes.length} bytes end inside the first header at ${hex(start)}`);
    return [];
  }
  const first = view.getUint32(start, true);
  // Zero: no extended capabilities. All-ones: no extended space (a conventional PCI function
  // behind a PCIe bridge, or a function that does not answer).
  if (first === 0 || first === 0xffffffff) return [];

  const capabilities: ExtendedCapability[] = [];
  const visited = new Set<number>();
  let from = start;
  let pointer = start;
  while (pointer !== 0) {
    if (pointer < start) {
      problem(from, `extended capability pointer at ${hex(from)} is ${hex(pointer)}, below ${hex(start)}`);
      break;
    }
    if (pointer + regs.PCI_EXT_CAP_HEADER_SIZE > bytes.length) {
      problem(
        from,
        `extended config space truncated: the capability at ${hex(pointer)} lies past the ${bytes.length} bytes given`,
      );
      break;
    }
    if (visited.has(pointer)) {
      problem(from, `extended capability list loops: the header at ${hex(from)} leads back to ${hex(pointer)}`);
      break;
    }
    visited.add(pointer);
    const header = view.getUint32(pointer, true);
    if (header === 0xffffffff) {
      problem(pointer, `extended capability header at ${hex(pointer)} reads all-ones`);
      break;
    }
    const id = header & 0xffff;
    const version = (header >>> 16) & 0xf;
    const next = (header >>> 20) & regs.PCI_EXT_CAP_NEXT_MASK;
    const name = id === 0 ? 'Null' : extendedCapabilityName(id);
    let fields: ExtendedCapabilityFields | undefined;
    try {
      fields = decodeExtendedCapability(id, view, pointer);
    } catch (error) {
      if (!(error instanceof RangeError)) throw error;
      problem(pointer, `extended config space truncated: ${name} at ${hex(pointer)} runs past the ${bytes.length} bytes given`);
    }
    const capability = { offset: pointer, id, version, name, next };
    capabilities.push(fields === undefined ? capability : { ...capability, fields });
    from = pointer;
    pointer = next;
  }
  return capabilities;
}

function checkParsed(config: ConfigSpace): void {
  if (config === null || typeof config !== 'object' || !Array.isArray(config.capabilities) || !Array.isArray(config.extendedCapabilities)) {
    throw new InvalidArgumentError(`expected a parsed config space (parseConfigSpace's result), got ${describeValue(config)}`);
  }
}
