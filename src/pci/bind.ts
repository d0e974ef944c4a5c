/**
 * Hand a device to vfio-pci and back, the way the kernel documents it: driver_override, unbind
 * from the current driver, probe. The previous driver is remembered under /run so `unbind`
 * can restore it even from another process or after a reboot-less crash.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { optionsObject } from '../arguments';
import { UserpciError, toErrorCode } from '../errors';
import { parsePciAddress, formatPciAddress } from './address';
import { type DeviceUse, findDeviceUses } from './in-use';

export const VFIO_DRIVER = 'vfio-pci';

export interface BindOptions {
  sysfsRoot?: string;
  /** Where mounts, swaps and open files are read (default /proc). */
  procRoot?: string;
  /** Where previous drivers are remembered. */
  stateDir?: string;
  /** Bind even when the function (or a member of its IOMMU group) is in use by the host. */
  force?: boolean;
  /** Check and plan only: the result's `actions` say what binding would write; nothing is. */
  dryRun?: boolean;
}

function roots(options: BindOptions): { sysfs: string; state: string } {
  options = optionsObject(options, 'options');
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
  /** True when nothing was changed (`dryRun`). */
  dryRun: boolean;
  /** The steps taken (or, dry, that would be): "write vfio-pci to .../driver_override", ... */
  actions: string[];
  /** Uses of the device that `force` overrode (empty unless forced). */
  overriddenUses: DeviceUse[];
}

/** The host uses of `address` and of every other member of its IOMMU group. */
export function deviceUses(address: string, options: BindOptions = {}): DeviceUse[] {
  parsePciAddress(address);
  const group = iommuGroupOf(address, options);
  let members = [address];
  try {
    if (group !== undefined) members = [address, ...iommuGroupMembers(group, options).filter((m) => m !== address)];
  } catch {
    // No member list to read: judge the function alone.
  }
  return members.flatMap((member) => findDeviceUses(member, options));
}

function describeUses(uses: readonly DeviceUse[], address: string): string {
  return uses.map((u) => `${u.name} ${u.reason}${u.address === address ? '' : ` (behind ${u.address}, same IOMMU group)`}`).join('; ');
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
  const current = boundDriver(address, options);
  const dryRun = options.dryRun === true;
  if (current === VFIO_DRIVER) {
    return { address, previousDriver: readRemembered(state, address), iommuGroup: group, dryRun, actions: [], overriddenUses: [] };
  }
  // Taking a device from its driver while a filesystem is mounted on it or its link carries
  // traffic loses data or the machine's connection; only an explicit force does that.
  const uses = deviceUses(address, options);
  if (uses.length > 0 && options.force !== true) {
    throw new UserpciError('EBUSY', `${address} is in use: ${describeUses(uses, address)}; unbinding ${current ?? 'its driver'} would take it from the host (--force / force: true binds anyway)`);
  }
  const blockers = groupBlockers(address, options);
  if (blockers.length > 0) {
    const names = blockers.map((b) => `${b.address} (${b.driver})`).join(', ');
    throw new UserpciError('EBUSY', `IOMMU group ${group} of ${address} also holds devices bound to host drivers: ${names}; bind them to vfio-pci too or move them out of the group`);
  }
  const dev = devicePath(sysfs, address);
  const plan: { action: string; run: () => void }[] = [];
  if (!fs.existsSync(path.join(sysfs, 'bus/pci/drivers', VFIO_DRIVER))) plan.push({ action: `load the ${VFIO_DRIVER} module (modprobe ${VFIO_DRIVER})`, run: () => ensureVfioPci(sysfs) });
  plan.push({
    action: `write ${VFIO_DRIVER} to ${path.join(dev, 'driver_override')}`,
    run: () => writeSysfs(path.join(dev, 'driver_override'), VFIO_DRIVER, `binding ${address}`),
  });
  if (current) {
    plan.push({
      action: `remember ${current} in ${stateFile(state, address)} and write ${address} to ${path.join(dev, 'driver/unbind')} (detach ${current})`,
      run: () => {
        remember(state, address, current);
        writeSysfs(path.join(dev, 'driver/unbind'), address, `unbinding ${address} from ${current}`);
      },
    });
  }
  plan.push({ action: `write ${address} to ${path.join(sysfs, 'bus/pci/drivers_probe')}`, run: () => writeSysfs(path.join(sysfs, 'bus/pci/drivers_probe'), address, `probing ${address}`) });
  const result = { address, previousDriver: current, iommuGroup: group, dryRun, actions: plan.map((step) => step.action), overriddenUses: uses };
  if (dryRun) return result;
  for (const step of plan) step.run();
  const now = boundDriver(address, options);
  if (now !== VFIO_DRIVER) throw new UserpciError('EIO', `${address} did not bind to vfio-pci (bound to ${now ?? 'nothing'}); see dmesg`);
  return result;
}

/** Release a function from vfio-pci and give it back to the driver it had before, if any. */
export function unbindFromVfio(addressText: string, options: BindOptions = {}): { address: string; restoredDriver: string | undefined } {
  const { sysfs, state } = roots(options);
  const address = normalize(addressText);
  requireDevice(sysfs, address);
  const dev = devicePath(sysfs, address);
  const current = boundDriver(address, options);
  if (current && current !== VFIO_DRIVER) throw new UserpciError('EINVAL', `${address} is bound to ${current}, not to vfio-pci: nothing to release`);
  if (!current && readOverride(dev) !== VFIO_DRIVER) {
    throw new UserpciError('EINVAL', `${address} is not bound to vfio-pci (no driver is bound): nothing to release`);
  }
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

/** driver_override's content, or undefined when none is set ("(null)") or the file is absent. */
function readOverride(dev: string): string | undefined {
  try {
    const text = fs.readFileSync(path.join(dev, 'driver_override'), 'utf8').trim();
    return text === '' || text === '(null)' ? undefined : text;
  } catch {
    return undefined;
  }
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
