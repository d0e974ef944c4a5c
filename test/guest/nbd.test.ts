/**
 * The user-level block device: `userpci nvme export` serves QEMU's nvme (serial userpci-nbd)
 * over NBD on a UNIX socket, the guest kernel's nbd driver attaches it through nbd-client as
 * /dev/nbd0, and ext4 lives on it: mkfs, mount, write files, unmount, stop the export (the
 * controller shuts down), start it again, mount, compare. Finally the device goes back to the
 * kernel's own nvme driver, which mounts the same filesystem: our driver wrote real ext4.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { bindToVfio, boundDriver, unbindFromVfio } from '../../src/pci/bind';
import { fillPattern } from '../../src/drivers/nvme/workload';
import { requireGuest } from './guest-env';

const CLI = path.resolve(__dirname, '../../src/cli/commands/nvme.js');
const SYS = '/sys/bus/pci/devices';
const SOCKET = '/tmp/userpci-nbd.sock';
const MNT = '/mnt/userpci-nbd';
const NBD = '/dev/nbd0';
let dev: string;

interface Export {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
}

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
}

async function startExport(): Promise<Export> {
  const child = spawn(process.execPath, [CLI, 'export', dev, '--socket', SOCKET, '--name', 'disk', '--verbose'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const deadline = Date.now() + 60_000;
  while (!out.includes('nbd: serving')) {
    if (child.exitCode !== null) throw new Error(`export exited ${child.exitCode}: ${err}`);
    if (Date.now() > deadline) throw new Error(`export did not start: ${out} ${err}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return { child, stdout: () => out, stderr: () => err };
}

async function stopExport(e: Export): Promise<string> {
  e.child.kill('SIGTERM');
  const code = await new Promise<number | null>((r) => (e.child.exitCode !== null ? r(e.child.exitCode) : e.child.once('exit', (c) => r(c))));
  assert.equal(code, 0, `export exit status; stderr: ${e.stderr()}`);
  return e.stdout();
}

async function attach(): Promise<void> {
  sh('nbd-client', ['-N', 'disk', '-u', SOCKET, NBD]);
  // The kernel reads the size asynchronously after the connect.
  for (let i = 0; i < 200; i++) {
    if (Number(fs.readFileSync('/sys/block/nbd0/size', 'utf8')) > 0) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error('/dev/nbd0 did not come up');
}

function detach(): void {
  sh('nbd-client', ['-d', NBD]);
}

/** Files to put on the filesystem: name -> bytes. */
function files(): Map<string, Buffer> {
  const m = new Map<string, Buffer>();
  m.set('hello.txt', Buffer.from('written through userpci, NVMe in user space, over NBD\n'));
  m.set('big.bin', Buffer.from(fillPattern(new Uint8Array(3 << 20), 1)));
  m.set('dir/a.bin', Buffer.from(fillPattern(new Uint8Array(100 * 1024 + 17), 2)));
  m.set('dir/sub/b.bin', Buffer.from(fillPattern(new Uint8Array(4096), 3)));
  for (let i = 0; i < 20; i++) m.set(`many/f${i}`, Buffer.from(`file ${i} ${'x'.repeat(i * 100)}`));
  return m;
}

function digest(b: Buffer): string {
  return crypto.createHash('sha256').update(b).digest('hex');
}

function compareTree(root: string, expected: Map<string, Buffer>): void {
  for (const [name, data] of expected) {
    const got = fs.readFileSync(path.join(root, name));
    assert.equal(digest(got), digest(data), `${name} survived`);
  }
}

before(() => {
  requireGuest();
  for (const addr of fs.readdirSync(SYS).sort()) {
    try {
      const ctrl = fs.readdirSync(path.join(SYS, addr, 'nvme'))[0]!;
      if (fs.readFileSync(path.join(SYS, addr, 'nvme', ctrl, 'serial'), 'utf8').trim() === 'userpci-nbd') dev = addr;
    } catch {
      // not an nvme function on the kernel driver
    }
  }
  assert.ok(dev, 'NVMe device with serial userpci-nbd');
  bindToVfio(dev);
  fs.mkdirSync(MNT, { recursive: true });
});

after(() => {
  try {
    execFileSync('umount', [MNT], { stdio: 'ignore' });
  } catch {
    // not mounted
  }
  try {
    execFileSync('nbd-client', ['-d', NBD], { stdio: 'ignore' });
  } catch {
    // not attached
  }
  if (dev && boundDriver(dev) === 'vfio-pci') unbindFromVfio(dev);
});

test('NBD export: mkfs.ext4, mount, write files, unmount; restart the export, mount, compare; the kernel nvme driver mounts it too', async () => {
  const expected = files();
  // 1. Export, attach, make a filesystem (mkfs discards first: NBD trim -> NVMe Dataset Management).
  let e = await startExport();
  assert.match(e.stdout(), /serving .* namespace 1 \(67108864 bytes, 512-byte blocks\) as "disk"/);
  await attach();
  sh('mkfs.ext4', ['-q', '-F', NBD]);
  sh('mount', ['-t', 'ext4', NBD, MNT]);
  for (const [name, data] of expected) {
    fs.mkdirSync(path.dirname(path.join(MNT, name)), { recursive: true });
    fs.writeFileSync(path.join(MNT, name), data);
  }
  compareTree(MNT, expected);
  sh('umount', [MNT]);
  detach();
  const stopped = await stopExport(e);
  assert.match(stopped, /nbd: stopped \(.*WRITE \d+/);
  assert.match(stopped, /TRIM \d+/, 'mkfs discarded through NBD trim');
  assert.match(stopped, /FLUSH \d+/);

  // 2. A new export process: a fresh controller bring-up on the same disk.
  e = await startExport();
  await attach();
  sh('e2fsck', ['-fn', NBD]); // clean, read-only check
  sh('mount', ['-t', 'ext4', NBD, MNT]);
  compareTree(MNT, expected);
  const more = Buffer.from(fillPattern(new Uint8Array(1 << 20), 9));
  fs.writeFileSync(path.join(MNT, 'second-session.bin'), more);
  expected.set('second-session.bin', more);
  sh('umount', [MNT]);
  detach();
  await stopExport(e);

  // 3. The kernel's own nvme driver reads the filesystem our driver wrote.
  unbindFromVfio(dev);
  assert.equal(boundDriver(dev), 'nvme');
  let disk = '';
  for (let i = 0; i < 200 && !disk; i++) {
    const c = fs.existsSync(path.join(SYS, dev, 'nvme')) ? fs.readdirSync(path.join(SYS, dev, 'nvme'))[0] : undefined;
    if (c && fs.existsSync(`/dev/${c}n1`)) disk = `/dev/${c}n1`;
    else await new Promise((r) => setTimeout(r, 25));
  }
  assert.ok(disk, 'the kernel driver attached the namespace');
  sh('mount', ['-t', 'ext4', '-o', 'ro', disk, MNT]);
  try {
    compareTree(MNT, expected);
  } finally {
    sh('umount', [MNT]);
  }
});
