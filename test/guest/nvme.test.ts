/**
 * The NVMe driver against QEMU's nvme device through the guest kernel's vfio-pci and the
 * emulated IOMMU: the shared NVMe suite (test/shared/nvme-driver-suite.ts) with the driver on
 * vfio-pci in this process. Both drives start bound to the kernel's nvme driver and go back to
 * it at the end.
 */
import { before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import { bindToVfio, unbindFromVfio, boundDriver } from '../../src/pci/bind';
import { requireGuest } from './guest-env';
import { nvmeBySerial } from './nvme-drives';
import { registerNvmeDriverSuite } from '../shared/nvme-driver-suite';

let devA: string;
let devB: string;

before(() => {
  requireGuest();
  const found = nvmeBySerial();
  devA = found.get('userpci-a')!;
  devB = found.get('userpci-b')!;
  assert.ok(devA && devB, `expected NVMe devices with serials userpci-a and userpci-b, found ${[...found.keys()].join(', ')}`);
  assert.equal(boundDriver(devA), 'nvme', 'the device starts on the kernel driver');
  bindToVfio(devA);
  bindToVfio(devB);
});

after(() => {
  for (const a of [devA, devB]) {
    if (a && boundDriver(a) === 'vfio-pci') unbindFromVfio(a);
  }
});

registerNvmeDriverSuite({
  label: 'VFIO',
  a: () => devA,
  b: () => devB,
  pciA: () => devA,
  mapsAnyMemory: true,
});
