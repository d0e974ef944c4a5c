/**
 * userpci against pciutils, code nobody here wrote:
 * - on this machine, `userpci list` / `userpci info --json` (run through bin/userpci.js) against
 *   `lspci -nn -D` / `lspci -vvv -D`: addresses, class codes, IDs, revisions, names, BARs,
 *   capabilities and their offsets, driver;
 * - the hand-made fixtures, fed to `lspci -F` as dumps, against the parser's decoded fields.
 * lspci must be installed (CI installs pciutils): without it this test fails, it does not skip.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { release, tmpdir } from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { describe, it } from 'node:test';
import type { AcsFields, AriFields, MsiFields, MsixFields, PciExpressFields, PowerManagementFields, SriovFields } from '../../src/pci/capabilities.js';
import { type ConfigSpace, parseConfigSpace } from '../../src/pci/config-space.js';
import * as regs from '../../src/uapi/pci-regs.js';
import { conventionalDevice, malformed, nicWithSriov, rootPort, toLspciDump } from '../fixtures/config/synthetic.js';
import { makeFakeSysfs } from '../fixtures/config/fake-sysfs.js';

const REPO = resolve(__dirname, '..', '..', '..');
const ENTRY = join(REPO, 'bin', 'userpci.js');

function findLspci(): string | undefined {
  const directories = [...(process.env['PATH'] ?? '').split(delimiter), '/usr/bin', '/usr/sbin', '/sbin', '/bin'];
  return directories.map((directory) => join(directory, 'lspci')).find((path) => existsSync(path));
}

const lspciPath = findLspci();

/** Every comparison fails by itself, with the remedy, when lspci is missing. */
function requireLspci(): string {
  if (!lspciPath) {
    assert.fail(
      'lspci (pciutils) is not installed. This comparison must run, not skip: install it ' +
        '(Debian/Ubuntu: apt-get install pciutils) and run the tests again.',
    );
  }
  return lspciPath;
}

function lspci(args: string[]): string {
  const result = spawnSync(requireLspci(), args, { encoding: 'utf8' });
  assert.equal(result.status, 0, `lspci ${args.join(' ')} failed: ${result.stderr}`);
  return result.stdout;
}

function userpci(args: string[]): string {
  const environment = { ...process.env };
  delete environment['USERPCI_SYSFS_ROOT'];
  delete environment['USERPCI_PCI_IDS'];
  const result = spawnSync(process.execPath, [ENTRY, ...args], { encoding: 'utf8', env: environment });
  assert.equal(result.status, 0, `userpci ${args.join(' ')} failed: ${result.stderr}`);
  return result.stdout;
}

// lspci's labels, for the capability IDs whose wording is known; others are compared by offset.
const LSPCI_LABELS: Record<number, RegExp> = {
  [regs.PCI_CAP_ID_PM]: /^Power Management version \d/,
  [regs.PCI_CAP_ID_VPD]: /^Vital Product Data/,
  [regs.PCI_CAP_ID_MSI]: /^MSI: /,
  [regs.PCI_CAP_ID_VNDR]: /^Vendor Specific Information/,
  [regs.PCI_CAP_ID_SSVID]: /^Subsystem: /,
  [regs.PCI_CAP_ID_EXP]: /^Express /,
  [regs.PCI_CAP_ID_MSIX]: /^MSI-X: /,
};
const LSPCI_EXTENDED_LABELS: Record<number, RegExp> = {
  [regs.PCI_EXT_CAP_ID_ERR]: /^Advanced Error Reporting/,
  [regs.PCI_EXT_CAP_ID_DSN]: /^Device Serial Number/,
  [regs.PCI_EXT_CAP_ID_ACS]: /^Access Control Services/,
  [regs.PCI_EXT_CAP_ID_ARI]: /^Alternative Routing-ID Interpretation/,
  [regs.PCI_EXT_CAP_ID_SRIOV]: /^Single Root I\/O Virtualization/,
  [regs.PCI_EXT_CAP_ID_LTR]: /^Latency Tolerance Reporting/,
  [regs.PCI_EXT_CAP_ID_L1SS]: /^L1 PM Substates/,
};

interface LspciCapability {
  readonly offset: number;
  readonly version: number | undefined;
  readonly label: string;
  /** The capability's title line and its indented detail lines. */
  readonly text: string;
}

/** The "Capabilities: [off] label" entries of one lspci -vvv block, markers like <chain looped> dropped. */
function lspciCapabilities(block: string): LspciCapability[] {
  const lines = block.split('\n');
  const capabilities: LspciCapability[] = [];
  lines.forEach((line, index) => {
    const match = /^\tCapabilities: \[([0-9a-f]+)(?: v(\d+))?\] (.*)$/.exec(line);
    if (!match || /^<chain (looped|broken)>/.test(match[3]!)) return;
    let end = index + 1;
    while (end < lines.length && lines[end]!.startsWith('\t\t')) end++;
    capabilities.push({
      offset: parseInt(match[1]!, 16),
      version: match[2] === undefined ? undefined : Number(match[2]),
      label: match[3]!,
      text: lines.slice(index, end).join('\n'),
    });
  });
  return capabilities;
}

function lspciBlocks(text: string): Map<string, string> {
  const blocks = new Map<string, string>();
  for (const block of text.split(/\n\s*\n/)) {
    if (block.trim().length > 0) blocks.set(block.trim().split(' ')[0]!, block);
  }
  return blocks;
}

function flagOf(text: string, pattern: RegExp): boolean {
  const match = pattern.exec(text);
  assert.ok(match, `lspci text has ${pattern}:\n${text}`);
  return match[1] === '+';
}

function numberOf(text: string, pattern: RegExp, radix = 10): number {
  const match = pattern.exec(text);
  assert.ok(match, `lspci text has ${pattern}:\n${text}`);
  return parseInt(match[1]!, radix);
}

it('pciutils is installed', () => {
  requireLspci();
  assert.match(lspci(['--version']), /^lspci version \d/);
});

describe('userpci list matches lspci -nn -D on this machine', () => {
  it('same functions, class codes, IDs, revisions, and names wherever pci.ids names them', () => {
    const expected = lspci(['-nn', '-D']).split('\n').filter(Boolean);
    const listed = JSON.parse(userpci(['list', '--json'])) as Array<Record<string, string | null>>;
    const text = userpci(['list']).split('\n').filter(Boolean);
    assert.equal(listed.length, expected.length, 'same number of functions');
    expected.forEach((line, index) => {
      const match = /^(\S+) (.*) \[([0-9a-f]{4})\]: (.*) \[([0-9a-f]{4}):([0-9a-f]{4})\](?: \(rev ([0-9a-f]{2})\))?(?: \(prog-if .*\))?$/.exec(line);
      assert.ok(match, `lspci line parses: ${line}`);
      const [, address, className, classCode, names, vendor, device, revision] = match;
      const mine = listed[index]!;
      assert.deepEqual(
        [mine['address'], mine['class'], mine['vendor'], mine['device'], mine['revision']],
        [address, classCode, vendor, device, revision ?? '00'],
        line,
      );
      if (mine['className'] !== null) assert.equal(className, mine['className'], line);
      if (mine['vendorName'] !== null) assert.ok(names!.startsWith(`${mine['vendorName']} `), `${line}: vendor ${mine['vendorName']}`);
      if (mine['vendorName'] !== null && mine['deviceName'] !== null) assert.equal(names, `${mine['vendorName']} ${mine['deviceName']}`, line);
      // Where pci.ids names everything, the whole line is lspci's.
      if (mine['className'] !== null && mine['vendorName'] !== null && mine['deviceName'] !== null) assert.equal(text[index], line);
    });
  });
});

describe('userpci info matches lspci -vvv -D on this machine', () => {
  it('same BARs, capabilities at the same offsets, same driver', () => {
    const blocks = lspciBlocks(lspci(['-vvv', '-D']));
    for (const [address, block] of blocks) {
      const info = JSON.parse(userpci(['info', address, '--json'])) as {
        driver: string | null;
        numaNode: number | null;
        iommuGroup: number | null;
        configRestricted: boolean;
        bars: Array<{ index: number; kind: string; address: string; is64Bit: boolean; prefetchable: boolean; size: number | null }>;
        capabilities: Array<{ offset: number; id: number; fields?: Record<string, unknown> }>;
        extendedCapabilities: Array<{ offset: number; id: number; version: number }>;
      };

      if (/^\tCapabilities: <access denied>/m.test(block)) {
        assert.equal(info.configRestricted, true, `${address}: lspci was denied the capabilities, so must we be`);
      } else {
        const theirs = lspciCapabilities(block);
        const standard = theirs.filter((capability) => capability.version === undefined);
        const extended = theirs.filter((capability) => capability.version !== undefined);
        assert.deepEqual(info.capabilities.map((capability) => capability.offset), standard.map((capability) => capability.offset), `${address} capabilities`);
        info.capabilities.forEach((capability, index) => {
          const label = LSPCI_LABELS[capability.id];
          if (label) assert.match(standard[index]!.label, label, `${address} [${capability.offset.toString(16)}]`);
        });
        assert.deepEqual(
          info.extendedCapabilities.map((capability) => [capability.offset, capability.version]),
          extended.map((capability) => [capability.offset, capability.version]),
          `${address} extended capabilities`,
        );
        info.extendedCapabilities.forEach((capability, index) => {
          const label = LSPCI_EXTENDED_LABELS[capability.id];
          if (label) assert.match(extended[index]!.label, label, `${address} [${capability.offset.toString(16)}]`);
        });
        for (const capability of info.capabilities.filter((entry) => entry.id === regs.PCI_CAP_ID_MSIX)) {
          const text = standard.find((entry) => entry.offset === capability.offset)!.text;
          assert.equal(capability.fields?.['tableSize'], numberOf(text, /Count=(\d+)/), address);
          assert.equal(capability.fields?.['tableBar'], numberOf(text, /Vector table: BAR=(\d)/), address);
          assert.equal(capability.fields?.['tableOffset'], numberOf(text, /Vector table: BAR=\d offset=([0-9a-f]{8})/, 16), address);
          assert.equal(capability.fields?.['pbaOffset'], numberOf(text, /PBA: BAR=\d offset=([0-9a-f]{8})/, 16), address);
        }
      }

      const allRegions = [...block.matchAll(/^\tRegion (\d+): (Memory|I\/O ports) at (\S+)(?: \((64-bit|32-bit|low-1M), (non-prefetchable|prefetchable)\))?.*?(?:\[size=(\w+)\])?$/gm)];
      // "[virtual]" regions (legacy IDE ports and the like) exist only in the kernel's resource
      // table, not in the BARs the parser reads; compare the BARs that config space holds.
      const virtualIndexes = new Set(allRegions.filter((match) => match[0].includes('[virtual]')).map((match) => Number(match[1])));
      const regions = allRegions.filter((match) => !virtualIndexes.has(Number(match[1])));
      assert.deepEqual(
        info.bars.map((bar) => bar.index).filter((index) => !virtualIndexes.has(index)),
        regions.map((match) => Number(match[1])),
        `${address} regions`,
      );
      for (const match of regions) {
        const bar = info.bars.find((entry) => entry.index === Number(match[1]))!;
        assert.equal(bar.kind, match[2] === 'Memory' ? 'memory' : 'io', `${address} region ${bar.index}`);
        if (/^[0-9a-f]+$/.test(match[3]!)) assert.equal(BigInt(bar.address), BigInt(`0x${match[3]}`), `${address} region ${bar.index}`);
        if (match[4]) assert.equal(bar.is64Bit, match[4] === '64-bit', `${address} region ${bar.index}`);
        if (match[5]) assert.equal(bar.prefetchable, match[5] === 'prefetchable', `${address} region ${bar.index}`);
        if (match[6]) assert.equal(formatLspciSize(bar.size), match[6], `${address} region ${bar.index} size`);
      }

      const driver = /^\tKernel driver in use: (.*)$/m.exec(block)?.[1] ?? null;
      assert.equal(info.driver, driver, `${address} driver`);
      const numa = /^\tNUMA node: (\d+)$/m.exec(block)?.[1];
      if (numa !== undefined) assert.equal(info.numaNode, Number(numa), `${address} NUMA node`);
      const group = /^\tIOMMU group: (\d+)$/m.exec(block)?.[1];
      if (group !== undefined) assert.equal(info.iommuGroup, Number(group), `${address} IOMMU group`);
    }
  });
});

function formatLspciSize(size: number | null): string {
  let value = size ?? 0;
  let index = 0;
  while (index < 4 && value > 0 && value % 1024 === 0) {
    value /= 1024;
    index++;
  }
  return `${value}${['', 'K', 'M', 'G', 'T'][index]}`;
}

/** lspci -vvv of a config-space dump (its -F mode reads the -xxxx text layout). */
function lspciOfBytes(bytes: Uint8Array): string {
  const directory = mkdtempSync(join(tmpdir(), 'userpci-lspci-'));
  const path = join(directory, 'dump');
  writeFileSync(path, toLspciDump(bytes, '01:00.0'));
  return lspci(['-F', path, '-vvv', '-nn']);
}

function assertSameCapabilityList(config: ConfigSpace, text: string): LspciCapability[] {
  const theirs = lspciCapabilities(text);
  const standard = theirs.filter((capability) => capability.version === undefined);
  const extended = theirs.filter((capability) => capability.version !== undefined);
  assert.deepEqual(config.capabilities.map((capability) => capability.offset), standard.map((capability) => capability.offset));
  config.capabilities.forEach((capability, index) => {
    const label = LSPCI_LABELS[capability.id] ?? (regs.PCI_CAPABILITY_NAMES[capability.id] ? undefined : /^Capability ID 0x/);
    if (label) assert.match(standard[index]!.label, label);
  });
  assert.deepEqual(
    config.extendedCapabilities.map((capability) => [capability.offset, capability.version]),
    extended.map((capability) => [capability.offset, capability.version]),
  );
  config.extendedCapabilities.forEach((capability, index) => {
    const label = LSPCI_EXTENDED_LABELS[capability.id];
    if (label) assert.match(extended[index]!.label, label);
  });
  return theirs;
}

function capabilityText(theirs: LspciCapability[], offset: number): string {
  const found = theirs.find((capability) => capability.offset === offset);
  assert.ok(found, `lspci shows a capability at 0x${offset.toString(16)}`);
  return found.text;
}

function checkPowerManagement(fields: PowerManagementFields, text: string): void {
  assert.equal(fields.version, numberOf(text, /Power Management version (\d)/));
  assert.equal(fields.d1Supported, flagOf(text, /Flags: .*\bD1([+-])/));
  assert.equal(fields.d2Supported, flagOf(text, /Flags: .*\bD2([+-])/));
  const pme = /PME\(D0([+-]),D1([+-]),D2([+-]),D3hot([+-]),D3cold([+-])\)/.exec(text);
  assert.ok(pme);
  assert.deepEqual(fields.pmeSupport, ['D0', 'D1', 'D2', 'D3hot', 'D3cold'].filter((_, index) => pme[index + 1] === '+'));
  assert.equal(fields.powerState, /Status: (D\d|D3hot)/.exec(text)?.[1]);
  assert.equal(fields.noSoftReset, flagOf(text, /NoSoftRst([+-])/));
  assert.equal(fields.pmeEnabled, flagOf(text, /PME-Enable([+-])/));
}

function checkMsi(fields: MsiFields, text: string): void {
  const match = /MSI: Enable([+-]) Count=(\d+)\/(\d+) Maskable([+-]) 64bit([+-])/.exec(text);
  assert.ok(match, text);
  assert.deepEqual(
    [fields.enabled, fields.vectorsEnabled, fields.vectorsCapable, fields.perVectorMasking, fields.is64Bit],
    [match[1] === '+', Number(match[2]), Number(match[3]), match[4] === '+', match[5] === '+'],
  );
  assert.equal(fields.messageAddress, BigInt(`0x${/Address: ([0-9a-f]+)/.exec(text)?.[1]}`));
  assert.equal(fields.messageData, numberOf(text, /Data: ([0-9a-f]{4})/, 16));
  if (fields.perVectorMasking) {
    assert.equal(fields.maskBits, numberOf(text, /Masking: ([0-9a-f]{8})/, 16));
    assert.equal(fields.pendingBits, numberOf(text, /Pending: ([0-9a-f]{8})/, 16));
  }
}

function checkMsix(fields: MsixFields, text: string): void {
  assert.equal(fields.enabled, flagOf(text, /MSI-X: Enable([+-])/));
  assert.equal(fields.tableSize, numberOf(text, /Count=(\d+)/));
  assert.equal(fields.functionMasked, flagOf(text, /Masked([+-])/));
  assert.equal(fields.tableBar, numberOf(text, /Vector table: BAR=(\d)/));
  assert.equal(fields.tableOffset, numberOf(text, /Vector table: BAR=\d offset=([0-9a-f]{8})/, 16));
  assert.equal(fields.pbaBar, numberOf(text, /PBA: BAR=(\d)/));
  assert.equal(fields.pbaOffset, numberOf(text, /PBA: BAR=\d offset=([0-9a-f]{8})/, 16));
}

// lspci's wording for each device/port type.
const LSPCI_PORT_TYPES: Record<number, string> = {
  0: 'Endpoint',
  1: 'Legacy Endpoint',
  4: 'Root Port',
  5: 'Upstream Port',
  6: 'Downstream Port',
  7: 'PCI-Express to PCI/PCI-X Bridge',
  8: 'PCI/PCI-X to PCI-Express Bridge',
  9: 'Root Complex Integrated Endpoint',
  10: 'Root Complex Event Collector',
};

function checkPciExpress(fields: PciExpressFields, text: string): void {
  const title = /Express \(v(\d)\) (.*?)(?: \(Slot([+-])\))?, MSI ([0-9a-f]{2})/.exec(text);
  assert.ok(title, text);
  assert.equal(fields.version, Number(title[1]));
  assert.equal(LSPCI_PORT_TYPES[fields.deviceType], title[2]);
  if (title[3] !== undefined) assert.equal(fields.slotImplemented, title[3] === '+');
  assert.equal(fields.interruptMessageNumber, parseInt(title[4]!, 16));
  assert.equal(fields.maxPayloadSupported, numberOf(text, /DevCap:\s+MaxPayload (\d+) bytes/));
  assert.equal(fields.flrCapable, /DevCap:[^]*?FLReset\+[^]*?DevCtl:/.test(text));
  assert.equal(fields.extendedTagSupported, /DevCap:[^]*?ExtTag\+[^]*?DevCtl:/.test(text));
  assert.equal(fields.maxPayloadSize, numberOf(text, /DevCtl:[^]*?MaxPayload (\d+) bytes, MaxReadReq/));
  assert.equal(fields.maxReadRequestSize, numberOf(text, /MaxReadReq (\d+) bytes/));
  assert.equal(fields.relaxedOrdering, flagOf(text, /RlxdOrd([+-])/));
  assert.equal(fields.errorsDetected.correctable, flagOf(text, /DevSta:\s+CorrErr([+-])/));
  assert.ok(fields.link, 'endpoints and ports have a link');
  assert.equal(fields.link.portNumber, numberOf(text, /LnkCap:\s+Port #(\d+)/));
  assert.equal(`${fields.link.maxSpeedGts}GT/s`, /LnkCap:\s+Port #\d+, Speed (\S+GT\/s)/.exec(text)?.[1]);
  assert.equal(fields.link.maxWidth, numberOf(text, /LnkCap:.*Width x(\d+)/));
  assert.equal(fields.link.aspmSupport, /LnkCap:.*ASPM (not supported|L0s L1|L0s|L1)/.exec(text)?.[1]?.replace('not supported', 'none'));
  assert.equal(`${fields.link.speedGts}GT/s`, /LnkSta:\s+Speed (\S+GT\/s)/.exec(text)?.[1]);
  assert.equal(fields.link.width, numberOf(text, /LnkSta:.*Width x(\d+)/));
  assert.equal(fields.link.dataLinkActive, flagOf(text, /DLActive([+-])/));
  checkSlotAndRoot(fields, text);
}

/** Which decoders of the slot, root, ARI and VF BAR registers lspci's text was held against. */
const decodedAgainstLspci = new Set<string>();

function checkSlotAndRoot(fields: PciExpressFields, text: string): void {
  assert.equal(fields.slot !== undefined, /SltCap:/.test(text), 'slot registers decoded where lspci shows them');
  assert.equal(fields.root !== undefined, /RootCtl:/.test(text), 'root registers decoded where lspci shows them');
  const slot = fields.slot;
  if (slot) {
    decodedAgainstLspci.add('slot');
    const cap = /SltCap:\s+AttnBtn([+-]) PwrCtrl([+-]) MRL([+-]) AttnInd([+-]) PwrInd([+-]) HotPlug([+-]) Surprise([+-])\s+Slot #(\d+), PowerLimit ([^;]+); Interlock([+-]) NoCompl([+-])/.exec(text);
    assert.ok(cap, text);
    const plus = (i: number) => cap[i] === '+';
    assert.deepEqual(
      [slot.attentionButton, slot.powerController, slot.mrlSensor, slot.attentionIndicator, slot.powerIndicator, slot.hotPlugCapable, slot.hotPlugSurprise, slot.physicalSlotNumber, slot.electromechanicalInterlock, slot.noCommandCompleted],
      [plus(1), plus(2), plus(3), plus(4), plus(5), plus(6), plus(7), Number(cap[8]), plus(10), plus(11)],
    );
    assert.equal(slot.powerLimitWatts === null ? '>600W' : `${slot.powerLimitWatts}W`, cap[9]);
    const ctl = /SltCtl:\s+Enable: AttnBtn([+-]) PwrFlt([+-]) MRL([+-]) PresDet([+-]) CmdCplt([+-]) HPIrq([+-]) LinkChg([+-])\s+Control: AttnInd (\w+), PwrInd (\w+), Power([+-]) Interlock([+-])/.exec(text);
    assert.ok(ctl, text);
    const c = slot.control;
    assert.deepEqual(
      [c.attentionButtonEnabled, c.powerFaultEnabled, c.mrlChangeEnabled, c.presenceDetectEnabled, c.commandCompletedEnabled, c.hotPlugInterruptEnabled, c.linkChangeEnabled, c.attentionIndicator, c.powerIndicator, c.powerOff, c.interlock],
      [ctl[1] === '+', ctl[2] === '+', ctl[3] === '+', ctl[4] === '+', ctl[5] === '+', ctl[6] === '+', ctl[7] === '+', ctl[8]!.toLowerCase(), ctl[9]!.toLowerCase(), ctl[10] === '+', ctl[11] === '+'],
    );
    const sta = /SltSta:\s+Status: AttnBtn([+-]) PowerFlt([+-]) MRL([+-]) CmdCplt([+-]) PresDet([+-]) Interlock([+-])\s+Changed: MRL([+-]) PresDet([+-]) LinkState([+-])/.exec(text);
    assert.ok(sta, text);
    const t = slot.status;
    assert.deepEqual(
      [t.attentionButtonPressed, t.powerFault, t.mrlOpen, t.commandCompleted, t.presenceDetected, t.interlockEngaged, t.mrlChanged, t.presenceDetectChanged, t.linkStateChanged],
      sta.slice(1, 10).map((flag) => flag === '+'),
    );
  }
  const root = fields.root;
  if (root) {
    decodedAgainstLspci.add('root');
    assert.equal(root.crsVisibilitySupported, flagOf(text, /RootCap: CRSVisible([+-])/));
    const ctl = /RootCtl: ErrCorrectable([+-]) ErrNon-Fatal([+-]) ErrFatal([+-]) PMEIntEna([+-]) CRSVisible([+-])/.exec(text);
    assert.ok(ctl, text);
    const c = root.control;
    assert.deepEqual([c.systemErrorOnCorrectable, c.systemErrorOnNonFatal, c.systemErrorOnFatal, c.pmeInterruptEnabled, c.crsVisibilityEnabled], ctl.slice(1, 6).map((flag) => flag === '+'));
    const sta = /RootSta: PME ReqID ([0-9a-f]{4}), PMEStatus([+-]) PMEPending([+-])/.exec(text);
    assert.ok(sta, text);
    assert.deepEqual([root.status.pmeRequesterId, root.status.pmeStatus, root.status.pmePending], [parseInt(sta[1]!, 16), sta[2] === '+', sta[3] === '+']);
  }
}

function checkAri(fields: AriFields, text: string): void {
  decodedAgainstLspci.add('ari');
  const cap = /ARICap:\s+MFVC([+-]) ACS([+-]), Next Function: (\d+)/.exec(text);
  const ctl = /ARICtl:\s+MFVC([+-]) ACS([+-]), Function Group: (\d+)/.exec(text);
  assert.ok(cap && ctl, text);
  assert.deepEqual(
    [fields.mfvcGroups, fields.acsGroups, fields.nextFunction, fields.mfvcGroupsEnabled, fields.acsGroupsEnabled, fields.functionGroup],
    [cap[1] === '+', cap[2] === '+', Number(cap[3]), ctl[1] === '+', ctl[2] === '+', Number(ctl[3])],
  );
}

function checkSriov(fields: SriovFields, text: string): void {
  assert.equal(fields.vfEnabled, flagOf(text, /IOVCtl:\s+Enable([+-])/));
  assert.equal(fields.vfMemorySpaceEnabled, flagOf(text, /IOVCtl:.*MSE([+-])/));
  assert.equal(fields.ariHierarchy, flagOf(text, /IOVCtl:.*ARIHierarchy([+-])/));
  const counts = /Initial VFs: (\d+), Total VFs: (\d+), Number of VFs: (\d+), Function Dependency Link: ([0-9a-f]{2})/.exec(text);
  assert.ok(counts, text);
  assert.deepEqual(
    [fields.initialVfs, fields.totalVfs, fields.numVfs, fields.functionDependencyLink],
    [Number(counts[1]), Number(counts[2]), Number(counts[3]), parseInt(counts[4]!, 16)],
  );
  const layout = /VF offset: (\d+), stride: (\d+), Device ID: ([0-9a-f]{4})/.exec(text);
  assert.ok(layout, text);
  assert.deepEqual([fields.firstVfOffset, fields.vfStride, fields.vfDeviceId], [Number(layout[1]), Number(layout[2]), parseInt(layout[3]!, 16)]);
  // The VF BARs, as lspci lists them inside the capability.
  const bars = [...text.matchAll(/Region (\d): Memory at ([0-9a-f]+) \((32|64)-bit, (non-)?prefetchable\)/g)];
  assert.deepEqual(
    fields.vfBars.map((bar) => [bar.index, bar.address, bar.is64Bit, bar.prefetchable]),
    bars.map((m) => [Number(m[1]), BigInt(`0x${m[2]}`), m[3] === '64', m[4] === undefined]),
  );
  if (bars.length > 0) decodedAgainstLspci.add('vfBars');
}

function checkAcs(fields: AcsFields, text: string): void {
  const enabledNames = (line: string | undefined) => [...(line ?? '').matchAll(/(\w+)\+/g)].map((match) => match[1]);
  assert.deepEqual(fields.capabilities, enabledNames(/ACSCap:\s+(.*)/.exec(text)?.[1]));
  assert.deepEqual(fields.enabled, enabledNames(/ACSCtl:\s+(.*)/.exec(text)?.[1]));
}

/** Decoded fields of every capability lspci also decodes, checked against its text. */
function checkDecodedFields(config: ConfigSpace, theirs: LspciCapability[]): number {
  let checked = 0;
  for (const capability of [...config.capabilities, ...config.extendedCapabilities]) {
    const fields = capability.fields;
    if (!fields) continue;
    const text = capabilityText(theirs, capability.offset);
    checked++;
    switch (fields.kind) {
      case 'pm':
        checkPowerManagement(fields, text);
        break;
      case 'msi':
        checkMsi(fields, text);
        break;
      case 'msix':
        checkMsix(fields, text);
        break;
      case 'pcie':
        checkPciExpress(fields, text);
        break;
      case 'sriov':
        checkSriov(fields, text);
        break;
      case 'acs':
        checkAcs(fields, text);
        break;
      case 'ari':
        checkAri(fields, text);
        break;
      case 'dsn':
        assert.equal(fields.serialNumber, /Device Serial Number (\S+)/.exec(text)?.[1]);
        break;
      case 'ssvid':
        assert.match(text, new RegExp(`\\[${fields.subsystemVendorId.toString(16).padStart(4, '0')}:${fields.subsystemId.toString(16).padStart(4, '0')}\\]`));
        break;
      case 'vendor':
        assert.equal(fields.length, numberOf(text, /Len=([0-9a-f]{2})/, 16));
        break;
      default:
        checked--;
    }
  }
  return checked;
}

describe('the parser matches lspci -F on the hand-made fixtures', () => {
  it('SR-IOV NIC: capability lists and every decoded field', () => {
    const config = parseConfigSpace(nicWithSriov());
    const text = lspciOfBytes(nicWithSriov());
    const theirs = assertSameCapabilityList(config, text);
    assert.equal(checkDecodedFields(config, theirs), 7);
  });

  it('PCIe root port: capability lists, decoded fields and bridge windows', () => {
    const config = parseConfigSpace(rootPort());
    const text = lspciOfBytes(rootPort());
    const theirs = assertSameCapabilityList(config, text);
    assert.equal(checkDecodedFields(config, theirs), 5);
    const bridge = config.bridge!;
    assert.match(text, new RegExp(`Bus: primary=${hex2(bridge.primaryBus)}, secondary=${hex2(bridge.secondaryBus)}, subordinate=${hex2(bridge.subordinateBus)}`));
    assert.match(text, new RegExp(`I/O behind bridge: ${bridge.ioWindow!.base.toString(16)}-${bridge.ioWindow!.limit.toString(16)}`));
    assert.match(text, new RegExp(`Memory behind bridge: ${bridge.memoryWindow!.base.toString(16)}-${bridge.memoryWindow!.limit.toString(16)}`));
    const prefetch = bridge.prefetchableWindow!;
    assert.match(text, new RegExp(`Prefetchable memory behind bridge: ${prefetch.base.toString(16).padStart(16, '0')}-${prefetch.limit.toString(16).padStart(16, '0')}`));
  });

  it('captures of QEMU 7.2 devices: every decoded field, the slot, root, ARI and VF BAR registers among them', () => {
    decodedAgainstLspci.clear();
    for (const { file } of QEMU_CAPTURES) {
      const bytes = new Uint8Array(readFileSync(join(FIXTURES, `${file}.config`)));
      const config = parseConfigSpace(bytes);
      assert.ok(checkDecodedFields(config, assertSameCapabilityList(config, lspciOfBytes(bytes))) > 0, file);
    }
    assert.deepEqual([...decodedAgainstLspci].sort(), ['ari', 'root', 'slot', 'vfBars']);
  });

  it('conventional PCI device: BAR types, ROM, unknown capability IDs', () => {
    const config = parseConfigSpace(conventionalDevice());
    const text = lspciOfBytes(conventionalDevice());
    assertSameCapabilityList(config, text);
    assert.match(text, /Region 0: I\/O ports at c000/);
    assert.match(text, /Region 1: Memory at 000d0000 \(low-1M, non-prefetchable\)/);
    assert.match(text, /Region 2: Memory at f7d00000 \(32-bit, prefetchable\)/);
    assert.match(text, /Expansion ROM at f7e00000 \[disabled\]/);
    assert.deepEqual(config.bars.map((bar) => [bar.index, bar.kind, bar.below1M, bar.prefetchable]), [[0, 'io', false, false], [1, 'memory', true, false], [2, 'memory', false, true]]);
  });

  it('looping lists: lspci stops at the same capability', () => {
    for (const bytes of [malformed.capabilityLoop(), malformed.capabilitySelfLoop(), malformed.extendedLoop()]) {
      const text = lspciOfBytes(bytes);
      assert.match(text, /<chain looped>/);
      assertSameCapabilityList(parseConfigSpace(bytes), text);
    }
  });
});

function hex2(value: number): string {
  return value.toString(16).padStart(2, '0');
}

describe('userpci info -x/-xxx/-xxxx dumps as lspci -F does', () => {
  it('prints the same hex lines for the header, 256 bytes and 4096 bytes', () => {
    const fixtures = { '0000:00:1c.0': rootPort(), '0000:01:00.0': nicWithSriov(), '0000:02:00.0': conventionalDevice() };
    const sysfs = makeFakeSysfs(Object.entries(fixtures).map(([address, config]) => ({ address, config })));
    const dumpLines = (text: string) => text.split('\n').filter((line) => /^[0-9a-f]{2,3}: /.test(line));
    for (const [address, config] of Object.entries(fixtures)) {
      const directory = mkdtempSync(join(tmpdir(), 'userpci-lspci-'));
      writeFileSync(join(directory, 'dump'), toLspciDump(config, address.slice(5)));
      for (const level of ['-x', '-xxx', '-xxxx']) {
        const result = spawnSync(process.execPath, [ENTRY, 'info', address, level], {
          encoding: 'utf8',
          env: { ...process.env, USERPCI_SYSFS_ROOT: sysfs, USERPCI_PCI_IDS: '/nonexistent' },
        });
        assert.equal(result.status, 0, result.stderr);
        const ours = dumpLines(result.stdout);
        assert.deepEqual(ours, dumpLines(lspci(['-F', join(directory, 'dump'), level])), `${address} ${level}`);
        assert.equal(ours.length, Math.min({ '-x': 4, '-xxx': 16, '-xxxx': 256 }[level]!, config.length / 16));
      }
    }
  });
});

/**
 * `userpci info` text against `lspci -F -vvv` on the same bytes, line by line: the header lines
 * (Control, Status, Latency, Interrupt routing, regions, bus numbers, bridge windows, secondary
 * status, bridge control) and every line of each capability both decode in full.
 */
const HEADER_LABELS = ['Subsystem:', 'Control:', 'Status:', 'Latency:', 'Interrupt:', 'Region ', 'Expansion ROM', 'Bus:', 'I/O behind bridge:', 'Memory behind bridge:', 'Prefetchable memory behind bridge:', 'Secondary status:', 'BridgeCtl:'];
const FULLY_DECODED = [/^Power Management version/, /^MSI: /, /^MSI-X: /, /^Express \(/, /^Subsystem: /, /^Hot-plug capable/, /^Advanced Error Reporting/, /^Alternative Routing-ID/, /^Single Root I\/O Virtualization/, /^Access Control Services/, /^Device Serial Number/];

function headerLinesOf(text: string): string[] {
  const lines = text.split('\n');
  const firstCapability = lines.findIndex((line) => line.startsWith('\tCapabilities:'));
  const header = firstCapability < 0 ? lines : lines.slice(0, firstCapability);
  // BridgeCtl's second line is its continuation.
  return header.filter((line, index) => HEADER_LABELS.some((label) => line.startsWith(`\t${label}`)) || (index > 0 && header[index - 1]!.startsWith('\tBridgeCtl:')));
}

function infoOnCapture(address: string, config: Uint8Array, extra: { irq?: number; modalias?: string; modulesRoot?: string } = {}): string {
  const sysfs = makeFakeSysfs([{ address, config }]);
  const directory = join(sysfs, 'bus', 'pci', 'devices', address);
  if (extra.irq !== undefined) writeFileSync(join(directory, 'irq'), `${extra.irq}\n`);
  if (extra.modalias !== undefined) writeFileSync(join(directory, 'modalias'), `${extra.modalias}\n`);
  const result = spawnSync(process.execPath, [ENTRY, 'info', address], {
    encoding: 'utf8',
    env: { ...process.env, USERPCI_SYSFS_ROOT: sysfs, USERPCI_MODULES_ROOT: extra.modulesRoot ?? '/nonexistent' },
  });
  assert.equal(result.status, 0, result.stderr);
  return result.stdout;
}

function lspciOnCapture(address: string, config: Uint8Array): string {
  const directory = mkdtempSync(join(tmpdir(), 'userpci-lspci-'));
  writeFileSync(join(directory, 'dump'), toLspciDump(config, address.slice(5)));
  return lspci(['-F', join(directory, 'dump'), '-vvv', '-nn']);
}

/** Compares; returns the titles of the capabilities compared whole. */
function assertInfoMatchesLspci(address: string, config: Uint8Array): string[] {
  const ours = infoOnCapture(address, config);
  const theirs = lspciOnCapture(address, config);
  assert.deepEqual(headerLinesOf(ours), headerLinesOf(theirs), `${address}: header lines`);
  const our = new Map(lspciCapabilities(ours).map((capability) => [capability.offset, capability]));
  const compared: string[] = [];
  for (const capability of lspciCapabilities(theirs)) {
    if (!FULLY_DECODED.some((pattern) => pattern.test(capability.label))) continue;
    assert.equal(our.get(capability.offset)?.text, capability.text, `${address}: capability [${capability.offset.toString(16)}]`);
    compared.push(capability.label.split(/[:(,]/)[0]!.trim());
  }
  return compared;
}

const QEMU_CAPTURES = [
  { file: 'qemu-pcie-root-port', address: '0000:00:03.0' },
  { file: 'qemu-pcie-pci-bridge', address: '0000:00:05.0' },
  { file: 'qemu-nvme-sriov-pf', address: '0000:01:00.0' },
  { file: 'qemu-nvme-sriov-vf', address: '0000:01:00.1' },
  { file: 'qemu-e1000e', address: '0000:02:00.0' },
];
const FIXTURES = resolve(REPO, 'test', 'fixtures', 'config');

describe('userpci info matches lspci -vvv line by line', () => {
  it('on captures of QEMU 7.2 devices: root port, PCIe-to-PCI bridge, NVMe with SR-IOV and its VF, e1000e', () => {
    const compared = new Set<string>();
    for (const { file, address } of QEMU_CAPTURES) {
      const config = new Uint8Array(readFileSync(join(FIXTURES, `${file}.config`)));
      assert.equal(config.length, 4096, file);
      for (const title of assertInfoMatchesLspci(address, config)) compared.add(title);
    }
    // What the captures are for: each of these was compared in full somewhere.
    for (const title of ['Power Management version 3', 'Power Management version 2', 'MSI', 'MSI-X', 'Express', 'Advanced Error Reporting', 'Alternative Routing-ID Interpretation', 'Single Root I/O Virtualization', 'Access Control Services', 'Device Serial Number 52-54-00-ff-ff-12-34-56', 'Subsystem', 'Hot-plug capable']) {
      assert.ok(compared.has(title), `compared ${title}: ${[...compared].join(', ')}`);
    }
  });

  it('on the hand-made fixtures: SR-IOV NIC, root port, conventional device', () => {
    assertInfoMatchesLspci('0000:01:00.0', nicWithSriov());
    assertInfoMatchesLspci('0000:00:1c.0', rootPort());
    assertInfoMatchesLspci('0000:02:00.0', conventionalDevice());
  });

  it('routes the interrupt pin to the IRQ sysfs gives, and names the modules whose aliases match', () => {
    const config = new Uint8Array(readFileSync(join(FIXTURES, 'qemu-nvme-sriov-pf.config')));
    const modules = mkdtempSync(join(tmpdir(), 'userpci-modules-'));
    mkdirSync(join(modules, release()), { recursive: true });
    writeFileSync(
      join(modules, release(), 'modules.alias'),
      ['alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e', 'alias pci:v*d*sv*sd*bc01sc08i02* nvme', 'alias pci:v*d*sv*sd*bc01sc08i02* nvme', 'alias pci:v00001B36d00000010sv*sd*bc*sc*i* qemu_nvme_fake', 'alias virtio:d00000001v* virtio_net'].join('\n'),
    );
    // What the guest's lspci said about this function, read from its sysfs (qemu.lspci-vvv.txt).
    const guest = readFileSync(join(FIXTURES, 'qemu.lspci-vvv.txt'), 'utf8');
    const guestBlock = lspciBlocks(guest).get('0000:01:00.0')!;
    const text = infoOnCapture('0000:01:00.0', config, { irq: 23, modalias: 'pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02', modulesRoot: modules });
    assert.equal(/^\tInterrupt: .*$/m.exec(text)?.[0], /^\tInterrupt: .*$/m.exec(guestBlock)?.[0]);
    assert.match(text, /^\tInterrupt: pin A routed to IRQ 23$/m);
    assert.match(text, /^\tKernel modules: nvme, qemu_nvme_fake$/m);
    // Without the sysfs attribute (a capture), lspci -F's answer: the Interrupt Line register.
    assert.match(infoOnCapture('0000:01:00.0', config), new RegExp(`^\\tInterrupt: pin A routed to IRQ ${config[0x3c]}$`, 'm'));
    assert.doesNotMatch(infoOnCapture('0000:01:00.0', config), /Kernel modules/);
  });
});
