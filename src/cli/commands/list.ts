import { type PciDeviceFilter, findPciDevices, parseClassFilter } from '../../pci/find.js';
import { UsageError, deviceSummary, formatDeviceLine, parseCommandLine, parseHex, pciIds, print, sysfsRoot, toJson } from '../format.js';
import type { CliCommand } from '../main.js';

const USAGE = `userpci list [--vendor VVVV] [--device DDDD] [--class CC[SS[PP]]] [--driver NAME] [--json]

One line per PCI function, like "lspci -nn -D":
  address, class name [code], vendor and device names [vendor:device] (rev xx)

Options (IDs in hex, with or without 0x):
  --vendor VVVV     only functions of this vendor
  --device DDDD     only functions with this device ID
  --class CC        only this base class (02), base class and subclass (0200),
                    or full class code with programming interface (010802)
  --driver NAME     only functions bound to this driver ("none": unbound ones)
  --json            print a JSON array instead (IDs as lowercase hex strings)`;

export const listCommand: CliCommand = {
  name: 'list',
  summary: 'list PCI functions with their IDs and names (like lspci -nn -D)',
  usage: USAGE,
  async run(args: string[]): Promise<number> {
    const { values } = parseCommandLine(
      args,
      {
        vendor: { type: 'string' },
        device: { type: 'string' },
        class: { type: 'string' },
        driver: { type: 'string' },
        json: { type: 'boolean', default: false },
      },
      [],
    );
    const filter: PciDeviceFilter = {
      ...(values.vendor === undefined ? {} : { vendorId: parseId(values.vendor, '--vendor', 4) }),
      ...(values.device === undefined ? {} : { deviceId: parseId(values.device, '--device', 4) }),
      ...(values.class === undefined ? {} : { class: checkClass(values.class) }),
      ...(values.driver === undefined ? {} : { driver: values.driver === 'none' ? null : values.driver }),
    };
    const [ids, selected] = await Promise.all([pciIds(), findPciDevices(filter, { sysfsRoot: sysfsRoot() })]);
    if (values.json) {
      print(toJson(selected.map((entry) => deviceSummary(ids, entry))));
    } else if (selected.length > 0) {
      print(selected.map((entry) => formatDeviceLine(ids, entry)).join('\n'));
    }
    return 0;
  },
};

function parseId(text: string, option: string, digits: number): number {
  const value = parseHex(text);
  if (value === undefined || value >= 16 ** digits) {
    throw new UsageError(`${option} expects a ${digits}-digit hex ID such as 1af4, not "${text}"`);
  }
  return value;
}

/** 2, 4 or 6 hex digits select base class, base class + subclass, or the full 24-bit code. */
function checkClass(text: string): string {
  try {
    parseClassFilter(text);
  } catch {
    throw new UsageError(`--class expects 2, 4 or 6 hex digits (02, 0200 or 020000), not "${text}"`);
  }
  return text;
}
