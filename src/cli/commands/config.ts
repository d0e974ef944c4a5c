import { UserpciError } from '../../errors.js';
import { formatPciAddress, parsePciAddress, type PciAddress } from '../../pci/address.js';
import { parseConfigSpace } from '../../pci/config-space.js';
import { readConfigBytes, readConfigRange, writeConfigBytes } from '../../pci/sysfs.js';
import * as regs from '../../uapi/pci-regs.js';
import { UsageError, hex, parseCommandLine, parseHex, print, sysfsRoot } from '../format.js';
import type { CliCommand } from '../main.js';

const USAGE = `userpci config ADDRESS read REGISTER [--json]
userpci config ADDRESS write REGISTER VALUE[:MASK] [--json]

Read or write one config-space register through sysfs, like setpci. Numbers are hex, with or
without 0x. A read prints the value in hex, zero-padded to the register width.

REGISTER is BASE[+OFFSET][.WIDTH]:
  BASE    a hex offset (0x44), a header register name (COMMAND, STATUS, BASE_ADDRESS_0, ...),
          or a capability: CAP_<name> / ECAP_<name> (CAP_MSIX, CAP_EXP, ECAP_AER, ...) or
          CAP<id> / ECAP<id> with a hex ID; its offset is found in the capability list
  WIDTH   .b (8 bits), .w (16) or .l (32); header register names have their own width,
          everything else must say it; the offset must be aligned to it

With :MASK, a write changes only the bits set in MASK (read-modify-write).
--json prints {"address","offset","width","value"} (value as hex, the one read or written).
Writing needs root. So does reading past the 64-byte header: sysfs withholds the rest.

Examples:
  userpci config 0000:00:03.0 read VENDOR_ID
  userpci config 00:03.0 read CAP_EXP+0x12.w         # PCIe link status
  userpci config 00:03.0 write COMMAND 4:4           # set Bus Master only`;

type Width = 1 | 2 | 4;

interface RegisterSpec {
  readonly text: string;
  readonly base: { kind: 'offset'; offset: number } | { kind: 'capability'; id: number; extended: boolean };
  readonly displacement: number;
  readonly width: Width;
}

export const configCommand: CliCommand = {
  name: 'config',
  summary: 'read or write a config-space register (like setpci)',
  usage: USAGE,
  async run(args: string[]): Promise<number> {
    const isWrite = (positionals: readonly string[]) => positionals[1] === 'write';
    const { values, positionals } = parseCommandLine(
      args,
      { json: { type: 'boolean', default: false } },
      (given) => ['ADDRESS', '"read" or "write"', 'REGISTER', ...(isWrite(given) ? ['VALUE to write'] : [])],
      (given) => (isWrite(given) ? USAGE.split('\n')[1] : undefined),
    );
    const report = (value: number) =>
      print(
        values.json
          ? JSON.stringify({ address: formatPciAddress(address), offset, width: spec.width, value: hex(value, spec.width * 2) })
          : hex(value, spec.width * 2),
      );
    const [addressText, operation, registerText, valueText] = positionals as [string, string, string, string | undefined];
    if (operation !== 'read' && operation !== 'write') throw new UsageError(`expected "read" or "write", not "${operation}"`);

    const address = parsePciAddress(addressText);
    const spec = parseRegister(registerText);
    const options = { sysfsRoot: sysfsRoot() };
    const offset = await resolveOffset(address, spec);

    if (operation === 'read') {
      const bytes = await readConfigRange(address, offset, spec.width, options);
      report(decode(bytes));
      return 0;
    }

    const { value, mask } = parseValue(valueText!, spec.width);
    let newValue = value;
    if (mask !== undefined) {
      const current = decode(await readConfigRange(address, offset, spec.width, options));
      newValue = ((current & ~mask) | (value & mask)) >>> 0;
    }
    await writeConfigBytes(address, offset, encode(newValue, spec.width), options);
    if (values.json) report(newValue);
    return 0;
  },
};

/** CAP_<suffix> and ECAP_<suffix> for every capability ID constant, using Linux's suffixes. */
const CAPABILITY_NAMES: ReadonlyMap<string, { id: number; extended: boolean }> = (() => {
  const names = new Map<string, { id: number; extended: boolean }>();
  for (const [key, value] of Object.entries(regs)) {
    if (typeof value !== 'number') continue;
    if (key.startsWith('PCI_CAP_ID_')) names.set(`CAP_${key.slice('PCI_CAP_ID_'.length)}`, { id: value, extended: false });
    if (key.startsWith('PCI_EXT_CAP_ID_')) names.set(`ECAP_${key.slice('PCI_EXT_CAP_ID_'.length)}`, { id: value, extended: true });
  }
  names.set('ECAP_AER', { id: regs.PCI_EXT_CAP_ID_ERR, extended: true }); // setpci's name for it
  return names;
})();

export function parseRegister(text: string): RegisterSpec {
  const match = /^([A-Za-z0-9_]+)(?:\+((?:0x)?[0-9a-fA-F]+))?(?:\.([bwlBWL]))?$/.exec(text.trim());
  if (!match) throw new UsageError(`cannot read register "${text}": expected BASE[+OFFSET][.b|.w|.l], e.g. 0x44.l or CAP_EXP+0x12.w`);
  const [, baseText, displacementText, widthLetter] = match as unknown as [string, string, string | undefined, string | undefined];
  const explicitWidth = widthLetter === undefined ? undefined : ({ b: 1, w: 2, l: 4 } as const)[widthLetter.toLowerCase() as 'b' | 'w' | 'l'];
  const displacement = displacementText === undefined ? 0 : parseHex(displacementText);
  if (displacement === undefined) throw new UsageError(`bad offset "+${displacementText}" in "${text}"`);

  const numeric = /^(?:0x)?[0-9a-fA-F]+$/.test(baseText) ? parseHex(baseText) : undefined;
  if (numeric !== undefined) {
    if (explicitWidth === undefined) {
      throw new UsageError(`register "${text}" needs a width: ${baseText}.b, ${baseText}.w or ${baseText}.l`);
    }
    return { text, base: { kind: 'offset', offset: numeric }, displacement, width: explicitWidth };
  }
  const upper = baseText.toUpperCase();
  const named = regs.PCI_NAMED_REGISTERS[upper];
  if (named) {
    return { text, base: { kind: 'offset', offset: named.offset }, displacement, width: explicitWidth ?? named.width };
  }
  const capability = CAPABILITY_NAMES.get(upper) ?? numberedCapability(upper);
  if (capability) {
    if (explicitWidth === undefined) throw new UsageError(`register "${text}" needs a width: .b, .w or .l`);
    return { text, base: { kind: 'capability', ...capability }, displacement, width: explicitWidth };
  }
  throw new UsageError(
    `unknown register "${baseText}": use a hex offset, a header register (${Object.keys(regs.PCI_NAMED_REGISTERS).slice(0, 4).join(', ')}, ...) or CAP_<name>/ECAP_<name>`,
  );
}

/** CAP10 / ECAP0x0001 style: a capability by hex ID. */
function numberedCapability(text: string): { id: number; extended: boolean } | undefined {
  const match = /^(E?)CAP((?:0X)?[0-9A-F]+)$/.exec(text);
  if (!match) return undefined;
  const id = parseHex(match[2]!);
  return id === undefined ? undefined : { id, extended: match[1] === 'E' };
}

async function resolveOffset(address: PciAddress, spec: RegisterSpec): Promise<number> {
  let base: number;
  if (spec.base.kind === 'offset') {
    base = spec.base.offset;
  } else {
    const { id, extended } = spec.base;
    const read = await readConfigBytes(address, { sysfsRoot: sysfsRoot() });
    if (read.restricted) {
      throw new UserpciError(
        'EACCES',
        `finding a capability of ${formatPciAddress(address)} needs root (CAP_SYS_ADMIN): sysfs gives unprivileged readers only the 64-byte header`,
      );
    }
    const config = parseConfigSpace(read.bytes);
    const found = (extended ? config.extendedCapabilities : config.capabilities).find((capability) => capability.id === id);
    if (!found) {
      throw new UserpciError(
        'ENOENT',
        `${formatPciAddress(address)} has no ${extended ? 'extended ' : ''}capability with ID 0x${hex(id, extended ? 4 : 2)} (${spec.text})`,
      );
    }
    base = found.offset;
  }
  const offset = base + spec.displacement;
  if (offset % spec.width !== 0) {
    throw new UsageError(`offset 0x${offset.toString(16)} is not aligned to the ${spec.width}-byte width of "${spec.text}"`);
  }
  if (offset + spec.width > regs.PCI_CFG_SIZE_EXPRESS) {
    throw new UsageError(`offset 0x${offset.toString(16)} is past the 4096 bytes of config space`);
  }
  return offset;
}

function parseValue(text: string, width: Width): { value: number; mask: number | undefined } {
  const [valuePart, maskPart, ...rest] = text.split(':');
  const limit = 2 ** (8 * width);
  const value = parseHex(valuePart ?? '');
  const mask = maskPart === undefined ? undefined : parseHex(maskPart);
  if (value === undefined || rest.length > 0 || (maskPart !== undefined && mask === undefined)) {
    throw new UsageError(`cannot read value "${text}": expected hex VALUE or VALUE:MASK`);
  }
  if (value >= limit || (mask !== undefined && mask >= limit)) {
    throw new UsageError(`value "${text}" does not fit the ${width}-byte register`);
  }
  return { value, mask };
}

function decode(bytes: Uint8Array): number {
  let value = 0;
  for (let index = bytes.length - 1; index >= 0; index--) value = value * 256 + bytes[index]!;
  return value;
}

function encode(value: number, width: Width): Uint8Array {
  const bytes = new Uint8Array(width);
  for (let index = 0; index < width; index++) bytes[index] = Math.floor(value / 256 ** index) & 0xff;
  return bytes;
}
