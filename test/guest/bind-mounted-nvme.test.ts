/**
 * Binding cannot take a disk from under a mounted filesystem: QEMU's nvme (serial userpci-b) on
 * the kernel's nvme driver, ext4 made and mounted on its namespace. `userpci bind`, its dry run
 * and `userpci nvme ... --bind` refuse it, naming the mount; unmounted, the dry run plans it.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { boundDriver } from '../../src/pci/bind';
import { requireGuest } from './guest-env';

const CLI = path.resolve(__dirname, '../../../bin/userpci.js');
const SYS = '/sys/bus/pci/devices';
const MNT = '/mnt/userpci-bind';
let dev: string;
let disk: string;

function userpci(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 120_000 });
}

before(() => {
  requireGuest();
  for (const addr of fs.readdirSync(SYS).sort()) {
    try {
      const ctrl = fs.readdirSync(path.join(SYS, addr, 'nvme'))[0]!;
      if (fs.readFileSync(path.join(SYS, addr, 'nvme', ctrl, 'serial'), 'utf8').trim() !== 'userpci-b') continue;
      dev = addr;
      disk = fs.readdirSync(path.join(SYS, addr, 'nvme', ctrl)).find((entry) => /^nvme\d+n1$/.test(entry))!;
    } catch {
      // not an nvme function on the kernel driver
    }
  }
  assert.ok(dev && disk, 'NVMe device with serial userpci-b and its namespace, on the kernel driver');
  execFileSync('mkfs.ext4', ['-q', '-F', `/dev/${disk}`]);
  fs.mkdirSync(MNT, { recursive: true });
  execFileSync('mount', ['-t', 'ext4', `/dev/${disk}`, MNT]);
});

after(() => {
  spawnSync('umount', [MNT]);
});

test('bind, bind --dry-run and nvme --bind refuse an NVMe controller whose namespace is mounted', () => {
  const expected = `${dev} is in use: ${disk} mounted on ${MNT}; unbinding nvme would take it from the host (--force / force: true binds anyway)`;
  for (const args of [['bind', dev], ['bind', dev, '--dry-run']]) {
    const r = userpci(...args);
    assert.equal(r.status, 1, `${args.join(' ')} refused`);
    assert.equal(r.stderr, `userpci bind: ${expected}\n`);
  }
  const viaNvme = userpci('nvme', 'identify', dev, '--bind');
  assert.equal(viaNvme.status, 1);
  assert.equal(viaNvme.stderr, `userpci nvme: ${expected}\n`);
  assert.equal(boundDriver(dev), 'nvme', 'still the kernel driver');
  assert.ok(fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${MNT} `), 'still mounted');

  execFileSync('umount', [MNT]);
  const plan = userpci('bind', dev, '--dry-run');
  assert.equal(plan.status, 0, plan.stderr);
  assert.match(plan.stdout, /would bind to vfio-pci \(IOMMU group \d+, now nvme\)/);
  assert.equal(boundDriver(dev), 'nvme');
});
