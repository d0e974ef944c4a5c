/**
 * ublk with a thread per queue (`userpci nvme ublk --threads`) on the 6.12 guest (2 CPUs): one
 * ublk queue per CPU, each served by a thread pinned to the CPUs the kernel maps to it, driving
 * an NVMe queue pair of its own. Data written from both CPUs at once reads back the same from
 * the other CPU (both queues served); a server killed at a random point (starting up, or under
 * writes) leaves a disk that fails I/O and the next start with the same id works; a controller
 * reset (FLR, reinitialize) under I/O from both CPUs is ridden through: I/O after it works, data
 * written before and after reads back; removing the NVMe function ends the server and the
 * removal completes. And UblkThreadServer with a device of the caller's own built on each
 * thread (a disk in shared memory).
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
import { NvmeController } from '../../src/drivers/nvme/controller';
import { serveNamespaceOverUblkThreads } from '../../src/exports/ublk/nvme';
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
    child.once('close', (status) => resolve({ status, stderr: err })); // 'close', not 'exit': stderr read to its end
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

/** dd reading on one CPU into memory (async: the test process's event loop keeps serving the controller meanwhile). */
function readOn(cpu: number, offsetMiB: number, lengthMiB: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn('taskset', ['-c', String(cpu), 'dd', `if=${DISK}`, 'bs=1M', `skip=${offsetMiB}`, `count=${lengthMiB}`, 'iflag=direct', 'status=none'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.once('close', (status) => (status === 0 ? resolve(Buffer.concat(out)) : reject(new Error(`dd read on CPU ${cpu} exited ${status}: ${err}`))));
  });
}

test('ublk --threads rides through a controller reset (function-level reset, reinitialize) under I/O from both CPUs: I/O after it works, data written before and after reads back; and through recover()', { timeout: 600_000 }, async () => {
  const ctrl = await NvmeController.open(dev, { defaultQueue: false, queuePairs: 4 });
  let server: UblkThreadServer | undefined;
  try {
    const ns = await ctrl.namespace(1);
    server = await serveNamespaceOverUblkThreads(ctrl, ns, { id: 0, depth: 64 });
    assert.equal(server.diskPath, DISK);
    assert.equal(server.queueCpus.length, 2, 'a queue (and thread) per CPU');
    const pattern = (seed: number) => Buffer.from(fillPattern(new Uint8Array(4 * MiB), seed));
    const [a, b, c, d] = [51, 52, 53, 54].map(pattern) as [Buffer, Buffer, Buffer, Buffer];
    for (const [name, data] of [['a', a], ['b', b], ['c', c], ['d', d]] as const) fs.writeFileSync(`/tmp/ublk-reset-${name}.bin`, data);
    const writeOn = (cpu: number, name: string, atMiB: number, bs: string) =>
      ddOn(cpu, [`if=/tmp/ublk-reset-${name}.bin`, `of=${DISK}`, `bs=${bs}`, `seek=${(atMiB * MiB) / parseSize(bs)}`, 'oflag=direct', 'conv=notrunc,fsync', 'status=none']);
    // Before: A from CPU 0 (4 KiB requests), B from CPU 1 (64 KiB), at once.
    for (const w of await Promise.all([writeOn(0, 'a', 0, '4k'), writeOn(1, 'b', 8, '64k')])) assert.equal(w.status, 0, w.stderr);

    // I/O under way through the reset: CPU 0 writes a scratch area, CPU 1 reads A, each in a loop
    // of 1 MiB dd runs. Runs that overlap the reset may fail (the NVMe commands in flight fail
    // with EIO, as in the one-loop server); each loop, once the reset is over, goes on until a
    // run started after it succeeds (at most 3 tries).
    let resetDone = false;
    const loop = async (cpu: number, args: string[]) => {
      const runs: { status: number | null; stderr: string; afterReset: boolean }[] = [];
      let firstRun!: () => void;
      const started = new Promise<void>((r) => (firstRun = r));
      const done = (async () => {
        for (let after = 0; after < 3;) {
          const afterReset = resetDone;
          const r = await ddOn(cpu, args);
          runs.push({ ...r, afterReset });
          firstRun();
          if (afterReset && r.status === 0) break;
          if (afterReset) after++;
        }
      })();
      return { runs, started, done };
    };
    const writer = await loop(0, ['if=/tmp/ublk-reset-c.bin', `of=${DISK}`, 'bs=4k', 'count=256', `seek=${(24 * MiB) / 4096}`, 'oflag=direct', 'conv=notrunc', 'status=none']);
    const reader = await loop(1, [`if=${DISK}`, 'of=/dev/null', 'bs=4k', 'count=256', 'iflag=direct', 'status=none']);
    await Promise.all([writer.started, reader.started]);
    // The reset: a function-level reset through VFIO, then the controller brought back (recover).
    ctrl.device.reset();
    await ctrl.reinitialize();
    resetDone = true;
    assert.equal(ctrl.resets, 1);
    await Promise.all([writer.done, reader.done]);
    for (const [name, l] of [['writer (CPU 0)', writer], ['reader (CPU 1)', reader]] as const) {
      const last = l.runs.at(-1)!;
      assert.ok(last.afterReset && last.status === 0, `${name}: a run started after the reset succeeded: ${JSON.stringify(l.runs)}`);
      for (const r of l.runs) assert.ok(r.status === 0 || /Input\/output error/.test(r.stderr), `${name}: a run ended by success or EIO: ${JSON.stringify(r)}`);
    }
    assert.equal(server.isClosed, false, 'the server still serves');
    assert.equal(server.firstError, null, 'no queue thread reported an error');

    // After: C from CPU 1, D from CPU 0; then everything read back on the other CPU.
    for (const w of await Promise.all([writeOn(1, 'c', 32, '64k'), writeOn(0, 'd', 40, '4k')])) assert.equal(w.status, 0, w.stderr);
    assert.equal(digest(await readOn(1, 0, 4)), digest(a), 'A (written before the reset) reads back');
    assert.equal(digest(await readOn(0, 8, 4)), digest(b), 'B (written before the reset) reads back');
    assert.equal(digest(await readOn(0, 32, 4)), digest(c), 'C (written after the reset) reads back');
    assert.equal(digest(await readOn(1, 40, 4)), digest(d), 'D (written after the reset) reads back');
    assert.equal(digest(await readOn(0, 24, 1)), digest(c.subarray(0, MiB)), 'the writer\'s last run (after the reset) landed');
    // A reset of the controller alone (CC.EN, as after a fatal status or a timeout), the function untouched.
    await ctrl.recover('asked by the test');
    assert.equal(ctrl.resets, 2);
    assert.equal(digest(await readOn(1, 0, 4)), digest(a), 'A reads back after a second reset');
  } finally {
    await server?.close();
    await ctrl.close();
  }
  assert.ok(!fs.existsSync(DISK) && !fs.existsSync('/dev/ublkc0'), 'disk and device deleted');
  // The kernel's view after our server: a one-loop server reads the same bytes.
  const plain = await startServer(['--queues', '1']);
  assert.equal(digest(readBack(0, 40, 4)), digest(fillPattern(new Uint8Array(4 * MiB), 54)));
  await stopServer(plain);
});

function parseSize(bs: string): number {
  return Number.parseInt(bs, 10) * (bs.endsWith('k') ? 1024 : bs.endsWith('M') ? MiB : 1);
}

test('ublk --threads: removing the NVMe function ends the server cleanly and the removal completes', { timeout: 240_000 }, async () => {
  await removeUnderServer(await startServer(), dev, 'the removal completed (no thread kept the BAR mapped)');
});
