/**
 * Hand a device to vfio-pci and back, the way the kernel documents it: driver_override, unbind
 * from the current driver, probe. The previous driver is remembered under /run so `unbind`
 * can restore it even from another process or after a reboot-less crash.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { UserpciError, InvalidArgumentError, toErrorCode } from '../errors';
import { parsePciAddress, formatPciAddress } from './address';

export const VFIO_DRIVER = 'vfio-pci';

export interface BindOptions {
  sysfsRoot?: string;
  /** Where previous drivers are remembered. */
  stateDir?: string;
}

function roots(options: BindOptions): { sysfs: string; state: string } {
  return { sysfs: options.sysfsRoot ?? '/sys', state: options.stateDir ?? '/run/userpci' };
}

function devicePath(sysfs: string, address: string): string {
  return path.join(sysfs, 'bus/pci/devices', address);
}

/** The driver a function is bound to, or undefined. */
export function boundDriver(address: string, options: BindOptions = {}): string | undefined {
  const { sysfs } = roots(options);
  try {
    return path.basename(fs.readlinkSync(path.join(devicePath(sysfs, address), 'driver')));
  } catch {
    return undefined;
  }
}

/** IOMMU group number, or undefined when the device has none (no IOMMU). */
export function iommuGroupOf(address: string, options: BindOptions = {}): number | undefined {
  const { sysfs } = roots(options);
  try {
    return Number(path.basename(fs.readlinkSync(path.join(devicePath(sysfs, address), 'iommu_group'))));
  } catch {
    return undefined;
  }
}

/** Every function in the device's IOMMU group, itself included. */
export function iommuGroupMembers(group: number, options: BindOptions = {}): string[] {
  const { sysfs } = roots(options);
  return fs.readdirSync(path.join(sysfs, 'kernel/iommu_groups', String(group), 'devices')).sort();
}

function normalize(address: string): string {
  return formatPciAddress(parsePciAddress(address));
}

function requireDevice(sysfs: string, address: string): void {
  if (!fs.existsSync(devicePath(sysfs, address))) throw new UserpciError('ENOENT', `no PCI device at ${address}`);
}

function writeSysfs(file: string, value: string, doing: string): void {
  try {
    fs.writeFileSync(file, value);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const code = toErrorCode(e.code);
    const hint = code === 'EACCES' || code === 'EPERM' ? ' (binding drivers needs root)' : '';
    throw new UserpciError(code, `${doing}: ${code} writing ${file}${hint}`, { cause: err });
  }
}

/** Make sure vfio-pci is there, loading it if we may. */
function ensureVfioPci(sysfs: string): void {
  const driverDir = path.join(sysfs, 'bus/pci/drivers', VFIO_DRIVER);
  if (fs.existsSync(driverDir)) return;
  try {
    execFileSync('modprobe', [VFIO_DRIVER], { stdio: 'ignore' });
  } catch {
    // Reported below with what to do.
  }
  if (!fs.existsSync(driverDir)) {
    throw new UserpciError('ENODEV', 'the vfio-pci driver is not loaded: run `modprobe vfio-pci` (kernel option CONFIG_VFIO_PCI)');
  }
}

/**
 * Functions in the same IOMMU group that are bound to host drivers other than vfio-pci.
 * VFIO refuses a group unless every member is bound to vfio-pci (or to nothing); bridges
 * driven by pcieport are the kernel's accepted exception.
 */
export function groupBlockers(address: string, options: BindOptions = {}): { address: string; driver: string }[] {
  const group = iommuGroupOf(address, options);
  if (group === undefined) return [];
  const blockers: { address: string; driver: string }[] = [];
  for (const member of iommuGroupMembers(group, options)) {
    if (member === address) continue;
    const driver = boundDriver(member, options);
    if (driver && driver !== VFIO_DRIVER && driver !== 'pcieport') blockers.push({ address: member, driver });
  }
  return blockers;
}

export interface BindResult {
  address: string;
  previousDriver: string | undefined;
  iommuGroup: number;
}

/** Bind a function to vfio-pci. Refuses when its IOMMU group holds devices on host drivers. */
export function bindToVfio(addressText: string, options: BindOptions = {}): BindResult {
  const { sysfs, state } = roots(options);
  const address = normalize(addressText);
  requireDevice(sysfs, address);
  const group = iommuGroupOf(address, options);
  if (group === undefined) {
    throw new UserpciError('ENODEV', `${address} has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on on the kernel command line, VT-d/AMD-Vi in firmware)`);
  }
  const blockers = groupBlockers(address, options);
  if (blockers.length > 0) {
    const names = blockers.map((b) => `${b.address} (${b.driver})`).join(', ');
    throw new UserpciError('EBUSY', `IOMMU group ${group} of ${address} also holds devices bound to host drivers: ${names}; bind them to vfio-pci too or move them out of the group`);
  }
  const current = boundDriver(address, options);
  if (current === VFIO_DRIVER) return { address, previousDriver: readRemembered(state, address), iommuGroup: group };
  ensureVfioPci(sysfs);
  const dev = devicePath(sysfs, address);
  writeSysfs(path.join(dev, 'driver_override'), VFIO_DRIVER, `binding ${address}`);
  if (current) {
    remember(state, address, current);
    writeSysfs(path.join(dev, 'driver/unbind'), address, `unbinding ${address} from ${current}`);
  }
  writeSysfs(path.join(sysfs, 'bus/pci/drivers_probe'), address, `probing ${address}`);
  const now = boundDriver(address, options);
  if (now !== VFIO_DRIVER) throw new UserpciError('EIO', `${address} did not bind to vfio-pci (bound to ${now ?? 'nothing'}); see dmesg`);
  return { address, previousDriver: current, iommuGroup: group };
}

/** Release a function from vfio-pci and give it back to the driver it had before, if any. */
export function unbindFromVfio(addressText: string, options: BindOptions = {}): { address: string; restoredDriver: string | undefined } {
  const { sysfs, state } = roots(options);
  const address = normalize(addressText);
  requireDevice(sysfs, address);
  const dev = devicePath(sysfs, address);
  const current = boundDriver(address, options);
  if (current && current !== VFIO_DRIVER) throw new InvalidArgumentError(`${address} is bound to ${current}, not to vfio-pci`);
  if (current) writeSysfs(path.join(dev, 'driver/unbind'), address, `unbinding ${address} from vfio-pci`);
  // An empty override lets the normal id matching choose the driver again.
  writeSysfs(path.join(dev, 'driver_override'), '\n', `clearing driver_override of ${address}`);
  const previous = readRemembered(state, address);
  if (previous) {
    const bindFile = path.join(sysfs, 'bus/pci/drivers', previous, 'bind');
    if (fs.existsSync(bindFile)) writeSysfs(bindFile, address, `binding ${address} back to ${previous}`);
    forget(state, address);
  } else {
    try {
      fs.writeFileSync(path.join(sysfs, 'bus/pci/drivers_probe'), address);
    } catch {
      // No driver claims it: it stays unbound, which is what it was.
    }
  }
  return { address, restoredDriver: boundDriver(address, options) };
}

function stateFile(state: string, address: string): string {
  return path.join(state, `${address}.driver`);
}

function remember(state: string, address: string, driver: string): void {
  fs.mkdirSync(state, { recursive: true });
  fs.writeFileSync(stateFile(state, address), driver);
}

function readRemembered(state: string, address: string): string | undefined {
  try {
    return fs.readFileSync(stateFile(state, address), 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

function forget(state: string, address: string): void {
  fs.rmSync(stateFile(state, address), { force: true });
}
