/**
 * Decoders for the capability fields a driver author acts on. Each takes a little-endian DataView
 * over config space and the capability's offset; a DataView bounded to the bytes that may hold the
 * capability makes every read past them throw a RangeError, which the parser turns into a
 * "truncated capability" warning instead of decoding garbage.
 */
import * as regs from '../uapi/pci-regs.js';

export type PowerState = 'D0' | 'D1' | 'D2' | 'D3hot';

export interface PowerManagementFields {
  readonly kind: 'pm';
  readonly version: number;
  readonly pmeClock: boolean;
  readonly deviceSpecificInit: boolean;
  readonly d1Supported: boolean;
  readonly d2Supported: boolean;
  /** States from which the function can assert PME#: subset of D0, D1, D2, D3hot, D3cold. */
  readonly pmeSupport: readonly string[];
  readonly powerState: PowerState;
  /** Set: going D3hot -> D0 keeps the function's configuration, no reset needed. */
  readonly noSoftReset: boolean;
  readonly pmeEnabled: boolean;
  readonly pmeStatus: boolean;
}

export interface MsiFields {
  readonly kind: 'msi';
  readonly enabled: boolean;
  readonly is64Bit: boolean;
  readonly perVectorMasking: boolean;
  /** Vectors the function can use (1, 2, 4 ... 32). */
  readonly vectorsCapable: number;
  /** Vectors software enabled. */
  readonly vectorsEnabled: number;
  readonly messageAddress: bigint;
  readonly messageData: number;
  /** Present only with per-vector masking. */
  readonly maskBits?: number;
  readonly pendingBits?: number;
}

export interface MsixFields {
  readonly kind: 'msix';
  readonly enabled: boolean;
  readonly functionMasked: boolean;
  readonly tableSize: number;
  readonly tableBar: number;
  readonly tableOffset: number;
  readonly pbaBar: number;
  readonly pbaOffset: number;
}

export interface PciExpressLinkFields {
  /** Transfer rate in GT/s, undefined for an encoding this code does not know. */
  readonly maxSpeedGts: number | undefined;
  readonly maxWidth: number;
  readonly portNumber: number;
  readonly aspmSupport: string;
  readonly aspmControl: string;
  readonly disabled: boolean;
  readonly speedGts: number | undefined;
  readonly width: number;
  readonly training: boolean;
  readonly dataLinkActive: boolean;
}

export interface PciExpressSlotFields {
  /** SltCap */
  readonly attentionButton: boolean;
  readonly powerController: boolean;
  readonly mrlSensor: boolean;
  readonly attentionIndicator: boolean;
  readonly powerIndicator: boolean;
  readonly hotPlugSurprise: boolean;
  readonly hotPlugCapable: boolean;
  /** Slot Power Limit in watts; null for "more than 600 W". */
  readonly powerLimitWatts: number | null;
  readonly electromechanicalInterlock: boolean;
  readonly noCommandCompleted: boolean;
  readonly physicalSlotNumber: number;
  /** SltCtl: which events may interrupt, indicators ('on' | 'blink' | 'off' | 'unknown'), power. */
  readonly control: {
    readonly attentionButtonEnabled: boolean;
    readonly powerFaultEnabled: boolean;
    readonly mrlChangeEnabled: boolean;
    readonly presenceDetectEnabled: boolean;
    readonly commandCompletedEnabled: boolean;
    readonly hotPlugInterruptEnabled: boolean;
    readonly linkChangeEnabled: boolean;
    readonly attentionIndicator: string;
    readonly powerIndicator: string;
    /** Power Controller Control: true when power is off (the bit means "off"). */
    readonly powerOff: boolean;
    readonly interlock: boolean;
  };
  /** SltSta */
  readonly status: {
    readonly attentionButtonPressed: boolean;
    readonly powerFault: boolean;
    readonly mrlChanged: boolean;
    readonly presenceDetectChanged: boolean;
    readonly commandCompleted: boolean;
    readonly mrlOpen: boolean;
    readonly presenceDetected: boolean;
    readonly interlockEngaged: boolean;
    readonly linkStateChanged: boolean;
  };
}

export interface PciExpressRootFields {
  /** RootCap: CRS Software Visibility. */
  readonly crsVisibilitySupported: boolean;
  /** RootCtl */
  readonly control: {
    readonly systemErrorOnCorrectable: boolean;
    readonly systemErrorOnNonFatal: boolean;
    readonly systemErrorOnFatal: boolean;
    readonly pmeInterruptEnabled: boolean;
    readonly crsVisibilityEnabled: boolean;
  };
  /** RootSta */
  readonly status: {
    readonly pmeRequesterId: number;
    readonly pmeStatus: boolean;
    readonly pmePending: boolean;
  };
}

export interface PciExpressFields {
  readonly kind: 'pcie';
  readonly version: number;
  readonly deviceType: number;
  readonly deviceTypeName: string;
  readonly slotImplemented: boolean;
  readonly interruptMessageNumber: number;
  /** Bytes. */
  readonly maxPayloadSupported: number;
  readonly maxPayloadSize: number;
  readonly maxReadRequestSize: number;
  readonly extendedTagSupported: boolean;
  readonly flrCapable: boolean;
  readonly relaxedOrdering: boolean;
  readonly noSnoop: boolean;
  readonly errorsDetected: { readonly correctable: boolean; readonly nonFatal: boolean; readonly fatal: boolean; readonly unsupportedRequest: boolean };
  readonly transactionsPending: boolean;
  /** Absent for root-complex integrated endpoints and event collectors, which have no link. */
  readonly link?: PciExpressLinkFields;
  /** Slot registers: a root or downstream port (or PCIe bridge) whose Slot Implemented bit is set. */
  readonly slot?: PciExpressSlotFields;
  /** Root registers: a root port or root complex event collector. */
  readonly root?: PciExpressRootFields;
}

/** Subsystem IDs of a bridge, which has no room for them in its type 1 header. */
export interface BridgeSubsystemFields {
  readonly kind: 'ssvid';
  readonly subsystemVendorId: number;
  readonly subsystemId: number;
}

export interface VendorSpecificFields {
  readonly kind: 'vendor';
  readonly length: number;
}

/** Virtio 1.x describes where its register blocks live with vendor-specific capabilities. */
export interface VirtioCapabilityFields {
  readonly kind: 'virtio';
  readonly length: number;
  readonly cfgType: number;
  readonly cfgTypeName: string;
  readonly bar: number;
  readonly offset: number;
  readonly size: number;
  readonly notifyOffMultiplier?: number;
}

export interface AerFields {
  readonly kind: 'aer';
  readonly uncorrectableStatus: number;
  readonly uncorrectableMask: number;
  readonly uncorrectableSeverity: number;
  readonly correctableStatus: number;
  readonly correctableMask: number;
  readonly firstErrorPointer: number;
}

export interface DeviceSerialNumberFields {
  readonly kind: 'dsn';
  /** Most significant byte first, dash separated, as lspci prints it. */
  readonly serialNumber: string;
}

export interface AcsFields {
  readonly kind: 'acs';
  readonly capabilities: readonly string[];
  readonly enabled: readonly string[];
}

export interface AriFields {
  readonly kind: 'ari';
  /** ARICap */
  readonly mfvcGroups: boolean;
  readonly acsGroups: boolean;
  readonly nextFunction: number;
  /** ARICtl */
  readonly mfvcGroupsEnabled: boolean;
  readonly acsGroupsEnabled: boolean;
  readonly functionGroup: number;
}

/** A VF BAR of an SR-IOV capability: where VF 1's BAR lies (each next VF's follows at the BAR's size). */
export interface VfBar {
  readonly index: number;
  readonly address: bigint;
  readonly is64Bit: boolean;
  readonly prefetchable: boolean;
}

export interface SriovFields {
  readonly kind: 'sriov';
  readonly vfEnabled: boolean;
  readonly vfMemorySpaceEnabled: boolean;
  readonly ariHierarchy: boolean;
  readonly initialVfs: number;
  readonly totalVfs: number;
  readonly numVfs: number;
  readonly functionDependencyLink: number;
  readonly firstVfOffset: number;
  readonly vfStride: number;
  readonly vfDeviceId: number;
  readonly supportedPageSizes: number;
  readonly systemPageSize: number;
  readonly vfBars: readonly VfBar[];
}

export type CapabilityFields =
  | PowerManagementFields
  | MsiFields
  | MsixFields
  | PciExpressFields
  | BridgeSubsystemFields
  | VendorSpecificFields
  | VirtioCapabilityFields;

export type ExtendedCapabilityFields = AerFields | DeviceSerialNumberFields | AcsFields | AriFields | SriovFields;

export function capabilityName(id: number): string {
  return regs.PCI_CAPABILITY_NAMES[id] ?? `Unknown capability 0x${id.toString(16).padStart(2, '0')}`;
}

export function extendedCapabilityName(id: number): string {
  return regs.PCI_EXT_CAPABILITY_NAMES[id] ?? `Unknown extended capability 0x${id.toString(16).padStart(4, '0')}`;
}

/** Decode a standard capability, or undefined for IDs without a decoder. */
export function decodeCapability(
  id: number,
  view: DataView,
  offset: number,
  context: { readonly vendorId: number },
): CapabilityFields | undefined {
  switch (id) {
    case regs.PCI_CAP_ID_PM:
      return decodePowerManagement(view, offset);
    case regs.PCI_CAP_ID_MSI:
      return decodeMsi(view, offset);
    case regs.PCI_CAP_ID_MSIX:
      return decodeMsix(view, offset);
    case regs.PCI_CAP_ID_EXP:
      return decodePciExpress(view, offset);
    case regs.PCI_CAP_ID_VNDR:
      return decodeVendorSpecific(view, offset, context.vendorId);
    case regs.PCI_CAP_ID_SSVID:
      return decodeBridgeSubsystem(view, offset);
    default:
      return undefined;
  }
}

/** Decode an extended capability, or undefined for IDs without a decoder. */
export function decodeExtendedCapability(id: number, view: DataView, offset: number): ExtendedCapabilityFields | undefined {
  switch (id) {
    case regs.PCI_EXT_CAP_ID_ERR:
      return decodeAer(view, offset);
    case regs.PCI_EXT_CAP_ID_DSN:
      return decodeDeviceSerialNumber(view, offset);
    case regs.PCI_EXT_CAP_ID_ACS:
      return decodeAcs(view, offset);
    case regs.PCI_EXT_CAP_ID_ARI:
      return decodeAri(view, offset);
    case regs.PCI_EXT_CAP_ID_SRIOV:
      return decodeSriov(view, offset);
    default:
      return undefined;
  }
}

const PME_STATE_NAMES = ['D0', 'D1', 'D2', 'D3hot', 'D3cold'];
const POWER_STATES: readonly PowerState[] = ['D0', 'D1', 'D2', 'D3hot'];

export function decodePowerManagement(view: DataView, offset: number): PowerManagementFields {
  const pmc = view.getUint16(offset + regs.PCI_PM_PMC, true);
  const control = view.getUint16(offset + regs.PCI_PM_CTRL, true);
  const pmeMask = (pmc & regs.PCI_PM_CAP_PME_MASK) >> regs.PCI_PM_CAP_PME_SHIFT;
  return {
    kind: 'pm',
    version: pmc & regs.PCI_PM_CAP_VER_MASK,
    pmeClock: (pmc & regs.PCI_PM_CAP_PME_CLOCK) !== 0,
    deviceSpecificInit: (pmc & regs.PCI_PM_CAP_DSI) !== 0,
    d1Supported: (pmc & regs.PCI_PM_CAP_D1) !== 0,
    d2Supported: (pmc & regs.PCI_PM_CAP_D2) !== 0,
    pmeSupport: PME_STATE_NAMES.filter((_, bit) => (pmeMask & (1 << bit)) !== 0),
    powerState: POWER_STATES[control & regs.PCI_PM_CTRL_STATE_MASK]!,
    noSoftReset: (control & regs.PCI_PM_CTRL_NO_SOFT_RESET) !== 0,
    pmeEnabled: (control & regs.PCI_PM_CTRL_PME_ENABLE) !== 0,
    pmeStatus: (control & regs.PCI_PM_CTRL_PME_STATUS) !== 0,
  };
}

export function decodeMsi(view: DataView, offset: number): MsiFields {
  const flags = view.getUint16(offset + regs.PCI_MSI_FLAGS, true);
  const is64Bit = (flags & regs.PCI_MSI_FLAGS_64BIT) !== 0;
  const perVectorMasking = (flags & regs.PCI_MSI_FLAGS_MASKBIT) !== 0;
  const addressLow = view.getUint32(offset + regs.PCI_MSI_ADDRESS_LO, true);
  const addressHigh = is64Bit ? view.getUint32(offset + regs.PCI_MSI_ADDRESS_HI, true) : 0;
  const messageData = view.getUint16(offset + (is64Bit ? regs.PCI_MSI_DATA_64 : regs.PCI_MSI_DATA_32), true);
  const fields: MsiFields = {
    kind: 'msi',
    enabled: (flags & regs.PCI_MSI_FLAGS_ENABLE) !== 0,
    is64Bit,
    perVectorMasking,
    vectorsCapable: 1 << ((flags & regs.PCI_MSI_FLAGS_QMASK) >> 1),
    vectorsEnabled: 1 << ((flags & regs.PCI_MSI_FLAGS_QSIZE) >> 4),
    messageAddress: (BigInt(addressHigh) << 32n) | BigInt(addressLow),
    messageData,
  };
  if (!perVectorMasking) return fields;
  return {
    ...fields,
    maskBits: view.getUint32(offset + (is64Bit ? regs.PCI_MSI_MASK_64 : regs.PCI_MSI_MASK_32), true),
    pendingBits: view.getUint32(offset + (is64Bit ? regs.PCI_MSI_PENDING_64 : regs.PCI_MSI_PENDING_32), true),
  };
}

export function decodeMsix(view: DataView, offset: number): MsixFields {
  const flags = view.getUint16(offset + regs.PCI_MSIX_FLAGS, true);
  const table = view.getUint32(offset + regs.PCI_MSIX_TABLE, true);
  const pba = view.getUint32(offset + regs.PCI_MSIX_PBA, true);
  return {
    kind: 'msix',
    enabled: (flags & regs.PCI_MSIX_FLAGS_ENABLE) !== 0,
    functionMasked: (flags & regs.PCI_MSIX_FLAGS_MASKALL) !== 0,
    tableSize: (flags & regs.PCI_MSIX_FLAGS_QSIZE) + 1,
    tableBar: table & regs.PCI_MSIX_BIR_MASK,
    tableOffset: (table & regs.PCI_MSIX_OFFSET_MASK) >>> 0,
    pbaBar: pba & regs.PCI_MSIX_BIR_MASK,
    pbaOffset: (pba & regs.PCI_MSIX_OFFSET_MASK) >>> 0,
  };
}

const ASPM_NAMES = ['none', 'L0s', 'L1', 'L0s L1'];

export function decodePciExpress(view: DataView, offset: number): PciExpressFields {
  const flags = view.getUint16(offset + regs.PCI_EXP_FLAGS, true);
  const deviceCaps = view.getUint32(offset + regs.PCI_EXP_DEVCAP, true);
  const deviceControl = view.getUint16(offset + regs.PCI_EXP_DEVCTL, true);
  const deviceStatus = view.getUint16(offset + regs.PCI_EXP_DEVSTA, true);
  const deviceType = (flags & regs.PCI_EXP_FLAGS_TYPE) >> 4;
  const hasLink = deviceType !== regs.PCI_EXP_TYPE_RC_END && deviceType !== regs.PCI_EXP_TYPE_RC_EC;
  const fields: PciExpressFields = {
    kind: 'pcie',
    version: flags & regs.PCI_EXP_FLAGS_VERS,
    deviceType,
    deviceTypeName: regs.PCI_EXP_TYPE_NAMES[deviceType] ?? `Unknown type ${deviceType}`,
    slotImplemented: (flags & regs.PCI_EXP_FLAGS_SLOT) !== 0,
    interruptMessageNumber: (flags & regs.PCI_EXP_FLAGS_IRQ) >> 9,
    maxPayloadSupported: 128 << (deviceCaps & regs.PCI_EXP_DEVCAP_PAYLOAD),
    maxPayloadSize: 128 << ((deviceControl & regs.PCI_EXP_DEVCTL_PAYLOAD) >> 5),
    maxReadRequestSize: 128 << ((deviceControl & regs.PCI_EXP_DEVCTL_READRQ) >> 12),
    extendedTagSupported: (deviceCaps & regs.PCI_EXP_DEVCAP_EXT_TAG) !== 0,
    flrCapable: (deviceCaps & regs.PCI_EXP_DEVCAP_FLR) !== 0,
    relaxedOrdering: (deviceControl & regs.PCI_EXP_DEVCTL_RELAX_EN) !== 0,
    noSnoop: (deviceControl & regs.PCI_EXP_DEVCTL_NOSNOOP_EN) !== 0,
    errorsDetected: {
      correctable: (deviceStatus & regs.PCI_EXP_DEVSTA_CED) !== 0,
      nonFatal: (deviceStatus & regs.PCI_EXP_DEVSTA_NFED) !== 0,
      fatal: (deviceStatus & regs.PCI_EXP_DEVSTA_FED) !== 0,
      unsupportedRequest: (deviceStatus & regs.PCI_EXP_DEVSTA_URD) !== 0,
    },
    transactionsPending: (deviceStatus & regs.PCI_EXP_DEVSTA_TRPND) !== 0,
  };
  const withPorts = { ...fields, ...slotAndRoot(view, offset, deviceType, fields.slotImplemented) };
  if (!hasLink) return withPorts;
  const linkCaps = view.getUint32(offset + regs.PCI_EXP_LNKCAP, true);
  const linkControl = view.getUint16(offset + regs.PCI_EXP_LNKCTL, true);
  const linkStatus = view.getUint16(offset + regs.PCI_EXP_LNKSTA, true);
  return {
    ...withPorts,
    link: {
      maxSpeedGts: regs.PCI_EXP_LINK_SPEED_GTS[linkCaps & regs.PCI_EXP_LNKCAP_SLS],
      maxWidth: (linkCaps & regs.PCI_EXP_LNKCAP_MLW) >> 4,
      portNumber: linkCaps >>> 24,
      aspmSupport: ASPM_NAMES[(linkCaps & regs.PCI_EXP_LNKCAP_ASPMS) >> 10]!,
      aspmControl: ASPM_NAMES[linkControl & regs.PCI_EXP_LNKCTL_ASPMC]!,
      disabled: (linkControl & regs.PCI_EXP_LNKCTL_LD) !== 0,
      speedGts: regs.PCI_EXP_LINK_SPEED_GTS[linkStatus & regs.PCI_EXP_LNKSTA_CLS],
      width: (linkStatus & regs.PCI_EXP_LNKSTA_NLW) >> 4,
      training: (linkStatus & regs.PCI_EXP_LNKSTA_LT) !== 0,
      dataLinkActive: (linkStatus & regs.PCI_EXP_LNKSTA_DLLLA) !== 0,
    },
  };
}

const INDICATORS = ['unknown', 'on', 'blink', 'off'];
/** Slot Power Limit Scale: watts per unit of the value. */
const POWER_SCALES = [1, 0.1, 0.01, 0.001];

/** Slot Power Limit in watts; with scale 0, values 0xf0-0xfe mean 250-600 W in 25 W steps, 0xff more than 600 W (null). */
function slotPowerLimitWatts(value: number, scale: number): number | null {
  if (scale === 0 && value === 0xff) return null;
  const watts = scale === 0 && value >= 0xf0 ? 250 + 25 * (value - 0xf0) : value;
  return Number((watts * POWER_SCALES[scale]!).toPrecision(6));
}

/** The Slot and Root register blocks of a PCI Express capability, where the port type has them. */
function slotAndRoot(view: DataView, offset: number, type: number, slotImplemented: boolean): { slot?: PciExpressSlotFields; root?: PciExpressRootFields } {
  const out: { slot?: PciExpressSlotFields; root?: PciExpressRootFields } = {};
  const hasSlotRegisters = type === regs.PCI_EXP_TYPE_ROOT_PORT || type === regs.PCI_EXP_TYPE_DOWNSTREAM || type === regs.PCI_EXP_TYPE_PCIE_BRIDGE;
  if (hasSlotRegisters && slotImplemented) {
    const cap = view.getUint32(offset + regs.PCI_EXP_SLTCAP, true);
    const ctl = view.getUint16(offset + regs.PCI_EXP_SLTCAP + 4, true);
    const sta = view.getUint16(offset + regs.PCI_EXP_SLTCAP + 6, true);
    const on = (value: number, bit: number) => (value & bit) !== 0;
    const powerValue = (cap >> 7) & 0xff;
    out.slot = {
      attentionButton: on(cap, 0x1),
      powerController: on(cap, 0x2),
      mrlSensor: on(cap, 0x4),
      attentionIndicator: on(cap, 0x8),
      powerIndicator: on(cap, 0x10),
      hotPlugSurprise: on(cap, 0x20),
      hotPlugCapable: on(cap, 0x40),
      powerLimitWatts: slotPowerLimitWatts(powerValue, (cap >> 15) & 0x3),
      electromechanicalInterlock: on(cap, 0x20000),
      noCommandCompleted: on(cap, 0x40000),
      physicalSlotNumber: cap >>> 19,
      control: {
        attentionButtonEnabled: on(ctl, 0x1),
        powerFaultEnabled: on(ctl, 0x2),
        mrlChangeEnabled: on(ctl, 0x4),
        presenceDetectEnabled: on(ctl, 0x8),
        commandCompletedEnabled: on(ctl, 0x10),
        hotPlugInterruptEnabled: on(ctl, 0x20),
        linkChangeEnabled: on(ctl, 0x1000),
        attentionIndicator: INDICATORS[(ctl >> 6) & 0x3]!,
        powerIndicator: INDICATORS[(ctl >> 8) & 0x3]!,
        powerOff: on(ctl, 0x400),
        interlock: on(ctl, 0x800),
      },
      status: {
        attentionButtonPressed: on(sta, 0x1),
        powerFault: on(sta, 0x2),
        mrlChanged: on(sta, 0x4),
        presenceDetectChanged: on(sta, 0x8),
        commandCompleted: on(sta, 0x10),
        mrlOpen: on(sta, 0x20),
        presenceDetected: on(sta, 0x40),
        interlockEngaged: on(sta, 0x80),
        linkStateChanged: on(sta, 0x100),
      },
    };
  }
  if (type === regs.PCI_EXP_TYPE_ROOT_PORT || type === regs.PCI_EXP_TYPE_RC_EC) {
    const ctl = view.getUint16(offset + 28, true);
    const cap = view.getUint16(offset + 30, true);
    const sta = view.getUint32(offset + 32, true);
    out.root = {
      crsVisibilitySupported: (cap & 0x1) !== 0,
      control: {
        systemErrorOnCorrectable: (ctl & 0x1) !== 0,
        systemErrorOnNonFatal: (ctl & 0x2) !== 0,
        systemErrorOnFatal: (ctl & 0x4) !== 0,
        pmeInterruptEnabled: (ctl & 0x8) !== 0,
        crsVisibilityEnabled: (ctl & 0x10) !== 0,
      },
      status: { pmeRequesterId: sta & 0xffff, pmeStatus: (sta & 0x10000) !== 0, pmePending: (sta & 0x20000) !== 0 },
    };
  }
  return out;
}

export function decodeBridgeSubsystem(view: DataView, offset: number): BridgeSubsystemFields {
  return {
    kind: 'ssvid',
    subsystemVendorId: view.getUint16(offset + regs.PCI_SSVID_VENDOR_ID, true),
    subsystemId: view.getUint16(offset + regs.PCI_SSVID_DEVICE_ID, true),
  };
}

export function decodeVendorSpecific(
  view: DataView,
  offset: number,
  vendorId: number,
): VendorSpecificFields | VirtioCapabilityFields {
  const length = view.getUint8(offset + regs.PCI_CAP_VNDR_LENGTH);
  // Only virtio's layout is known; other vendors' bytes stay opaque.
  if (vendorId !== regs.PCI_VENDOR_ID_REDHAT_QUMRANET || length < regs.VIRTIO_PCI_CAP_SIZEOF) {
    return { kind: 'vendor', length };
  }
  const cfgType = view.getUint8(offset + regs.VIRTIO_PCI_CAP_CFG_TYPE);
  const fields: VirtioCapabilityFields = {
    kind: 'virtio',
    length,
    cfgType,
    cfgTypeName: regs.VIRTIO_PCI_CAP_NAMES[cfgType] ?? `type ${cfgType}`,
    bar: view.getUint8(offset + regs.VIRTIO_PCI_CAP_BAR),
    offset: view.getUint32(offset + regs.VIRTIO_PCI_CAP_OFFSET, true),
    size: view.getUint32(offset + regs.VIRTIO_PCI_CAP_LENGTH, true),
  };
  if (cfgType !== regs.VIRTIO_PCI_CAP_NOTIFY_CFG || length < regs.VIRTIO_PCI_CAP_SIZEOF + 4) return fields;
  return { ...fields, notifyOffMultiplier: view.getUint32(offset + regs.VIRTIO_PCI_NOTIFY_CAP_MULT, true) };
}

export function decodeAer(view: DataView, offset: number): AerFields {
  return {
    kind: 'aer',
    uncorrectableStatus: view.getUint32(offset + regs.PCI_ERR_UNCOR_STATUS, true),
    uncorrectableMask: view.getUint32(offset + regs.PCI_ERR_UNCOR_MASK, true),
    uncorrectableSeverity: view.getUint32(offset + regs.PCI_ERR_UNCOR_SEVER, true),
    correctableStatus: view.getUint32(offset + regs.PCI_ERR_COR_STATUS, true),
    correctableMask: view.getUint32(offset + regs.PCI_ERR_COR_MASK, true),
    firstErrorPointer: view.getUint32(offset + regs.PCI_ERR_CAP, true) & regs.PCI_ERR_CAP_FEP_MASK,
  };
}

export function decodeDeviceSerialNumber(view: DataView, offset: number): DeviceSerialNumberFields {
  const low = view.getUint32(offset + regs.PCI_DSN_SERIAL, true);
  const high = view.getUint32(offset + regs.PCI_DSN_SERIAL + 4, true);
  const text = high.toString(16).padStart(8, '0') + low.toString(16).padStart(8, '0');
  return { kind: 'dsn', serialNumber: text.match(/../g)!.join('-') };
}

export function decodeAcs(view: DataView, offset: number): AcsFields {
  const capabilities = view.getUint16(offset + regs.PCI_ACS_CAP, true);
  const control = view.getUint16(offset + regs.PCI_ACS_CTRL, true);
  const names = (value: number) => regs.PCI_ACS_BIT_NAMES.filter(([bit]) => (value & bit) !== 0).map(([, name]) => name);
  return { kind: 'acs', capabilities: names(capabilities), enabled: names(control) };
}

export function decodeSriov(view: DataView, offset: number): SriovFields {
  const control = view.getUint16(offset + regs.PCI_SRIOV_CTRL, true);
  return {
    kind: 'sriov',
    vfEnabled: (control & regs.PCI_SRIOV_CTRL_VFE) !== 0,
    vfMemorySpaceEnabled: (control & regs.PCI_SRIOV_CTRL_MSE) !== 0,
    ariHierarchy: (control & regs.PCI_SRIOV_CTRL_ARI) !== 0,
    initialVfs: view.getUint16(offset + regs.PCI_SRIOV_INITIAL_VF, true),
    totalVfs: view.getUint16(offset + regs.PCI_SRIOV_TOTAL_VF, true),
    numVfs: view.getUint16(offset + regs.PCI_SRIOV_NUM_VF, true),
    functionDependencyLink: view.getUint8(offset + regs.PCI_SRIOV_FUNC_LINK),
    firstVfOffset: view.getUint16(offset + regs.PCI_SRIOV_VF_OFFSET, true),
    vfStride: view.getUint16(offset + regs.PCI_SRIOV_VF_STRIDE, true),
    vfDeviceId: view.getUint16(offset + regs.PCI_SRIOV_VF_DID, true),
    supportedPageSizes: view.getUint32(offset + regs.PCI_SRIOV_SUP_PGSIZE, true),
    systemPageSize: view.getUint32(offset + regs.PCI_SRIOV_SYS_PGSIZE, true),
    vfBars: decodeVfBars(view, offset),
  };
}

/** The VF BAR registers of an SR-IOV capability at `offset`: the implemented ones, 64-bit pairs as one. */
export function decodeVfBars(view: DataView, offset: number): VfBar[] {
  const bars: VfBar[] = [];
  for (let index = 0; index < 6; index++) {
    let low = view.getUint32(offset + regs.PCI_SRIOV_BAR + 4 * index, true);
    if (low === 0xffffffff) low = 0;
    if (low === 0) continue;
    const is64Bit = (low & 0x6) === 0x4;
    const first = index;
    let address = BigInt((low & ~0xf) >>> 0);
    if (is64Bit && index < 5) {
      index++;
      address |= BigInt(view.getUint32(offset + regs.PCI_SRIOV_BAR + 4 * index, true)) << 32n;
    }
    bars.push({ index: first, address, is64Bit, prefetchable: (low & 0x8) !== 0 });
  }
  return bars;
}

export function decodeAri(view: DataView, offset: number): AriFields {
  const capability = view.getUint16(offset + 4, true);
  const control = view.getUint16(offset + 6, true);
  return {
    kind: 'ari',
    mfvcGroups: (capability & 0x1) !== 0,
    acsGroups: (capability & 0x2) !== 0,
    nextFunction: (capability >> 8) & 0xff,
    mfvcGroupsEnabled: (control & 0x1) !== 0,
    acsGroupsEnabled: (control & 0x2) !== 0,
    functionGroup: (control >> 4) & 0x7,
  };
}
