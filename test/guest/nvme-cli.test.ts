/**
 * `userpci nvme identify|write|read|verify` on QEMU's nvme (serial userpci-a, 512-byte blocks),
 * run as a separate process the way a user would. It starts on the kernel's nvme driver: the
 * first command refuses it, --bind takes it.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { boundDriver, unbindFromVfio } from '../../src/pci/bind';
import { requireGuest } from './guest-env';

const CLI = path.resolve(__dirname, '../../src/cli/commands/nvme.js');
const SYS = '/sys/bus/pci/devices';
let dev: string;

function userpci(...args: string[]): { code: number; stdout: Buffer; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { timeout: 120_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr.toString() };
}

before(() => {
  requireGuest();
  for (const addr of fs.readdirSync(SYS).sort()) {
    try {
      const ctrl = fs.readdirSync(path.join(SYS, addr, 'nvme'))[0]!;
      if (fs.readFileSync(path.join(SYS, addr, 'nvme', ctrl, 'serial'), 'utf8').trim() === 'userpci-a') dev = addr;
    } catch {
      // not an nvme function on the kernel driver
    }
  }
  assert.ok(dev, 'NVMe device with serial userpci-a, on the kernel driver');
});

after(() => {
  if (dev && boundDriver(dev) === 'vfio-pci') unbindFromVfio(dev);
});

test('nvme identify: refuses a device on the kernel driver, --bind takes it; text and JSON', () => {
  const refused = userpci('identify', dev);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /bound to nvme, not vfio-pci: run `userpci bind/);
  const r = userpci('identify', dev, '--bind');
  assert.equal(r.code, 0, r.stderr);
  const text = r.stdout.toString();
  assert.match(text, /QEMU NVMe Ctrl/);
  assert.match(text, /serial userpci-a/);
  assert.match(text, /max transfer 512KB \(MDTS 7\)/);
  assert.match(text, /nsid 1: 131072 blocks of 512 bytes \(64MB\); LBA formats \*512 512\+8/);
  const j = JSON.parse(userpci('identify', dev, '--json').stdout.toString());
  assert.equal(j.controller.serial, 'userpci-a');
  assert.equal(j.namespaces[0].blockSize, 512);
});

test('nvme write then read: a byte pattern and a file, hex dump and raw', () => {
  const w = userpci('write', dev, '--lba', '100', '--byte', '0xab', '--blocks', '8');
  assert.equal(w.code, 0, w.stderr);
  assert.match(w.stdout.toString(), /wrote 4096 bytes \(8 blocks\) at LBA 100/);
  const raw = userpci('read', dev, '--lba', '100', '--length', '4K', '--raw');
  assert.equal(raw.code, 0, raw.stderr);
  assert.ok(raw.stdout.equals(Buffer.alloc(4096, 0xab)));
  const dump = userpci('read', dev, '--lba', '100', '--blocks', '1').stdout.toString();
  assert.equal(dump, '0000c800  ab ab ab ab ab ab ab ab  ab ab ab ab ab ab ab ab  |................|\n*\n0000c9f0  ab ab ab ab ab ab ab ab  ab ab ab ab ab ab ab ab  |................|\n0000ca00\n');
  const file = '/tmp/nvme-cli-data';
  fs.writeFileSync(file, 'hello from userpci\n');
  assert.equal(userpci('write', dev, '--lba', '7', '--file', file).code, 2, 'not a multiple of the block size');
  const padded = userpci('write', dev, '--lba', '7', '--file', file, '--pad');
  assert.equal(padded.code, 0, padded.stderr);
  const out = '/tmp/nvme-cli-out';
  assert.equal(userpci('read', dev, '--lba', '7', '--blocks', '1', '--out', out).code, 0);
  const back = fs.readFileSync(out);
  assert.equal(back.subarray(0, 19).toString(), 'hello from userpci\n');
  assert.ok(back.subarray(19).every((b) => b === 0));
  const beyond = userpci('read', dev, '--lba', '131072', '--blocks', '1');
  assert.equal(beyond.code, 1);
  assert.match(beyond.stderr, /beyond the end of the namespace/);
  assert.equal(userpci('read', dev, '--lba', '0', '--length', '100').code, 2);
});

test('nvme verify: random writes read back equal, reported as JSON', () => {
  const r = userpci('verify', dev, '--seed', '7', '--writes', '24', '--max-bytes', '1M', '--span', '32M', '--json');
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout.toString());
  assert.equal(j.writes, 24);
  assert.deepEqual(j.mismatches, []);
  assert.ok(j.bytesVerified > 0);
});
