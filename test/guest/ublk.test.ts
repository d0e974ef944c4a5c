/**
 * ublk on the 6.12 guest: `userpci nvme ublk` serves QEMU's nvme (serial userpci-nbd) as the
 * kernel block device /dev/ublkb0, one ublk queue per NVMe queue pair. ext4 on it: mkfs, mount,
 * write, unmount, stop (SIGTERM: disk removed, device deleted), start again, check and compare.
 * A killed server leaves a disk the kernel fails (EIO, no hang), and the next start with the
 * same id works. Removing the NVMe function ends the server cleanly. Finally the kernel's own
 * nvme driver mounts the same filesystem.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { bindToVfio, boundDriver, unbindFromVfio } from '../../src/pci/bind';
import { fillPattern } from '../../src/drivers/nvme/workload';
import { UblkServer } from '../../src/exports/ublk/server';
import { MemoryBlockDevice } from '../../src/exports/nbd/block-device';
import { requireGuest } from './guest-env';
import { nvmeBySerial } from './nvme-drives';
import { DISK, removeUnderServer, sh, startUblk, stopUblk, type UblkProcess } from './ublk-server-process';

const SYS = '/sys/bus/pci/devices';
const MNT = '/mnt/userpci-ublk';
let dev: string;

function files(): Map<string, Buffer> {
  const m = new Map<string, Buffer>();
  m.set('hello.txt', Buffer.from('written through userpci, NVMe in user space, over ublk\n'));
  m.set('big.bin', Buffer.from(fillPattern(new Uint8Array(3 << 20), 11)));
  m.set('dir/a.bin', Buffer.from(fillPattern(new Uint8Array(100 * 1024 + 17), 12)));
  for (let i = 0; i < 20; i++) m.set(`many/f${i}`, Buffer.from(`file ${i} ${'y'.repeat(i * 100)}`));
  return m;
}

const digest = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');

const startServer = (extra: string[] = [], id = ['--id', '0']): Promise<UblkProcess> => startUblk([dev, ...id, '--queues', '2', '--verbose', ...extra]);
const stopServer = stopUblk;

function compareTree(root: string, expected: Map<string, Buffer>): void {
  for (const [name, data] of expected) assert.equal(digest(fs.readFileSync(path.join(root, name))), digest(data), `${name} survived`);
}

before(() => {
  requireGuest();
  sh('modprobe', ['ublk_drv']);
  assert.ok(fs.existsSync('/dev/ublk-control'), 'ublk_drv gives /dev/ublk-control');
  dev = nvmeBySerial().get('userpci-nbd')!;
  assert.ok(dev, 'NVMe device with serial userpci-nbd');
  bindToVfio(dev);
  fs.mkdirSync(MNT, { recursive: true });
});

after(() => {
  spawnSync('umount', [MNT], { stdio: 'ignore' });
  if (dev && boundDriver(dev) === 'vfio-pci') unbindFromVfio(dev);
});

const expected = files();

test('ublk: parameters from the namespace, two queues; mkfs.ext4, mount, write, unmount; SIGTERM deletes the device', { timeout: 300_000 }, async () => {
  const s = await startServer();
  assert.match(s.stdout(), /namespace 1 \(67108864 bytes, 512-byte blocks\) as \/dev\/ublkb0 \(2 queue\(s\) of depth 64/);
  const q = '/sys/block/ublkb0';
  assert.equal(fs.readFileSync(`${q}/size`, 'utf8').trim(), String(67108864 / 512));
  assert.equal(fs.readFileSync(`${q}/queue/logical_block_size`, 'utf8').trim(), '512');
  assert.equal(fs.readdirSync(`${q}/mq`).length, 2, 'one blk-mq hardware queue per NVMe queue pair');
  assert.ok(Number(fs.readFileSync(`${q}/queue/discard_max_bytes`, 'utf8')) > 0, 'discard offered (NVMe Dataset Management)');
  assert.ok(Number(fs.readFileSync(`${q}/queue/write_zeroes_max_bytes`, 'utf8')) > 0, 'write zeroes offered');
  assert.ok(Number(fs.readFileSync(`${q}/queue/max_hw_sectors_kb`, 'utf8')) >= 128);
  sh('mkfs.ext4', ['-q', '-F', DISK]);
  sh('mount', ['-t', 'ext4', DISK, MNT]);
  for (const [name, data] of expected) {
    fs.mkdirSync(path.dirname(path.join(MNT, name)), { recursive: true });
    fs.writeFileSync(path.join(MNT, name), data);
  }
  sh('sync', []);
  compareTree(MNT, expected);
  sh('umount', [MNT]);
  const out = await stopServer(s);
  const m = /ublk: SIGTERM: \/dev\/ublkb0 deleted after (\d+) requests \((\d+) on the driver's callback path\)/.exec(out);
  assert.ok(m, out);
  // mkfs and the file writes are plain reads and writes: they take the callback path.
  assert.ok(Number(m[2]) > Number(m[1]) / 2, `most requests on the callback path: ${m[0]}`);
  assert.ok(!fs.existsSync(DISK), 'disk gone');
  assert.ok(!fs.existsSync('/dev/ublkc0'), 'ublk device deleted');
});

test('ublk: a new server on the same disk; e2fsck clean, the files compare', { timeout: 300_000 }, async () => {
  const s = await startServer();
  sh('e2fsck', ['-fn', DISK]);
  sh('mount', ['-t', 'ext4', DISK, MNT]);
  compareTree(MNT, expected);
  const more = Buffer.from(fillPattern(new Uint8Array(1 << 20), 13));
  fs.writeFileSync(path.join(MNT, 'second.bin'), more);
  expected.set('second.bin', more);
  sh('umount', [MNT]);
  await stopServer(s);
});

test('ublk: a killed server leaves a disk that fails I/O (no hang); the next start with the same id works', { timeout: 300_000 }, async () => {
  const s = await startServer();
  s.child.kill('SIGKILL');
  await s.exited;
  const r = spawnSync('dd', [`if=${DISK}`, 'of=/dev/null', 'bs=4096', 'count=1', 'iflag=direct'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.error, undefined, 'dd finished (no hung task)');
  assert.notEqual(r.status, 0, `reading the orphaned disk fails: ${r.stderr}`);
  const again = await startServer();
  sh('e2fsck', ['-fn', DISK]);
  await stopServer(again);
  assert.ok(!fs.existsSync('/dev/ublkc0'));
});

test('ublk: the next start without --id deletes the device a killed server left, never a live server\'s', { timeout: 300_000 }, async () => {
  const killed = await startServer();
  const pid = killed.child.pid!;
  killed.child.kill('SIGKILL');
  await killed.exited;
  assert.ok(fs.existsSync('/dev/ublkc0'), 'the killed server left /dev/ublkc0');
  // A live UblkServer of another process (this one), on a small disk in memory.
  const mem = await UblkServer.start(new MemoryBlockDevice(8 << 20, 512), { depth: 4, maxIoBytes: 64 << 10, reclaim: false });
  try {
    assert.notEqual(mem.id, 0);
    const next = await startServer([], []);
    assert.match(next.stdout(), new RegExp(`ublk: deleted /dev/ublkb0, left by process ${pid} \\(no longer running\\)`));
    assert.doesNotMatch(next.stdout(), new RegExp(`deleted /dev/ublkb${mem.id},`));
    assert.match(next.stdout(), /as \/dev\/ublkb0 /, 'the freed id is the one the driver picks');
    assert.ok(fs.existsSync(`/dev/ublkc${mem.id}`), 'the live server\'s device is still there');
    await stopServer(next);
  } finally {
    await mem.close();
  }
  assert.ok(!fs.existsSync(`/dev/ublkc${mem.id}`));
});

test('ublk: removing the NVMe function ends the server cleanly and deletes the disk', { timeout: 240_000 }, async () => {
  await removeUnderServer(await startServer(), dev);
});

test('the kernel nvme driver mounts the filesystem ublk served', { timeout: 120_000 }, () => {
  if (boundDriver(dev) === 'vfio-pci') unbindFromVfio(dev);
  if (boundDriver(dev) !== 'nvme') fs.writeFileSync('/sys/bus/pci/drivers_probe', dev);
  let block: string | undefined;
  for (let i = 0; i < 400 && !block; i++) {
    const ctrl = fs.readdirSync(path.join(SYS, dev, 'nvme'))[0];
    block = ctrl ? fs.readdirSync(path.join(SYS, dev, 'nvme', ctrl)).find((n) => /^nvme\d+n1$/.test(n)) : undefined;
    if (!block) spawnSync('sleep', ['0.05']);
  }
  assert.ok(block, 'the kernel driver brought up the namespace');
  sh('mount', ['-t', 'ext4', '-o', 'ro', `/dev/${block}`, MNT]);
  compareTree(MNT, expected);
  sh('umount', [MNT]);
});
