/**
 * ublk with a thread per queue (`userpci nvme ublk --threads`) on the 6.12 guest (2 CPUs): one
 * ublk queue per CPU, each served by a thread pinned to the CPUs the kernel maps to it, driving
 * an NVMe queue pair of its own. Data written from both CPUs at once reads back the same from
 * the other CPU (both queues served); a server killed at a random point (starting up, or under
 * writes) leaves a disk that fails I/O and the next start with the same id works; removing the
 * NVMe function ends the server and the removal completes. And UblkThreadServer with a device
 * of the caller's own built on each thread (a disk in shared memory).
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { bindToVfio, boundDriver, unbindFromVfio } from '../../src/pci/bind';
import { fillPattern } from '../../src/drivers/nvme/workload';
import { UblkThreadServer } from '../../src/exports/ublk/thread-server';
import { UblkServer } from '../../src/exports/ublk/server';
import { MemoryBlockDevice } from '../../src/exports/nbd/block-device';
import { requireGuest } from './guest-env';
import { nvmeBySerial } from './nvme-drives';
import { DISK, launchUblk, removeUnderServer, sh, startUblk, stopUblk, waitOutput, type UblkProcess } from './ublk-server-process';
import type { MemoryThreadData } from './ublk-thread-memory';

const MiB = 1 << 20;
let dev: string;

const launch = (extra: string[] = ['--threads']): UblkProcess => launchUblk([dev, '--id', '0', '--verbose', ...extra]);
const startServer = (extra: string[] = ['--threads']): Promise<UblkProcess> => startUblk([dev, '--id', '0', '--verbose', ...extra]);
const stopServer = stopUblk;

const digest = (b: Uint8Array) => crypto.createHash('sha256').update(b).digest('hex');

/** dd on one CPU (taskset), direct I/O; resolves with its exit status and stderr. */
function ddOn(cpu: number, args: string[]): Promise<{ status: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('taskset', ['-c', String(cpu), 'dd', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.once('exit', (status) => resolve({ status, stderr: err }));
  });
}

function readBack(cpu: number, offsetMiB: number, lengthMiB: number): Buffer {
  return execFileSync('taskset', ['-c', String(cpu), 'dd', `if=${DISK}`, 'bs=1M', `skip=${offsetMiB}`, `count=${lengthMiB}`, 'iflag=direct', 'status=none'], { maxBuffer: 64 * MiB, timeout: 120_000 });
}

before(() => {
  requireGuest();
  sh('modprobe', ['ublk_drv']);
  dev = nvmeBySerial().get('userpci-nbd')!;
  assert.ok(dev, 'NVMe device with serial userpci-nbd on the kernel nvme driver');
  bindToVfio(dev);
});

after(() => {
  if (dev && boundDriver(dev) === 'vfio-pci') unbindFromVfio(dev);
});

test('UblkThreadServer: each thread builds its own device (a disk in shared memory); writes from each CPU land in it, both threads serve and close; a device that fails to build fails the start and leaves no device', { timeout: 300_000 }, async () => {
  const module = path.resolve(__dirname, 'ublk-thread-memory.js');
  const disk = new SharedArrayBuffer(16 * MiB);
  const counters = new SharedArrayBuffer(4 * 2 * 2);
  const given = (extra: Partial<MemoryThreadData> = {}) => () => ({ data: { disk, counters, ...extra } satisfies MemoryThreadData });
  const server = await UblkThreadServer.start({ module, data: given() }, { depth: 8, maxIoBytes: 128 << 10, reclaim: false });
  try {
    assert.equal(server.queueCpus.length, 2, 'one queue per CPU');
    assert.deepEqual(server.queueCpus, [[0], [1]], 'each thread on the CPU blk-mq maps to its queue');
    const a = Buffer.from(fillPattern(new Uint8Array(4 * MiB), 31));
    const b = Buffer.from(fillPattern(new Uint8Array(4 * MiB), 32));
    fs.writeFileSync('/tmp/ublk-mem-a.bin', a);
    fs.writeFileSync('/tmp/ublk-mem-b.bin', b);
    const [wa, wb] = await Promise.all([
      ddOn(0, ['if=/tmp/ublk-mem-a.bin', `of=${server.diskPath}`, 'bs=4k', 'oflag=direct', 'conv=notrunc', 'status=none']),
      ddOn(1, ['if=/tmp/ublk-mem-b.bin', `of=${server.diskPath}`, 'bs=64k', `seek=${(8 * MiB) / (64 << 10)}`, 'oflag=direct', 'conv=notrunc', 'status=none']),
    ]);
    assert.equal(wa.status, 0, wa.stderr);
    assert.equal(wb.status, 0, wb.stderr);
    const mem = new Uint8Array(disk);
    assert.equal(digest(mem.subarray(0, 4 * MiB)), digest(a), 'CPU 0\'s writes are in the shared disk');
    assert.equal(digest(mem.subarray(8 * MiB, 12 * MiB)), digest(b), 'CPU 1\'s writes are in the shared disk');
  } finally {
    await server.close();
  }
  const c = new Int32Array(counters);
  assert.ok(c[0]! > 0 && c[2]! > 0, `both threads served requests: ${c[0]}/${c[2]}`);
  assert.deepEqual([c[1], c[3]], [1, 1], 'both devices closed on their threads');
  assert.ok(!fs.existsSync(`/dev/ublkc${server.id}`), 'device deleted');
  const before = fs.readdirSync('/dev').filter((n) => n.startsWith('ublkc')).sort();
  await assert.rejects(UblkThreadServer.start({ module, data: given({ failQueue: 1 }) }, { depth: 8, maxIoBytes: 128 << 10, reclaim: false }), /queue 1 thread: queue 1 refuses to start/);
  assert.deepEqual(fs.readdirSync('/dev').filter((n) => n.startsWith('ublkc')).sort(), before, 'a failed start leaves no device');
  await assert.rejects(UblkThreadServer.start({ module, data: given({ failBuffersQueue: 0 }) }, { depth: 8, maxIoBytes: 128 << 10, reclaim: false }), /queue 0 thread: queue 0 has no buffers/);
  assert.deepEqual(fs.readdirSync('/dev').filter((n) => n.startsWith('ublkc')).sort(), before, 'a start that failed once the device was added deleted it');
  // The same in the one-loop server: a queue that cannot get its buffers releases the descriptor
  // mapping it made (it holds /dev/ublkcN open, and DEL_DEV waits for that) rather than hang the start.
  class NoBuffers extends MemoryBlockDevice {
    allocIoBuffer(): Uint8Array {
      throw Object.assign(new Error('no buffers here'), { code: 'ENOMEM' });
    }
  }
  await assert.rejects(UblkServer.start(new NoBuffers(8 * MiB), { depth: 4, maxIoBytes: 64 << 10, reclaim: false }), /no buffers here/);
  assert.deepEqual(fs.readdirSync('/dev').filter((n) => n.startsWith('ublkc')).sort(), before, 'the one-loop server\'s failed start deleted its device');
});

test('ublk --threads: a queue per CPU, each thread on its queue\'s CPUs; writes from both CPUs at once read back from the other', { timeout: 300_000 }, async () => {
  assert.equal(spawnSync('nproc', [], { encoding: 'utf8' }).stdout.trim(), '2', 'this guest has 2 CPUs');
  const s = await startServer();
  assert.match(s.stdout(), /\(2 queue\(s\) of depth 64, requests up to \d+ bytes; a thread per queue on CPUs 0 \| 1\)/);
  assert.equal(fs.readdirSync('/sys/block/ublkb0/mq').length, 2, 'two blk-mq hardware queues');
  for (const q of [0, 1]) assert.equal(fs.readFileSync(`/sys/block/ublkb0/mq/${q}/cpu_list`, 'utf8').trim(), String(q), `hardware queue ${q} takes CPU ${q}'s requests`);
  const a = Buffer.from(fillPattern(new Uint8Array(16 * MiB), 21));
  const b = Buffer.from(fillPattern(new Uint8Array(16 * MiB), 22));
  fs.writeFileSync('/tmp/ublk-a.bin', a);
  fs.writeFileSync('/tmp/ublk-b.bin', b);
  // Both at once, each from its own CPU: 4 KiB and 64 KiB requests, into either half.
  const [wa, wb] = await Promise.all([
    ddOn(0, ['if=/tmp/ublk-a.bin', `of=${DISK}`, 'bs=4k', 'oflag=direct', 'conv=notrunc,fsync', 'status=none']),
    ddOn(1, ['if=/tmp/ublk-b.bin', `of=${DISK}`, 'bs=64k', `seek=${(32 * MiB) / (64 << 10)}`, 'oflag=direct', 'conv=notrunc,fsync', 'status=none']),
  ]);
  assert.equal(wa.status, 0, wa.stderr);
  assert.equal(wb.status, 0, wb.stderr);
  assert.equal(digest(readBack(1, 0, 16)), digest(a), 'CPU 0\'s writes read back on CPU 1');
  assert.equal(digest(readBack(0, 32, 16)), digest(b), 'CPU 1\'s writes read back on CPU 0');
  const out = await stopServer(s);
  const m = /deleted after (\d+) requests \((\d+) on the driver's callback path\).*per queue requests (\d+)\/(\d+)/.exec(out);
  assert.ok(m, out);
  assert.ok(Number(m[3]) > 0 && Number(m[4]) > 0, `both queues served requests: ${m[0]}`);
  assert.ok(Number(m[2]) > Number(m[1]) / 2, `most requests on the callback path: ${m[0]}`);
  assert.ok(!fs.existsSync(DISK) && !fs.existsSync('/dev/ublkc0'), 'disk and device deleted');
  // A server of the one-loop mode reads the same bytes.
  const plain = launch(['--queues', '1']);
  await waitOutput(plain, () => plain.stdout().includes('ublk: serving'), 'one-loop server start');
  assert.equal(digest(readBack(0, 0, 16)), digest(a));
  await stopServer(plain);
});

test('ublk --threads: killed at a random point (starting, or under writes from both CPUs): the disk fails I/O, the next start with the same id works', { timeout: 600_000 }, async () => {
  for (let round = 0; round < 4; round++) {
    const underLoad = round % 2 === 1;
    let s: UblkProcess;
    let writers: Promise<{ status: number | null; stderr: string }>[] = [];
    if (underLoad) {
      s = await startServer();
      writers = [0, 1].map((cpu) => ddOn(cpu, ['if=/dev/zero', `of=${DISK}`, 'bs=4k', `seek=${cpu * 4096}`, 'count=4096', 'oflag=direct', 'status=none']));
    } else {
      s = launch();
    }
    // Somewhere in start-up or in the writes: a random point, not a timing claim.
    await new Promise((r) => setTimeout(r, Math.floor(Math.random() * (underLoad ? 1500 : 3000))));
    s.child.kill('SIGKILL');
    await s.exited;
    for (const w of await Promise.all(writers)) assert.equal(typeof w.status, 'number', 'each writer ended (no hang)');
    if (fs.existsSync(DISK)) {
      const r = spawnSync('dd', [`if=${DISK}`, 'of=/dev/null', 'bs=4096', 'count=1', 'iflag=direct'], { encoding: 'utf8', timeout: 60_000 });
      assert.equal(r.error, undefined, 'dd finished (no hung task)');
      assert.notEqual(r.status, 0, `reading the orphaned disk fails: ${r.stderr}`);
    }
    const next = await startServer();
    assert.equal(readBack(round % 2, 0, 1).length, MiB, 'the new server reads');
    await stopServer(next);
    assert.ok(!fs.existsSync('/dev/ublkc0'), `round ${round}: device deleted`);
  }
});

test('ublk --threads: removing the NVMe function ends the server cleanly and the removal completes', { timeout: 240_000 }, async () => {
  await removeUnderServer(await startServer(), dev, 'the removal completed (no thread kept the BAR mapped)');
});
