import { before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bindToVfio, unbindFromVfio, boundDriver } from '../../src/pci/bind';
import { requireGuest } from './guest-env';

const SYS = '/sys/bus/pci/devices';

/** NVMe functions by the serial QEMU was given (read while the kernel driver holds them). */
export function nvmeBySerial(): Map<string, string> {
  const out = new Map<string, string>();
  for (const addr of fs.readdirSync(SYS).sort()) {
    if (fs.readFileSync(path.join(SYS, addr, 'class'), 'utf8').trim() !== '0x010802') continue;
    let serial = '';
    try {
      const ctrl = fs.readdirSync(path.join(SYS, addr, 'nvme'))[0]!;
      serial = fs.readFileSync(path.join(SYS, addr, 'nvme', ctrl, 'serial'), 'utf8').trim();
    } catch {
      serial = `unbound-${addr}`;
    }
    out.set(serial, addr);
  }
  return out;
}

/**
 * For a test file: before its tests, the drives with serials userpci-a and userpci-b go to
 * vfio-pci (`startOnKernelDriver`: asserting drive A was on the kernel's nvme driver first);
 * after them, back to the kernel. The getters give their addresses once found.
 */
export function twoDrivesOnVfio(options: { startOnKernelDriver?: boolean } = {}): { a: () => string; b: () => string } {
  let devA = '';
  let devB = '';
  before(() => {
    requireGuest();
    const found = nvmeBySerial();
    devA = found.get('userpci-a') ?? '';
    devB = found.get('userpci-b') ?? '';
    assert.ok(devA && devB, `expected NVMe devices with serials userpci-a and userpci-b, found ${[...found.keys()].join(', ')}`);
    if (options.startOnKernelDriver) assert.equal(boundDriver(devA), 'nvme', 'the device starts on the kernel driver');
    bindToVfio(devA);
    bindToVfio(devB);
  });
  after(() => {
    for (const a of [devA, devB]) {
      if (a && boundDriver(a) === 'vfio-pci') unbindFromVfio(a);
    }
  });
  return { a: () => devA, b: () => devB };
}
