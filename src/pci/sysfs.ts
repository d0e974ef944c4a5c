/**
 * PCI functions as Linux describes them under /sys/bus/pci/devices. The sysfs root is a parameter
 * everywhere so tests (and tools working on a captured tree) can point at a fake one.
 */
import { open, readFile, readdir, readlink, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { optionsObject } from '../arguments.js';
import { InvalidArgumentError, RangeAccessError, UserpciError, isSystemError, toErrorCode } from '../errors.js';
import { PCI_CFG_SIZE_UNPRIVILEGED, PCI_REVISION_ID } from '../uapi/pci-regs.js';
import { type PciAddress, comparePciAddresses, formatPciAddress, parsePciAddress, toPciAddress } from './address.js';
import { type ConfigSpace, parseConfigSpace } from './config-space.js';

export const DEFAULT_SYSFS_ROOT = '/sys';

export interface SysfsOptions {
  /** Where sysfs is mounted; the devices are read from `<root>/bus/pci/devices`. Default /sys. */
  readonly sysfsRoot?: string;
}

/** One line of sysfs `resource`: the kernel's view of a BAR, the ROM or a bridge window. */
export interface PciResource {
  readonly index: number;
  readonly start: bigint;
  readonly end: bigint;
  /** IORESOURCE_* flags (0x100 I/O, 0x200 memory, 0x2000 prefetchable, 0x100000 64-bit...). */
  readonly flags: number;
  /** Bytes; 0 for an unused line. */
  readonly size: number;
}

/** Resource lines 0-5 are the BARs and line 6 the expansion ROM (Linux's PCI_ROM_RESOURCE). */
export const RESOURCE_INDEX_ROM = 6;

export interface PciDeviceInfo {
  /** Long form with domain, as sysfs names it: "0000:00:03.0". */
  readonly address: string;
  readonly location: PciAddress;
  readonly sysfsPath: string;
  readonly vendorId: number;
  readonly deviceId: number;
  /** 24-bit class code: base class, subclass, programming interface. */
  readonly classCode: number;
  readonly revision: number;
  /** Undefined where sysfs has no subsystem files (some bridges). */
  readonly subsystemVendorId: number | undefined;
  readonly subsystemId: number | undefined;
  /** Bound kernel driver's name; undefined when unbound. */
  readonly driver: string | undefined;
  /** Undefined when the function sits in no IOMMU group (no IOMMU, or it is disabled). */
  readonly iommuGroup: number | undefined;
  /** Undefined when the platform reports none (-1). */
  readonly numaNode: number | undefined;
  readonly resources: readonly PciResource[];
}

export interface ConfigBytes {
  readonly bytes: Uint8Array;
  /** What a privileged reader would get: 256 or 4096. */
  readonly fullSize: number;
  /**
   * True when the kernel gave fewer bytes than exist: it hands unprivileged readers only the
   * 64-byte header, so capabilities need root (CAP_SYS_ADMIN).
   */
  readonly restricted: boolean;
}

export function pciDevicesDirectory(options: SysfsOptions = {}): string {
  options = optionsObject(options, 'sysfs options');
  return join(options.sysfsRoot ?? DEFAULT_SYSFS_ROOT, 'bus', 'pci', 'devices');
}

export function pciDevicePath(address: string | PciAddress, options: SysfsOptions = {}): string {
  return join(pciDevicesDirectory(options), formatPciAddress(toPciAddress(address)));
}

/** Every PCI function sysfs lists, in address order. */
export async function listPciDevices(options: SysfsOptions = {}): Promise<PciDeviceInfo[]> {
  const directory = pciDevicesDirectory(options);
  let names: string[];
  try {
    names = await readdir(directory);
  } catch (error) {
    if (isSystemError(error) && error.code === 'ENOENT') {
      throw new UserpciError('ENOENT', `no PCI bus in sysfs: ${directory} does not exist`, { cause: error });
    }
    throw wrapFsError(error, `listing ${directory}`);
  }
  const locations: PciAddress[] = [];
  for (const name of names) {
    try {
      locations.push(parsePciAddress(name));
    } catch {
      // Not a function's directory (nothing else lives there today); ignore rather than fail.
    }
  }
  locations.sort(comparePciAddresses);
  return Promise.all(locations.map((location) => readDeviceAt(location, options)));
}

/** One function's sysfs description. An absent function is a UserpciError with code ENOENT. */
export async function readPciDevice(address: string | PciAddress, options: SysfsOptions = {}): Promise<PciDeviceInfo> {
  const location = toPciAddress(address);
  await requireDevice(location, options);
  return readDeviceAt(location, options);
}

/** The function's config bytes through sysfs `config` (all of them as root, 64 otherwise). */
export async function readConfigBytes(address: string | PciAddress, options: SysfsOptions = {}): Promise<ConfigBytes> {
  const location = toPciAddress(address);
  const path = join(await requireDevice(location, options), 'config');
  try {
    const [bytes, info] = await Promise.all([readFile(path), stat(path)]);
    const fullSize = Math.max(info.size, bytes.length);
    return { bytes: new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length), fullSize, restricted: bytes.length < fullSize };
  } catch (error) {
    throw wrapFsError(error, `reading ${path}`);
  }
}

/**
 * `length` bytes at `offset` of the function's config space, read with one pread. Bytes past the
 * 64-byte header that the kernel withholds from unprivileged readers are an EACCES UserpciError
 * saying so; bytes past the end of config space a RangeAccessError.
 */
export async function readConfigRange(
  address: string | PciAddress,
  offset: number,
  length: number,
  options: SysfsOptions = {},
): Promise<Uint8Array> {
  const location = toPciAddress(address);
  const path = join(await requireDevice(location, options), 'config');
  if (!Number.isInteger(offset) || offset < 0 || !Number.isInteger(length) || length < 0) {
    throw new InvalidArgumentError(`invalid config range: offset ${offset}, length ${length}`);
  }
  let handle;
  try {
    handle = await open(path, 'r');
  } catch (error) {
    throw wrapFsError(error, `opening ${path}`);
  }
  try {
    const size = (await handle.stat()).size;
    if (offset + length > size) {
      throw new RangeAccessError(
        `config offset 0x${offset.toString(16)} (+${length}) is past the ${size} bytes of ${formatPciAddress(location)}'s config space`,
      );
    }
    const buffer = new Uint8Array(length);
    const { bytesRead } = await handle.read(buffer, 0, length, offset);
    if (bytesRead < length) {
      throw new UserpciError(
        'EACCES',
        `reading config offset 0x${offset.toString(16)} of ${formatPciAddress(location)} needs root (CAP_SYS_ADMIN): ` +
          `sysfs gives unprivileged readers only the first ${PCI_CFG_SIZE_UNPRIVILEGED} bytes`,
      );
    }
    return buffer;
  } catch (error) {
    throw wrapFsError(error, `reading ${path}`);
  } finally {
    await handle.close();
  }
}

export interface InspectedDevice {
  readonly device: PciDeviceInfo;
  readonly config: ConfigSpace;
  readonly configRestricted: boolean;
  readonly configFullSize: number;
}

/** sysfs attributes plus parsed config space, BAR sizes taken from `resource`. */
export async function inspectPciDevice(
  address: string | PciAddress,
  options: SysfsOptions & { readonly strict?: boolean } = {},
): Promise<InspectedDevice> {
  const device = await readPciDevice(address, options);
  const read = await readConfigBytes(device.location, options);
  const config = parseConfigSpace(read.bytes, {
    barSizes: barSizesFromResources(device.resources),
    romSize: device.resources[RESOURCE_INDEX_ROM]?.size,
    strict: options.strict ?? false,
  });
  return { device, config, configRestricted: read.restricted, configFullSize: read.fullSize };
}

/**
 * Write `data` at `offset` through sysfs `config` (root only). The kernel turns an aligned 1, 2 or
 * 4-byte write into one config cycle of that width, so callers wanting a register-width write
 * must pass an aligned offset and that many bytes.
 */
export async function writeConfigBytes(
  address: string | PciAddress,
  offset: number,
  data: Uint8Array,
  options: SysfsOptions = {},
): Promise<void> {
  const location = toPciAddress(address);
  const path = join(await requireDevice(location, options), 'config');
  if (!Number.isInteger(offset) || offset < 0) throw new InvalidArgumentError(`invalid config offset ${offset}`);
  let handle;
  try {
    handle = await open(path, 'r+');
  } catch (error) {
    throw wrapFsError(error, `opening ${path} for writing`);
  }
  try {
    const size = (await handle.stat()).size;
    if (offset + data.length > size) {
      throw new RangeAccessError(
        `config write of ${data.length} bytes at 0x${offset.toString(16)} ends past the ${size} bytes of ${formatPciAddress(location)}'s config space`,
      );
    }
    const { bytesWritten } = await handle.write(data, 0, data.length, offset);
    if (bytesWritten !== data.length) {
      throw new UserpciError('EIO', `short config write to ${path}: ${bytesWritten} of ${data.length} bytes`);
    }
  } catch (error) {
    throw wrapFsError(error, `writing ${path}`);
  } finally {
    await handle.close();
  }
}

/** Parse sysfs `resource`: one "0xstart 0xend 0xflags" line per resource, index by line. */
export function parseResourceFile(text: string): PciResource[] {
  const resources: PciResource[] = [];
  for (const line of text.split('\n')) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 3) continue;
    const [start, end, flags] = fields.map((field) => BigInt(field)) as [bigint, bigint, bigint];
    // An unused line reads 0 0 0; an unassigned BAR still has start <= end when it has a size.
    const size = flags === 0n && start === 0n && end === 0n ? 0 : Number(end - start + 1n);
    resources.push({ index: resources.length, start, end, flags: Number(flags), size });
  }
  return resources;
}

export function barSizesFromResources(resources: readonly PciResource[]): (number | undefined)[] {
  return resources.slice(0, 6).map((resource) => (resource.size > 0 ? resource.size : undefined));
}

async function requireDevice(location: PciAddress, options: SysfsOptions): Promise<string> {
  const path = pciDevicePath(location, options);
  try {
    await stat(path);
  } catch (error) {
    if (isSystemError(error) && error.code === 'ENOENT') {
      throw new UserpciError('ENOENT', `no PCI device ${formatPciAddress(location)} (${path} does not exist)`, { cause: error });
    }
    throw wrapFsError(error, `looking up ${path}`);
  }
  return path;
}

async function readDeviceAt(location: PciAddress, options: SysfsOptions): Promise<PciDeviceInfo> {
  const path = pciDevicePath(location, options);
  const [vendor, device, classText, revisionText, subsystemVendor, subsystemDevice, numaText, resourceText, driver, group] =
    await Promise.all([
      readAttribute(path, 'vendor'),
      readAttribute(path, 'device'),
      readAttribute(path, 'class'),
      readAttribute(path, 'revision'),
      readAttribute(path, 'subsystem_vendor'),
      readAttribute(path, 'subsystem_device'),
      readAttribute(path, 'numa_node'),
      readAttribute(path, 'resource'),
      readLinkName(path, 'driver'),
      readLinkName(path, 'iommu_group'),
    ]);
  // Kernels before 4.x have no `revision` file; the byte is in the readable part of config anyway.
  const revision = revisionText !== undefined ? parseNumber(revisionText) : await readRevisionFromConfig(path);
  const numaNode = numaText === undefined ? undefined : parseNumber(numaText);
  return {
    address: formatPciAddress(location),
    location,
    sysfsPath: path,
    vendorId: parseNumber(vendor ?? '0xffff') ?? 0xffff,
    deviceId: parseNumber(device ?? '0xffff') ?? 0xffff,
    classCode: parseNumber(classText ?? '0') ?? 0,
    revision: revision ?? 0,
    subsystemVendorId: subsystemVendor === undefined ? undefined : parseNumber(subsystemVendor),
    subsystemId: subsystemDevice === undefined ? undefined : parseNumber(subsystemDevice),
    driver,
    iommuGroup: group === undefined ? undefined : parseNumber(group),
    numaNode: numaNode !== undefined && numaNode >= 0 ? numaNode : undefined,
    resources: resourceText === undefined ? [] : parseResourceFile(resourceText),
  };
}

async function readAttribute(directory: string, name: string): Promise<string | undefined> {
  try {
    return (await readFile(join(directory, name), 'utf8')).trim();
  } catch (error) {
    if (isSystemError(error) && (error.code === 'ENOENT' || error.code === 'EACCES' || error.code === 'EPERM')) return undefined;
    throw wrapFsError(error, `reading ${join(directory, name)}`);
  }
}

async function readLinkName(directory: string, name: string): Promise<string | undefined> {
  try {
    return basename(await readlink(join(directory, name)));
  } catch (error) {
    if (isSystemError(error) && (error.code === 'ENOENT' || error.code === 'EINVAL')) return undefined;
    throw wrapFsError(error, `reading link ${join(directory, name)}`);
  }
}

async function readRevisionFromConfig(directory: string): Promise<number | undefined> {
  try {
    const bytes = await readFile(join(directory, 'config'));
    return bytes.length > PCI_REVISION_ID ? bytes[PCI_REVISION_ID] : undefined;
  } catch {
    return undefined;
  }
}

/** sysfs writes numbers as "0x1af4", "-1" or "5". */
function parseNumber(text: string): number | undefined {
  const value = Number(text.trim());
  return Number.isFinite(value) ? value : undefined;
}

function hintFor(code: string): string | undefined {
  switch (code) {
    case 'EACCES':
      return 'needs root (CAP_SYS_ADMIN)';
    case 'EPERM':
      // Root gets EPERM from a kernel in lockdown mode, which forbids direct PCI access to all.
      return process.getuid?.() === 0
        ? 'refused although running as root: kernel lockdown forbids direct PCI access, see dmesg and kernel_lockdown(7)'
        : 'needs root (CAP_SYS_ADMIN)';
    case 'ENOENT':
      return 'no such file';
    case 'ENODEV':
      return 'the device is gone';
    default:
      return undefined;
  }
}

function wrapFsError(error: unknown, doing: string): UserpciError {
  if (error instanceof UserpciError) return error;
  if (isSystemError(error)) {
    const hint = hintFor(error.code);
    return new UserpciError(toErrorCode(error.code), `${doing}: ${error.code}${hint ? ` (${hint})` : ''}`, {
      cause: error,
      errno: error.errno,
      syscall: error.syscall,
    });
  }
  return new UserpciError('EIO', `${doing}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
}
