import type { CapabilityFields, ExtendedCapabilityFields } from '../../pci/capabilities.js';
import type { Bar, Capability, ConfigSpace, ExtendedCapability } from '../../pci/config-space.js';
import type { PciIds } from '../../pci/ids.js';
import { type InspectedDevice, inspectPciDevice, readConfigBytes } from '../../pci/sysfs.js';
import * as regs from '../../uapi/pci-regs.js';
import {
  deviceSummary,
  flag,
  formatDeviceLine,
  formatFlags,
  formatSize,
  formatSubsystem,
  hex,
  parseCommandLine,
  pciIds,
  print,
  sysfsRoot,
  toJson,
} from '../format.js';
import type { CliCommand } from '../main.js';

const USAGE = `userpci info ADDRESS [--json] [--strict] [-x|-xxx|-xxxx]

What a driver author needs to know about one PCI function (like the useful parts of lspci -vvv):
IDs and names, subsystem, BARs with type and size, every capability with its offset and decoded
fields, extended capabilities, bound driver, IOMMU group and NUMA node.

ADDRESS is 0000:00:03.0 or 00:03.0 (domain 0).
Capabilities are past the 64-byte header, which sysfs shows only to root.

Options:
  --json     print a JSON object instead (IDs as hex strings, offsets and sizes as numbers,
             64-bit addresses as "0x..." strings)
  --strict   fail on a malformed capability list instead of showing what could be read
  -x         add a hex dump of the header (64 bytes), as lspci -x; -xxx all 256 bytes of
             PCI config space, -xxxx the 4096 of PCIe extended config space (root only)`;

export const infoCommand: CliCommand = {
  name: 'info',
  summary: 'show one function: BARs, capabilities, driver, IOMMU group (like lspci -vvv)',
  usage: USAGE,
  async run(args: string[]): Promise<number> {
    const { values, positionals } = parseCommandLine(
      args,
      {
        json: { type: 'boolean', default: false },
        strict: { type: 'boolean', default: false },
        x: { type: 'boolean', short: 'x', multiple: true },
      },
      ['ADDRESS'],
    );
    const [ids, inspected] = await Promise.all([
      pciIds(),
      inspectPciDevice(positionals[0]!, { sysfsRoot: sysfsRoot(), strict: values.strict }),
    ]);
    const hexLevel = values.x?.length ?? 0;
    if (values.json) print(toJson(infoJson(ids, inspected)));
    else if (hexLevel === 0) print(infoText(ids, inspected));
    else {
      const { bytes } = await readConfigBytes(inspected.device.location, { sysfsRoot: sysfsRoot() });
      print(`${infoText(ids, inspected)}\n${hexDump(bytes, hexLevel)}`);
    }
    return 0;
  },
};

function infoJson(ids: PciIds, { device, config, configRestricted, configFullSize }: InspectedDevice): Record<string, unknown> {
  return {
    ...deviceSummary(ids, device),
    configBytesRead: config.length,
    configBytes: configFullSize,
    configRestricted,
    headerType: config.headerType,
    multiFunction: config.multiFunction,
    command: config.command,
    status: config.status,
    interruptPin: config.interruptPin,
    bars: config.bars.map((bar) => ({ ...bar, size: bar.size ?? null })),
    expansionRom: config.expansionRom ? { ...config.expansionRom, size: config.expansionRom.size ?? null } : null,
    bridge: config.bridge ?? null,
    capabilitiesReadable: config.capabilitiesReadable,
    capabilities: config.capabilities,
    extendedCapabilitiesReadable: config.extendedCapabilitiesReadable,
    extendedCapabilities: config.extendedCapabilities,
    warnings: config.warnings,
  };
}

function infoText(ids: PciIds, { device, config, configRestricted, configFullSize }: InspectedDevice): string {
  const lines = [formatDeviceLine(ids, device)];
  const detail = (text: string) => lines.push(`\t${text}`);
  const progIfName = ids.progIfName(config.baseClass, config.subclass, config.progIf);
  if (config.progIf !== 0 || progIfName) detail(`Programming interface: ${hex(config.progIf, 2)}${progIfName ? ` [${progIfName}]` : ''}`);
  const subsystem = subsystemOf(device.subsystemVendorId, device.subsystemId, config);
  // Vendor 0 or ffff means the function has no subsystem IDs (lspci hides them too).
  if (subsystem && subsystem.vendorId !== 0 && subsystem.vendorId !== 0xffff) {
    detail(`Subsystem: ${formatSubsystem(ids, device.vendorId, device.deviceId, subsystem.vendorId, subsystem.id)}`);
  }
  detail(`Header: type ${config.headerType} (${headerName(config.headerType)})${config.multiFunction ? ', multi-function' : ''}`);
  detail(`Control: ${formatFlags(config.command, regs.PCI_COMMAND_BIT_NAMES)}`);
  detail(`Status: ${formatFlags(config.status, regs.PCI_STATUS_BIT_NAMES)} DEVSEL=${devselName(config.status)}`);
  if (config.interruptPin !== 0) detail(`Interrupt: pin ${String.fromCharCode(0x40 + config.interruptPin)}`);
  for (const bar of config.bars) detail(formatBar(bar, config));
  if (config.expansionRom) {
    const rom = config.expansionRom;
    detail(`Expansion ROM at ${rom.address.toString(16)}${rom.enabled ? '' : ' [disabled]'}${rom.size ? ` [size=${formatSize(rom.size)}]` : ''}`);
  }
  if (config.bridge) {
    const bridge = config.bridge;
    detail(`Bus: primary=${hex(bridge.primaryBus, 2)}, secondary=${hex(bridge.secondaryBus, 2)}, subordinate=${hex(bridge.subordinateBus, 2)}`);
    const windowText = (window: { base: bigint; limit: bigint } | undefined, digits: number) =>
      window ? `${window.base.toString(16).padStart(digits, '0')}-${window.limit.toString(16).padStart(digits, '0')}` : '[disabled]';
    const ioDigits = (bridge.ioWindow?.limit ?? 0n) > 0xffffn ? 8 : 4;
    detail(`I/O behind bridge: ${windowText(bridge.ioWindow, ioDigits)}`);
    detail(`Memory behind bridge: ${windowText(bridge.memoryWindow, 8)}`);
    detail(`Prefetchable memory behind bridge: ${windowText(bridge.prefetchableWindow, bridge.prefetchableWindow?.is64Bit ? 16 : 8)}`);
  }
  if (configRestricted && (config.status & regs.PCI_STATUS_CAP_LIST) !== 0) {
    detail(
      `Capabilities: <not read: sysfs gave ${config.length} of ${configFullSize} config bytes; reading past the header needs root (CAP_SYS_ADMIN)>`,
    );
  } else if (!config.capabilitiesReadable) {
    detail(`Capabilities: <only ${config.length} config bytes available; the list may be incomplete>`);
  }
  for (const capability of config.capabilities) lines.push(...formatCapability(capability));
  for (const capability of config.extendedCapabilities) lines.push(...formatExtendedCapability(capability));
  for (const warning of config.warnings) detail(`Warning: ${warning.message}`);
  detail(`Kernel driver in use: ${device.driver ?? 'none'}`);
  detail(`IOMMU group: ${device.iommuGroup ?? 'none'}`);
  detail(`NUMA node: ${device.numaNode ?? 'none'}`);
  return lines.join('\n');
}

function subsystemOf(
  sysfsVendorId: number | undefined,
  sysfsId: number | undefined,
  config: ConfigSpace,
): { vendorId: number; id: number } | undefined {
  if (config.headerType === regs.PCI_HEADER_TYPE_NORMAL && sysfsVendorId !== undefined && sysfsId !== undefined) {
    return { vendorId: sysfsVendorId, id: sysfsId };
  }
  // Bridges carry their subsystem IDs in a capability instead of the header.
  const fields = config.capabilities.find((capability) => capability.fields?.kind === 'ssvid')?.fields;
  return fields?.kind === 'ssvid' ? { vendorId: fields.subsystemVendorId, id: fields.subsystemId } : undefined;
}

function devselName(status: number): string {
  return ['fast', 'medium', 'slow', 'reserved'][(status & regs.PCI_STATUS_DEVSEL_MASK) >> 9]!;
}

function headerName(type: number): string {
  return ['endpoint', 'PCI-to-PCI bridge', 'CardBus bridge'][type] ?? 'unknown';
}

function formatBar(bar: Bar, config: ConfigSpace): string {
  const size = bar.size ? ` [size=${formatSize(bar.size)}]` : '';
  if (bar.kind === 'io') {
    const disabled = (config.command & regs.PCI_COMMAND_IO) === 0 ? ' [disabled]' : '';
    return `Region ${bar.index}: I/O ports at ${bar.address.toString(16)}${disabled}${size}`;
  }
  const width = bar.is64Bit ? '64-bit' : bar.below1M ? 'below 1M' : '32-bit';
  const disabled = (config.command & regs.PCI_COMMAND_MEMORY) === 0 ? ' [disabled]' : '';
  return `Region ${bar.index}: Memory at ${bar.address.toString(16)} (${width}, ${bar.prefetchable ? 'prefetchable' : 'non-prefetchable'})${disabled}${size}`;
}

function formatCapability(capability: Capability): string[] {
  const title = `\tCapabilities: [${hex(capability.offset, 2)}] ${capability.name}`;
  const fields = capability.fields;
  if (!fields) return [title];
  const [summary, ...details] = describeCapability(fields);
  return [`${title}${summary ? `${summary}` : ''}`, ...details.map((line) => `\t\t${line}`)];
}

function formatExtendedCapability(capability: ExtendedCapability): string[] {
  const title = `\tCapabilities: [${hex(capability.offset, 3)} v${capability.version}] ${capability.name}`;
  const fields = capability.fields;
  if (!fields) return [title];
  const [summary, ...details] = describeExtendedCapability(fields);
  return [`${title}${summary ?? ''}`, ...details.map((line) => `\t\t${line}`)];
}

/** First element continues the title line; the rest are detail lines. */
function describeCapability(fields: CapabilityFields): string[] {
  switch (fields.kind) {
    case 'pm':
      return [
        ` version ${fields.version}`,
        `State: ${fields.powerState} NoSoftRst${flag(fields.noSoftReset)} PME-Enable${flag(fields.pmeEnabled)} PME-Status${flag(fields.pmeStatus)}`,
        `Supports: D1${flag(fields.d1Supported)} D2${flag(fields.d2Supported)} PME from ${fields.pmeSupport.join(',') || 'none'}`,
      ];
    case 'msi': {
      const lines = [
        `: Enable${flag(fields.enabled)} Count=${fields.vectorsEnabled}/${fields.vectorsCapable} Maskable${flag(fields.perVectorMasking)} 64bit${flag(fields.is64Bit)}`,
        `Address: ${fields.messageAddress.toString(16).padStart(fields.is64Bit ? 16 : 8, '0')}  Data: ${hex(fields.messageData, 4)}`,
      ];
      if (fields.maskBits !== undefined) {
        lines.push(`Masking: ${hex(fields.maskBits, 8)}  Pending: ${hex(fields.pendingBits ?? 0, 8)}`);
      }
      return lines;
    }
    case 'msix':
      return [
        `: Enable${flag(fields.enabled)} Count=${fields.tableSize} Masked${flag(fields.functionMasked)}`,
        `Vector table: BAR=${fields.tableBar} offset=${hex(fields.tableOffset, 8)}`,
        `PBA: BAR=${fields.pbaBar} offset=${hex(fields.pbaOffset, 8)}`,
      ];
    case 'pcie': {
      const errors = fields.errorsDetected;
      const lines = [
        ` (v${fields.version}) ${fields.deviceTypeName}${fields.slotImplemented ? ' (slot)' : ''}, interrupt message ${fields.interruptMessageNumber}`,
        `DevCap: MaxPayload ${fields.maxPayloadSupported} bytes, ExtTag${flag(fields.extendedTagSupported)} FLReset${flag(fields.flrCapable)}`,
        `DevCtl: MaxPayload ${fields.maxPayloadSize} bytes, MaxReadReq ${fields.maxReadRequestSize} bytes, RlxdOrd${flag(fields.relaxedOrdering)} NoSnoop${flag(fields.noSnoop)}`,
        `DevSta: CorrErr${flag(errors.correctable)} NonFatalErr${flag(errors.nonFatal)} FatalErr${flag(errors.fatal)} UnsupReq${flag(errors.unsupportedRequest)} TransPend${flag(fields.transactionsPending)}`,
      ];
      if (fields.link) {
        const link = fields.link;
        lines.push(
          `LnkCap: Port #${link.portNumber}, Speed ${speed(link.maxSpeedGts)}, Width x${link.maxWidth}, ASPM ${link.aspmSupport}`,
          `LnkCtl: ASPM ${link.aspmControl}, Disabled${flag(link.disabled)}`,
          `LnkSta: Speed ${speed(link.speedGts)}, Width x${link.width}, Training${flag(link.training)} DLActive${flag(link.dataLinkActive)}`,
        );
      }
      return lines;
    }
    case 'virtio': {
      const multiplier = fields.notifyOffMultiplier === undefined ? '' : ` multiplier=${hex(fields.notifyOffMultiplier, 8)}`;
      return [`: VirtIO ${fields.cfgTypeName}`, `BAR=${fields.bar} offset=${hex(fields.offset, 8)} size=${hex(fields.size, 8)}${multiplier}`];
    }
    case 'vendor':
      return [`: length ${fields.length}`];
    case 'ssvid':
      return [`: ${hex(fields.subsystemVendorId, 4)}:${hex(fields.subsystemId, 4)}`];
  }
}

function describeExtendedCapability(fields: ExtendedCapabilityFields): string[] {
  switch (fields.kind) {
    case 'aer':
      return [
        '',
        `UESta: ${hex(fields.uncorrectableStatus, 8)} UEMsk: ${hex(fields.uncorrectableMask, 8)} UESvrt: ${hex(fields.uncorrectableSeverity, 8)}`,
        `CESta: ${hex(fields.correctableStatus, 8)} CEMsk: ${hex(fields.correctableMask, 8)}`,
        `First error pointer: ${hex(fields.firstErrorPointer, 2)}`,
      ];
    case 'dsn':
      return [` ${fields.serialNumber}`];
    case 'acs':
      return ['', `ACSCap: ${fields.capabilities.join(' ') || 'none'}`, `ACSCtl: ${fields.enabled.join(' ') || 'none'}`];
    case 'sriov':
      return [
        '',
        `IOVCtl: Enable${flag(fields.vfEnabled)} Memory${flag(fields.vfMemorySpaceEnabled)} ARIHierarchy${flag(fields.ariHierarchy)}`,
        `Initial VFs: ${fields.initialVfs}, Total VFs: ${fields.totalVfs}, Number of VFs: ${fields.numVfs}, Function Dependency Link: ${hex(fields.functionDependencyLink, 2)}`,
        `VF offset: ${fields.firstVfOffset}, stride: ${fields.vfStride}, Device ID: ${hex(fields.vfDeviceId, 4)}`,
        `Supported page sizes: ${hex(fields.supportedPageSizes, 8)}, System page size: ${hex(fields.systemPageSize, 8)}`,
      ];
  }
}

function speed(gts: number | undefined): string {
  return gts === undefined ? 'unknown' : `${gts}GT/s`;
}

/**
 * lspci's -x dump: 16 bytes a line, offset in (at least) two hex digits. -x and -xx show the
 * 64-byte header, -xxx 256 bytes, -xxxx 4096; never more than could be read.
 */
export function hexDump(bytes: Uint8Array, level: number): string {
  const wanted = level >= 4 ? 4096 : level === 3 ? 256 : 64;
  const length = Math.min(wanted, bytes.length);
  const lines: string[] = [];
  for (let offset = 0; offset < length; offset += 16) {
    const row = Array.from(bytes.subarray(offset, Math.min(offset + 16, length)), (byte) => hex(byte, 2)).join(' ');
    lines.push(`${hex(offset, 2)}: ${row}`);
  }
  return lines.join('\n');
}
