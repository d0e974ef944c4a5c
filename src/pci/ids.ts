/**
 * Vendor, device, subsystem and class names from the system's pci.ids (the PCI ID Project's
 * database that lspci uses). The file is ~1.3 MB and a lookup needs a handful of its lines, so it
 * is kept as one string and indexed lazily: a vendor's block is found with one indexOf on first
 * use and parsed then; the class section is parsed the first time a class is named.
 * When no pci.ids is installed every lookup returns undefined and callers print bare IDs.
 */
import { readFile } from 'node:fs/promises';
import { describeValue } from '../arguments.js';
import { InvalidArgumentError } from '../errors.js';

export const DEFAULT_PCI_IDS_PATHS: readonly string[] = ['/usr/share/misc/pci.ids', '/usr/share/hwdata/pci.ids'];

interface DeviceEntry {
  readonly name: string;
  /** Key: subvendor << 16 | subdevice. */
  readonly subsystems: Map<number, string>;
}

interface VendorEntry {
  readonly name: string;
  readonly devices: Map<number, DeviceEntry>;
}

interface ClassEntry {
  readonly name: string;
  readonly subclasses: Map<number, { readonly name: string; readonly progIfs: Map<number, string> }>;
}

export class PciIds {
  private readonly vendors = new Map<number, VendorEntry | null>();
  private classes: Map<number, ClassEntry> | undefined;

  /** @param text pci.ids contents; '' for an empty database. @param source the file it came from. */
  constructor(
    private readonly text: string,
    readonly source: string | undefined = undefined,
  ) {}

  /** An empty database: every name is unknown. */
  static empty(): PciIds {
    return new PciIds('', undefined);
  }

  get available(): boolean {
    return this.text.length > 0;
  }

  vendorName(vendorId: number): string | undefined {
    return this.vendor(vendorId)?.name;
  }

  deviceName(vendorId: number, deviceId: number): string | undefined {
    return this.vendor(vendorId)?.devices.get(deviceId)?.name;
  }

  /**
   * Name of the subsystem (the board built around the chip). As lspci does, a subsystem that
   * repeats the function's own IDs takes the device's name when it has no entry of its own.
   */
  subsystemName(vendorId: number, deviceId: number, subsystemVendorId: number, subsystemId: number): string | undefined {
    const own = this.vendor(vendorId)?.devices.get(deviceId)?.subsystems.get(subsystemVendorId * 0x10000 + subsystemId);
    if (own !== undefined) return own;
    if (vendorId === subsystemVendorId && deviceId === subsystemId) return this.deviceName(vendorId, deviceId);
    return undefined;
  }

  className(baseClass: number): string | undefined {
    return this.classTable().get(baseClass)?.name;
  }

  subclassName(baseClass: number, subclass: number): string | undefined {
    return this.classTable().get(baseClass)?.subclasses.get(subclass)?.name;
  }

  progIfName(baseClass: number, subclass: number, progIf: number): string | undefined {
    return this.classTable().get(baseClass)?.subclasses.get(subclass)?.progIfs.get(progIf);
  }

  private vendor(vendorId: number): VendorEntry | undefined {
    let entry = this.vendors.get(vendorId);
    if (entry === undefined) {
      entry = this.parseVendor(vendorId);
      this.vendors.set(vendorId, entry);
    }
    return entry ?? undefined;
  }

  private parseVendor(vendorId: number): VendorEntry | null {
    // Vendor lines are the only lines that start with four hex digits and two spaces;
    // device and subsystem lines start with tabs, class lines with "C ".
    const key = `${hex4(vendorId)}  `;
    let start = this.text.startsWith(key) ? 0 : this.text.indexOf(`\n${key}`);
    if (start < 0) return null;
    if (this.text[start] === '\n') start++;
    const lines = this.blockLines(start);
    const name = lines[0]!.slice(key.length).trim();
    const devices = new Map<number, DeviceEntry>();
    let current: DeviceEntry | undefined;
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i]!;
      // Fixed columns, no regexes: Intel's block alone is thousands of lines.
      if (line.startsWith('\t\t')) {
        // "\t\tssss dddd  name"
        const subvendor = parseHex4(line, 2);
        const subdevice = parseHex4(line, 7);
        if (current && subvendor >= 0 && subdevice >= 0 && line[6] === ' ') {
          current.subsystems.set(subvendor * 0x10000 + subdevice, line.slice(11).trim());
        }
      } else if (line.startsWith('\t')) {
        // "\tdddd  name"
        const device = parseHex4(line, 1);
        current = device >= 0 ? { name: line.slice(5).trim(), subsystems: new Map() } : undefined;
        if (current) devices.set(device, current);
      }
    }
    return { name, devices };
  }

  /** The line at `start` and the indented (or comment) lines that follow it. */
  private blockLines(start: number): string[] {
    const lines: string[] = [];
    let position = start;
    while (position < this.text.length) {
      let end = this.text.indexOf('\n', position);
      if (end < 0) end = this.text.length;
      const line = this.text.slice(position, end);
      if (lines.length > 0 && line.length > 0 && line[0] !== '\t' && line[0] !== '#') break;
      if (line.length > 0 && line[0] !== '#') lines.push(line.endsWith('\r') ? line.slice(0, -1) : line);
      position = end + 1;
    }
    return lines;
  }

  private classTable(): Map<number, ClassEntry> {
    if (this.classes) return this.classes;
    const classes = new Map<number, ClassEntry>();
    let position = this.text.startsWith('C ') ? 0 : this.text.indexOf('\nC ');
    let currentClass: ClassEntry | undefined;
    let currentSubclass: { name: string; progIfs: Map<number, string> } | undefined;
    if (position >= 0) {
      for (const raw of this.text.slice(position).split('\n')) {
        const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
        if (line.length === 0 || line[0] === '#') continue;
        let match: RegExpExecArray | null;
        if ((match = /^C ([0-9a-fA-F]{2})\s+(.*)$/.exec(line))) {
          currentClass = { name: match[2]!.trim(), subclasses: new Map() };
          currentSubclass = undefined;
          classes.set(parseInt(match[1]!, 16), currentClass);
        } else if ((match = /^\t\t([0-9a-fA-F]{2})\s+(.*)$/.exec(line))) {
          currentSubclass?.progIfs.set(parseInt(match[1]!, 16), match[2]!.trim());
        } else if ((match = /^\t([0-9a-fA-F]{2})\s+(.*)$/.exec(line))) {
          currentSubclass = { name: match[2]!.trim(), progIfs: new Map() };
          currentClass?.subclasses.set(parseInt(match[1]!, 16), currentSubclass);
        } else if (line[0] !== '\t') {
          // A non-class section (none exists today): stop attaching lines to the last class.
          currentClass = undefined;
          currentSubclass = undefined;
        }
      }
    }
    this.classes = classes;
    return classes;
  }
}

const loaded = new Map<string, Promise<PciIds>>();

/**
 * The first readable pci.ids among `paths` (default: /usr/share/misc then /usr/share/hwdata),
 * read once per process; an empty database when none is readable.
 */
export function loadPciIds(paths: readonly string[] = DEFAULT_PCI_IDS_PATHS): Promise<PciIds> {
  if (!Array.isArray(paths) || !paths.every((p) => typeof p === 'string')) return Promise.reject(new InvalidArgumentError(`loadPciIds takes an array of file paths, got ${describeValue(paths)}`));
  const key = paths.join('\0');
  let promise = loaded.get(key);
  if (!promise) {
    promise = readFirst(paths);
    loaded.set(key, promise);
  }
  return promise;
}

async function readFirst(paths: readonly string[]): Promise<PciIds> {
  for (const path of paths) {
    try {
      return new PciIds(await readFile(path, 'utf8'), path);
    } catch {
      // Absent or unreadable: try the next location.
    }
  }
  return PciIds.empty();
}

/** Four hex digits at `start`, or -1. */
function parseHex4(line: string, start: number): number {
  const text = line.slice(start, start + 4);
  return /^[0-9a-fA-F]{4}$/.test(text) ? parseInt(text, 16) : -1;
}

function hex4(value: number): string {
  return value.toString(16).padStart(4, '0');
}
