// Proves the guest harness itself: we are in the guest, QEMU's edu device is there behind the
// emulated Intel IOMMU, and the guest kernel's vfio-pci takes it when asked.
// Runs only inside the guest: node dist/scripts/guest/run-suites.js edu

import { test, before } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

const PCI = '/sys/bus/pci/devices';

function findDevice(vendor: number, device: number): string | undefined {
  for (const addr of fs.readdirSync(PCI)) {
    const read = (f: string) => parseInt(fs.readFileSync(path.join(PCI, addr, f), 'utf8'), 16);
    if (read('vendor') === vendor && read('device') === device) return addr;
  }
  return undefined;
}

function driverOf(addr: string): string | undefined {
  const link = path.join(PCI, addr, 'driver');
  return fs.existsSync(link) ? path.basename(fs.readlinkSync(link)) : undefined;
}

async function waitFor(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

before(() => {
  if (process.env.USERPCI_GUEST !== '1') {
    throw new Error('this test runs only inside the QEMU guest; use: node dist/scripts/guest/run-suites.js edu');
  }
});

test('guest runs as root with the harness environment', () => {
  assert.equal(process.getuid?.(), 0);
  assert.ok(process.env.USERPCI_REPO && process.cwd() === process.env.USERPCI_REPO, 'cwd is the shared checkout');
  assert.ok(fs.existsSync(path.join(process.cwd(), 'package.json')), 'checkout visible over 9p');
  assert.match(process.env.USERPCI_GUEST_MEMLOCK ?? '', /^(\d+|unlimited)$/);
});

test('the emulated Intel IOMMU is active', () => {
  assert.ok(fs.existsSync('/sys/class/iommu/dmar0'), 'intel-iommu registered as dmar0');
  assert.ok(fs.readdirSync('/sys/kernel/iommu_groups').length > 0, 'IOMMU groups exist');
});

test('edu binds to vfio-pci and its VFIO group appears', async () => {
  assert.ok(fs.existsSync('/dev/vfio/vfio'), '/dev/vfio/vfio exists (vfio loaded)');
  const edu = findDevice(0x1234, 0x11e8);
  assert.ok(edu, 'QEMU edu device (1234:11e8) present');
  const dev = path.join(PCI, edu);

  const group = path.basename(fs.readlinkSync(path.join(dev, 'iommu_group')));
  assert.ok(fs.existsSync(`/sys/kernel/iommu_groups/${group}/devices/${edu}`), 'edu listed in its IOMMU group');

  // edu has no kernel driver; unbind anyway in case a later kernel grows one.
  const prior = driverOf(edu);
  if (prior) fs.writeFileSync(path.join(dev, 'driver', 'unbind'), edu);
  fs.writeFileSync(path.join(dev, 'driver_override'), 'vfio-pci');
  fs.writeFileSync('/sys/bus/pci/drivers_probe', edu);
  try {
    assert.equal(driverOf(edu), 'vfio-pci');
    assert.ok(await waitFor(() => fs.existsSync(`/dev/vfio/${group}`), 2000), `/dev/vfio/${group} appears`);
    // Opening the group and the container proves the nodes are real, not just present.
    fs.closeSync(fs.openSync(`/dev/vfio/${group}`, 'r+'));
    fs.closeSync(fs.openSync('/dev/vfio/vfio', 'r+'));
  } finally {
    fs.writeFileSync(path.join(dev, 'driver', 'unbind'), edu);
    fs.writeFileSync(path.join(dev, 'driver_override'), '\n');
  }
  assert.equal(driverOf(edu), undefined, 'edu released again');
  assert.ok(await waitFor(() => !fs.existsSync(`/dev/vfio/${group}`), 2000), `/dev/vfio/${group} goes away`);
});
