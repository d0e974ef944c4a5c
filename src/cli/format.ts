/**
 * Helpers the CLI commands share: the environment they read, lspci-style naming, sizes, JSON.
 */
import { type ParseArgsConfig, parseArgs } from 'node:util';
import { DEFAULT_PCI_IDS_PATHS, type PciIds, loadPciIds } from '../pci/ids.js';
import { DEFAULT_SYSFS_ROOT, type PciDeviceInfo } from '../pci/sysfs.js';

/**
 * A malformed command line. main() prints the message and the command's usage, exit code 2.
 */
export class UsageError extends Error {
  /** @param synopsis the usage line to show when not the command's first one */
  constructor(
    message: string,
    readonly synopsis?: string,
  ) {
    super(message);
    this.name = 'UsageError';
  }
}

type Options = NonNullable<ParseArgsConfig['options']>;
type ParsedCommandLine<O extends Options> = ReturnType<typeof parseArgs<{ args: string[]; options: O; allowPositionals: true; strict: true }>>;

/**
 * A command line as the commands take it: `options` strictly (an unknown option is a usage error,
 * which main() words) and exactly the positionals `names` lists, e.g. ['ADDRESS']: one missing is
 * "missing ADDRESS", one more is "unexpected argument". A command with several forms passes
 * `names` as a function of the positionals given (`config ADDRESS write` takes one more), and
 * the form's usage line as `synopsis` when it is not the command's first.
 */
export function parseCommandLine<const O extends Options>(
  args: string[],
  options: O,
  names: readonly string[] | ((positionals: readonly string[]) => readonly string[]),
  synopsis?: (positionals: readonly string[]) => string | undefined,
): ParsedCommandLine<O> {
  const parsed = parseArgs({ args, options, allowPositionals: true, strict: true });
  const form = typeof names === 'function' ? names(parsed.positionals) : names;
  const given = parsed.positionals.length;
  if (given < form.length) throw new UsageError(`missing ${form[given]}`, synopsis?.(parsed.positionals));
  if (given > form.length) throw new UsageError(`unexpected argument "${parsed.positionals[form.length]}"`, synopsis?.(parsed.positionals));
  return parsed;
}

/**
 * Where the commands look. Both can be redirected by environment variables so tests and
 * captured trees work without root: USERPCI_SYSFS_ROOT (default /sys) and USERPCI_PCI_IDS
 * (a pci.ids path; default /usr/share/misc/pci.ids then /usr/share/hwdata/pci.ids).
 */
export function sysfsRoot(): string {
  return process.env['USERPCI_SYSFS_ROOT'] || DEFAULT_SYSFS_ROOT;
}

export function pciIds(): Promise<PciIds> {
  const override = process.env['USERPCI_PCI_IDS'];
  return loadPciIds(override ? [override] : DEFAULT_PCI_IDS_PATHS);
}

export function hex(value: number, width: number): string {
  return value.toString(16).padStart(width, '0');
}

export function hexBig(value: bigint): string {
  return `0x${value.toString(16)}`;
}

/** lspci -nn naming: "Ethernet controller [0200]"; subclass name, else class name, else "Class". */
export function formatClass(ids: PciIds, classCode: number): string {
  const base = classCode >> 16;
  const sub = (classCode >> 8) & 0xff;
  const name = ids.subclassName(base, sub) ?? ids.className(base) ?? 'Class';
  return `${name} [${hex(classCode >> 8, 4)}]`;
}

/** lspci -nn naming: "Vendor Device [vvvv:dddd]", "Vendor Device [..]" or "Device [..]". */
export function formatNamePair(vendorName: string | undefined, deviceName: string | undefined, ids: string): string {
  if (vendorName === undefined) return `Device [${ids}]`;
  return `${vendorName} ${deviceName ?? 'Device'} [${ids}]`;
}

export function formatVendorDevice(ids: PciIds, vendorId: number, deviceId: number): string {
  return formatNamePair(ids.vendorName(vendorId), ids.deviceName(vendorId, deviceId), `${hex(vendorId, 4)}:${hex(deviceId, 4)}`);
}

export function formatSubsystem(
  ids: PciIds,
  vendorId: number,
  deviceId: number,
  subsystemVendorId: number,
  subsystemId: number,
): string {
  // pci.ids without this subsystem: lspci names the device itself, after the subsystem's vendor.
  return formatNamePair(
    ids.vendorName(subsystemVendorId),
    ids.subsystemName(vendorId, deviceId, subsystemVendorId, subsystemId) ?? ids.deviceName(vendorId, deviceId),
    `${hex(subsystemVendorId, 4)}:${hex(subsystemId, 4)}`,
  );
}

/** One lspci -nn -D line. */
export function formatDeviceLine(ids: PciIds, device: PciDeviceInfo): string {
  const revision = device.revision !== 0 ? ` (rev ${hex(device.revision, 2)})` : '';
  return `${device.address} ${formatClass(ids, device.classCode)}: ${formatVendorDevice(ids, device.vendorId, device.deviceId)}${revision}`;
}

/** Sizes as lspci prints them: the largest of K, M, G, T that divides exactly. */
export function formatSize(bytes: number): string {
  const suffixes = ['', 'K', 'M', 'G', 'T'];
  let value = bytes;
  let index = 0;
  while (index < suffixes.length - 1 && value % 1024 === 0 && value > 0) {
    value /= 1024;
    index++;
  }
  return `${value}${suffixes[index]}`;
}

/** "+"/"-" flags in lspci's style: "Mem+ BusMaster- ...". */
export function formatFlags(value: number, names: ReadonlyArray<readonly [bit: number, name: string]>): string {
  return names.map(([bit, name]) => `${name}${(value & bit) !== 0 ? '+' : '-'}`).join(' ');
}

export function flag(value: boolean): string {
  return value ? '+' : '-';
}

/** The fields `list --json` and `info --json` share. IDs are lowercase hex strings, as typed on the command line. */
export function deviceSummary(ids: PciIds, device: PciDeviceInfo): Record<string, unknown> {
  const base = device.classCode >> 16;
  const sub = (device.classCode >> 8) & 0xff;
  const progIf = device.classCode & 0xff;
  const hasSubsystem = device.subsystemVendorId !== undefined && device.subsystemId !== undefined;
  return {
    address: device.address,
    class: hex(device.classCode >> 8, 4),
    className: ids.subclassName(base, sub) ?? ids.className(base) ?? null,
    progIf: hex(progIf, 2),
    progIfName: ids.progIfName(base, sub, progIf) ?? null,
    vendor: hex(device.vendorId, 4),
    vendorName: ids.vendorName(device.vendorId) ?? null,
    device: hex(device.deviceId, 4),
    deviceName: ids.deviceName(device.vendorId, device.deviceId) ?? null,
    revision: hex(device.revision, 2),
    subsystemVendor: hasSubsystem ? hex(device.subsystemVendorId!, 4) : null,
    subsystemVendorName: hasSubsystem ? (ids.vendorName(device.subsystemVendorId!) ?? null) : null,
    subsystemDevice: hasSubsystem ? hex(device.subsystemId!, 4) : null,
    subsystemName: hasSubsystem
      ? (ids.subsystemName(device.vendorId, device.deviceId, device.subsystemVendorId!, device.subsystemId!) ?? null)
      : null,
    driver: device.driver ?? null,
    iommuGroup: device.iommuGroup ?? null,
    numaNode: device.numaNode ?? null,
  };
}

/** JSON with bigints (64-bit addresses) as "0x..." strings, which JSON itself cannot carry. */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_key, item: unknown) => (typeof item === 'bigint' ? hexBig(item) : item), 2);
}

export function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

/** Parse a hex number as typed for setpci-like commands ("1af4", "0x1af4"); undefined if malformed. */
export function parseHex(text: string): number | undefined {
  const match = /^(?:0x)?([0-9a-f]{1,8})$/i.exec(text.trim());
  return match ? parseInt(match[1]!, 16) : undefined;
}

/** A non-negative count from the command line: "4096", "4K", "1M", "0x1000". */
export function parseCount(text: string | undefined, name: string): number | undefined {
  if (text === undefined) return undefined;
  const m = /^(0x[0-9a-f]+|\d+)([kmgt]?)$/i.exec(text.trim());
  if (!m) throw new UsageError(`${name} must be a non-negative integer (suffixes K, M, G), got "${text}"`);
  const scale = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const value = Number(m[1]) * scale;
  if (!Number.isSafeInteger(value)) throw new UsageError(`${name} is too large: ${text}`);
  return value;
}
