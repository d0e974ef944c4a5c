/**
 * The checks VfioBackend.open makes before it touches /dev/vfio, on a fake sysfs tree: each
 * refusal has its own code and says what to do. (The same paths run for real in the guest.)
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeFakeSysfs } from '../fixtures/config/fake-sysfs';
import { VfioBackend } from '../../src/backends/vfio/vfio-backend';
import { openDevice } from '../../src/device/open';

function config(vendor: number, device: number): Uint8Array {
  const c = new Uint8Array(256);
  const v = new DataView(c.buffer);
  v.setUint16(0, vendor, true);
  v.setUint16(2, device, true);
  return c;
}

function groupMember(root: string, group: number, address: string): void {
  const dir = path.join(root, 'kernel/iommu_groups', String(group), 'devices');
  fs.mkdirSync(dir, { recursive: true });
  fs.symlinkSync(path.join('../../../../bus/pci/devices', address), path.join(dir, address));
}

const root = makeFakeSysfs([
  { address: '0000:00:03.0', config: config(0x1234, 0x11e8) }, // no IOMMU group
  { address: '0000:00:04.0', config: config(0x8086, 0x10d3), driver: 'e1000e', iommuGroup: 4 },
  { address: '0000:00:05.0', config: config(0x1234, 0x11e8), iommuGroup: 5 }, // no driver
  { address: '0000:01:01.0', config: config(0x1234, 0x11e8), driver: 'vfio-pci', iommuGroup: 6 },
  { address: '0000:01:02.0', config: config(0x8086, 0x10d3), driver: 'e1000e', iommuGroup: 6 },
]);
groupMember(root, 4, '0000:00:04.0');
groupMember(root, 5, '0000:00:05.0');
groupMember(root, 6, '0000:01:01.0');
groupMember(root, 6, '0000:01:02.0');

test('an absent device is ENOENT', () => {
  assert.throws(() => VfioBackend.open('0000:00:1f.7', root), (e: any) => e.code === 'ENOENT' && /no PCI device at 0000:00:1f.7/.test(e.message));
});

test('no IOMMU group: the message says to enable the IOMMU', () => {
  assert.throws(() => VfioBackend.open('00:03.0', root), (e: any) => e.code === 'ENODEV' && /intel_iommu=on/.test(e.message));
});

test('bound to a host driver, or to none: EBUSY with the bind command to run', () => {
  assert.throws(() => VfioBackend.open('0000:00:04.0', root), (e: any) => e.code === 'EBUSY' && /e1000e driver/.test(e.message) && /userpci bind 0000:00:04.0/.test(e.message));
  assert.throws(() => VfioBackend.open('0000:00:05.0', root), (e: any) => e.code === 'EBUSY' && /no driver/.test(e.message));
});

test('a group member on a host driver blocks the open, and is named', () => {
  assert.throws(() => VfioBackend.open('0000:01:01.0', root), (e: any) => e.code === 'EBUSY' && /0000:01:02.0 \(e1000e\)/.test(e.message));
});

test('openDevice rejects malformed targets and masks before touching anything', async () => {
  await assert.rejects(openDevice('0000:00:03'), (e: any) => e.code === 'EINVAL');
  await assert.rejects(openDevice(''), (e: any) => e.code === 'EINVAL');
  await assert.rejects(openDevice('0000:00:03.0', { dmaMask: 0x1000 }), (e: any) => e.code === 'EINVAL' && /2\^n - 1/.test(e.message));
});
