/**
 * The root module is what a driver author imports: discovery, every error class, the parsed
 * structures. Checked against a fake sysfs so results are exact.
 */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { inspect } from 'node:util';
import * as userpci from '../../src/index.js';
import { makeFakeSysfs } from '../fixtures/config/fake-sysfs.js';
import { NIC_WITH_SRIOV_RESOURCE, conventionalDevice, nicWithSriov, rootPort } from '../fixtures/config/synthetic.js';
import { serveEduForSuite } from '../support/edu-server.js';

const REPO = resolve(__dirname, '..', '..', '..');

function tree(): string {
  return makeFakeSysfs([
    { address: '0000:01:00.0', config: nicWithSriov(), resource: NIC_WITH_SRIOV_RESOURCE, driver: 'vfio-pci', iommuGroup: 12 },
    { address: '0000:00:1c.0', config: rootPort(), driver: 'pcieport', iommuGroup: 7 },
    { address: '0000:02:00.0', config: conventionalDevice() },
  ]);
}

describe('discovery from the root module', () => {
  const sysfsRoot = tree();
  const addresses = (list: readonly { address: string }[]) => list.map((entry) => entry.address);

  it('lists everything with an empty filter, in address order', async () => {
    assert.deepEqual(addresses(await userpci.findPciDevices({}, { sysfsRoot })), ['0000:00:1c.0', '0000:01:00.0', '0000:02:00.0']);
  });

  it('filters by vendor, device, subsystem, class and driver', async () => {
    const find = (filter: userpci.PciDeviceFilter) => userpci.findPciDevices(filter, { sysfsRoot }).then(addresses);
    assert.deepEqual(await find({ vendorId: 0x8086, deviceId: 0x10fb }), ['0000:01:00.0']);
    assert.deepEqual(await find({ subsystemVendorId: 0x8086, subsystemId: 0x0003 }), ['0000:01:00.0']);
    assert.deepEqual(await find({ class: '06' }), ['0000:00:1c.0']);
    assert.deepEqual(await find({ class: '0200' }), ['0000:01:00.0', '0000:02:00.0']);
    assert.deepEqual(await find({ class: '0x020000', vendorId: 0x10ec }), ['0000:02:00.0']);
    assert.deepEqual(await find({ class: '020001' }), []);
    assert.deepEqual(await find({ driver: 'vfio-pci' }), ['0000:01:00.0']);
    assert.deepEqual(await find({ driver: null }), ['0000:02:00.0']);
    assert.deepEqual(await find({ vendorId: 0x8086, driver: 'pcieport' }), ['0000:00:1c.0']);
  });

  it('findByIds returns the parsed sysfs description, inspectPciDevice the config space', async () => {
    const nic = await userpci.findByIds(0x8086, 0x10fb, { sysfsRoot });
    assert.ok(nic);
    assert.deepEqual([nic.classCode, nic.driver, nic.iommuGroup], [0x020000, 'vfio-pci', 12]);
    assert.equal(await userpci.findByIds(0x1234, 0x11e8, { sysfsRoot }), undefined);
    const inspected = await userpci.inspectPciDevice(nic.address, { sysfsRoot });
    assert.ok(inspected.config.capabilities.length > 0);
    assert.ok(userpci.findExtendedCapability(inspected.config, 0x10), 'SR-IOV is found through the root exports');
  });

  it('rejects malformed filters with EINVAL', async () => {
    await assert.rejects(userpci.findPciDevices({ class: '123' }, { sysfsRoot }), { code: 'EINVAL', message: /2, 4 or 6 hex digits/ });
    await assert.rejects(userpci.findPciDevices({ vendorId: 0x10000 }, { sysfsRoot }), { code: 'EINVAL', message: /vendorId must be a 16-bit ID/ });
  });

  it('names devices through PciIds from the root', () => {
    const ids = new userpci.PciIds('8086  Intel Corporation\n\t10fb  82599ES\n');
    assert.equal(ids.deviceName(0x8086, 0x10fb), '82599ES');
    assert.equal(typeof userpci.loadPciIds, 'function');
  });
});

describe('errors from the root module', () => {
  it('exports every error class the library defines', () => {
    const defined = new Set<string>();
    const walk = (directory: string) => {
      for (const name of readdirSync(directory)) {
        const path = join(directory, name);
        if (statSync(path).isDirectory()) walk(path);
        else if (name.endsWith('.ts')) {
          for (const match of readFileSync(path, 'utf8').matchAll(/^export class (\w+) extends (\w*Error)\b/gm)) defined.add(match[1]!);
        }
      }
    };
    walk(join(REPO, 'src'));
    // The CLI's own usage error never leaves the CLI.
    defined.delete('UsageError');
    assert.ok(defined.has('NvmeStatusError') && defined.has('ProtocolError'), 'the scan finds error classes');
    const root = userpci as unknown as Record<string, unknown>;
    const missing = [...defined].filter((name) => typeof root[name] !== 'function');
    assert.deepEqual(missing, []);
    for (const name of [...defined].filter((entry) => entry !== 'UserpciError')) {
      assert.ok((root[name] as { prototype: unknown }).prototype instanceof userpci.UserpciError, `${name} is a UserpciError`);
    }
  });

  it('types code as the errno names and maps anything else to EIO', () => {
    assert.ok(userpci.ERROR_CODES.includes('EBUSY'));
    assert.ok(userpci.ERROR_CODES.includes('ESHUTDOWN'));
    assert.equal(userpci.toErrorCode('ENOTSUP'), 'ENOTSUP');
    assert.equal(userpci.toErrorCode('ERR_SOMETHING'), 'EIO');
    assert.equal(userpci.toErrorCode(undefined), 'EIO');
    const error = new userpci.RemoteError(0x2, 22);
    const code: userpci.UserpciErrorCode = error.code;
    assert.equal(code, 'EINVAL');
  });
});

describe('resources a driver holds: using, inspect, typed events (edu over vfio-user)', () => {
  const socketPath = serveEduForSuite('userpci-api-');

  it('frees buffers, unmaps mappings and closes vectors at the end of a using scope', async () => {
    await using device = await userpci.openDevice(socketPath, { dmaMask: 0xfffffff });
    let kept: userpci.DmaBuffer;
    let keptMap: userpci.DmaMapping;
    let keptVector: userpci.InterruptVector;
    {
      using buffer = device.allocDma(4096);
      using mapping = device.mapDma(new Uint8Array(100), 'from-device');
      using vector = device.enableInterrupts('msi')[0]!;
      kept = buffer;
      keptMap = mapping;
      keptVector = vector;
      assert.equal(device.dma.liveBuffers, 1);
      assert.equal(device.dma.liveMappings, 1);
    }
    assert.equal(kept.freed, true);
    assert.equal(keptMap.mapped, false);
    assert.equal(keptVector.closed, true);
    assert.equal(device.dma.liveBuffers, 0);
    assert.equal(device.dma.liveMappings, 0);
    {
      using early = device.allocDma(4096);
      early.free(); // disposing what was already freed is not an error
    }
  });

  it('inspects a DmaBuffer as its IOVA, size and state, not its internals', async () => {
    await using device = await userpci.openDevice(socketPath, { dmaMask: 0xfffffff });
    const buffer = device.allocDma(8192);
    const shown = inspect(buffer);
    assert.equal(shown, `DmaBuffer { iova: 0x${buffer.iova.toString(16)}, size: 8192, freed: false }`);
    buffer.free();
    assert.match(inspect(buffer), /freed: true/);
    const mapping = device.mapDma(new Uint8Array(10), 'to-device');
    assert.match(inspect(mapping), /^DmaMapping \{ direction: 'to-device', segments: \[ \{ iova: 0x[0-9a-f]+, length: 10 \} \], mapped: true \}$/);
    mapping.unmap();
  });

  it('types the events of PciDevice and InterruptVector', async () => {
    await using device = await userpci.openDevice(socketPath, { dmaMask: 0xfffffff });
    const counts: number[] = [];
    device.on('device-error', (count) => counts.push(count));
    // @ts-expect-error 'removed' carries no arguments
    device.on('removed', (reason: string) => reason);
    const [vector] = device.enableInterrupts('msi');
    const got = new Promise<number>((resolve) => vector!.once('interrupt', (count) => resolve(count)));
    new userpci.EduDriver(device).raiseInterrupt(1);
    const count: number = await got;
    assert.ok(count >= 1);
    device.emit('device-error', 2);
    assert.deepEqual(counts, [2]);
  });
});
