/**
 * What `lspci -vvv` says about config-space registers, in its words and layout, so `userpci info`
 * reads like the tool driver authors know and can be compared with it line by line
 * (test/unit/pci-lspci.test.ts does, on captures of QEMU's devices). Bit meanings are the PCI and
 * PCI Express specifications'; each renderer takes the raw little-endian bytes and an offset.
 */
import { decodeVfBars } from '../pci/capabilities.js';
import type { ConfigSpace } from '../pci/config-space.js';
import * as regs from '../uapi/pci-regs.js';

type Bits = ReadonlyArray<readonly [mask: number, name: string]>;

const sign = (value: number, mask: number): string => ((value & mask) !== 0 ? '+' : '-');
const flags = (value: number, bits: Bits): string => bits.map(([mask, name]) => `${name}${sign(value, mask)}`).join(' ');
const hex = (value: number, digits: number): string => (value >>> 0).toString(16).padStart(digits, '0');

/** One function's registers: a DataView that reads 0 past the bytes given instead of throwing. */
export class ConfigRegisters {
  readonly view: DataView;
  constructor(readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  u8(offset: number): number {
    return offset + 1 <= this.bytes.length ? this.view.getUint8(offset) : 0;
  }
  u16(offset: number): number {
    return offset + 2 <= this.bytes.length ? this.view.getUint16(offset, true) : 0;
  }
  u32(offset: number): number {
    return offset + 4 <= this.bytes.length ? this.view.getUint32(offset, true) : 0;
  }
}

const DEVSEL = ['fast', 'medium', 'slow', '??'];

/** Control, Status, Latency and Interrupt lines, as lspci -vv prints them after the title. */
export function headerLines(r: ConfigRegisters, config: ConfigSpace, irq: number): string[] {
  const command = config.command;
  const status = config.status;
  const lines = [
    `Control: ${flags(command, regs.PCI_COMMAND_BIT_NAMES)}`,
    `Status: ${flags(status, regs.PCI_STATUS_BIT_NAMES.slice(0, 5))} DEVSEL=${DEVSEL[(status & regs.PCI_STATUS_DEVSEL_MASK) >> 9]} ${flags(status, regs.PCI_STATUS_BIT_NAMES.slice(5))}`,
  ];
  if ((command & regs.PCI_COMMAND_MASTER) !== 0) {
    // Min_Gnt and Max_Lat exist only in a type 0 header (a bridge keeps other registers there).
    const normal = config.headerType === regs.PCI_HEADER_TYPE_NORMAL;
    const minGnt = normal ? r.u8(0x3e) : 0;
    const maxLat = normal ? r.u8(0x3f) : 0;
    const timing = [minGnt ? `${minGnt * 250}ns min` : '', maxLat ? `${maxLat * 250}ns max` : ''].filter(Boolean).join(', ');
    lines.push(`Latency: ${config.latencyTimer}${timing ? ` (${timing})` : ''}${config.cacheLineSize ? `, Cache Line Size: ${config.cacheLineSize * 4} bytes` : ''}`);
  }
  if (config.interruptPin !== 0 || irq !== 0) {
    lines.push(`Interrupt: pin ${config.interruptPin ? String.fromCharCode(0x40 + config.interruptPin) : '?'} routed to IRQ ${irq}`);
  }
  return lines;
}

const SECONDARY_STATUS: Bits = [[0x0020, '66MHz'], [0x0080, 'FastB2B'], [0x0100, 'ParErr']];
const SECONDARY_STATUS_ERRORS: Bits = [[0x0800, '>TAbort'], [0x1000, '<TAbort'], [0x2000, '<MAbort'], [0x4000, '<SERR'], [0x8000, '<PERR']];
const BRIDGE_CONTROL: Bits = [[0x01, 'Parity'], [0x02, 'SERR'], [0x04, 'NoISA'], [0x08, 'VGA'], [0x10, 'VGA16'], [0x20, 'MAbort'], [0x40, '>Reset'], [0x80, 'FastB2B']];
const BRIDGE_CONTROL_TIMERS: Bits = [[0x100, 'PriDiscTmr'], [0x200, 'SecDiscTmr'], [0x400, 'DiscTmrStat'], [0x800, 'DiscTmrSERREn']];

/** A type 1 header's bus numbers, windows, secondary status and bridge control. */
export function bridgeLines(r: ConfigRegisters): string[] {
  const lines = [`Bus: primary=${hex(r.u8(0x18), 2)}, secondary=${hex(r.u8(0x19), 2)}, subordinate=${hex(r.u8(0x1a), 2)}, sec-latency=${r.u8(0x1b)}`];

  const ioBaseByte = r.u8(0x1c);
  const ioLimitByte = r.u8(0x1d);
  const io32 = (ioBaseByte & 0x0f) === 0x01;
  let ioBase = (ioBaseByte & 0xf0) << 8;
  let ioLimit = (ioLimitByte & 0xf0) << 8;
  if (io32) {
    ioBase = (ioBase | (r.u16(0x30) << 16)) >>> 0;
    ioLimit = (ioLimit | (r.u16(0x32) << 16)) >>> 0;
  }
  lines.push(`I/O behind bridge: ${window(ioBase, ioLimit + 0xfff, io32 ? 8 : 4)} [${io32 ? 32 : 16}-bit]`);

  const memoryBase = (r.u16(0x20) & 0xfff0) << 16;
  const memoryLimit = (r.u16(0x22) & 0xfff0) << 16;
  lines.push(`Memory behind bridge: ${window(memoryBase >>> 0, (memoryLimit >>> 0) + 0xfffff, 8)} [32-bit]`);

  const prefetchBaseWord = r.u16(0x24);
  const prefetch64 = (prefetchBaseWord & 0x0f) === 0x01;
  let prefetchBase = BigInt(((prefetchBaseWord & 0xfff0) << 16) >>> 0);
  let prefetchLimit = BigInt(((r.u16(0x26) & 0xfff0) << 16) >>> 0) + 0xfffffn;
  if (prefetch64) {
    prefetchBase |= BigInt(r.u32(0x28)) << 32n;
    prefetchLimit |= BigInt(r.u32(0x2c)) << 32n;
  }
  lines.push(`Prefetchable memory behind bridge: ${window(prefetchBase, prefetchLimit, prefetch64 ? 16 : 8)} [${prefetch64 ? 64 : 32}-bit]`);

  const secondary = r.u16(regs.PCI_SEC_STATUS);
  lines.push(`Secondary status: ${flags(secondary, SECONDARY_STATUS)} DEVSEL=${DEVSEL[(secondary & 0x0600) >> 9]} ${flags(secondary, SECONDARY_STATUS_ERRORS)}`);
  const control = r.u16(0x3e);
  lines.push(`BridgeCtl: ${flags(control, BRIDGE_CONTROL)}`, `\t${flags(control, BRIDGE_CONTROL_TIMERS)}`);
  return lines;
}

function window(base: number | bigint, limit: number | bigint, digits: number): string {
  if (BigInt(base) > BigInt(limit)) return '[disabled]';
  const size = BigInt(limit) - BigInt(base) + 1n;
  return `${base.toString(16).padStart(digits, '0')}-${limit.toString(16).padStart(digits, '0')}${sizeText(size)}`;
}

/** lspci's " [size=64K]": the largest unit that divides the size. */
export function sizeText(size: bigint): string {
  if (size === 0n) return '';
  const units = ['', 'K', 'M', 'G', 'T'];
  let value = size;
  let unit = 0;
  while (unit < units.length - 1 && value % 1024n === 0n) {
    value /= 1024n;
    unit++;
  }
  return ` [size=${value}${units[unit]}]`;
}

// ---- Power Management ------------------------------------------------------------------------

const AUX_CURRENT_MA = [0, 55, 100, 160, 220, 270, 320, 375];

export function powerManagementLines(r: ConfigRegisters, at: number): string[] {
  const pmc = r.u16(at + regs.PCI_PM_PMC);
  const control = r.u16(at + regs.PCI_PM_CTRL);
  const pme = (state: number) => sign(pmc, 1 << (11 + state));
  const lines = [
    `Power Management version ${pmc & regs.PCI_PM_CAP_VER_MASK}`,
    `\tFlags: PMEClk${sign(pmc, 0x0008)} DSI${sign(pmc, 0x0020)} D1${sign(pmc, 0x0200)} D2${sign(pmc, 0x0400)} AuxCurrent=${AUX_CURRENT_MA[(pmc & 0x01c0) >> 6]}mA PME(D0${pme(0)},D1${pme(1)},D2${pme(2)},D3hot${pme(3)},D3cold${pme(4)})`,
    `\tStatus: D${control & 0x3} NoSoftRst${sign(control, 0x0008)} PME-Enable${sign(control, 0x0100)} DSel=${(control & 0x1e00) >> 9} DScale=${(control & 0x6000) >> 13} PME${sign(control, 0x8000)}`,
  ];
  const bridgeExtensions = r.u8(at + 6);
  if (bridgeExtensions !== 0) lines.push(`\tBridge: PM${sign(bridgeExtensions, 0x80)} B3${sign(~bridgeExtensions, 0x40)}`);
  return lines;
}

// ---- PCI Express capability --------------------------------------------------------------------

const T = {
  endpoint: regs.PCI_EXP_TYPE_ENDPOINT,
  legacy: regs.PCI_EXP_TYPE_LEG_END,
  rootPort: regs.PCI_EXP_TYPE_ROOT_PORT,
  upstream: regs.PCI_EXP_TYPE_UPSTREAM,
  downstream: regs.PCI_EXP_TYPE_DOWNSTREAM,
  pciBridge: regs.PCI_EXP_TYPE_PCI_BRIDGE,
  pcieBridge: regs.PCI_EXP_TYPE_PCIE_BRIDGE,
  integrated: regs.PCI_EXP_TYPE_RC_END,
  eventCollector: regs.PCI_EXP_TYPE_RC_EC,
} as const;

const TYPE_TITLES: Record<number, string> = {
  [T.endpoint]: 'Endpoint',
  [T.legacy]: 'Legacy Endpoint',
  [T.rootPort]: 'Root Port',
  [T.upstream]: 'Upstream Port',
  [T.downstream]: 'Downstream Port',
  [T.pciBridge]: 'PCI-Express to PCI/PCI-X Bridge',
  [T.pcieBridge]: 'PCI/PCI-X to PCI-Express Bridge',
  [T.integrated]: 'Root Complex Integrated Endpoint',
  [T.eventCollector]: 'Root Complex Event Collector',
};

const L0S_LATENCY = ['<64ns', '<128ns', '<256ns', '<512ns', '<1us', '<2us', '<4us', 'unlimited'];
const L1_LATENCY = ['<1us', '<2us', '<4us', '<8us', '<16us', '<32us', '<64us', 'unlimited'];
const LINK_SPEED: Record<number, string> = { 1: '2.5GT/s', 2: '5GT/s', 3: '8GT/s', 4: '16GT/s', 5: '32GT/s', 6: '64GT/s' };
const ASPM_SUPPORT = ['not supported', 'L0s', 'L1', 'L0s L1'];
const ASPM_CONTROL = ['Disabled', 'L0s Enabled', 'L1 Enabled', 'L0s L1 Enabled'];
const INDICATOR = ['Unknown', 'On', 'Blink', 'Off'];

function powerLimit(value: number, scale: number): string {
  if (scale === 0 && value === 0xff) return '>600W';
  const watts = scale === 0 && value >= 0xf0 && value <= 0xfe ? 250 + 25 * (value - 0xf0) : value;
  return `${Number((watts * [1, 0.1, 0.01, 0.001][scale]!).toPrecision(6))}W`;
}

/** The PCIe device/port type of a function, from its Express capability (undefined without one). */
export function expressType(r: ConfigRegisters, config: ConfigSpace): number | undefined {
  const capability = config.capabilities.find((entry) => entry.id === regs.PCI_CAP_ID_EXP);
  return capability === undefined ? undefined : (r.u16(capability.offset + regs.PCI_EXP_FLAGS) & regs.PCI_EXP_FLAGS_TYPE) >> 4;
}

export interface FunctionContext {
  /** Device and function number: Link Capabilities 2 of an endpoint's other functions is reserved. */
  readonly device: number;
  readonly function: number;
  /** Whether a BAR decodes memory (AtomicOps completer fields only make sense then). */
  readonly hasMemoryBar: boolean;
}

export function expressLines(r: ConfigRegisters, at: number, context: FunctionContext): string[] {
  const capFlags = r.u16(at + regs.PCI_EXP_FLAGS);
  const type = (capFlags & regs.PCI_EXP_FLAGS_TYPE) >> 4;
  const version = capFlags & regs.PCI_EXP_FLAGS_VERS;
  const hasSlotType = type === T.rootPort || type === T.downstream || type === T.pcieBridge;
  const slot = hasSlotType && (capFlags & regs.PCI_EXP_FLAGS_SLOT) !== 0;
  const link = type !== T.integrated && type !== T.eventCollector;
  const title = TYPE_TITLES[type] ?? `Unknown type ${type}`;
  const lines = [`Express (v${version}) ${title}${hasSlotType ? ` (Slot${sign(capFlags, regs.PCI_EXP_FLAGS_SLOT)})` : ''}, MSI ${hex((capFlags & regs.PCI_EXP_FLAGS_IRQ) >> 9, 2)}`];
  const add = (text: string) => lines.push(`\t${text}`);
  const is = (...types: number[]) => types.includes(type);

  const devCap = r.u32(at + 4);
  add(`DevCap:\tMaxPayload ${128 << (devCap & 0x7)} bytes, PhantFunc ${(1 << ((devCap & 0x18) >> 3)) - 1}${is(T.endpoint, T.legacy) ? `, Latency L0s ${L0S_LATENCY[(devCap & 0x1c0) >> 6]}, L1 ${L1_LATENCY[(devCap & 0xe00) >> 9]}` : ''}`);
  add(
    `\tExtTag${sign(devCap, 0x20)}` +
      (is(T.endpoint, T.legacy, T.upstream, T.pciBridge) ? ` AttnBtn${sign(devCap, 0x1000)} AttnInd${sign(devCap, 0x2000)} PwrInd${sign(devCap, 0x4000)}` : '') +
      ` RBE${sign(devCap, 0x8000)}` +
      (is(T.endpoint, T.legacy, T.integrated) ? ` FLReset${sign(devCap, 0x10000000)}` : '') +
      (is(T.endpoint, T.upstream, T.pciBridge) ? ` SlotPowerLimit ${powerLimit((devCap >>> 18) & 0xff, (devCap >>> 26) & 0x3)}` : ''),
  );
  const devCtl = r.u16(at + 8);
  add(`DevCtl:\tCorrErr${sign(devCtl, 0x1)} NonFatalErr${sign(devCtl, 0x2)} FatalErr${sign(devCtl, 0x4)} UnsupReq${sign(devCtl, 0x8)}`);
  add(
    `\tRlxdOrd${sign(devCtl, 0x10)} ExtTag${sign(devCtl, 0x100)} PhantFunc${sign(devCtl, 0x200)} AuxPwr${sign(devCtl, 0x400)} NoSnoop${sign(devCtl, 0x800)}` +
      (type === T.pciBridge ? ` BrConfRtry${sign(devCtl, 0x8000)}` : '') +
      (is(T.endpoint, T.legacy, T.integrated) && (devCap & 0x10000000) !== 0 ? ` FLReset${sign(devCtl, 0x8000)}` : ''),
  );
  add(`\tMaxPayload ${128 << ((devCtl & 0xe0) >> 5)} bytes, MaxReadReq ${128 << ((devCtl & 0x7000) >> 12)} bytes`);
  const devSta = r.u16(at + 10);
  add(`DevSta:\tCorrErr${sign(devSta, 0x1)} NonFatalErr${sign(devSta, 0x2)} FatalErr${sign(devSta, 0x4)} UnsupReq${sign(devSta, 0x8)} AuxPwr${sign(devSta, 0x10)} TransPend${sign(devSta, 0x20)}`);

  if (link) {
    const lnkCap = r.u32(at + 12);
    const aspm = (lnkCap & 0xc00) >> 10;
    const exits = [aspm & 1 ? `L0s ${L0S_LATENCY[(lnkCap & 0x7000) >> 12]}` : '', aspm & 2 ? `L1 ${L1_LATENCY[(lnkCap & 0x38000) >> 15]}` : ''].filter(Boolean).join(', ');
    const capSpeed = lnkCap & 0xf;
    const capWidth = (lnkCap & 0x3f0) >> 4;
    add(`LnkCap:\tPort #${lnkCap >>> 24}, Speed ${LINK_SPEED[capSpeed] ?? 'unknown'}, Width x${capWidth}, ASPM ${ASPM_SUPPORT[aspm]}${aspm ? `, Exit Latency ${exits}` : ''}`);
    add(`\tClockPM${sign(lnkCap, 0x40000)} Surprise${sign(lnkCap, 0x80000)} LLActRep${sign(lnkCap, 0x100000)} BwNot${sign(lnkCap, 0x200000)} ASPMOptComp${sign(lnkCap, 0x400000)}`);
    const lnkCtl = r.u16(at + 16);
    add(`LnkCtl:\tASPM ${ASPM_CONTROL[lnkCtl & 0x3]};${is(T.rootPort, T.endpoint, T.legacy, T.pciBridge) ? ` RCB ${lnkCtl & 0x8 ? 128 : 64} bytes,` : ''} Disabled${sign(lnkCtl, 0x10)} CommClk${sign(lnkCtl, 0x40)}`);
    add(`\tExtSynch${sign(lnkCtl, 0x80)} ClockPM${sign(lnkCtl, 0x100)} AutWidDis${sign(lnkCtl, 0x200)} BWInt${sign(lnkCtl, 0x400)} AutBWInt${sign(lnkCtl, 0x800)}`);
    const lnkSta = r.u16(at + 18);
    // A port's link may run slower than it can (it follows the device); an endpoint's is "downgraded".
    const compare = (now: number, most: number) => (now > most ? ' (overdriven)' : now === most || is(T.rootPort, T.downstream, T.pcieBridge) ? '' : ' (downgraded)');
    add(`LnkSta:\tSpeed ${LINK_SPEED[lnkSta & 0xf] ?? 'unknown'}${compare(lnkSta & 0xf, capSpeed)}, Width x${(lnkSta & 0x3f0) >> 4}${compare((lnkSta & 0x3f0) >> 4, capWidth)}`);
    add(`\tTrErr${sign(lnkSta, 0x400)} Train${sign(lnkSta, 0x800)} SlotClk${sign(lnkSta, 0x1000)} DLActive${sign(lnkSta, 0x2000)} BWMgmt${sign(lnkSta, 0x4000)} ABWMgmt${sign(lnkSta, 0x8000)}`);
  }

  if (slot) {
    const sltCap = r.u32(at + 20);
    add(`SltCap:\tAttnBtn${sign(sltCap, 0x1)} PwrCtrl${sign(sltCap, 0x2)} MRL${sign(sltCap, 0x4)} AttnInd${sign(sltCap, 0x8)} PwrInd${sign(sltCap, 0x10)} HotPlug${sign(sltCap, 0x40)} Surprise${sign(sltCap, 0x20)}`);
    add(`\tSlot #${sltCap >>> 19}, PowerLimit ${powerLimit((sltCap >> 7) & 0xff, (sltCap >> 15) & 0x3)}; Interlock${sign(sltCap, 0x20000)} NoCompl${sign(sltCap, 0x40000)}`);
    const sltCtl = r.u16(at + 24);
    add(`SltCtl:\tEnable: AttnBtn${sign(sltCtl, 0x1)} PwrFlt${sign(sltCtl, 0x2)} MRL${sign(sltCtl, 0x4)} PresDet${sign(sltCtl, 0x8)} CmdCplt${sign(sltCtl, 0x10)} HPIrq${sign(sltCtl, 0x20)} LinkChg${sign(sltCtl, 0x1000)}`);
    add(`\tControl: AttnInd ${INDICATOR[(sltCtl & 0xc0) >> 6]}, PwrInd ${INDICATOR[(sltCtl & 0x300) >> 8]}, Power${sign(sltCtl, 0x400)} Interlock${sign(sltCtl, 0x800)}`);
    const sltSta = r.u16(at + 26);
    add(`SltSta:\tStatus: AttnBtn${sign(sltSta, 0x1)} PowerFlt${sign(sltSta, 0x2)} MRL${sign(sltSta, 0x20)} CmdCplt${sign(sltSta, 0x10)} PresDet${sign(sltSta, 0x40)} Interlock${sign(sltSta, 0x80)}`);
    add(`\tChanged: MRL${sign(sltSta, 0x4)} PresDet${sign(sltSta, 0x8)} LinkState${sign(sltSta, 0x100)}`);
  }

  if (is(T.rootPort, T.eventCollector)) {
    add(`RootCap: CRSVisible${sign(r.u16(at + 30), 0x1)}`);
    const rootCtl = r.u16(at + 28);
    add(`RootCtl: ErrCorrectable${sign(rootCtl, 0x1)} ErrNon-Fatal${sign(rootCtl, 0x2)} ErrFatal${sign(rootCtl, 0x4)} PMEIntEna${sign(rootCtl, 0x8)} CRSVisible${sign(rootCtl, 0x10)}`);
    const rootSta = r.u32(at + 32);
    add(`RootSta: PME ReqID ${hex(rootSta & 0xffff, 4)}, PMEStatus${sign(rootSta, 0x10000)} PMEPending${sign(rootSta, 0x20000)}`);
  }

  if (version < 2) return lines;
  lines.push(...expressLines2(r, at, type, link, context).map((line) => `\t${line}`));
  return lines;
}

const TIMEOUT_RANGES: Record<number, string> = { 0: 'Not Supported', 1: 'Range A', 2: 'Range B', 3: 'Range AB', 6: 'Range BC', 7: 'Range ABC', 14: 'Range BCD', 15: 'Range ABCD' };
const TIMEOUT_VALUES: Record<number, string> = {
  0: '50us to 50ms', 1: '50us to 100us', 2: '1ms to 10ms', 5: '16ms to 55ms', 6: '65ms to 210ms', 9: '260ms to 900ms', 10: '1s to 3.5s', 13: '4s to 13s', 14: '17s to 64s',
};
const OBFF_SUPPORT = ['Not Supported', 'Via message', 'Via WAKE#', 'Via message/WAKE#'];
const OBFF_CONTROL = ['Disabled', 'Via message A', 'Via message B', 'Via WAKE#'];
const EMERGENCY_POWER = ['Not Supported', 'Dev Specific', 'Form Factor Dev Specific', 'Reserved'];
const LN_CLS = ['Not Supported', '64byte cachelines', '128byte cachelines', 'Reserved'];
const TPH = ['TPHComp- ExtTPHComp-', 'TPHComp+ ExtTPHComp-', '', 'TPHComp+ ExtTPHComp+'];
const DEEMPHASIS = ['-6dB', '-3.5dB'];
const COMPLIANCE_PRESET = [
  '-6dB de-emphasis, 0dB preshoot', '-3.5dB de-emphasis, 0dB preshoot', '-4.4dB de-emphasis, 0dB preshoot', '-2.5dB de-emphasis, 0dB preshoot',
  '0dB de-emphasis, 0dB preshoot', '0dB de-emphasis, 1.9dB preshoot', '0dB de-emphasis, 2.5dB preshoot', '-6.0dB de-emphasis, 3.5dB preshoot',
  '-3.5dB de-emphasis, 3.5dB preshoot', '0dB de-emphasis, 3.5dB preshoot',
];
const TRANSMIT_MARGIN = ['Normal Operating Range', '800-1200mV(full-swing)/400-700mV(half-swing)', ...Array(4).fill('200-400mV(full-swing)/100-200mV(half-swing)')];
const CROSSLINK = ['unsupported', 'Upstream Port', 'Downstream Port', 'incomplete'];
const DOWNSTREAM_COMPONENT: Record<number, string> = {
  0: 'Link Down - Not Determined', 1: 'Link Down - Not Present', 2: 'Link Down - Present', 4: 'Link Up - Present', 5: 'Link Up - Present and DRS Received',
};

function supportedSpeeds(vector: number): string {
  if (vector & 0x60) return 'RsvdP';
  for (const [bit, text] of [[0x10, '2.5-32GT/s'], [0x08, '2.5-16GT/s'], [0x04, '2.5-8GT/s'], [0x02, '2.5-5GT/s'], [0x01, '2.5GT/s']] as const) {
    if (vector & bit) return text;
  }
  return 'Unknown';
}

/** DevCap2/DevCtl2 and LnkCap2/LnkCtl2/LnkSta2 (capability version 2). */
function expressLines2(r: ConfigRegisters, at: number, type: number, link: boolean, context: FunctionContext): string[] {
  const is = (...types: number[]) => types.includes(type);
  const lines: string[] = [];
  const cap2 = r.u32(at + 36);
  lines.push(`DevCap2: Completion Timeout: ${TIMEOUT_RANGES[cap2 & 0xf] ?? 'Unknown'}, TimeoutDis${sign(cap2, 0x10)} NROPrPrP${sign(cap2, 0x400)} LTR${sign(cap2, 0x800)}`);
  const prefixes = (cap2 & 0x200000) !== 0 ? `, MaxEETLPPrefixes ${((cap2 >> 22) & 0x3) || 4}` : '';
  lines.push(`\t 10BitTagComp${sign(cap2, 0x10000)} 10BitTagReq${sign(cap2, 0x20000)} OBFF ${OBFF_SUPPORT[(cap2 >> 18) & 0x3]}, ExtFmt${sign(cap2, 0x100000)} EETLPPrefix${sign(cap2, 0x200000)}${prefixes}`);
  lines.push(`\t EmergencyPowerReduction ${EMERGENCY_POWER[(cap2 >> 24) & 0x3]}, EmergencyPowerReductionInit${sign(cap2, 0x4000000)}`);
  lines.push(
    `\t FRS${sign(cap2, 0x80000000)}` +
      (type === T.rootPort ? ` LN System CLS ${LN_CLS[(cap2 >> 14) & 0x3]},` : '') +
      (is(T.rootPort, T.endpoint) ? ` ${TPH[(cap2 >> 12) & 0x3]}` : '') +
      (is(T.rootPort, T.downstream) ? ` ARIFwd${sign(cap2, 0x20)}` : ''),
  );
  const routes = is(T.rootPort, T.upstream, T.downstream);
  if (routes || context.hasMemoryBar) {
    lines.push(
      '\t AtomicOpsCap:' +
        (routes ? ` Routing${sign(cap2, 0x40)}` : '') +
        (type === T.rootPort || context.hasMemoryBar ? ` 32bit${sign(cap2, 0x80)} 64bit${sign(cap2, 0x100)} 128bitCAS${sign(cap2, 0x200)}` : ''),
    );
  }
  const ctl2 = r.u16(at + 40);
  lines.push(
    `DevCtl2: Completion Timeout: ${TIMEOUT_VALUES[ctl2 & 0xf] ?? 'Unknown'}, TimeoutDis${sign(ctl2, 0x10)} LTR${sign(ctl2, 0x400)} 10BitTagReq${sign(ctl2, 0x1000)} OBFF ${OBFF_CONTROL[(ctl2 >> 13) & 0x3]},` +
      (is(T.rootPort, T.downstream) ? ` ARIFwd${sign(ctl2, 0x20)}` : ''),
  );
  if (is(T.rootPort, T.upstream, T.downstream, T.endpoint, T.integrated, T.legacy)) {
    lines.push(
      '\t AtomicOpsCtl:' +
        (is(T.rootPort, T.endpoint, T.integrated, T.legacy) ? ` ReqEn${sign(ctl2, 0x40)}` : '') +
        (routes ? ` EgressBlck${sign(ctl2, 0x80)}` : ''),
    );
  }
  if (!link) return lines;

  let lnkCap2 = 0;
  // Link Capabilities 2 was reserved before PCIe 3.0 and is only the first function's on an endpoint.
  if (!(is(T.endpoint, T.legacy) && (context.device !== 0 || context.function !== 0))) {
    lnkCap2 = r.u32(at + 44);
    if (lnkCap2 !== 0) {
      lines.push(`LnkCap2: Supported Link Speeds: ${supportedSpeeds((lnkCap2 >> 1) & 0x7f)}, Crosslink${sign(lnkCap2, 0x100)} Retimer${sign(lnkCap2, 0x800000)} 2Retimers${sign(lnkCap2, 0x1000000)} DRS${sign(lnkCap2, 0x80000000)}`);
    }
    const lnkCtl2 = r.u16(at + 48);
    const speed = lnkCtl2 & 0xf;
    lines.push(
      `LnkCtl2: Target Link Speed: ${speed === 0 ? '2.5GT/s' : (LINK_SPEED[speed] ?? 'Unknown')}, EnterCompliance${sign(lnkCtl2, 0x10)} SpeedDis${sign(lnkCtl2, 0x20)}` +
        (type === T.downstream ? `, Selectable De-emphasis: ${DEEMPHASIS[(lnkCtl2 >> 6) & 0x1]}` : ''),
      `\t Transmit Margin: ${TRANSMIT_MARGIN[(lnkCtl2 >> 7) & 0x7] ?? 'Unknown'}, EnterModifiedCompliance${sign(lnkCtl2, 0x400)} ComplianceSOS${sign(lnkCtl2, 0x800)}`,
      `\t Compliance Preset/De-emphasis: ${COMPLIANCE_PRESET[(lnkCtl2 >> 12) & 0xf] ?? 'Unknown'}`,
    );
  }
  const lnkSta2 = r.u16(at + 50);
  lines.push(
    `LnkSta2: Current De-emphasis Level: ${DEEMPHASIS[lnkSta2 & 0x1]}, EqualizationComplete${sign(lnkSta2, 0x2)} EqualizationPhase1${sign(lnkSta2, 0x4)}`,
    `\t EqualizationPhase2${sign(lnkSta2, 0x8)} EqualizationPhase3${sign(lnkSta2, 0x10)} LinkEqualizationRequest${sign(lnkSta2, 0x20)}`,
  );
  const crosslink = `\t Retimer${sign(lnkSta2, 0x40)} 2Retimers${sign(lnkSta2, 0x80)} CrosslinkRes: ${CROSSLINK[(lnkSta2 >> 8) & 0x3]}`;
  if (is(T.rootPort, T.downstream, T.pcieBridge) && (lnkCap2 & 0x80000000) !== 0) {
    lines.push(`${crosslink}, DRS${sign(lnkSta2, 0x8000)}`, `\t DownstreamComp: ${DOWNSTREAM_COMPONENT[(lnkSta2 >> 12) & 0x7] ?? 'Reserved'}`);
  } else {
    lines.push(crosslink);
  }
  return lines;
}

// ---- Extended capabilities ---------------------------------------------------------------------

const UNCORRECTABLE: Bits = [
  [0x10, 'DLP'], [0x20, 'SDES'], [0x1000, 'TLP'], [0x2000, 'FCP'], [0x4000, 'CmpltTO'], [0x8000, 'CmpltAbrt'],
  [0x10000, 'UnxCmplt'], [0x20000, 'RxOF'], [0x40000, 'MalfTLP'], [0x80000, 'ECRC'], [0x100000, 'UnsupReq'], [0x200000, 'ACSViol'],
];
const CORRECTABLE: Bits = [[0x1, 'RxErr'], [0x40, 'BadTLP'], [0x80, 'BadDLLP'], [0x100, 'Rollover'], [0x1000, 'Timeout'], [0x2000, 'AdvNonFatalErr']];

/** Advanced Error Reporting; root ports and event collectors add their root registers. */
export function aerLines(r: ConfigRegisters, at: number, expressType: number | undefined): string[] {
  const control = r.u32(at + 0x18);
  const lines = [
    'Advanced Error Reporting',
    `\tUESta:\t${flags(r.u32(at + 0x04), UNCORRECTABLE)}`,
    `\tUEMsk:\t${flags(r.u32(at + 0x08), UNCORRECTABLE)}`,
    `\tUESvrt:\t${flags(r.u32(at + 0x0c), UNCORRECTABLE)}`,
    `\tCESta:\t${flags(r.u32(at + 0x10), CORRECTABLE)}`,
    `\tCEMsk:\t${flags(r.u32(at + 0x14), CORRECTABLE)}`,
    `\tAERCap:\tFirst Error Pointer: ${hex(control & 0x1f, 2)}, ECRCGenCap${sign(control, 0x20)} ECRCGenEn${sign(control, 0x40)} ECRCChkCap${sign(control, 0x80)} ECRCChkEn${sign(control, 0x100)}`,
    `\t\tMultHdrRecCap${sign(control, 0x200)} MultHdrRecEn${sign(control, 0x400)} TLPPfxPres${sign(control, 0x800)} HdrLogCap${sign(control, 0x1000)}`,
    `\tHeaderLog: ${[0x1c, 0x20, 0x24, 0x28].map((offset) => hex(r.u32(at + offset), 8)).join(' ')}`,
  ];
  if (expressType === T.rootPort || expressType === T.eventCollector) {
    const command = r.u32(at + 0x2c);
    const status = r.u32(at + 0x30);
    const source = r.u32(at + 0x34);
    lines.push(
      `\tRootCmd: CERptEn${sign(command, 0x1)} NFERptEn${sign(command, 0x2)} FERptEn${sign(command, 0x4)}`,
      `\tRootSta: CERcvd${sign(status, 0x1)} MultCERcvd${sign(status, 0x2)} UERcvd${sign(status, 0x4)} MultUERcvd${sign(status, 0x8)}`,
      `\t\t FirstFatal${sign(status, 0x10)} NonFatalMsg${sign(status, 0x20)} FatalMsg${sign(status, 0x40)} IntMsg ${(status >>> 27) & 0x1f}`,
      `\tErrorSrc: ERR_COR: ${hex(source & 0xffff, 4)} ERR_FATAL/NONFATAL: ${hex(source >>> 16, 4)}`,
    );
  }
  return lines;
}

export function ariLines(r: ConfigRegisters, at: number): string[] {
  const capability = r.u16(at + 4);
  const control = r.u16(at + 6);
  return [
    'Alternative Routing-ID Interpretation (ARI)',
    `\tARICap:\tMFVC${sign(capability, 0x1)} ACS${sign(capability, 0x2)}, Next Function: ${(capability >> 8) & 0xff}`,
    `\tARICtl:\tMFVC${sign(control, 0x1)} ACS${sign(control, 0x2)}, Function Group: ${(control >> 4) & 0x7}`,
  ];
}

/** SR-IOV: capabilities, control, VF counts and layout, and the VF BARs (each VF's slice of them). */
export function sriovLines(r: ConfigRegisters, at: number): string[] {
  const capability = r.u32(at + regs.PCI_SRIOV_CAP);
  const control = r.u16(at + regs.PCI_SRIOV_CTRL);
  const lines = [
    'Single Root I/O Virtualization (SR-IOV)',
    `\tIOVCap:\tMigration${sign(capability, 0x1)} 10BitTagReq${sign(capability, 0x2)} Interrupt Message Number: ${hex(capability >>> 21, 3)}`,
    `\tIOVCtl:\tEnable${sign(control, 0x1)} Migration${sign(control, 0x2)} Interrupt${sign(control, 0x4)} MSE${sign(control, 0x8)} ARIHierarchy${sign(control, 0x10)} 10BitTagReq${sign(control, 0x20)}`,
    `\tIOVSta:\tMigration${sign(r.u16(at + regs.PCI_SRIOV_STATUS), 0x1)}`,
    `\tInitial VFs: ${r.u16(at + regs.PCI_SRIOV_INITIAL_VF)}, Total VFs: ${r.u16(at + regs.PCI_SRIOV_TOTAL_VF)}, Number of VFs: ${r.u16(at + regs.PCI_SRIOV_NUM_VF)}, Function Dependency Link: ${hex(r.u8(at + regs.PCI_SRIOV_FUNC_LINK), 2)}`,
    `\tVF offset: ${r.u16(at + regs.PCI_SRIOV_VF_OFFSET)}, stride: ${r.u16(at + regs.PCI_SRIOV_VF_STRIDE)}, Device ID: ${hex(r.u16(at + regs.PCI_SRIOV_VF_DID), 4)}`,
    `\tSupported Page Size: ${hex(r.u32(at + regs.PCI_SRIOV_SUP_PGSIZE), 8)}, System Page Size: ${hex(r.u32(at + regs.PCI_SRIOV_SYS_PGSIZE), 8)}`,
  ];
  for (const bar of decodeVfBars(r.view, at)) {
    const address = bar.is64Bit ? bar.address.toString(16).padStart(16, '0') : bar.address.toString(16).padStart(8, '0');
    lines.push(`\tRegion ${bar.index}: Memory at ${address} (${bar.is64Bit ? 64 : 32}-bit, ${bar.prefetchable ? '' : 'non-'}prefetchable)`);
  }
  const migration = r.u32(at + 0x3c);
  lines.push(`\tVF Migration: offset: ${hex(migration & ~0x7, 8)}, BIR: ${migration & 0x7}`);
  return lines;
}

const ACS_BITS: Bits = [[0x1, 'SrcValid'], [0x2, 'TransBlk'], [0x4, 'ReqRedir'], [0x8, 'CmpltRedir'], [0x10, 'UpstreamFwd'], [0x20, 'EgressCtrl'], [0x40, 'DirectTrans']];

export function acsLines(r: ConfigRegisters, at: number): string[] {
  return ['Access Control Services', `\tACSCap:\t${flags(r.u16(at + 4), ACS_BITS)}`, `\tACSCtl:\t${flags(r.u16(at + 6), ACS_BITS)}`];
}
