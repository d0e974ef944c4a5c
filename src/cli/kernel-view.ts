/**
 * What the kernel adds to config space for `userpci info`, as lspci -vvv shows it: the IRQ it
 * routed the function's interrupt pin to (sysfs `irq`), the physical slot it sits in (sysfs
 * `slots`), and the modules whose aliases match the function's `modalias` (modules.alias of the
 * running kernel, what modprobe would consider).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { PciAddress } from '../pci/address.js';
import type { InspectedDevice } from '../pci/sysfs.js';

/** sysfs `irq`; without it (a capture), the Interrupt Line register, as lspci does. */
export function readIrq({ device, config }: InspectedDevice): number {
  try {
    const value = Number.parseInt(fs.readFileSync(path.join(device.sysfsPath, 'irq'), 'utf8').trim(), 10);
    if (Number.isInteger(value) && value >= 0) return value;
  } catch {
    // No irq attribute: fall through to config space.
  }
  return config.interruptLine;
}

/**
 * The physical slot's name, as lspci's "Physical Slot:" line: the directory under
 * <sysfs>/bus/pci/slots whose `address` (domain:bus:device, or bus:device on old kernels) is the
 * function's; every function of the device shares it. Undefined when no slot claims it.
 */
export function physicalSlot(sysfsRoot: string, { domain, bus, device }: PciAddress): string | undefined {
  const slots = path.join(sysfsRoot, 'bus', 'pci', 'slots');
  let names: string[];
  try {
    names = fs.readdirSync(slots).sort();
  } catch {
    return undefined; // no slot driver (pciehp, acpiphp, ...) registered any
  }
  for (const name of names) {
    let address: string;
    try {
      address = fs.readFileSync(path.join(slots, name, 'address'), 'utf8').trim();
    } catch {
      continue;
    }
    const parts = address.split(':').map((part) => Number.parseInt(part, 16));
    const [d, b, dev] = parts.length === 3 ? parts : [0, ...parts];
    if (parts.every(Number.isInteger) && d === domain && b === bus && dev === device) return name;
  }
  return undefined;
}

/**
 * Module names whose `alias pci:...` pattern matches the function's modalias, in the order
 * modules.alias lists them, each once. USERPCI_MODULES_ROOT replaces /lib/modules (tests).
 */
export function kernelModules(sysfsPath: string): string[] {
  let modalias: string;
  let aliases: string;
  try {
    modalias = fs.readFileSync(path.join(sysfsPath, 'modalias'), 'utf8').trim();
    const root = process.env['USERPCI_MODULES_ROOT'] || '/lib/modules';
    aliases = fs.readFileSync(path.join(root, os.release(), 'modules.alias'), 'utf8');
  } catch {
    return [];
  }
  const modules: string[] = [];
  for (const line of aliases.split('\n')) {
    const match = /^alias (pci:\S+) (\S+)$/.exec(line);
    if (match && !modules.includes(match[2]!) && globMatches(match[1]!, modalias)) modules.push(match[2]!);
  }
  return modules;
}

/** fnmatch for modules.alias patterns: `*`, `?` and `[...]` classes; case as written. */
function globMatches(pattern: string, text: string): boolean {
  let source = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*') source += '.*';
    else if (c === '?') source += '.';
    else if (c === '[') {
      const end = pattern.indexOf(']', i + 1);
      if (end < 0) source += '\\[';
      else {
        source += `[${pattern.slice(i + 1, end).replace(/^!/, '^').replace(/\\/g, '\\\\')}]`;
        i = end;
      }
    } else source += c.replace(/[.+^${}()|\\]/g, '\\$&');
  }
  return new RegExp(`^${source}$`).test(text);
}
