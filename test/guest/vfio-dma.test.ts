/**
 * DMA memory details on the real edu through vfio-pci: 2 MiB hugepages when the system has
 * them, a clear ENOMEM naming the memlock limit, and reset refused clearly on a device without one.
 */
import { test, before } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { openDevice } from '../../src/device/open';
import { EduDriver } from '../../src/drivers/edu/edu-driver';
import { EDU_DEVICE_ID, EDU_VENDOR_ID } from '../../src/drivers/edu/registers';
import { requireGuest, boundDevices } from './guest-env';

const HUGE = 2 << 20;
let edu0: string;

before(() => {
  requireGuest();
  [edu0] = boundDevices(EDU_VENDOR_ID, EDU_DEVICE_ID, 1) as [string];
});

test('2 MiB hugepages: used when reserved, IOVA 2 MiB-aligned, DMA works through them', async () => {
  fs.writeFileSync('/proc/sys/vm/nr_hugepages', '4');
  assert.ok(Number(fs.readFileSync('/proc/sys/vm/nr_hugepages', 'utf8')) >= 2, 'the guest reserved hugepages');
  await using device = await openDevice(edu0);
  const edu = new EduDriver(device);
  const freeBefore = Number(fs.readFileSync('/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages', 'utf8'));
  const buf = device.allocDma(HUGE, { hugePages: 'always' });
  assert.equal(buf.size, HUGE);
  assert.equal(buf.iova % HUGE, 0);
  const freeAfter = Number(fs.readFileSync('/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages', 'utf8'));
  assert.equal(freeAfter, freeBefore - 1, 'one hugepage backs the buffer');
  const bytes = new Uint8Array(buf.buffer);
  bytes.fill(0x3c, HUGE - 4096, HUGE - 1);
  await edu.dma('to-device', buf.iovaAt(HUGE - 4096), 0, 4095);
  await edu.dma('from-device', buf.iovaAt(100), 0, 4095);
  assert.ok(bytes.subarray(100, 100 + 4095).every((b) => b === 0x3c));
  // 'auto' picks hugepages by itself from 2 MiB up.
  const auto = device.allocDma(HUGE);
  assert.equal(auto.iova % HUGE, 0);
  buf.free();
  auto.free();
  assert.equal(Number(fs.readFileSync('/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages', 'utf8')), freeBefore);
  // Asking for more hugepages than exist fails clearly with 'always', falls back with 'auto'.
  assert.throws(() => device.allocDma(64 * HUGE, { hugePages: 'always' }), (e: any) => e.code === 'ENOMEM');
  const fallback = device.allocDma(3 * HUGE);
  assert.equal(fallback.size, 3 * HUGE);
  fallback.free();
  fs.writeFileSync('/proc/sys/vm/nr_hugepages', '0');
});

test('an allocation the system cannot lock is ENOMEM, and the message names RLIMIT_MEMLOCK', async () => {
  await using device = await openDevice(edu0);
  assert.throws(() => device.allocDma(2 ** 40), (e: any) => e.code === 'ENOMEM' && /RLIMIT_MEMLOCK/.test(e.message));
  assert.equal(device.allocDma(4096).size, 4096, 'the device is still usable');
});

test('reset on a device VFIO cannot reset is ENOTSUP', async () => {
  await using device = await openDevice(edu0);
  if (device.backend.deviceInfo().canReset) {
    device.reset();
    assert.equal(new EduDriver(device).identify().id, 0x010000ed);
  } else {
    assert.throws(() => device.reset(), (e: any) => e.code === 'ENOTSUP' && /no reset/.test(e.message));
  }
});
