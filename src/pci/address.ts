import { describeValue } from '../arguments.js';
import { InvalidArgumentError } from '../errors.js';

/**
 * A PCI function's address. The domain (segment) is always part of it: a bus/slot/function
 * triple alone is ambiguous on machines with several host bridges.
 */
export interface PciAddress {
  readonly domain: number; // 0..0xffffffff (VMD domains have five hex digits)
  readonly bus: number; // 0..0xff
  readonly device: number; // 0..0x1f
  readonly function: number; // 0..7
}

const EXPECTED_FORM = 'expected DDDD:BB:DD.F, e.g. 0000:00:03.0 (the domain may be left out: 00:03.0)';

// Domain optional; hex digits either case, as lspci and sysfs both use lower case but people type both.
const ADDRESS_PATTERN = /^(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$/;

/** Parse `0000:00:03.0` or the short `00:03.0` (domain 0). Throws InvalidArgumentError otherwise. */
export function parsePciAddress(text: string): PciAddress {
  if (typeof text !== 'string') throw new InvalidArgumentError(`invalid PCI address ${String(text)}: ${EXPECTED_FORM}`);
  const match = ADDRESS_PATTERN.exec(text.trim());
  if (!match) throw new InvalidArgumentError(`invalid PCI address "${text}": ${EXPECTED_FORM}`);
  const device = parseInt(match[3]!, 16);
  if (device > 0x1f) {
    throw new InvalidArgumentError(`invalid PCI address "${text}": device number 0x${device.toString(16)} is above 0x1f; ${EXPECTED_FORM}`);
  }
  return {
    domain: match[1] === undefined ? 0 : parseInt(match[1], 16),
    bus: parseInt(match[2]!, 16),
    device,
    function: parseInt(match[4]!, 10),
  };
}

/** Accept either form callers hold: a string to parse or an address object (validated). */
export function toPciAddress(address: string | PciAddress): PciAddress {
  if (typeof address === 'string') return parsePciAddress(address);
  if (address === null || typeof address !== 'object') throw new InvalidArgumentError(`invalid PCI address ${describeValue(address)}: ${EXPECTED_FORM}`);
  const { domain, bus, device, function: fn } = address;
  const valid =
    isIntegerIn(domain, 0xffffffff) && isIntegerIn(bus, 0xff) && isIntegerIn(device, 0x1f) && isIntegerIn(fn, 7);
  if (!valid) throw new InvalidArgumentError(`invalid PCI address { domain: ${String(domain)}, bus: ${String(bus)}, device: ${String(device)}, function: ${String(fn)} }: ${EXPECTED_FORM}`);
  return { domain, bus, device, function: fn };
}

/** The long form the kernel uses for sysfs names: `0000:00:03.0`. */
export function formatPciAddress(address: PciAddress): string {
  address = toPciAddress(address);
  return (
    `${hex(address.domain, 4)}:${hex(address.bus, 2)}:${hex(address.device, 2)}.${address.function}`
  );
}

export function isValidPciAddress(text: string): boolean {
  try {
    parsePciAddress(text);
    return true;
  } catch {
    return false;
  }
}

/** Order of lspci and of a bus scan: domain, bus, device, function. */
export function comparePciAddresses(a: PciAddress, b: PciAddress): number {
  return a.domain - b.domain || a.bus - b.bus || a.device - b.device || a.function - b.function;
}

export function samePciAddress(a: PciAddress, b: PciAddress): boolean {
  return comparePciAddresses(a, b) === 0;
}

function hex(value: number, width: number): string {
  return value.toString(16).padStart(width, '0');
}

function isIntegerIn(value: unknown, max: number): boolean {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= max;
}
