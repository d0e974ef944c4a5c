import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { RangeAccessError, UserpciError } from '../../src/errors.js';
import {
  barSizesFromResources,
  inspectPciDevice,
  listPciDevices,
  parseResourceFile,
  readConfigBytes,
  readConfigRange,
  readPciDevice,
  writeConfigBytes,
} from '../../src/pci/sysfs.js';
import { makeFakeSysfs } from '../fixtures/config/fake-sysfs.js';
import { runNodeUnprivileged, stagedPath } from '../support/unprivileged.js';
import { NIC_WITH_SRIOV_RESOURCE, conventionalDevice, nicWithSriov, rootPort } from '../fixtures/config/synthetic.js';

const REPO = resolve(__dirname, '..', '..', '..');
const FIXTURES = join(REPO, 'test', 'fixtures', 'config');

function fakeTree(): string {
  const root = makeFakeSysfs([
    // Created out of order: enumeration must sort by address.
    { address: '0000:01:00.0', config: nicWithSriov(), resource: NIC_WITH_SRIOV_RESOURCE, driver: 'vfio-pci', iommuGroup: 12, numaNode: 1 },
    { address: '0000:00:1c.0', config: rootPort(), driver: 'pcieport', iommuGroup: 7, numaNode: 0 },
    { address: '0001:00:02.0', config: conventionalDevice() },
    {
      address: '0000:00:03.0',
      config: new Uint8Array(readFileSync(join(FIXTURES, 'firecracker-virtio-net.config'))),
      resource: readFileSync(join(FIXTURES, 'firecracker-virtio-net.resource'), 'utf8'),
      driver: 'virtio-pci',
    },
  ]);
  mkdirSync(join(root, 'bus', 'pci', 'devices', 'not-a-device'));
  return root;
}

describe('sysfs enumeration (fake tree)', () => {
  it('lists every function in address order with its attributes', async () => {
    const devices = await listPciDevices({ sysfsRoot: fakeTree() });
    assert.deepEqual(
      devices.map((device) => device.address),
      ['0000:00:03.0', '0000:00:1c.0', '0000:01:00.0', '0001:00:02.0'],
    );
    const nic = devices[2]!;
    assert.deepEqual(
      [nic.vendorId, nic.deviceId, nic.classCode, nic.revision, nic.subsystemVendorId, nic.subsystemId],
      [0x8086, 0x10fb, 0x020000, 0x01, 0x8086, 0x0003],
    );
    assert.deepEqual([nic.driver, nic.iommuGroup, nic.numaNode], ['vfio-pci', 12, 1]);
    assert.deepEqual(nic.location, { domain: 0, bus: 1, device: 0, function: 0 });
    assert.deepEqual(barSizesFromResources(nic.resources), [0x80000, undefined, 32, undefined, 0x4000, undefined]);

    const bridge = devices[1]!;
    assert.equal(bridge.subsystemVendorId, undefined, 'type 1 headers have no subsystem files');
    const plain = devices[3]!;
    assert.deepEqual([plain.driver, plain.iommuGroup, plain.numaNode], [undefined, undefined, undefined]);
  });

  it('reads one function, accepting the short address form', async () => {
    const device = await readPciDevice('00:03.0', { sysfsRoot: fakeTree() });
    assert.equal(device.address, '0000:00:03.0');
    assert.equal(device.driver, 'virtio-pci');
    assert.equal(device.resources[0]?.size, 512 * 1024);
  });

  it('reports an absent function as ENOENT with the path it looked at', async () => {
    const root = fakeTree();
    await assert.rejects(readPciDevice('0000:00:1f.0', { sysfsRoot: root }), (error: unknown) => {
      assert.ok(error instanceof UserpciError);
      assert.equal(error.code, 'ENOENT');
      assert.match(error.message, /no PCI device 0000:00:1f\.0/);
      assert.ok(error.message.includes(join(root, 'bus', 'pci', 'devices', '0000:00:1f.0')));
      return true;
    });
    await assert.rejects(listPciDevices({ sysfsRoot: '/nonexistent-sysfs' }), { code: 'ENOENT', message: /no PCI bus in sysfs/ });
  });

  it('inspects a function: parsed config with BAR sizes from resource', async () => {
    const { device, config, configRestricted, configFullSize } = await inspectPciDevice('0000:01:00.0', { sysfsRoot: fakeTree() });
    assert.equal(device.deviceId, 0x10fb);
    assert.equal(configRestricted, false);
    assert.equal(configFullSize, 4096);
    assert.deepEqual(config.bars.map((bar) => bar.size), [0x80000, 32, 0x4000]);
    assert.equal(config.extendedCapabilities.length, 4);
  });

  it('reads and writes registers through the config file', async () => {
    const root = fakeTree();
    const options = { sysfsRoot: root };
    assert.deepEqual([...(await readConfigRange('0000:01:00.0', 0, 4, options))], [0x86, 0x80, 0xfb, 0x10]);
    await writeConfigBytes('0000:01:00.0', 0x3c, new Uint8Array([0x2a]), options);
    await writeConfigBytes('0000:01:00.0', 0x04, new Uint8Array([0x07, 0x04]), options);
    const bytes = (await readConfigBytes('0000:01:00.0', options)).bytes;
    assert.equal(bytes[0x3c], 0x2a);
    assert.deepEqual([bytes[0x04], bytes[0x05]], [0x07, 0x04]);
    await assert.rejects(readConfigRange('0000:00:03.0', 0xfe, 4, options), RangeAccessError);
    await assert.rejects(writeConfigBytes('0000:00:03.0', 0x100, new Uint8Array(4), options), RangeAccessError);
  });
});

describe('sysfs resource file', () => {
  it('sizes BARs, the ROM and unused lines', () => {
    const resources = parseResourceFile(
      [
        '0x0000004000100000 0x000000400017ffff 0x0000000000140204',
        '0x0000000000000000 0x0000000000000000 0x0000000000000000',
        '0x000000000000e000 0x000000000000e01f 0x0000000000040101',
        '0x0000000000000000 0x0000000000000000 0x0000000000000000',
        '0x0000000000000000 0x0000000000000000 0x0000000000000000',
        '0x0000000000000000 0x0000000000000000 0x0000000000000000',
        '0x00000000fe800000 0x00000000fe87ffff 0x0000000000046200',
        '',
      ].join('\n'),
    );
    assert.equal(resources.length, 7);
    assert.deepEqual(resources.map((resource) => resource.size), [0x80000, 0, 32, 0, 0, 0, 0x80000]);
    assert.equal(resources[0]?.start, 0x4000100000n);
    assert.equal(resources[0]?.flags, 0x140204);
  });
});

const SYSFS_DEVICES = '/sys/bus/pci/devices';
const realDevices = existsSync(SYSFS_DEVICES) ? readdirSync(SYSFS_DEVICES) : [];

describe('sysfs enumeration (this machine)', { skip: realDevices.length === 0 ? 'no PCI bus here' : false }, () => {
  it('lists what /sys/bus/pci/devices holds, and every function parses without warnings', async () => {
    const devices = await listPciDevices();
    assert.deepEqual(devices.map((device) => device.address).sort(), [...realDevices].sort());
    for (const device of devices) {
      const { config, configRestricted } = await inspectPciDevice(device.address);
      assert.equal(config.vendorId, device.vendorId, device.address);
      assert.equal(config.deviceId, device.deviceId, device.address);
      assert.equal(config.classCode, device.classCode, device.address);
      assert.equal(configRestricted, process.getuid?.() !== 0, device.address);
      assert.deepEqual(config.warnings, [], device.address);
    }
  });

  it('reports the 64-byte limit of unprivileged readers instead of failing or pretending', () => {
    // Run as an unprivileged user: as root through setpriv, otherwise as ourselves.
    const script = `
      const sysfs = require(${JSON.stringify(stagedPath('dist/src/pci/sysfs.js'))});
      (async () => {
        const address = ${JSON.stringify(realDevices.sort()[realDevices.length - 1])};
        const read = await sysfs.readConfigBytes(address);
        let rangeError = null;
        try { await sysfs.readConfigRange(address, 0x40, 4); } catch (error) { rangeError = { code: error.code, message: error.message }; }
        const inspected = await sysfs.inspectPciDevice(address);
        console.log(JSON.stringify({ length: read.bytes.length, fullSize: read.fullSize, restricted: read.restricted, rangeError,
          inspectedRestricted: inspected.configRestricted, capabilities: inspected.config.capabilities.length }));
      })().catch((error) => { console.error(error); process.exit(1); });
    `;
    const result = runNodeUnprivileged(['-e', script]);
    assert.equal(result.status, 0, result.stderr);
    const report = JSON.parse(result.stdout) as Record<string, unknown>;
    assert.equal(report['length'], 64);
    assert.ok((report['fullSize'] as number) >= 256);
    assert.equal(report['restricted'], true);
    assert.equal(report['inspectedRestricted'], true);
    assert.equal(report['capabilities'], 0);
    assert.deepEqual((report['rangeError'] as { code: string }).code, 'EACCES');
    assert.match((report['rangeError'] as { message: string }).message, /needs root \(CAP_SYS_ADMIN\).*first 64 bytes/);
  });
});
