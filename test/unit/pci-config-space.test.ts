import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import { MalformedConfigError } from '../../src/errors.js';
import type { MsiFields, MsixFields, PciExpressFields, PowerManagementFields, SriovFields } from '../../src/pci/capabilities.js';
import { type ConfigSpace, findCapability, findExtendedCapability, parseConfigSpace } from '../../src/pci/config-space.js';
import { barSizesFromResources, parseResourceFile } from '../../src/pci/sysfs.js';
import * as regs from '../../src/uapi/pci-regs.js';
import { NIC_WITH_SRIOV_RESOURCE, conventionalDevice, malformed, nicWithSriov, rootPort } from '../fixtures/config/synthetic.js';

const REPO = resolve(__dirname, '..', '..', '..');
const FIXTURES = join(REPO, 'test', 'fixtures', 'config');

function fixture(name: string): { bytes: Uint8Array; resource: string | undefined } {
  const bytes = new Uint8Array(readFileSync(join(FIXTURES, `${name}.config`)));
  let resource: string | undefined;
  try {
    resource = readFileSync(join(FIXTURES, `${name}.resource`), 'utf8');
  } catch {
    resource = undefined;
  }
  return { bytes, resource };
}

function parseFixture(name: string): ConfigSpace {
  const { bytes, resource } = fixture(name);
  return parseConfigSpace(bytes, { barSizes: resource === undefined ? [] : barSizesFromResources(parseResourceFile(resource)) });
}

function fields<T>(config: ConfigSpace, id: number): T {
  const capability = findCapability(config, id);
  assert.ok(capability, `capability 0x${id.toString(16)} present`);
  assert.ok(capability.fields, `capability 0x${id.toString(16)} decoded`);
  return capability.fields as T;
}

describe('config space: real captures (Firecracker VM, virtio devices)', () => {
  it('parses the virtio-net function: header, 64-bit BAR sized from sysfs resource, capabilities', () => {
    const config = parseFixture('firecracker-virtio-net');
    assert.equal(config.length, 256);
    assert.equal(config.vendorId, 0x1af4);
    assert.equal(config.deviceId, 0x1041);
    assert.equal(config.classCode, 0x020000);
    assert.equal(config.revision, 1);
    assert.equal(config.headerType, 0);
    assert.equal(config.subsystemVendorId, 0x1af4);
    assert.equal(config.subsystemId, 0x1041);
    assert.equal(config.command & regs.PCI_COMMAND_MASTER, regs.PCI_COMMAND_MASTER);
    assert.deepEqual(config.bars, [
      {
        index: 0,
        registerOffset: 0x10,
        kind: 'memory',
        is64Bit: true,
        prefetchable: false,
        below1M: false,
        address: 0x4000100000n,
        size: 512 * 1024,
      },
    ]);
    assert.deepEqual(
      config.capabilities.map((capability) => [capability.offset, capability.id]),
      [[0x40, 9], [0x50, 9], [0x60, 9], [0x70, 9], [0x84, 9], [0x98, 0x11]],
    );
    assert.deepEqual(
      config.capabilities.slice(0, 5).map((capability) => capability.fields),
      [
        { kind: 'virtio', length: 16, cfgType: 1, cfgTypeName: 'CommonCfg', bar: 0, offset: 0, size: 0x38 },
        { kind: 'virtio', length: 16, cfgType: 3, cfgTypeName: 'ISR', bar: 0, offset: 0x2000, size: 1 },
        { kind: 'virtio', length: 16, cfgType: 4, cfgTypeName: 'DeviceCfg', bar: 0, offset: 0x4000, size: 0x1000 },
        { kind: 'virtio', length: 20, cfgType: 2, cfgTypeName: 'Notify', bar: 0, offset: 0x6000, size: 0x1000, notifyOffMultiplier: 4 },
        { kind: 'virtio', length: 20, cfgType: 5, cfgTypeName: 'PCICfg', bar: 0, offset: 0, size: 0 },
      ],
    );
    assert.deepEqual(fields<MsixFields>(config, regs.PCI_CAP_ID_MSIX), {
      kind: 'msix',
      enabled: true,
      functionMasked: false,
      tableSize: 3,
      tableBar: 0,
      tableOffset: 0x8000,
      pbaBar: 0,
      pbaOffset: 0x48000,
    });
    assert.equal(config.capabilitiesReadable, true);
    assert.equal(config.extendedCapabilitiesReadable, false, '256 bytes: no extended space');
    assert.deepEqual(config.extendedCapabilities, []);
    assert.deepEqual(config.warnings, []);
  });

  it('parses a 4096-byte capture with no capabilities and an empty extended space', () => {
    const config = parseFixture('firecracker-host-bridge');
    assert.equal(config.length, 4096);
    assert.equal(config.vendorId, 0x8086);
    assert.equal(config.classCode, 0x060000);
    assert.equal(config.status & regs.PCI_STATUS_CAP_LIST, 0);
    assert.deepEqual(config.bars, []);
    assert.deepEqual(config.capabilities, []);
    assert.equal(config.extendedCapabilitiesReadable, true);
    assert.deepEqual(config.extendedCapabilities, []);
    assert.deepEqual(config.warnings, []);
  });

  it('reports an unprivileged 64-byte read: header parsed, capability list not readable, no warning', () => {
    const config = parseFixture('firecracker-virtio-net.unprivileged');
    assert.equal(config.length, 64);
    assert.equal(config.vendorId, 0x1af4);
    assert.equal(config.deviceId, 0x1041);
    assert.equal(config.status & regs.PCI_STATUS_CAP_LIST, regs.PCI_STATUS_CAP_LIST);
    assert.equal(config.capabilitiesReadable, false);
    assert.deepEqual(config.capabilities, []);
    assert.deepEqual(config.warnings, []);
  });

  it('agrees with the lspci -vvv output captured on the same machine', () => {
    const lspci = readFileSync(join(FIXTURES, 'firecracker.lspci-vvv.txt'), 'utf8');
    const names: Record<string, string> = {
      '0000:00:00.0': 'firecracker-host-bridge',
      '0000:00:01.0': 'firecracker-virtio-balloon',
      '0000:00:02.0': 'firecracker-virtio-blk',
      '0000:00:03.0': 'firecracker-virtio-net',
      '0000:00:04.0': 'firecracker-virtio-vsock',
      '0000:00:05.0': 'firecracker-virtio-rng',
    };
    const blocks = lspci.split(/\n(?=\S)/).filter((block) => block.trim().length > 0);
    assert.equal(blocks.length, Object.keys(names).length);
    for (const block of blocks) {
      const address = block.split(' ')[0]!;
      const config = parseFixture(names[address]!);
      const offsets = [...block.matchAll(/^\tCapabilities: \[([0-9a-f]+)\]/gm)].map((match) => parseInt(match[1]!, 16));
      assert.deepEqual(config.capabilities.map((capability) => capability.offset), offsets, address);
      const regions = [...block.matchAll(/^\tRegion (\d+): Memory at ([0-9a-f]+) \((64|32)-bit, (non-)?prefetchable\) \[size=(\d+)K\]/gm)];
      assert.deepEqual(
        config.bars.map((bar) => [bar.index, bar.address, bar.is64Bit, bar.prefetchable, bar.size]),
        regions.map((match) => [Number(match[1]), BigInt(`0x${match[2]}`), match[3] === '64', match[4] === undefined, Number(match[5]) * 1024]),
        address,
      );
      for (const match of block.matchAll(/^\tCapabilities: \[([0-9a-f]+)\] MSI-X: Enable([+-]) Count=(\d+) Masked([+-])/gm)) {
        const msix = config.capabilities.find((capability) => capability.offset === parseInt(match[1]!, 16))!.fields as MsixFields;
        assert.equal(msix.enabled, match[2] === '+');
        assert.equal(msix.tableSize, Number(match[3]));
        assert.equal(msix.functionMasked, match[4] === '+');
      }
    }
  });
});

describe('config space: hand-made devices (modelled on real hardware)', () => {
  it('decodes PM, MSI, MSI-X and PCI Express of an SR-IOV NIC', () => {
    const config = parseConfigSpace(nicWithSriov(), { barSizes: barSizesFromResources(parseResourceFile(NIC_WITH_SRIOV_RESOURCE)) });
    assert.deepEqual(config.warnings, []);
    assert.equal(config.multiFunction, true);
    assert.deepEqual(
      config.bars.map((bar) => [bar.index, bar.kind, bar.is64Bit, bar.address, bar.size]),
      [
        [0, 'memory', true, 0xfb000000n, 0x80000],
        [2, 'io', false, 0xe000n, 32],
        [4, 'memory', true, 0xfb100000n, 0x4000],
      ],
    );
    assert.deepEqual(fields<PowerManagementFields>(config, regs.PCI_CAP_ID_PM), {
      kind: 'pm',
      version: 3,
      pmeClock: false,
      deviceSpecificInit: false,
      d1Supported: false,
      d2Supported: false,
      pmeSupport: ['D0', 'D3hot', 'D3cold'],
      powerState: 'D0',
      noSoftReset: true,
      pmeEnabled: false,
      pmeStatus: false,
    });
    assert.deepEqual(fields<MsiFields>(config, regs.PCI_CAP_ID_MSI), {
      kind: 'msi',
      enabled: false,
      is64Bit: true,
      perVectorMasking: true,
      vectorsCapable: 8,
      vectorsEnabled: 1,
      messageAddress: 0n,
      messageData: 0,
      maskBits: 0,
      pendingBits: 0,
    });
    const msix = fields<MsixFields>(config, regs.PCI_CAP_ID_MSIX);
    assert.deepEqual([msix.enabled, msix.tableSize, msix.tableBar, msix.tableOffset, msix.pbaBar, msix.pbaOffset], [true, 64, 4, 0, 4, 0x2000]);
    const pcie = fields<PciExpressFields>(config, regs.PCI_CAP_ID_EXP);
    assert.equal(pcie.version, 2);
    assert.equal(pcie.deviceType, regs.PCI_EXP_TYPE_ENDPOINT);
    assert.equal(pcie.deviceTypeName, 'Endpoint');
    assert.equal(pcie.maxPayloadSupported, 512);
    assert.equal(pcie.maxPayloadSize, 256);
    assert.equal(pcie.maxReadRequestSize, 4096);
    assert.equal(pcie.flrCapable, true);
    assert.equal(pcie.relaxedOrdering, true);
    assert.equal(pcie.errorsDetected.correctable, true);
    assert.deepEqual(
      pcie.link && [pcie.link.maxSpeedGts, pcie.link.maxWidth, pcie.link.speedGts, pcie.link.width, pcie.link.portNumber, pcie.link.aspmSupport],
      [5, 8, 5, 8, 0, 'L0s L1'],
    );
  });

  it('walks the extended list by ID: AER, DSN, ARI, SR-IOV', () => {
    const config = parseConfigSpace(nicWithSriov());
    assert.deepEqual(
      config.extendedCapabilities.map((capability) => [capability.offset, capability.id, capability.version, capability.name]),
      [
        [0x100, 0x01, 2, 'Advanced Error Reporting'],
        [0x140, 0x03, 1, 'Device Serial Number'],
        [0x150, 0x0e, 1, 'Alternative Routing-ID Interpretation'],
        [0x160, 0x10, 1, 'Single Root I/O Virtualization'],
      ],
    );
    assert.deepEqual(findExtendedCapability(config, regs.PCI_EXT_CAP_ID_DSN)?.fields, { kind: 'dsn', serialNumber: '00-1b-21-ff-ff-4a-3c-90' });
    const aer = findExtendedCapability(config, regs.PCI_EXT_CAP_ID_ERR)?.fields;
    assert.equal(aer?.kind === 'aer' && aer.uncorrectableSeverity, 0x00462030);
    const sriov = findExtendedCapability(config, regs.PCI_EXT_CAP_ID_SRIOV)?.fields as SriovFields;
    assert.deepEqual(
      [sriov.vfEnabled, sriov.vfMemorySpaceEnabled, sriov.ariHierarchy, sriov.totalVfs, sriov.numVfs, sriov.firstVfOffset, sriov.vfStride, sriov.vfDeviceId],
      [true, true, true, 64, 8, 0x180, 2, 0x10ed],
    );
  });

  it('parses a type 1 header: bus numbers, windows, capabilities out of address order', () => {
    const config = parseConfigSpace(rootPort());
    assert.deepEqual(config.warnings, []);
    assert.equal(config.headerType, 1);
    assert.equal(config.subsystemVendorId, undefined);
    assert.deepEqual(
      config.bridge && [config.bridge.primaryBus, config.bridge.secondaryBus, config.bridge.subordinateBus],
      [0, 1, 1],
    );
    assert.deepEqual(config.bridge?.ioWindow, { base: 0xe000n, limit: 0xefffn });
    assert.deepEqual(config.bridge?.memoryWindow, { base: 0xde000000n, limit: 0xdf0fffffn });
    assert.deepEqual(config.bridge?.prefetchableWindow, { base: 0xc0000000n, limit: 0xd1ffffffn, is64Bit: true });
    assert.deepEqual(config.capabilities.map((capability) => capability.offset), [0x88, 0x80, 0x90, 0xa0]);
    assert.deepEqual(config.capabilities[0]?.fields, { kind: 'ssvid', subsystemVendorId: 0x1462, subsystemId: 0x7a72 });
    const msi = fields<MsiFields>(config, regs.PCI_CAP_ID_MSI);
    assert.deepEqual([msi.enabled, msi.is64Bit, msi.perVectorMasking, msi.messageAddress, msi.maskBits], [true, false, false, 0xfee00358n, undefined]);
    const pcie = fields<PciExpressFields>(config, regs.PCI_CAP_ID_EXP);
    assert.deepEqual([pcie.deviceTypeName, pcie.slotImplemented, pcie.link?.maxSpeedGts, pcie.link?.width, pcie.link?.dataLinkActive], ['Root Port', true, 8, 16, true]);
    assert.deepEqual(findExtendedCapability(config, regs.PCI_EXT_CAP_ID_ACS)?.fields, {
      kind: 'acs',
      capabilities: ['SrcValid', 'TransBlk', 'ReqRedir', 'CmpltRedir', 'UpstreamFwd'],
      enabled: ['SrcValid', 'TransBlk', 'ReqRedir', 'CmpltRedir'],
    });
  });

  it('names capabilities it does not decode, and keeps unknown IDs', () => {
    const config = parseConfigSpace(conventionalDevice());
    assert.deepEqual(
      config.capabilities.map((capability) => [capability.offset, capability.name, capability.fields?.kind]),
      [
        [0x50, 'Vendor Specific', 'vendor'],
        [0x60, 'Vital Product Data', undefined],
        [0x70, 'Unknown capability 0x1f', undefined],
      ],
    );
    assert.deepEqual(
      config.bars.map((bar) => [bar.index, bar.kind, bar.below1M, bar.prefetchable, bar.address, bar.size]),
      [
        [0, 'io', false, false, 0xc000n, undefined],
        [1, 'memory', true, false, 0xd0000n, undefined],
        [2, 'memory', false, true, 0xf7d00000n, undefined],
      ],
    );
    assert.deepEqual(config.expansionRom, { registerOffset: 0x30, address: 0xf7e00000n, enabled: false, size: undefined });
  });
});

describe('config space: malformed input', () => {
  const cases: Array<[name: keyof typeof malformed, keptOffsets: number[], keptExtended: number[], message: RegExp]> = [
    ['capabilityLoop', [0x40, 0x50], [], /capability list loops: the pointer at 0x51 leads back to 0x40/],
    ['capabilitySelfLoop', [0x40], [], /capability list loops: the pointer at 0x41 leads back to 0x40/],
    ['pointerIntoHeader', [0x40], [], /capability pointer at 0x41 is 0x10, inside the 64-byte header/],
    ['firstPointerIntoHeader', [], [], /capability pointer at 0x34 is 0x20, inside the 64-byte header/],
    ['capabilityPastEnd', [0xf4], [], /MSI capability at 0xf4 runs past the 256 bytes of config space/],
    ['pointerPastCapture', [0x40], [], /capability pointer at 0x41 is 0x90, past the 128 bytes of config space/],
    ['extendedLoop', [0x40], [0x100, 0x140], /extended capability list loops: the header at 0x140 leads back to 0x100/],
    ['extendedPointerBelowStart', [], [0x100], /extended capability pointer at 0x100 is 0xc0, below 0x100/],
    ['truncatedExtended', [0x40, 0x50, 0x70, 0xa0], [0x100, 0x140], /extended config space truncated/],
    ['allOnes', [], [], /vendor ID reads 0xffff/],
  ];

  for (const [name, keptOffsets, keptExtended, message] of cases) {
    it(`${name}: keeps what it read and warns; strict mode throws MalformedConfigError`, () => {
      const config = parseConfigSpace(malformed[name]());
      assert.deepEqual(config.capabilities.map((capability) => capability.offset), keptOffsets);
      assert.deepEqual(config.extendedCapabilities.map((capability) => capability.offset), keptExtended);
      assert.ok(config.warnings.length > 0, 'a warning is recorded');
      assert.match(config.warnings.map((warning) => warning.message).join('\n'), message);
      assert.throws(
        () => parseConfigSpace(malformed[name](), { strict: true }),
        (error: unknown) => error instanceof MalformedConfigError && error.code === 'EILSEQ' && message.test(error.message),
      );
    });
  }

  it('truncated extended space: decodes what fits, says where it stopped', () => {
    const config = parseConfigSpace(malformed.truncatedExtended());
    assert.equal(config.extendedCapabilitiesReadable, false);
    assert.equal(findExtendedCapability(config, regs.PCI_EXT_CAP_ID_ERR)?.fields?.kind, 'aer');
    assert.equal(findExtendedCapability(config, regs.PCI_EXT_CAP_ID_DSN)?.fields, undefined, 'serial number cut off');
    assert.deepEqual(
      config.warnings.map((warning) => warning.offset),
      [0x140, 0x140],
    );
  });

  it('rejects fewer bytes than the header, in every mode', () => {
    assert.throws(() => parseConfigSpace(malformed.tooShort()), /config space is 32 bytes; the header alone needs 64/);
    assert.throws(() => parseConfigSpace(malformed.tooShort()), MalformedConfigError);
  });

  it('never hangs: thousands of mutated configs parse in a worker within a deadline', async () => {
    // A synchronous infinite loop cannot be interrupted from its own thread, so the fuzz runs in
    // a worker the test can terminate.
    const parserPath = join(REPO, 'dist', 'src', 'pci', 'config-space.js');
    const syntheticPath = join(REPO, 'dist', 'test', 'fixtures', 'config', 'synthetic.js');
    const source = `
      const { parentPort } = require('node:worker_threads');
      const { parseConfigSpace } = require(${JSON.stringify(parserPath)});
      const synthetic = require(${JSON.stringify(syntheticPath)});
      let seed = 12345;
      const random = () => { seed = (seed * 1103515245 + 12345) >>> 0; return seed / 4294967296; };
      const bases = [synthetic.nicWithSriov(), synthetic.rootPort(), synthetic.conventionalDevice()];
      let parsed = 0, warned = 0;
      for (let round = 0; round < 3000; round++) {
        const bytes = bases[round % bases.length].slice();
        // Plant capability headers with random IDs and next pointers where the lists live.
        bytes[0x34] = Math.floor(random() * 256);
        for (let k = 0; k < 6; k++) {
          const standard = 0x40 + 4 * Math.floor(random() * 0x30);
          bytes[standard] = Math.floor(random() * 0x20);
          bytes[standard + 1] = Math.floor(random() * 256);
          const extended = 0x100 + 4 * Math.floor(random() * 0x3c0);
          const header = (Math.floor(random() * 0x30) | (Math.floor(random() * 0x1000) << 20)) >>> 0;
          if (bytes.length === 4096) {
            bytes.set([header & 0xff, (header >>> 8) & 0xff, (header >>> 16) & 0xff, header >>> 24], random() < 0.3 ? 0x100 : extended);
          }
        }
        bytes[0x06] |= 0x10;
        const config = parseConfigSpace(random() < 0.2 ? bytes.slice(0, 64 + Math.floor(random() * 4032)) : bytes);
        parsed++;
        if (config.warnings.length > 0) warned++;
      }
      parentPort.postMessage({ parsed, warned });
    `;
    const worker = new Worker(source, { eval: true });
    const result = await new Promise<{ parsed: number; warned: number }>((resolvePromise, reject) => {
      const timer = setTimeout(() => {
        void worker.terminate();
        reject(new Error('parser did not finish within 20 s: a list walk does not terminate'));
      }, 20_000);
      worker.once('message', (message: { parsed: number; warned: number }) => {
        clearTimeout(timer);
        resolvePromise(message);
      });
      worker.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
    await worker.terminate();
    assert.equal(result.parsed, 3000);
    assert.ok(result.warned > 1000, `mutations produced malformed lists (${result.warned} warned)`);
  });
});
