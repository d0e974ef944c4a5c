/**
 * PCI configuration space layout, as the PCI Local Bus and PCI Express Base specifications define
 * it (the same names Linux uses in include/uapi/linux/pci_regs.h, in TypeScript).
 * Offsets are bytes from the start of config space, or from the start of a capability where the
 * name says CAP.
 */

/** Config space sizes: what an unprivileged sysfs reader gets, conventional PCI, PCI Express. */
export const PCI_CFG_SIZE_UNPRIVILEGED = 64;
export const PCI_CFG_SIZE = 256;
export const PCI_CFG_SIZE_EXPRESS = 4096;

// Header fields common to every header type.
export const PCI_VENDOR_ID = 0x00; // u16
export const PCI_DEVICE_ID = 0x02; // u16
export const PCI_COMMAND = 0x04; // u16
export const PCI_STATUS = 0x06; // u16
export const PCI_REVISION_ID = 0x08; // u8
export const PCI_CLASS_PROG = 0x09; // u8, programming interface
export const PCI_CLASS_DEVICE = 0x0a; // u16: base class << 8 | subclass
export const PCI_CACHE_LINE_SIZE = 0x0c; // u8
export const PCI_LATENCY_TIMER = 0x0d; // u8
export const PCI_HEADER_TYPE = 0x0e; // u8
export const PCI_BIST = 0x0f; // u8

export const PCI_HEADER_TYPE_MASK = 0x7f;
export const PCI_HEADER_TYPE_MULTI_FUNCTION = 0x80;
export const PCI_HEADER_TYPE_NORMAL = 0;
export const PCI_HEADER_TYPE_BRIDGE = 1;
export const PCI_HEADER_TYPE_CARDBUS = 2;

/** First BAR; BAR n is at PCI_BASE_ADDRESS_0 + 4 * n. */
export const PCI_BASE_ADDRESS_0 = 0x10;
export const PCI_BAR_COUNT_NORMAL = 6;
export const PCI_BAR_COUNT_BRIDGE = 2;
export const PCI_BAR_COUNT_CARDBUS = 1;

// Type 0 (endpoint) header.
export const PCI_CARDBUS_CIS = 0x28; // u32
export const PCI_SUBSYSTEM_VENDOR_ID = 0x2c; // u16
export const PCI_SUBSYSTEM_ID = 0x2e; // u16
export const PCI_ROM_ADDRESS = 0x30; // u32
export const PCI_CAPABILITY_LIST = 0x34; // u8, first capability pointer (types 0 and 1)
export const PCI_INTERRUPT_LINE = 0x3c; // u8
export const PCI_INTERRUPT_PIN = 0x3d; // u8
export const PCI_MIN_GNT = 0x3e; // u8
export const PCI_MAX_LAT = 0x3f; // u8

// Type 1 (PCI-to-PCI bridge) header.
export const PCI_PRIMARY_BUS = 0x18; // u8
export const PCI_SECONDARY_BUS = 0x19; // u8
export const PCI_SUBORDINATE_BUS = 0x1a; // u8
export const PCI_SEC_LATENCY_TIMER = 0x1b; // u8
export const PCI_IO_BASE = 0x1c; // u8
export const PCI_IO_LIMIT = 0x1d; // u8
export const PCI_SEC_STATUS = 0x1e; // u16
export const PCI_MEMORY_BASE = 0x20; // u16
export const PCI_MEMORY_LIMIT = 0x22; // u16
export const PCI_PREF_MEMORY_BASE = 0x24; // u16
export const PCI_PREF_MEMORY_LIMIT = 0x26; // u16
export const PCI_PREF_BASE_UPPER32 = 0x28; // u32
export const PCI_PREF_LIMIT_UPPER32 = 0x2c; // u32
export const PCI_IO_BASE_UPPER16 = 0x30; // u16
export const PCI_IO_LIMIT_UPPER16 = 0x32; // u16
export const PCI_ROM_ADDRESS1 = 0x38; // u32
export const PCI_BRIDGE_CONTROL = 0x3e; // u16

export const PCI_IO_RANGE_TYPE_MASK = 0x0f;
export const PCI_IO_RANGE_TYPE_32 = 0x01;
export const PCI_PREF_RANGE_TYPE_MASK = 0x0f;
export const PCI_PREF_RANGE_TYPE_64 = 0x01;

// Type 2 (CardBus bridge) header: the capability pointer sits elsewhere.
export const PCI_CB_CAPABILITY_LIST = 0x14; // u8

// Command register bits.
export const PCI_COMMAND_IO = 0x0001;
export const PCI_COMMAND_MEMORY = 0x0002;
export const PCI_COMMAND_MASTER = 0x0004;
export const PCI_COMMAND_SPECIAL = 0x0008;
export const PCI_COMMAND_INVALIDATE = 0x0010;
export const PCI_COMMAND_VGA_PALETTE = 0x0020;
export const PCI_COMMAND_PARITY = 0x0040;
export const PCI_COMMAND_WAIT = 0x0080;
export const PCI_COMMAND_SERR = 0x0100;
export const PCI_COMMAND_FAST_BACK = 0x0200;
export const PCI_COMMAND_INTX_DISABLE = 0x0400;

// Status register bits.
export const PCI_STATUS_IMM_READY = 0x0001;
export const PCI_STATUS_INTERRUPT = 0x0008;
export const PCI_STATUS_CAP_LIST = 0x0010;
export const PCI_STATUS_66MHZ = 0x0020;
export const PCI_STATUS_UDF = 0x0040;
export const PCI_STATUS_FAST_BACK = 0x0080;
export const PCI_STATUS_PARITY = 0x0100;
export const PCI_STATUS_DEVSEL_MASK = 0x0600;
export const PCI_STATUS_SIG_TARGET_ABORT = 0x0800;
export const PCI_STATUS_REC_TARGET_ABORT = 0x1000;
export const PCI_STATUS_REC_MASTER_ABORT = 0x2000;
export const PCI_STATUS_SIG_SYSTEM_ERROR = 0x4000;
export const PCI_STATUS_DETECTED_PARITY = 0x8000;

/** Short names of the command bits, in register order, as lspci prints them. */
export const PCI_COMMAND_BIT_NAMES: ReadonlyArray<readonly [bit: number, name: string]> = [
  [PCI_COMMAND_IO, 'I/O'],
  [PCI_COMMAND_MEMORY, 'Mem'],
  [PCI_COMMAND_MASTER, 'BusMaster'],
  [PCI_COMMAND_SPECIAL, 'SpecCycle'],
  [PCI_COMMAND_INVALIDATE, 'MemWINV'],
  [PCI_COMMAND_VGA_PALETTE, 'VGASnoop'],
  [PCI_COMMAND_PARITY, 'ParErr'],
  [PCI_COMMAND_WAIT, 'Stepping'],
  [PCI_COMMAND_SERR, 'SERR'],
  [PCI_COMMAND_FAST_BACK, 'FastB2B'],
  [PCI_COMMAND_INTX_DISABLE, 'DisINTx'],
];

/** Short names of the single-bit status flags. */
export const PCI_STATUS_BIT_NAMES: ReadonlyArray<readonly [bit: number, name: string]> = [
  [PCI_STATUS_CAP_LIST, 'Cap'],
  [PCI_STATUS_66MHZ, '66MHz'],
  [PCI_STATUS_UDF, 'UDF'],
  [PCI_STATUS_FAST_BACK, 'FastB2B'],
  [PCI_STATUS_PARITY, 'ParErr'],
  [PCI_STATUS_SIG_TARGET_ABORT, '>TAbort'],
  [PCI_STATUS_REC_TARGET_ABORT, '<TAbort'],
  [PCI_STATUS_REC_MASTER_ABORT, '<MAbort'],
  [PCI_STATUS_SIG_SYSTEM_ERROR, '>SERR'],
  [PCI_STATUS_DETECTED_PARITY, '<PERR'],
  [PCI_STATUS_INTERRUPT, 'INTx'],
];

// Base address register bits.
export const PCI_BASE_ADDRESS_SPACE_IO = 0x01;
export const PCI_BASE_ADDRESS_MEM_TYPE_MASK = 0x06;
export const PCI_BASE_ADDRESS_MEM_TYPE_32 = 0x00;
export const PCI_BASE_ADDRESS_MEM_TYPE_1M = 0x02; // legacy: below 1 MiB
export const PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x04;
export const PCI_BASE_ADDRESS_MEM_PREFETCH = 0x08;
export const PCI_BASE_ADDRESS_MEM_MASK = 0xfffffff0;
export const PCI_BASE_ADDRESS_IO_MASK = 0xfffffffc;
export const PCI_ROM_ADDRESS_ENABLE = 0x01;
export const PCI_ROM_ADDRESS_MASK = 0xfffff800;

// Capability list: each entry starts with an ID byte and a next-pointer byte.
export const PCI_CAP_LIST_ID = 0;
export const PCI_CAP_LIST_NEXT = 1;
/** Standard capabilities live after the 64-byte header; pointers below it are invalid. */
export const PCI_STD_HEADER_SIZEOF = 0x40;
/** The low two bits of a capability pointer are reserved; software masks them. */
export const PCI_CAP_POINTER_MASK = 0xfc;

export const PCI_CAP_ID_PM = 0x01;
export const PCI_CAP_ID_AGP = 0x02;
export const PCI_CAP_ID_VPD = 0x03;
export const PCI_CAP_ID_SLOTID = 0x04;
export const PCI_CAP_ID_MSI = 0x05;
export const PCI_CAP_ID_CHSWP = 0x06;
export const PCI_CAP_ID_PCIX = 0x07;
export const PCI_CAP_ID_HT = 0x08;
export const PCI_CAP_ID_VNDR = 0x09;
export const PCI_CAP_ID_DBG = 0x0a;
export const PCI_CAP_ID_CCRC = 0x0b;
export const PCI_CAP_ID_SHPC = 0x0c;
export const PCI_CAP_ID_SSVID = 0x0d;
export const PCI_CAP_ID_AGP3 = 0x0e;
export const PCI_CAP_ID_SECDEV = 0x0f;
export const PCI_CAP_ID_EXP = 0x10;
export const PCI_CAP_ID_MSIX = 0x11;
export const PCI_CAP_ID_SATA = 0x12;
export const PCI_CAP_ID_AF = 0x13;
export const PCI_CAP_ID_EA = 0x14;
export const PCI_CAP_ID_FPB = 0x15;

export const PCI_CAPABILITY_NAMES: Readonly<Record<number, string>> = {
  [PCI_CAP_ID_PM]: 'Power Management',
  [PCI_CAP_ID_AGP]: 'AGP',
  [PCI_CAP_ID_VPD]: 'Vital Product Data',
  [PCI_CAP_ID_SLOTID]: 'Slot Identification',
  [PCI_CAP_ID_MSI]: 'MSI',
  [PCI_CAP_ID_CHSWP]: 'CompactPCI Hot Swap',
  [PCI_CAP_ID_PCIX]: 'PCI-X',
  [PCI_CAP_ID_HT]: 'HyperTransport',
  [PCI_CAP_ID_VNDR]: 'Vendor Specific',
  [PCI_CAP_ID_DBG]: 'Debug Port',
  [PCI_CAP_ID_CCRC]: 'CompactPCI Central Resource Control',
  [PCI_CAP_ID_SHPC]: 'PCI Standard Hot-Plug Controller',
  [PCI_CAP_ID_SSVID]: 'Bridge Subsystem Vendor ID',
  [PCI_CAP_ID_AGP3]: 'AGP 8x',
  [PCI_CAP_ID_SECDEV]: 'Secure Device',
  [PCI_CAP_ID_EXP]: 'PCI Express',
  [PCI_CAP_ID_MSIX]: 'MSI-X',
  [PCI_CAP_ID_SATA]: 'SATA HBA',
  [PCI_CAP_ID_AF]: 'PCI Advanced Features',
  [PCI_CAP_ID_EA]: 'Enhanced Allocation',
  [PCI_CAP_ID_FPB]: 'Flattening Portal Bridge',
};

// Power Management capability.
export const PCI_PM_PMC = 2; // u16
export const PCI_PM_CTRL = 4; // u16, PMCSR
export const PCI_PM_SIZEOF = 8;
export const PCI_PM_CAP_VER_MASK = 0x0007;
export const PCI_PM_CAP_PME_CLOCK = 0x0008;
export const PCI_PM_CAP_DSI = 0x0020;
export const PCI_PM_CAP_AUX_POWER_MASK = 0x01c0;
export const PCI_PM_CAP_D1 = 0x0200;
export const PCI_PM_CAP_D2 = 0x0400;
export const PCI_PM_CAP_PME_MASK = 0xf800;
export const PCI_PM_CAP_PME_SHIFT = 11;
export const PCI_PM_CTRL_STATE_MASK = 0x0003;
export const PCI_PM_CTRL_NO_SOFT_RESET = 0x0008;
export const PCI_PM_CTRL_PME_ENABLE = 0x0100;
export const PCI_PM_CTRL_PME_STATUS = 0x8000;

// MSI capability. Where data, mask and pending bits sit depends on the 64-bit flag.
export const PCI_MSI_FLAGS = 2; // u16
export const PCI_MSI_ADDRESS_LO = 4; // u32
export const PCI_MSI_ADDRESS_HI = 8; // u32, 64-bit only
export const PCI_MSI_DATA_32 = 8; // u16
export const PCI_MSI_DATA_64 = 12; // u16
export const PCI_MSI_MASK_32 = 12; // u32
export const PCI_MSI_MASK_64 = 16; // u32
export const PCI_MSI_PENDING_32 = 16; // u32
export const PCI_MSI_PENDING_64 = 20; // u32
export const PCI_MSI_FLAGS_ENABLE = 0x0001;
export const PCI_MSI_FLAGS_QMASK = 0x000e; // multiple message capable, log2
export const PCI_MSI_FLAGS_QSIZE = 0x0070; // multiple message enable, log2
export const PCI_MSI_FLAGS_64BIT = 0x0080;
export const PCI_MSI_FLAGS_MASKBIT = 0x0100;

// MSI-X capability.
export const PCI_MSIX_FLAGS = 2; // u16
export const PCI_MSIX_TABLE = 4; // u32
export const PCI_MSIX_PBA = 8; // u32
export const PCI_MSIX_SIZEOF = 12;
export const PCI_MSIX_FLAGS_QSIZE = 0x07ff; // table size - 1
export const PCI_MSIX_FLAGS_MASKALL = 0x4000;
export const PCI_MSIX_FLAGS_ENABLE = 0x8000;
export const PCI_MSIX_BIR_MASK = 0x00000007;
export const PCI_MSIX_OFFSET_MASK = 0xfffffff8;
/** Each MSI-X table entry: address lo, address hi, data, vector control. */
export const PCI_MSIX_ENTRY_SIZE = 16;

// Bridge subsystem vendor ID capability.
export const PCI_SSVID_VENDOR_ID = 4; // u16
export const PCI_SSVID_DEVICE_ID = 6; // u16

// Vendor-specific capability: ID, next, length, then the vendor's own bytes.
export const PCI_CAP_VNDR_LENGTH = 2; // u8

// PCI Express capability.
export const PCI_EXP_FLAGS = 2; // u16
export const PCI_EXP_DEVCAP = 4; // u32
export const PCI_EXP_DEVCTL = 8; // u16
export const PCI_EXP_DEVSTA = 10; // u16
export const PCI_EXP_LNKCAP = 12; // u32
export const PCI_EXP_LNKCTL = 16; // u16
export const PCI_EXP_LNKSTA = 18; // u16
export const PCI_EXP_SLTCAP = 20; // u32
export const PCI_EXP_DEVCAP2 = 36; // u32
export const PCI_EXP_LNKCAP2 = 44; // u32
export const PCI_EXP_CAP_SIZEOF_V1 = 36;
export const PCI_EXP_CAP_SIZEOF_V2 = 60;
export const PCI_EXP_FLAGS_VERS = 0x000f;
export const PCI_EXP_FLAGS_TYPE = 0x00f0;
export const PCI_EXP_FLAGS_SLOT = 0x0100;
export const PCI_EXP_FLAGS_IRQ = 0x3e00;
export const PCI_EXP_DEVCAP_PAYLOAD = 0x00000007;
export const PCI_EXP_DEVCAP_EXT_TAG = 0x00000020;
export const PCI_EXP_DEVCAP_FLR = 0x10000000;
export const PCI_EXP_DEVCTL_RELAX_EN = 0x0010;
export const PCI_EXP_DEVCTL_PAYLOAD = 0x00e0;
export const PCI_EXP_DEVCTL_EXT_TAG = 0x0100;
export const PCI_EXP_DEVCTL_NOSNOOP_EN = 0x0800;
export const PCI_EXP_DEVCTL_READRQ = 0x7000;
export const PCI_EXP_DEVSTA_CED = 0x0001; // correctable error detected
export const PCI_EXP_DEVSTA_NFED = 0x0002; // non-fatal error detected
export const PCI_EXP_DEVSTA_FED = 0x0004; // fatal error detected
export const PCI_EXP_DEVSTA_URD = 0x0008; // unsupported request detected
export const PCI_EXP_DEVSTA_TRPND = 0x0020; // transactions pending
export const PCI_EXP_LNKCAP_SLS = 0x0000000f;
export const PCI_EXP_LNKCAP_MLW = 0x000003f0;
export const PCI_EXP_LNKCAP_ASPMS = 0x00000c00;
export const PCI_EXP_LNKCAP_PN = 0xff000000;
export const PCI_EXP_LNKCTL_ASPMC = 0x0003;
export const PCI_EXP_LNKCTL_LD = 0x0010; // link disable
export const PCI_EXP_LNKSTA_CLS = 0x000f;
export const PCI_EXP_LNKSTA_NLW = 0x03f0;
export const PCI_EXP_LNKSTA_LT = 0x0800; // link training
export const PCI_EXP_LNKSTA_DLLLA = 0x2000; // data link layer link active

export const PCI_EXP_TYPE_ENDPOINT = 0x0;
export const PCI_EXP_TYPE_LEG_END = 0x1;
export const PCI_EXP_TYPE_ROOT_PORT = 0x4;
export const PCI_EXP_TYPE_UPSTREAM = 0x5;
export const PCI_EXP_TYPE_DOWNSTREAM = 0x6;
export const PCI_EXP_TYPE_PCI_BRIDGE = 0x7;
export const PCI_EXP_TYPE_PCIE_BRIDGE = 0x8;
export const PCI_EXP_TYPE_RC_END = 0x9;
export const PCI_EXP_TYPE_RC_EC = 0xa;

export const PCI_EXP_TYPE_NAMES: Readonly<Record<number, string>> = {
  [PCI_EXP_TYPE_ENDPOINT]: 'Endpoint',
  [PCI_EXP_TYPE_LEG_END]: 'Legacy Endpoint',
  [PCI_EXP_TYPE_ROOT_PORT]: 'Root Port',
  [PCI_EXP_TYPE_UPSTREAM]: 'Upstream Port',
  [PCI_EXP_TYPE_DOWNSTREAM]: 'Downstream Port',
  [PCI_EXP_TYPE_PCI_BRIDGE]: 'PCI Express to PCI/PCI-X Bridge',
  [PCI_EXP_TYPE_PCIE_BRIDGE]: 'PCI/PCI-X to PCI Express Bridge',
  [PCI_EXP_TYPE_RC_END]: 'Root Complex Integrated Endpoint',
  [PCI_EXP_TYPE_RC_EC]: 'Root Complex Event Collector',
};

/** Link speed field value (LNKCAP/LNKSTA) to transfer rate in GT/s. */
export const PCI_EXP_LINK_SPEED_GTS: Readonly<Record<number, number>> = {
  1: 2.5,
  2: 5,
  3: 8,
  4: 16,
  5: 32,
  6: 64,
};

// Extended capabilities: a 32-bit header at 0x100 and after (ID 15:0, version 19:16, next 31:20).
export const PCI_EXT_CAP_START = 0x100;
export const PCI_EXT_CAP_HEADER_SIZE = 4;
export const PCI_EXT_CAP_NEXT_MASK = 0xffc;

export const PCI_EXT_CAP_ID_ERR = 0x01;
export const PCI_EXT_CAP_ID_VC = 0x02;
export const PCI_EXT_CAP_ID_DSN = 0x03;
export const PCI_EXT_CAP_ID_PWR = 0x04;
export const PCI_EXT_CAP_ID_RCLD = 0x05;
export const PCI_EXT_CAP_ID_RCILC = 0x06;
export const PCI_EXT_CAP_ID_RCEC = 0x07;
export const PCI_EXT_CAP_ID_MFVC = 0x08;
export const PCI_EXT_CAP_ID_VC9 = 0x09;
export const PCI_EXT_CAP_ID_RCRB = 0x0a;
export const PCI_EXT_CAP_ID_VNDR = 0x0b;
export const PCI_EXT_CAP_ID_CAC = 0x0c;
export const PCI_EXT_CAP_ID_ACS = 0x0d;
export const PCI_EXT_CAP_ID_ARI = 0x0e;
export const PCI_EXT_CAP_ID_ATS = 0x0f;
export const PCI_EXT_CAP_ID_SRIOV = 0x10;
export const PCI_EXT_CAP_ID_MRIOV = 0x11;
export const PCI_EXT_CAP_ID_MCAST = 0x12;
export const PCI_EXT_CAP_ID_PRI = 0x13;
export const PCI_EXT_CAP_ID_REBAR = 0x15;
export const PCI_EXT_CAP_ID_DPA = 0x16;
export const PCI_EXT_CAP_ID_TPH = 0x17;
export const PCI_EXT_CAP_ID_LTR = 0x18;
export const PCI_EXT_CAP_ID_SECPCI = 0x19;
export const PCI_EXT_CAP_ID_PMUX = 0x1a;
export const PCI_EXT_CAP_ID_PASID = 0x1b;
export const PCI_EXT_CAP_ID_LNR = 0x1c;
export const PCI_EXT_CAP_ID_DPC = 0x1d;
export const PCI_EXT_CAP_ID_L1SS = 0x1e;
export const PCI_EXT_CAP_ID_PTM = 0x1f;
export const PCI_EXT_CAP_ID_MPCIE = 0x20;
export const PCI_EXT_CAP_ID_FRS = 0x21;
export const PCI_EXT_CAP_ID_RTR = 0x22;
export const PCI_EXT_CAP_ID_DVSEC = 0x23;
export const PCI_EXT_CAP_ID_VF_REBAR = 0x24;
export const PCI_EXT_CAP_ID_DLF = 0x25;
export const PCI_EXT_CAP_ID_PL_16GT = 0x26;
export const PCI_EXT_CAP_ID_LMR = 0x27;
export const PCI_EXT_CAP_ID_HIER_ID = 0x28;
export const PCI_EXT_CAP_ID_NPEM = 0x29;
export const PCI_EXT_CAP_ID_PL_32GT = 0x2a;
export const PCI_EXT_CAP_ID_AP = 0x2b;
export const PCI_EXT_CAP_ID_SFI = 0x2c;
export const PCI_EXT_CAP_ID_DOE = 0x2e;
export const PCI_EXT_CAP_ID_IDE = 0x30;
export const PCI_EXT_CAP_ID_PL_64GT = 0x31;

export const PCI_EXT_CAPABILITY_NAMES: Readonly<Record<number, string>> = {
  [PCI_EXT_CAP_ID_ERR]: 'Advanced Error Reporting',
  [PCI_EXT_CAP_ID_VC]: 'Virtual Channel',
  [PCI_EXT_CAP_ID_DSN]: 'Device Serial Number',
  [PCI_EXT_CAP_ID_PWR]: 'Power Budgeting',
  [PCI_EXT_CAP_ID_RCLD]: 'Root Complex Link Declaration',
  [PCI_EXT_CAP_ID_RCILC]: 'Root Complex Internal Link Control',
  [PCI_EXT_CAP_ID_RCEC]: 'Root Complex Event Collector Endpoint Association',
  [PCI_EXT_CAP_ID_MFVC]: 'Multi-Function Virtual Channel',
  [PCI_EXT_CAP_ID_VC9]: 'Virtual Channel',
  [PCI_EXT_CAP_ID_RCRB]: 'Root Complex Register Block',
  [PCI_EXT_CAP_ID_VNDR]: 'Vendor Specific',
  [PCI_EXT_CAP_ID_CAC]: 'Configuration Access Correlation',
  [PCI_EXT_CAP_ID_ACS]: 'Access Control Services',
  [PCI_EXT_CAP_ID_ARI]: 'Alternative Routing-ID Interpretation',
  [PCI_EXT_CAP_ID_ATS]: 'Address Translation Service',
  [PCI_EXT_CAP_ID_SRIOV]: 'Single Root I/O Virtualization',
  [PCI_EXT_CAP_ID_MRIOV]: 'Multi-Root I/O Virtualization',
  [PCI_EXT_CAP_ID_MCAST]: 'Multicast',
  [PCI_EXT_CAP_ID_PRI]: 'Page Request Interface',
  [PCI_EXT_CAP_ID_REBAR]: 'Resizable BAR',
  [PCI_EXT_CAP_ID_DPA]: 'Dynamic Power Allocation',
  [PCI_EXT_CAP_ID_TPH]: 'TPH Requester',
  [PCI_EXT_CAP_ID_LTR]: 'Latency Tolerance Reporting',
  [PCI_EXT_CAP_ID_SECPCI]: 'Secondary PCI Express',
  [PCI_EXT_CAP_ID_PMUX]: 'Protocol Multiplexing',
  [PCI_EXT_CAP_ID_PASID]: 'Process Address Space ID',
  [PCI_EXT_CAP_ID_LNR]: 'LN Requester',
  [PCI_EXT_CAP_ID_DPC]: 'Downstream Port Containment',
  [PCI_EXT_CAP_ID_L1SS]: 'L1 PM Substates',
  [PCI_EXT_CAP_ID_PTM]: 'Precision Time Measurement',
  [PCI_EXT_CAP_ID_MPCIE]: 'M-PCIe',
  [PCI_EXT_CAP_ID_FRS]: 'FRS Queueing',
  [PCI_EXT_CAP_ID_RTR]: 'Readiness Time Reporting',
  [PCI_EXT_CAP_ID_DVSEC]: 'Designated Vendor-Specific',
  [PCI_EXT_CAP_ID_VF_REBAR]: 'VF Resizable BAR',
  [PCI_EXT_CAP_ID_DLF]: 'Data Link Feature',
  [PCI_EXT_CAP_ID_PL_16GT]: 'Physical Layer 16.0 GT/s',
  [PCI_EXT_CAP_ID_LMR]: 'Lane Margining at the Receiver',
  [PCI_EXT_CAP_ID_HIER_ID]: 'Hierarchy ID',
  [PCI_EXT_CAP_ID_NPEM]: 'Native PCIe Enclosure Management',
  [PCI_EXT_CAP_ID_PL_32GT]: 'Physical Layer 32.0 GT/s',
  [PCI_EXT_CAP_ID_AP]: 'Alternate Protocol',
  [PCI_EXT_CAP_ID_SFI]: 'System Firmware Intermediary',
  [PCI_EXT_CAP_ID_DOE]: 'Data Object Exchange',
  [PCI_EXT_CAP_ID_IDE]: 'Integrity and Data Encryption',
  [PCI_EXT_CAP_ID_PL_64GT]: 'Physical Layer 64.0 GT/s',
};

// Advanced Error Reporting.
export const PCI_ERR_UNCOR_STATUS = 4; // u32
export const PCI_ERR_UNCOR_MASK = 8; // u32
export const PCI_ERR_UNCOR_SEVER = 12; // u32
export const PCI_ERR_COR_STATUS = 16; // u32
export const PCI_ERR_COR_MASK = 20; // u32
export const PCI_ERR_CAP = 24; // u32
export const PCI_ERR_CAP_FEP_MASK = 0x1f; // first error pointer
export const PCI_ERR_SIZEOF = 0x1c; // without the root port registers

// Device Serial Number.
export const PCI_DSN_SERIAL = 4; // u64
export const PCI_DSN_SIZEOF = 12;

// Access Control Services.
export const PCI_ACS_CAP = 4; // u16
export const PCI_ACS_CTRL = 6; // u16
export const PCI_ACS_SIZEOF = 8;
export const PCI_ACS_BIT_NAMES: ReadonlyArray<readonly [bit: number, name: string]> = [
  [0x0001, 'SrcValid'],
  [0x0002, 'TransBlk'],
  [0x0004, 'ReqRedir'],
  [0x0008, 'CmpltRedir'],
  [0x0010, 'UpstreamFwd'],
  [0x0020, 'EgressCtrl'],
  [0x0040, 'DirectTrans'],
];

// Single Root I/O Virtualization.
export const PCI_SRIOV_CAP = 4; // u32
export const PCI_SRIOV_CTRL = 8; // u16
export const PCI_SRIOV_STATUS = 10; // u16
export const PCI_SRIOV_INITIAL_VF = 12; // u16
export const PCI_SRIOV_TOTAL_VF = 14; // u16
export const PCI_SRIOV_NUM_VF = 16; // u16
export const PCI_SRIOV_FUNC_LINK = 18; // u8
export const PCI_SRIOV_VF_OFFSET = 20; // u16
export const PCI_SRIOV_VF_STRIDE = 22; // u16
export const PCI_SRIOV_VF_DID = 26; // u16
export const PCI_SRIOV_SUP_PGSIZE = 28; // u32
export const PCI_SRIOV_SYS_PGSIZE = 32; // u32
export const PCI_SRIOV_BAR = 36; // six u32, like a type 0 header's BARs
export const PCI_SRIOV_SIZEOF = 64;
export const PCI_SRIOV_CTRL_VFE = 0x0001;
export const PCI_SRIOV_CTRL_MSE = 0x0008;
export const PCI_SRIOV_CTRL_ARI = 0x0010;

// Virtio's vendor-specific capability (virtio 1.x, "struct virtio_pci_cap").
export const PCI_VENDOR_ID_REDHAT_QUMRANET = 0x1af4;
export const VIRTIO_PCI_CAP_CFG_TYPE = 3; // u8
export const VIRTIO_PCI_CAP_BAR = 4; // u8
export const VIRTIO_PCI_CAP_OFFSET = 8; // u32
export const VIRTIO_PCI_CAP_LENGTH = 12; // u32
export const VIRTIO_PCI_NOTIFY_CAP_MULT = 16; // u32, notify capability only
export const VIRTIO_PCI_CAP_SIZEOF = 16;
export const VIRTIO_PCI_CAP_NOTIFY_CFG = 2;
export const VIRTIO_PCI_CAP_NAMES: Readonly<Record<number, string>> = {
  1: 'CommonCfg',
  2: 'Notify',
  3: 'ISR',
  4: 'DeviceCfg',
  5: 'PCICfg',
  8: 'SharedMemory',
  9: 'VendorCfg',
};

/** setpci-style register names accepted by `userpci config`, with their natural width in bytes. */
export const PCI_NAMED_REGISTERS: Readonly<Record<string, { offset: number; width: 1 | 2 | 4 }>> = {
  VENDOR_ID: { offset: PCI_VENDOR_ID, width: 2 },
  DEVICE_ID: { offset: PCI_DEVICE_ID, width: 2 },
  COMMAND: { offset: PCI_COMMAND, width: 2 },
  STATUS: { offset: PCI_STATUS, width: 2 },
  REVISION: { offset: PCI_REVISION_ID, width: 1 },
  CLASS_PROG: { offset: PCI_CLASS_PROG, width: 1 },
  CLASS_DEVICE: { offset: PCI_CLASS_DEVICE, width: 2 },
  CACHE_LINE_SIZE: { offset: PCI_CACHE_LINE_SIZE, width: 1 },
  LATENCY_TIMER: { offset: PCI_LATENCY_TIMER, width: 1 },
  HEADER_TYPE: { offset: PCI_HEADER_TYPE, width: 1 },
  BIST: { offset: PCI_BIST, width: 1 },
  BASE_ADDRESS_0: { offset: 0x10, width: 4 },
  BASE_ADDRESS_1: { offset: 0x14, width: 4 },
  BASE_ADDRESS_2: { offset: 0x18, width: 4 },
  BASE_ADDRESS_3: { offset: 0x1c, width: 4 },
  BASE_ADDRESS_4: { offset: 0x20, width: 4 },
  BASE_ADDRESS_5: { offset: 0x24, width: 4 },
  SUBSYSTEM_VENDOR_ID: { offset: PCI_SUBSYSTEM_VENDOR_ID, width: 2 },
  SUBSYSTEM_ID: { offset: PCI_SUBSYSTEM_ID, width: 2 },
  ROM_ADDRESS: { offset: PCI_ROM_ADDRESS, width: 4 },
  CAPABILITIES: { offset: PCI_CAPABILITY_LIST, width: 1 },
  INTERRUPT_LINE: { offset: PCI_INTERRUPT_LINE, width: 1 },
  INTERRUPT_PIN: { offset: PCI_INTERRUPT_PIN, width: 1 },
  MIN_GNT: { offset: PCI_MIN_GNT, width: 1 },
  MAX_LAT: { offset: PCI_MAX_LAT, width: 1 },
};
