/**
 * What the host is doing with a PCI function right now, so that taking it away from its driver
 * cannot pull a mounted disk or a live network link from under the machine: block devices behind
 * it that are mounted, used for swap, held by another block device (LVM, dm, md) or open in a
 * process, and network interfaces that are up.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface InUseOptions {
  /** Default /sys. */
  sysfsRoot?: string;
  /** Default /proc (mounts, swaps and processes' open files). */
  procRoot?: string;
}

export interface DeviceUse {
  /** The PCI function it is behind. */
  address: string;
  kind: 'block' | 'net';
  /** Block device ("nvme0n1p2") or interface ("eth0"). */
  name: string;
  /** "mounted on /boot", "swap", "held by dm-0", "open by pid 812 (postgres)", "interface is up". */
  reason: string;
}

/** Every use of `address`'s block devices and network interfaces; empty when it is idle. */
export function findDeviceUses(address: string, options: InUseOptions = {}): DeviceUse[] {
  const sysfs = options.sysfsRoot ?? '/sys';
  const proc = options.procRoot ?? '/proc';
  const device = realpathOrUndefined(path.join(sysfs, 'bus/pci/devices', address));
  if (device === undefined) return [];
  const uses: DeviceUse[] = [];
  const blocks = blockDevicesBelow(sysfs, device);
  if (blocks.length > 0) {
    const mounts = mountsByDevice(proc);
    const swaps = swapNames(proc);
    const openers = openersByDevice(proc, new Set(blocks.map((b) => b.dev)));
    for (const block of blocks) {
      for (const where of mounts.get(block.dev) ?? []) uses.push({ address, kind: 'block', name: block.name, reason: `mounted on ${where}` });
      if (swaps.has(block.name)) uses.push({ address, kind: 'block', name: block.name, reason: 'swap' });
      for (const holder of block.holders) uses.push({ address, kind: 'block', name: block.name, reason: `held by ${holder}` });
      for (const opener of openers.get(block.dev) ?? []) uses.push({ address, kind: 'block', name: block.name, reason: `open by ${opener}` });
    }
  }
  for (const name of readdirOrEmpty(path.join(device, 'net'))) {
    const flags = Number(readOrUndefined(path.join(device, 'net', name, 'flags')) ?? '0');
    // IFF_UP: administratively up, whether or not a cable is in.
    if ((flags & 0x1) !== 0) uses.push({ address, kind: 'net', name, reason: 'interface is up' });
  }
  return uses;
}

interface BlockDevice {
  name: string;
  /** "major:minor" as sysfs `dev` and mountinfo write it. */
  dev: string;
  holders: string[];
}

/** Disks whose sysfs device sits below the PCI function, and their partitions. */
function blockDevicesBelow(sysfs: string, device: string): BlockDevice[] {
  const found: BlockDevice[] = [];
  const blockRoot = path.join(sysfs, 'block');
  for (const disk of readdirOrEmpty(blockRoot)) {
    const real = realpathOrUndefined(path.join(blockRoot, disk));
    if (real === undefined || !real.startsWith(`${device}${path.sep}`)) continue;
    found.push(describeBlock(real, disk));
    for (const entry of readdirOrEmpty(real)) {
      if (entry.startsWith(disk) && fs.existsSync(path.join(real, entry, 'partition'))) found.push(describeBlock(path.join(real, entry), entry));
    }
  }
  return found;
}

function describeBlock(directory: string, name: string): BlockDevice {
  return { name, dev: (readOrUndefined(path.join(directory, 'dev')) ?? '').trim(), holders: readdirOrEmpty(path.join(directory, 'holders')) };
}

/** mountinfo field 3 is major:minor, field 5 the mount point (octal escapes for spaces). */
function mountsByDevice(proc: string): Map<string, string[]> {
  const mounts = new Map<string, string[]>();
  for (const line of (readOrUndefined(path.join(proc, 'self/mountinfo')) ?? '').split('\n')) {
    const fields = line.split(' ');
    if (fields.length < 5) continue;
    const where = fields[4]!.replace(/\\([0-7]{3})/g, (_m, octal: string) => String.fromCharCode(parseInt(octal, 8)));
    const list = mounts.get(fields[2]!) ?? [];
    list.push(where);
    mounts.set(fields[2]!, list);
  }
  return mounts;
}

function swapNames(proc: string): Set<string> {
  const names = new Set<string>();
  for (const line of (readOrUndefined(path.join(proc, 'swaps')) ?? '').split('\n').slice(1)) {
    const file = line.split(/\s+/)[0];
    if (file) names.add(path.basename(file));
  }
  return names;
}

/** Processes holding one of the block devices open, by "major:minor" (what fuser -m would find). */
function openersByDevice(proc: string, devs: ReadonlySet<string>): Map<string, string[]> {
  const openers = new Map<string, string[]>();
  for (const pid of readdirOrEmpty(proc)) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    for (const fd of readdirOrEmpty(path.join(proc, pid, 'fd'))) {
      let stat: fs.Stats;
      try {
        stat = fs.statSync(path.join(proc, pid, 'fd', fd));
      } catch {
        continue; // closed meanwhile, or not ours to look at
      }
      if (!stat.isBlockDevice()) continue;
      const dev = `${Math.floor(stat.rdev / 256) & 0xfff}:${(stat.rdev & 0xff) | ((stat.rdev >>> 12) & 0xfff00)}`;
      if (!devs.has(dev)) continue;
      const command = (readOrUndefined(path.join(proc, pid, 'comm')) ?? '?').trim();
      const list = openers.get(dev) ?? [];
      const who = `pid ${pid} (${command})`;
      if (!list.includes(who)) list.push(who);
      openers.set(dev, list);
    }
  }
  return openers;
}

function realpathOrUndefined(file: string): string | undefined {
  try {
    return fs.realpathSync(file);
  } catch {
    return undefined;
  }
}

function readdirOrEmpty(directory: string): string[] {
  try {
    return fs.readdirSync(directory).sort();
  } catch {
    return [];
  }
}

function readOrUndefined(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}
