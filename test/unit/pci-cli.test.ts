/**
 * The list, info and config commands, run through the real entry point (node bin/userpci.js)
 * against a fake sysfs tree and a small pci.ids, so the expected text is exact.
 */
import assert from 'node:assert/strict';
import { type SpawnSyncReturns, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { COMMANDS, findCommand } from '../../src/cli/main.js';
import { makeFakeSysfs } from '../fixtures/config/fake-sysfs.js';
import { runNodeUnprivileged, stagedPath } from '../support/unprivileged.js';
import { NIC_WITH_SRIOV_RESOURCE, conventionalDevice, malformed, nicWithSriov, rootPort } from '../fixtures/config/synthetic.js';

const REPO = resolve(__dirname, '..', '..', '..');
const FIXTURES = join(REPO, 'test', 'fixtures', 'config');
const ENTRY = join(REPO, 'bin', 'userpci.js');

const PCI_IDS = [
  '10ec  Realtek Semiconductor Co., Ltd.',
  '\t8139  RTL-8100/8101L/8139 PCI Fast Ethernet Adapter',
  '1af4  Red Hat, Inc.',
  '\t1041  Virtio 1.0 network device',
  '8086  Intel Corporation',
  '\t10fb  82599ES 10-Gigabit SFI/SFP+ Network Connection',
  '\t\t8086 0003  Ethernet Server Adapter X520-2',
  '\t1901  6th-10th Gen Core Processor PCIe Controller (x16)',
  'C 02  Network controller',
  '\t00  Ethernet controller',
  'C 06  Bridge',
  '\t04  PCI bridge',
  '\t\t00  Normal decode',
  'C ff  Unassigned class',
  '',
].join('\n');

function setup(): { sysfs: string; ids: string } {
  const sysfs = makeFakeSysfs([
    { address: '0000:00:1c.0', config: rootPort(), driver: 'pcieport', iommuGroup: 7, numaNode: 0 },
    { address: '0000:01:00.0', config: nicWithSriov(), resource: NIC_WITH_SRIOV_RESOURCE, driver: 'vfio-pci', iommuGroup: 12, numaNode: 1 },
    { address: '0000:02:00.0', config: conventionalDevice() },
    { address: '0000:03:00.0', config: malformed.capabilityLoop() },
    {
      address: '0000:00:03.0',
      config: new Uint8Array(readFileSync(join(FIXTURES, 'firecracker-virtio-net.config'))),
      resource: readFileSync(join(FIXTURES, 'firecracker-virtio-net.resource'), 'utf8'),
      driver: 'virtio-pci',
    },
  ]);
  // Slots as pciehp registers them: the name, and the address domain:bus:device of what sits in it.
  for (const [name, address] of [['4', '0000:01:00'], ['7-1', '0000:02:01']]) {
    mkdirSync(join(sysfs, 'bus', 'pci', 'slots', name!), { recursive: true });
    writeFileSync(join(sysfs, 'bus', 'pci', 'slots', name!, 'address'), `${address}\n`);
  }
  const ids = join(mkdtempSync(join(tmpdir(), 'userpci-ids-')), 'pci.ids');
  writeFileSync(ids, PCI_IDS);
  return { sysfs, ids };
}

const env = setup();

function userpci(args: string[], extraEnv: Record<string, string> = {}): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [ENTRY, ...args], {
    encoding: 'utf8',
    env: { ...process.env, USERPCI_SYSFS_ROOT: env.sysfs, USERPCI_PCI_IDS: env.ids, ...extraEnv },
  });
}

function assertCleanFailure(result: SpawnSyncReturns<string>, status: number, message: RegExp): void {
  assert.equal(result.status, status, `exit status; stderr: ${result.stderr}`);
  assert.match(result.stderr, message);
  assert.doesNotMatch(result.stderr, /^\s+at /m, 'no stack trace');
  assert.equal(result.stdout, '');
}

describe('userpci dispatcher', () => {
  it('registers commands with name, summary, usage and run', () => {
    assert.deepEqual(COMMANDS.map((command) => command.name).slice(0, 3), ['list', 'info', 'config']);
    for (const command of COMMANDS) {
      assert.ok(command.summary.length > 0 && command.usage.startsWith(`userpci ${command.name}`), command.name);
      assert.equal(typeof command.run, 'function');
    }
    assert.equal(findCommand('info')?.name, 'info');
    assert.equal(findCommand('nope'), undefined);
  });

  it('prints help listing every command', () => {
    const result = userpci(['--help']);
    assert.equal(result.status, 0);
    for (const command of COMMANDS) {
      const line = result.stdout.split('\n').find((entry) => entry.trimStart().startsWith(`${command.name} `));
      assert.ok(line?.endsWith(command.summary), `help lists ${command.name}`);
    }
    const bare = userpci([]);
    assert.equal(bare.status, 2);
    assert.match(bare.stderr, /usage: userpci <command>/);
  });

  it('prints a command usage for --help and help COMMAND', () => {
    for (const args of [['list', '--help'], ['help', 'list']]) {
      const result = userpci(args);
      assert.equal(result.status, 0);
      assert.match(result.stdout, /^userpci list \[--vendor VVVV\]/);
    }
  });

  it('rejects an unknown command clearly, suggesting a near one', () => {
    assertCleanFailure(userpci(['lsit']), 2, /unknown command "lsit"\. Did you mean "list"\?\nCommands: list, info, config/);
    assertCleanFailure(userpci(['frobnicate']), 2, /unknown command "frobnicate"\.\nCommands:/);
  });

  it('rejects unknown options with the usage line', () => {
    assertCleanFailure(userpci(['list', '--colour']), 2, /^userpci list: unknown option --colour\nusage: userpci list /);
    assertCleanFailure(userpci(['list', '--vendor']), 2, /^userpci list: option --vendor needs a value\n/);
    assertCleanFailure(userpci(['list', '--json=yes']), 2, /^userpci list: option --json takes no value\n/);
  });

  it('words a wrong number of arguments alike in every command (config, nvme, net too), before touching any device', () => {
    for (const [args, message] of [
      [['nvme'], /missing identify\|read\|write\|verify\|export\|ublk\nusage: userpci nvme/],
      [['nvme', 'identify'], /missing ADDRESS\nusage: userpci nvme/],
      [['nvme', 'identify', '0000:00:04.0', 'extra'], /unexpected argument "extra"\nusage: userpci nvme/],
      [['net'], /missing info\|send\|recv\|tap\nusage: userpci net/],
      [['net', 'info'], /missing ADDRESS\nusage: userpci net/],
      [['net', 'info', '0000:00:05.0', 'extra'], /unexpected argument "extra"\nusage: userpci net/],
      [['config'], /missing ADDRESS\nusage: userpci config/],
    ] as const) {
      assertCleanFailure(userpci([...args]), 2, message);
    }
  });

  it('states the exit-code rule in --help', () => {
    assert.match(userpci(['--help']).stdout, /Exit status: 0 done, 1 the command failed, 2 the command line was malformed/);
  });

  it('reports failures as JSON on stdout under --json: usage 2, runtime 1', () => {
    const usage = userpci(['list', '--json', '--colour']);
    assert.equal(usage.status, 2);
    assert.deepEqual(JSON.parse(usage.stdout), { error: { code: 'EINVAL', message: 'unknown option --colour' } });
    assert.equal(usage.stderr, '');
    const runtime = userpci(['info', '0000:09:00.0', '--json']);
    assert.equal(runtime.status, 1);
    const parsed = JSON.parse(runtime.stdout) as { error: { code: string; message: string } };
    assert.equal(parsed.error.code, 'ENOENT');
    assert.match(parsed.error.message, /no PCI device 0000:09:00\.0/);
    const unbind = userpci(['unbind', '0000:00:03.0', '--json']);
    assert.equal(unbind.status, 1);
    assert.deepEqual(JSON.parse(unbind.stdout), { error: { code: 'EINVAL', message: '0000:00:03.0 is bound to virtio-pci, not to vfio-pci: nothing to release' } });
  });
});

describe('userpci list', () => {
  it('prints lspci -nn -D lines', () => {
    const result = userpci(['list']);
    assert.equal(result.status, 0, result.stderr);
    assert.equal(
      result.stdout,
      [
        '0000:00:03.0 Ethernet controller [0200]: Red Hat, Inc. Virtio 1.0 network device [1af4:1041] (rev 01)',
        '0000:00:1c.0 PCI bridge [0604]: Intel Corporation 6th-10th Gen Core Processor PCIe Controller (x16) [8086:1901] (rev 07)',
        '0000:01:00.0 Ethernet controller [0200]: Intel Corporation 82599ES 10-Gigabit SFI/SFP+ Network Connection [8086:10fb] (rev 01)',
        '0000:02:00.0 Ethernet controller [0200]: Realtek Semiconductor Co., Ltd. RTL-8100/8101L/8139 PCI Fast Ethernet Adapter [10ec:8139] (rev 10)',
        '0000:03:00.0 Unassigned class [ff00]: Device [1234:5678]',
        '',
      ].join('\n'),
    );
  });

  it('prints bare IDs when there is no pci.ids', () => {
    const result = userpci(['list', '--vendor', '8086'], { USERPCI_PCI_IDS: '/nonexistent/pci.ids' });
    assert.equal(
      result.stdout,
      '0000:00:1c.0 Class [0604]: Device [8086:1901] (rev 07)\n0000:01:00.0 Class [0200]: Device [8086:10fb] (rev 01)\n',
    );
  });

  it('filters by vendor, device, class and driver', () => {
    const addresses = (args: string[]) =>
      userpci(['list', ...args]).stdout.split('\n').filter(Boolean).map((line) => line.split(' ')[0]);
    assert.deepEqual(addresses(['--vendor', '8086']), ['0000:00:1c.0', '0000:01:00.0']);
    assert.deepEqual(addresses(['--vendor', '0x8086', '--device', '10FB']), ['0000:01:00.0']);
    assert.deepEqual(addresses(['--class', '02']), ['0000:00:03.0', '0000:01:00.0', '0000:02:00.0']);
    assert.deepEqual(addresses(['--class', '0604']), ['0000:00:1c.0']);
    assert.deepEqual(addresses(['--class', '060400']), ['0000:00:1c.0']);
    assert.deepEqual(addresses(['--class', '0601']), []);
    assert.deepEqual(addresses(['--driver', 'vfio-pci']), ['0000:01:00.0']);
    assert.deepEqual(addresses(['--driver', 'none']), ['0000:02:00.0', '0000:03:00.0']);
    assertCleanFailure(userpci(['list', '--class', '123']), 2, /--class expects 2, 4 or 6 hex digits/);
    assertCleanFailure(userpci(['list', '--vendor', 'intel']), 2, /--vendor expects a 4-digit hex ID/);
  });

  it('prints JSON with IDs as hex strings', () => {
    const result = userpci(['list', '--json', '--device', '10fb']);
    assert.equal(result.status, 0, result.stderr);
    assert.deepEqual(JSON.parse(result.stdout), [
      {
        address: '0000:01:00.0',
        class: '0200',
        className: 'Ethernet controller',
        progIf: '00',
        progIfName: null,
        vendor: '8086',
        vendorName: 'Intel Corporation',
        device: '10fb',
        deviceName: '82599ES 10-Gigabit SFI/SFP+ Network Connection',
        revision: '01',
        subsystemVendor: '8086',
        subsystemVendorName: 'Intel Corporation',
        subsystemDevice: '0003',
        subsystemName: 'Ethernet Server Adapter X520-2',
        driver: 'vfio-pci',
        iommuGroup: 12,
        numaNode: 1,
      },
    ]);
  });
});

describe('userpci info', () => {
  it('shows IDs, BARs, capabilities with decoded fields, driver, IOMMU group and NUMA node', () => {
    const result = userpci(['info', '01:00.0']);
    assert.equal(result.status, 0, result.stderr);
    const expectedLines = [
      '0000:01:00.0 Ethernet controller [0200]: Intel Corporation 82599ES 10-Gigabit SFI/SFP+ Network Connection [8086:10fb] (rev 01)',
      '\tSubsystem: Intel Corporation Ethernet Server Adapter X520-2 [8086:0003]',
      '\tPhysical Slot: 4',
      '\tRegion 0: Memory at fb000000 (64-bit, non-prefetchable) [size=512K]',
      '\tRegion 2: I/O ports at e000 [disabled] [size=32]',
      '\tRegion 4: Memory at fb100000 (64-bit, non-prefetchable) [size=16K]',
      '\tCapabilities: [40] Power Management version 3',
      '\t\tFlags: PMEClk- DSI- D1- D2- AuxCurrent=0mA PME(D0+,D1-,D2-,D3hot+,D3cold+)',
      '\t\tStatus: D0 NoSoftRst+ PME-Enable- DSel=0 DScale=0 PME-',
      '\tCapabilities: [50] MSI: Enable- Count=1/8 Maskable+ 64bit+',
      '\tCapabilities: [70] MSI-X: Enable+ Count=64 Masked-',
      '\t\tVector table: BAR=4 offset=00000000',
      '\t\tPBA: BAR=4 offset=00002000',
      '\tCapabilities: [a0] Express (v2) Endpoint, MSI 00',
      '\t\tDevCap:\tMaxPayload 512 bytes, PhantFunc 0, Latency L0s <256ns, L1 <64us',
      '\t\t\tExtTag+ AttnBtn- AttnInd- PwrInd- RBE+ FLReset+ SlotPowerLimit 0W',
      '\t\tLnkSta:\tSpeed 5GT/s, Width x8',
      '\t\t\tTrErr- Train- SlotClk+ DLActive- BWMgmt- ABWMgmt-',
      '\tCapabilities: [100 v2] Advanced Error Reporting',
      '\tCapabilities: [140 v1] Device Serial Number 00-1b-21-ff-ff-4a-3c-90',
      '\tCapabilities: [150 v1] Alternative Routing-ID Interpretation (ARI)',
      '\tCapabilities: [160 v1] Single Root I/O Virtualization (SR-IOV)',
      '\t\tInitial VFs: 64, Total VFs: 64, Number of VFs: 8, Function Dependency Link: 00',
      '\t\tRegion 0: Memory at 0000000000000000 (64-bit, prefetchable)',
      '\tKernel driver in use: vfio-pci',
      '\tIOMMU group: 12',
      '\tNUMA node: 1',
    ];
    const lines = result.stdout.split('\n');
    let from = 0;
    for (const expected of expectedLines) {
      const at = lines.indexOf(expected, from);
      assert.ok(at >= 0, `missing or out of order: ${JSON.stringify(expected)}\n${result.stdout}`);
      from = at + 1;
    }
  });

  it('names a physical slot only for a function in it (slot 7-1 is device 02:01, not 02:00)', () => {
    const text = userpci(['info', '0000:02:00.0']);
    assert.equal(text.status, 0, text.stderr);
    assert.doesNotMatch(text.stdout, /Physical Slot/);
    const json = userpci(['info', '0000:02:00.0', '--json']);
    assert.equal((JSON.parse(json.stdout) as { physicalSlot: unknown }).physicalSlot, null);
  });

  it('shows a bridge: windows and the subsystem from its capability', () => {
    const result = userpci(['info', '0000:00:1c.0']);
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /^\tSubsystem: Device \[1462:7a72\]$/m);
    assert.match(result.stdout, /^\tBus: primary=00, secondary=01, subordinate=01, sec-latency=0$/m);
    assert.match(result.stdout, /^\tPrefetchable memory behind bridge: 00000000c0000000-00000000d1ffffff \[size=288M\] \[64-bit\]$/m);
    assert.match(result.stdout, /^\tSecondary status: 66MHz- FastB2B- ParErr- DEVSEL=fast >TAbort- <TAbort- <MAbort- <SERR- <PERR-$/m);
    assert.match(result.stdout, /^\tBridgeCtl: Parity- SERR- NoISA- VGA- VGA16\+ MAbort- >Reset- FastB2B-\n\t\tPriDiscTmr- SecDiscTmr- DiscTmrStat- DiscTmrSERREn-$/m);
    assert.match(result.stdout, /^\tCapabilities: \[a0\] Express \(v2\) Root Port \(Slot\+\), MSI 00$/m);
    assert.match(result.stdout, /^\t\tSltCap:\tAttnBtn/m);
    assert.match(result.stdout, /^\t\tRootCtl: /m);
  });

  it('prints JSON: hex IDs, numeric offsets, 64-bit addresses as strings', () => {
    const result = userpci(['info', '0000:01:00.0', '--json']);
    assert.equal(result.status, 0, result.stderr);
    const info = JSON.parse(result.stdout) as {
      vendor: string;
      physicalSlot: string | null;
      bars: Array<{ index: number; address: string; size: number }>;
      capabilities: Array<{ offset: number; id: number; name: string; fields?: Record<string, unknown> }>;
      extendedCapabilities: Array<{ offset: number; id: number; version: number }>;
      configRestricted: boolean;
      warnings: unknown[];
    };
    assert.equal(info.vendor, '8086');
    assert.equal(info.physicalSlot, '4');
    assert.equal(info.configRestricted, false);
    assert.deepEqual(info.bars.map((bar) => [bar.index, bar.address, bar.size]), [[0, '0xfb000000', 524288], [2, '0xe000', 32], [4, '0xfb100000', 16384]]);
    assert.deepEqual(info.capabilities.map((capability) => [capability.offset, capability.id]), [[0x40, 1], [0x50, 5], [0x70, 0x11], [0xa0, 0x10]]);
    assert.equal(info.capabilities[1]?.fields?.['messageAddress'], '0x0');
    assert.equal(info.capabilities[2]?.fields?.['tableSize'], 64);
    assert.deepEqual(info.extendedCapabilities.map((capability) => capability.offset), [0x100, 0x140, 0x150, 0x160]);
    assert.deepEqual(info.warnings, []);
  });

  it('shows what it could read of a looping capability list, with a warning; --strict fails', () => {
    const lenient = userpci(['info', '0000:03:00.0']);
    assert.equal(lenient.status, 0, lenient.stderr);
    assert.match(lenient.stdout, /^\tCapabilities: \[50\] MSI-X/m);
    assert.match(lenient.stdout, /^\tWarning: capability list loops: the pointer at 0x51 leads back to 0x40$/m);
    assertCleanFailure(userpci(['info', '0000:03:00.0', '--strict']), 1, /^userpci info: capability list loops/);
  });

  it('fails clearly on a malformed address and on an absent device', () => {
    assertCleanFailure(userpci(['info', '0000:00:03']), 2, /^userpci info: invalid PCI address "0000:00:03": expected DDDD:BB:DD\.F, e\.g\. 0000:00:03\.0/);
    assertCleanFailure(userpci(['info', '0000:00:1f.0']), 1, /^userpci info: no PCI device 0000:00:1f\.0 \(.*does not exist\)$/m);
    assertCleanFailure(userpci(['info']), 2, /missing ADDRESS/);
  });
});

describe('userpci config', () => {
  it('reads registers by offset, by name and inside capabilities', () => {
    const read = (register: string, address = '0000:01:00.0') => {
      const result = userpci(['config', address, 'read', register]);
      assert.equal(result.status, 0, result.stderr);
      return result.stdout;
    };
    assert.equal(read('VENDOR_ID'), '8086\n');
    assert.equal(read('device_id'), '10fb\n');
    assert.equal(read('0.l'), '10fb8086\n');
    assert.equal(read('0x08.b'), '01\n');
    assert.equal(read('CAP_MSIX+2.w'), '803f\n');
    assert.equal(read('CAP11+2.w'), '803f\n');
    assert.equal(read('CAP_EXP+0x12.w'), '1082\n');
    assert.equal(read('ECAP_SRIOV+0x10.w'), '0008\n');
    assert.equal(read('ECAP_AER+0xc.l'), '00462030\n');
    assert.equal(read('BASE_ADDRESS_0', '00:03.0'), '00100004\n');
  });

  it('writes, with an optional mask for read-modify-write', () => {
    const { sysfs, ids } = setup();
    const run = (args: string[]) => userpci(['config', '0000:01:00.0', ...args], { USERPCI_SYSFS_ROOT: sysfs, USERPCI_PCI_IDS: ids });
    assert.equal(run(['write', 'COMMAND', '0x0407']).status, 0);
    assert.equal(run(['read', 'COMMAND']).stdout, '0407\n');
    assert.equal(run(['write', 'COMMAND', '0:4']).status, 0, 'clear bus master only');
    assert.equal(run(['read', 'COMMAND']).stdout, '0403\n');
    assert.equal(run(['write', '0x3c.b', '2a']).status, 0);
    assert.equal(run(['read', 'INTERRUPT_LINE']).stdout, '2a\n');
  });

  it('rejects malformed registers, values and arguments with exit code 2', () => {
    assertCleanFailure(userpci(['config', '0000:01:00.0', 'read', '0x44']), 2, /needs a width: 0x44\.b, 0x44\.w or 0x44\.l/);
    assertCleanFailure(userpci(['config', '0000:01:00.0', 'read', '0x45.w']), 2, /not aligned/);
    assertCleanFailure(userpci(['config', '0000:01:00.0', 'read', 'NOPE']), 2, /unknown register "NOPE"/);
    assertCleanFailure(userpci(['config', '0000:01:00.0', 'write', '0x3c.b', '100']), 2, /does not fit the 1-byte register/);
    assertCleanFailure(userpci(['config', '0000:01:00.0', 'write', '0x3c.b']), 2, /missing VALUE to write\nusage: userpci config ADDRESS write REGISTER VALUE\[:MASK\]/);
    const read = userpci(['config', '0000:01:00.0', 'read', 'VENDOR_ID', '--json']);
    assert.equal(read.status, 0, read.stderr);
    assert.deepEqual(JSON.parse(read.stdout), { address: '0000:01:00.0', offset: 0, width: 2, value: '8086' });
    assertCleanFailure(userpci(['config', '0000:01:00.0', 'peek', '0.b']), 2, /expected "read" or "write"/);
    assertCleanFailure(userpci(['config', '0000:01:00.0', 'read', '0x3c.b', '2a']), 2, /unexpected argument "2a"/);
    assertCleanFailure(userpci(['config', '0000:01:00.0']), 2, /missing "read" or "write"/);
    assertCleanFailure(userpci(['config', '01:00', 'read', '0.b']), 2, /invalid PCI address "01:00"/);
  });

  it('fails clearly on an absent device or capability', () => {
    assertCleanFailure(userpci(['config', '0000:00:1f.0', 'read', '0.w']), 1, /no PCI device 0000:00:1f\.0/);
    assertCleanFailure(userpci(['config', '0000:02:00.0', 'read', 'CAP_EXP+2.w']), 1, /0000:02:00\.0 has no capability with ID 0x10 \(CAP_EXP\+2\.w\)/);
  });
});

const realDevices = existsSync('/sys/bus/pci/devices') ? readdirSync('/sys/bus/pci/devices').sort() : [];

describe('userpci without privileges (this machine)', { skip: realDevices.length === 0 ? 'no PCI bus here' : false }, () => {
  // As root, drop to nobody (from a copy that user can read); otherwise already unprivileged.
  function unprivileged(args: string[]): SpawnSyncReturns<string> {
    const environment = { ...process.env };
    delete environment['USERPCI_SYSFS_ROOT'];
    return runNodeUnprivileged([stagedPath('bin/userpci.js'), ...args], { env: environment });
  }
  const address = realDevices[realDevices.length - 1]!;

  it('reads the header but says config bytes past 64 need root', () => {
    const header = unprivileged(['config', address, 'read', 'VENDOR_ID']);
    assert.equal(header.status, 0, header.stderr);
    assert.match(header.stdout, /^[0-9a-f]{4}\n$/);
    assertCleanFailure(
      unprivileged(['config', address, 'read', '0x40.l']),
      1,
      /reading config offset 0x40 of .* needs root \(CAP_SYS_ADMIN\): sysfs gives unprivileged readers only the first 64 bytes/,
    );
    assertCleanFailure(unprivileged(['config', address, 'write', '0x3c.b', '0']), 1, /EACCES \(needs root/);
  });

  it('info says the capabilities were not read, and why', () => {
    const result = unprivileged(['info', address]);
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /Capabilities: <not read: sysfs gave 64 of \d+ config bytes; reading past the header needs root \(CAP_SYS_ADMIN\)>/);
  });
});
