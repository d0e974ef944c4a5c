import type { CapabilityFields, ExtendedCapabilityFields } from '../../pci/capabilities.js';
import type { Bar, Capability, ConfigSpace, ExtendedCapability } from '../../pci/config-space.js';
import type { PciIds } from '../../pci/ids.js';
import { type InspectedDevice, inspectPciDevice, readConfigBytes } from '../../pci/sysfs.js';
import * as regs from '../../uapi/pci-regs.js';
import {
  deviceSummary,
  flag,
  formatDeviceLine,
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
import { kernelModules, physicalSlot, readIrq } from '../kernel-view.js';
import {
  ConfigRegisters,
  type FunctionContext,
  acsLines,
  aerLines,
  ariLines,
  bridgeLines,
  expressLines,
  expressType,
  headerLines,
  powerManagementLines,
  sriovLines,
} from '../lspci-detail.js';

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
    const kernel = { irq: readIrq(inspected), modules: kernelModules(inspected.device.sysfsPath), physicalSlot: physicalSlot(sysfsRoot(), inspected.device.location) };
    if (values.json) {
      print(toJson(infoJson(ids, inspected, kernel)));
      return 0;
    }
    const { bytes } = await readConfigBytes(inspected.device.location, { sysfsRoot: sysfsRoot() });
    const text = infoText(ids, inspected, bytes, kernel);
    print(hexLevel === 0 ? text : `${text}\n${hexDump(bytes, hexLevel)}`);
    return 0;
  },
};

function infoJson(ids: PciIds, { device, config, configRestricted, configFullSize }: InspectedDevice, kernel: KernelView): Record<string, unknown> {
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
    irq: kernel.irq,
    physicalSlot: kernel.physicalSlot ?? null,
    latencyTimer: config.latencyTimer,
    cacheLineSize: config.cacheLineSize,
    kernelModules: kernel.modules,
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

/** What sysfs says beyond config space: the IRQ the kernel routed pin INTx to, the modules that match, the slot. */
interface KernelView {
  readonly irq: number;
  readonly modules: readonly string[];
  readonly physicalSlot: string | undefined;
}

function infoText(ids: PciIds, { device, config, configRestricted, configFullSize }: InspectedDevice, bytes: Uint8Array, kernel: KernelView): string {
  const r = new ConfigRegisters(bytes);
  const lines = [formatDeviceLine(ids, device)];
  const detail = (text: string) => lines.push(`\t${text}`);
  const progIfName = ids.progIfName(config.baseClass, config.subclass, config.progIf);
  if (config.progIf !== 0 || progIfName) detail(`Programming interface: ${hex(config.progIf, 2)}${progIfName ? ` [${progIfName}]` : ''}`);
  const subsystem = subsystemOf(device.subsystemVendorId, device.subsystemId, config);
  // Vendor 0 or ffff means the function has no subsystem IDs (lspci hides them too).
  if (subsystem && subsystem.vendorId !== 0 && subsystem.vendorId !== 0xffff) {
    detail(`Subsystem: ${formatSubsystem(ids, device.vendorId, device.deviceId, subsystem.vendorId, subsystem.id)}`);
  }
  // Where lspci prints it: after Subsystem, before the header registers.
  if (kernel.physicalSlot !== undefined) detail(`Physical Slot: ${kernel.physicalSlot}`);
  detail(`Header: type ${config.headerType} (${headerName(config.headerType)})${config.multiFunction ? ', multi-function' : ''}`);
  for (const line of headerLines(r, config, kernel.irq)) detail(line);
  for (const bar of config.bars) detail(formatBar(bar, config));
  if (config.expansionRom) {
    const rom = config.expansionRom;
    detail(`Expansion ROM at ${rom.address.toString(16)}${rom.enabled ? '' : ' [disabled]'}${rom.size ? ` [size=${formatSize(rom.size)}]` : ''}`);
  }
  if (config.headerType === regs.PCI_HEADER_TYPE_BRIDGE && bytes.length >= regs.PCI_CFG_SIZE_UNPRIVILEGED) {
    for (const line of bridgeLines(r)) detail(line);
  }
  if (configRestricted && (config.status & regs.PCI_STATUS_CAP_LIST) !== 0) {
    detail(
      `Capabilities: <not read: sysfs gave ${config.length} of ${configFullSize} config bytes; reading past the header needs root (CAP_SYS_ADMIN)>`,
    );
  } else if (!config.capabilitiesReadable) {
    detail(`Capabilities: <only ${config.length} config bytes available; the list may be incomplete>`);
  }
  const context: FunctionContext = {
    device: device.location.device,
    function: device.location.function,
    hasMemoryBar: config.bars.some((bar) => bar.kind === 'memory'),
  };
  const type = expressType(r, config);
  for (const capability of config.capabilities) lines.push(...formatCapability(ids, device, r, capability, context));
  for (const capability of config.extendedCapabilities) lines.push(...formatExtendedCapability(r, capability, type));
  for (const warning of config.warnings) detail(`Warning: ${warning.message}`);
  detail(`Kernel driver in use: ${device.driver ?? 'none'}`);
  if (kernel.modules.length > 0) detail(`Kernel modules: ${kernel.modules.join(', ')}`);
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

function headerName(type: number): string {
  return ['endpoint', 'PCI-to-PCI bridge', 'CardBus bridge'][type] ?? 'unknown';
}

function formatBar(bar: Bar, config: ConfigSpace): string {
  const size = bar.size ? ` [size=${formatSize(bar.size)}]` : '';
  if (bar.kind === 'io') {
    const disabled = (config.command & regs.PCI_COMMAND_IO) === 0 ? ' [disabled]' : '';
    return `Region ${bar.index}: I/O ports at ${bar.address.toString(16).padStart(4, '0')}${disabled}${size}`;
  }
  const width = bar.is64Bit ? '64-bit' : bar.below1M ? 'low-1M' : '32-bit';
  const disabled = (config.command & regs.PCI_COMMAND_MEMORY) === 0 ? ' [disabled]' : '';
  return `Region ${bar.index}: Memory at ${bar.address.toString(16).padStart(8, '0')} (${width}, ${bar.prefetchable ? 'prefetchable' : 'non-prefetchable'})${disabled}${size}`;
}

/** A capability lspci decodes in full gets its wording; the others our summary. */
function formatCapability(ids: PciIds, device: InspectedDevice['device'], r: ConfigRegisters, capability: Capability, context: FunctionContext): string[] {
  const title = `\tCapabilities: [${hex(capability.offset, 2)}] `;
  const lspciStyle = (lines: string[]) => [`${title}${lines[0]}`, ...lines.slice(1).map((line) => `\t${line}`)];
  switch (capability.id) {
    case regs.PCI_CAP_ID_PM:
      return lspciStyle(powerManagementLines(r, capability.offset));
    case regs.PCI_CAP_ID_EXP:
      return lspciStyle(expressLines(r, capability.offset, context));
    case regs.PCI_CAP_ID_SHPC:
      return [`${title}Hot-plug capable`];
  }
  const fields = capability.fields;
  if (fields?.kind === 'ssvid') {
    return [`${title}Subsystem: ${formatSubsystem(ids, device.vendorId, device.deviceId, fields.subsystemVendorId, fields.subsystemId)}`];
  }
  if (!fields) return [`${title}${capability.name}`];
  const [summary, ...details] = describeCapability(fields);
  return [`${title}${capability.name}${summary ?? ''}`, ...details.map((line) => `\t\t${line}`)];
}

function formatExtendedCapability(r: ConfigRegisters, capability: ExtendedCapability, expressType: number | undefined): string[] {
  const title = `\tCapabilities: [${hex(capability.offset, 3)} v${capability.version}] `;
  const lspciStyle = (lines: string[]) => [`${title}${lines[0]}`, ...lines.slice(1).map((line) => `\t${line}`)];
  switch (capability.id) {
    case regs.PCI_EXT_CAP_ID_ERR:
      return lspciStyle(aerLines(r, capability.offset, expressType));
    case regs.PCI_EXT_CAP_ID_ARI:
      return lspciStyle(ariLines(r, capability.offset));
    case regs.PCI_EXT_CAP_ID_SRIOV:
      return lspciStyle(sriovLines(r, capability.offset));
    case regs.PCI_EXT_CAP_ID_ACS:
      return lspciStyle(acsLines(r, capability.offset));
  }
  const fields = capability.fields;
  if (!fields) return [`${title}${capability.name}`];
  const [summary, ...details] = describeExtendedCapability(fields);
  return [`${title}${capability.name}${summary ?? ''}`, ...details.map((line) => `\t\t${line}`)];
}

/** First element continues the title line; the rest are detail lines. */
function describeCapability(fields: CapabilityFields): string[] {
  switch (fields.kind) {
    case 'pm':
    case 'pcie':
    case 'ssvid':
      return ['']; // written in lspci's words by formatCapability
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
    case 'virtio': {
      const multiplier = fields.notifyOffMultiplier === undefined ? '' : ` multiplier=${hex(fields.notifyOffMultiplier, 8)}`;
      return [`: VirtIO ${fields.cfgTypeName}`, `BAR=${fields.bar} offset=${hex(fields.offset, 8)} size=${hex(fields.size, 8)}${multiplier}`];
    }
    case 'vendor':
      return [`: length ${fields.length}`];
  }
}

function describeExtendedCapability(fields: ExtendedCapabilityFields): string[] {
  switch (fields.kind) {
    case 'aer':
    case 'acs':
    case 'ari':
    case 'sriov':
      return ['']; // written in lspci's words by formatExtendedCapability
    case 'dsn':
      return [` ${fields.serialNumber}`];
  }
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
