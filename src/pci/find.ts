/**
 * Finding PCI functions from code, the way `userpci list --vendor/--device/--class` does from the
 * shell (and node-usb's findByIds does for USB): filter sysfs's list by IDs, class and driver.
 */
import { InvalidArgumentError } from '../errors.js';
import { type PciDeviceInfo, type SysfsOptions, listPciDevices } from './sysfs.js';

export interface PciDeviceFilter {
  readonly vendorId?: number;
  readonly deviceId?: number;
  readonly subsystemVendorId?: number;
  readonly subsystemId?: number;
  /**
   * Class as lspci and `userpci list --class` take it, in hex: "01" (base class), "0108"
   * (base class and subclass: NVMe) or "010802" (with the programming interface).
   */
  readonly class?: string;
  /** Bound kernel driver's name ("vfio-pci", "nvme"); `null` for functions no driver holds. */
  readonly driver?: string | null;
}

/** A parsed `class` filter: the class code shifted right by `shift` must equal `value`. */
export interface ClassMatcher {
  readonly value: number;
  readonly shift: number;
}

/** "01", "0108" or "010802" (0x prefix allowed); InvalidArgumentError otherwise. */
export function parseClassFilter(text: string): ClassMatcher {
  const digits = String(text).trim().replace(/^0x/i, '');
  if (!/^[0-9a-f]+$/i.test(digits) || ![2, 4, 6].includes(digits.length)) {
    throw new InvalidArgumentError(`class expects 2, 4 or 6 hex digits (02, 0200 or 020000), not "${text}"`);
  }
  return { value: parseInt(digits, 16), shift: 24 - digits.length * 4 };
}

/** Whether `device` passes every criterion `filter` sets (an empty filter passes everything). */
export function matchesPciFilter(device: PciDeviceInfo, filter: PciDeviceFilter): boolean {
  const classMatcher = filter.class === undefined ? undefined : parseClassFilter(filter.class);
  return matches(device, filter, classMatcher);
}

/**
 * Every function matching `filter`, in address order, each with its sysfs description (IDs,
 * class, driver, IOMMU group, NUMA node, resources). `inspectPciDevice(result.address)` adds the
 * parsed config space: BARs and capabilities.
 */
export async function findPciDevices(filter: PciDeviceFilter = {}, options: SysfsOptions = {}): Promise<PciDeviceInfo[]> {
  checkFilter(filter);
  const classMatcher = filter.class === undefined ? undefined : parseClassFilter(filter.class);
  const devices = await listPciDevices(options);
  return devices.filter((device) => matches(device, filter, classMatcher));
}

/** The first function (in address order) matching `filter`, or undefined. */
export async function findPciDevice(filter: PciDeviceFilter, options: SysfsOptions = {}): Promise<PciDeviceInfo | undefined> {
  return (await findPciDevices(filter, options))[0];
}

/** The first function with these vendor and device IDs, or undefined (node-usb's findByIds). */
export function findByIds(vendorId: number, deviceId: number, options: SysfsOptions = {}): Promise<PciDeviceInfo | undefined> {
  return findPciDevice({ vendorId, deviceId }, options);
}

function matches(device: PciDeviceInfo, filter: PciDeviceFilter, classMatcher: ClassMatcher | undefined): boolean {
  return (
    (filter.vendorId === undefined || device.vendorId === filter.vendorId) &&
    (filter.deviceId === undefined || device.deviceId === filter.deviceId) &&
    (filter.subsystemVendorId === undefined || device.subsystemVendorId === filter.subsystemVendorId) &&
    (filter.subsystemId === undefined || device.subsystemId === filter.subsystemId) &&
    (classMatcher === undefined || device.classCode >> classMatcher.shift === classMatcher.value) &&
    (filter.driver === undefined || device.driver === (filter.driver ?? undefined))
  );
}

function checkFilter(filter: PciDeviceFilter): void {
  if (typeof filter !== 'object' || filter === null) throw new InvalidArgumentError('the filter must be an object');
  for (const key of ['vendorId', 'deviceId', 'subsystemVendorId', 'subsystemId'] as const) {
    const value = filter[key];
    if (value !== undefined && (!Number.isInteger(value) || value < 0 || value > 0xffff)) {
      throw new InvalidArgumentError(`${key} must be a 16-bit ID such as 0x1af4, not ${String(value)}`);
    }
  }
  if (filter.driver !== undefined && filter.driver !== null && typeof filter.driver !== 'string') {
    throw new InvalidArgumentError(`driver must be a driver name or null, not ${String(filter.driver)}`);
  }
}
