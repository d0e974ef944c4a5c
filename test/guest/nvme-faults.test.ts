/**
 * Faults on QEMU's nvme (serial userpci-fault: a sparse 4 TiB namespace) with the guest kernel's
 * vfio-pci, its nbd driver and e2fsprogs, each round at a random point:
 *   1. sysfs remove during a QD32 load through the driver (promise and callback APIs, polled
 *      and MSI-X queues): every I/O settles, failures are ENODEV, later I/O is ENODEV, close()
 *      completes, the process goes on; then a PCI rescan brings the device back for the next round;
 *   2. sysfs remove while the kernel makes a filesystem on, or copies onto, the NBD export:
 *      the kernel's writer ends with an error instead of hanging, the export answers with
 *      ESHUTDOWN and hangs up (the CLI's export exits 3 with a clear message);
 *   3. kill -9 of the export during fsync'ed writes, the recipe of the README: the writer ends
 *      with EIO (nbd-client -t), detach, restart the export, reattach, e2fsck, and every file
 *      whose fsync returned is intact.
 * Plus `userpci nvme verify` without --span on the 4 TiB namespace.
 * The remove is written by a shell: the kernel holds the writer until the device is released,
 * which this process does when VFIO asks, so it must not block here.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import { bindToVfio, boundDriver, unbindFromVfio } from '../../src/pci/bind';
import { NvmeController } from '../../src/drivers/nvme/controller';
import { NvmeBlockDevice } from '../../src/exports/nbd/nvme-device';
import { NbdServer } from '../../src/exports/nbd/server';
import { prng } from '../../src/drivers/nvme/workload';
import { QueueLoad, within, type LoadApi } from '../support/nvme-load';
import { requireGuest } from './guest-env';

const CLI = path.resolve(__dirname, '../../src/cli/commands/nvme.js');
const SYS = '/sys/bus/pci/devices';
const NBD = '/dev/nbd1';
const MNT = '/mnt/userpci-faults';
const GUARD = 120_000;
let dev = '';

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
}

/** Run a command without blocking the event loop (this process may be serving its I/O). */
function run(cmd: string, args: string[]): { child: ChildProcess; done: Promise<Run> } {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const done = new Promise<Run>((resolve) => child.once('close', (code, signal) => resolve({ code, signal, out })));
  return { child, done };
}

async function sh(script: string): Promise<Run> {
  return within(run('sh', ['-c', script]).done, GUARD, `sh -c ${script}`);
}

async function ok(script: string): Promise<string> {
  const r = await sh(script);
  assert.equal(r.code, 0, `${script}: ${r.out}`);
  return r.out;
}

function serialOf(addr: string): string {
  try {
    const ctrl = fs.readdirSync(path.join(SYS, addr, 'nvme'))[0]!;
    return fs.readFileSync(path.join(SYS, addr, 'nvme', ctrl, 'serial'), 'utf8').trim();
  } catch {
    return '';
  }
}

/** Ask the kernel to remove the device (from a shell: it returns once we released it). */
function removeDevice(): Promise<Run> {
  return run('sh', ['-c', `echo 1 > ${SYS}/${dev}/remove`]).done;
}

/** Bring the removed device back (PCI rescan; the kernel's nvme driver takes it) and give it to vfio-pci. */
async function rescanAndBind(): Promise<void> {
  await ok('echo 1 > /sys/bus/pci/rescan');
  await within((async () => {
    while (!fs.existsSync(path.join(SYS, dev))) await new Promise((r) => setTimeout(r, 50));
  })(), GUARD, 'the device is back after the rescan');
  bindToVfio(dev);
  assert.equal(boundDriver(dev), 'vfio-pci');
}

/**
 * Open the controller of a device just brought back by a rescan. Once (a busy host, after a
 * round with the NBD export) VFIO refused the first open with ENODEV though the device was bound
 * to vfio-pci; a few later tries are allowed and reported, any other error fails at once.
 */
async function openAfterRescan(options: Parameters<typeof NvmeController.open>[1]): Promise<NvmeController> {
  for (let attempt = 1; ; attempt++) {
    try {
      const ctrl = await NvmeController.open(dev, options);
      if (attempt > 1) console.log(`# open after the rescan took ${attempt} attempts (ENODEV before)`);
      return ctrl;
    } catch (err) {
      if ((err as { code?: string }).code !== 'ENODEV' || attempt === 20) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

/** Record a round and print it at once (a later failure must not hide what earlier rounds showed). */
function note(rounds: string[], line: string): void {
  rounds.push(line);
  console.log(`# ${line}`);
}

/** A test that failed half-way may have left the device removed: bring it back first. */
async function ensureDevice(): Promise<void> {
  if (!fs.existsSync(path.join(SYS, dev))) await rescanAndBind();
  else if (boundDriver(dev) !== 'vfio-pci') bindToVfio(dev);
}

async function waitTurns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
}

before(() => {
  requireGuest();
  for (const addr of fs.readdirSync(SYS).sort()) if (serialOf(addr) === 'userpci-fault') dev = addr;
  assert.ok(dev, 'NVMe device with serial userpci-fault, on the kernel driver');
  bindToVfio(dev);
  fs.mkdirSync(MNT, { recursive: true });
});

after(async () => {
  await sh(`umount ${MNT} 2>/dev/null; nbd-client -d ${NBD} >/dev/null 2>&1; true`);
  if (dev && fs.existsSync(path.join(SYS, dev)) && boundDriver(dev) === 'vfio-pci') unbindFromVfio(dev);
});

test('sysfs remove at a random point of a QD32 load (promise/callback, polled/MSI-X; 8 rounds): every I/O settles, failures ENODEV, later I/O ENODEV, close() completes; rescan for the next round', { timeout: 20 * 60_000 }, async () => {
  await ensureDevice();
  const combos: [LoadApi, boolean][] = [['promise', false], ['callback', false], ['promise', true], ['callback', true]];
  const rounds: string[] = [];
  for (let round = 0; round < 8; round++) {
    const [api, interrupts] = combos[round % 4]!;
    const rnd = prng(0x9e57 + round * 31);
    const ctrl = await openAfterRescan({ defaultQueue: false, queuePairs: 2 });
    const ns = await ctrl.namespace(1);
    const queue = await ctrl.createQueuePair({ depth: 32, interrupts });
    const buffer = ctrl.allocBuffer(32 * 4096);
    const load = new QueueLoad(ns, queue, api, 32, buffer, round);
    load.start();
    const after = Math.floor(rnd() * 400);
    while (load.completed < after && load.outcome.pending > 0) await waitTurns(1);
    await waitTurns(Math.floor(rnd() * 8));
    const completedBefore = load.completed;
    const removal = removeDevice();
    const failure = await within(load.failed, GUARD, 'the first failure after remove');
    const outcome = await within(load.stop(), GUARD, 'every I/O settled');
    const later = await ns.read(0, new Uint8Array(4096), queue).then(() => 'ok', (e: { code?: string }) => e.code);
    const laterCb = await new Promise<string>((resolve) => ns.submit(false, 0, 0, 4096, queue, (e) => resolve(e ? String((e as { code?: string }).code) : 'ok')));
    await within(ctrl.close(), GUARD, 'close()');
    const removed = await within(removal, GUARD, 'the remove write returns');
    assert.equal(removed.code, 0, removed.out);
    assert.equal((failure as { code?: string }).code, 'ENODEV', failure.stack);
    assert.deepEqual(outcome.untyped, [], 'no TypeError, no untyped error');
    assert.equal(outcome.pending, 0);
    for (const key of Object.keys(outcome.errors)) assert.match(key, /:ENODEV$/, JSON.stringify(outcome.errors));
    assert.equal(later, 'ENODEV');
    assert.equal(laterCb, 'ENODEV');
    assert.equal(fs.existsSync(path.join(SYS, dev)), false, 'the kernel removed the function');
    note(rounds, `round ${round} ${api}/${interrupts ? 'msix' : 'poll'}: removed after ${completedBefore} completions; ${outcome.ok} ok, ${JSON.stringify(outcome.errors)}; later I/O ${later}/${laterCb}`);
    await rescanAndBind();
  }
  console.log(`# ${rounds.length} rounds`);
});

test('sysfs remove while the kernel makes a filesystem on, or copies onto, the NBD export (4 rounds, the first through the CLI export): the writer fails instead of hanging, requests get ESHUTDOWN, the export hangs up', { timeout: 20 * 60_000 }, async () => {
  await ensureDevice();
  const rounds: string[] = [];
  const src = '/tmp/userpci-faults-src.bin';
  fs.writeFileSync(src, crypto.randomBytes(8 << 20));
  for (let round = 0; round < 4; round++) {
    const rnd = prng(0x4bd + round * 13);
    const copy = round % 2 === 1;
    const sock = `/tmp/userpci-faults-${round}.sock`;
    let served: () => number;
    let finished: Promise<string>;
    let ctrl: NvmeController | undefined;
    let server: NbdServer | undefined;
    let cli: ReturnType<typeof run> | undefined;
    if (round === 0) {
      cli = run(process.execPath, [CLI, 'export', dev, '--socket', sock, '--name', 'disk']);
      await within((async () => {
        while (!fs.existsSync(sock)) await new Promise((r) => setTimeout(r, 50));
      })(), GUARD, 'the CLI export listens');
      served = () => 0;
      finished = cli.done.then((r) => `CLI export exit ${r.code}: ${r.out.trim().split('\n').slice(-4).join(' | ')}`);
    } else {
      ctrl = await openAfterRescan({ defaultQueue: { depth: 32 } });
      const ns = await ctrl.namespace(1);
      server = new NbdServer([{ name: 'disk', device: new NvmeBlockDevice(ns) }]);
      await server.listen({ path: sock });
      const srv = server;
      served = () => Object.values(srv.counts).reduce((a, b) => a + b, 0);
      finished = new Promise<string>((r) => srv.once('device-lost', (_n: string, e: Error) => r(`device-lost: ${e.message}`)));
    }
    await ok(`nbd-client -N disk -u ${sock} -t 10 ${NBD}`);
    await within((async () => {
      while (Number(fs.readFileSync(`/sys/block/${path.basename(NBD)}/size`, 'utf8')) === 0) await new Promise((r) => setTimeout(r, 25));
    })(), GUARD, 'the nbd device has a size');
    if (copy) {
      await ok(`mkfs.ext4 -q -F ${NBD} 64M && mount -t ext4 ${NBD} ${MNT}`);
    }
    const start = served();
    const writer = copy
      ? run('dd', [`if=${src}`, `of=${MNT}/copy.bin`, 'bs=64k', 'conv=fsync'])
      : run('mkfs.ext4', ['-q', '-F', NBD, '64M']);
    // A random point: after some requests (the in-process export counts them) or a few turns.
    const point = 5 + Math.floor(rnd() * 60);
    if (round > 0) while (served() - start < point && writer.child.exitCode === null) await new Promise((r) => setTimeout(r, 5));
    else await new Promise((r) => setTimeout(r, 200 + Math.floor(rnd() * 800)));
    const writerDoneEarly = writer.child.exitCode !== null;
    const removal = removeDevice();
    const w = await within(writer.done, GUARD, 'the writer ends');
    const how = await within(finished, GUARD, 'the export reports the loss');
    const removed = await within(removal, GUARD, 'the remove write returns');
    assert.equal(removed.code, 0, removed.out);
    if (ctrl) await within(ctrl.close(), GUARD, 'close()');
    if (server) {
      assert.ok(server.shutdownReplies + server.lostConnections > 0 || writerDoneEarly, 'the export answered ESHUTDOWN or hung up');
      await within(server.close(), GUARD, 'server.close()');
    }
    if (cli) {
      const r = await cli.done;
      assert.equal(r.code, 3, r.out);
      assert.match(r.out, /is gone|was removed/);
      assert.match(r.out, /answered \d+ request\(s\) with ESHUTDOWN and disconnected \d+ client\(s\); exiting/);
      assert.doesNotMatch(r.out, /TypeError|Unhandled|unhandled/);
    }
    if (!writerDoneEarly) assert.notEqual(w.code, 0, `the ${copy ? 'copy' : 'mkfs'} failed: ${w.out}`);
    await sh(`umount -l ${MNT} 2>/dev/null; nbd-client -d ${NBD} >/dev/null 2>&1; true`);
    note(rounds, `round ${round} ${copy ? 'copy' : 'mkfs'}${cli ? ' (CLI export)' : ''}: writer exit ${w.code}${writerDoneEarly ? ' (finished before the remove)' : ''}; ${how.slice(0, 160)}` +
      (server ? `; ${server.shutdownReplies} ESHUTDOWN replies, ${server.lostConnections} hang-up(s)` : ''));
    await rescanAndBind();
  }
  console.log(`# ${rounds.length} rounds`);
});

test('kill -9 of the export during fsync\'ed writes (3 rounds): the writer gets EIO (nbd-client -t), detach, restart the export, reattach, e2fsck, every acknowledged file intact', { timeout: 20 * 60_000 }, async () => {
  await ensureDevice();
  const sock = '/tmp/userpci-faults-kill.sock';
  const startExport = async () => {
    const e = run(process.execPath, [CLI, 'export', dev, '--socket', sock, '--name', 'disk']);
    await within((async () => {
      let out = '';
      e.child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      while (!out.includes('nbd: serving')) {
        if (e.child.exitCode !== null) throw new Error(`export exited ${e.child.exitCode}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    })(), GUARD, 'the export starts');
    return e;
  };
  const attach = async () => {
    await ok(`nbd-client -N disk -u ${sock} -t 5 ${NBD}`);
    await within((async () => {
      while (Number(fs.readFileSync(`/sys/block/${path.basename(NBD)}/size`, 'utf8')) === 0) await new Promise((r) => setTimeout(r, 25));
    })(), GUARD, 'the nbd device has a size');
  };
  // Deterministic sources in tmpfs; acknowledged = the shell printed "ok N" after dd's fsync.
  fs.mkdirSync('/tmp/faults-src', { recursive: true });
  for (let i = 0; i < 60; i++) fs.writeFileSync(`/tmp/faults-src/${i}`, crypto.createHash('sha512').update(`f${i}`).digest().toString('hex').repeat(300 + i * 7));
  let e = await startExport();
  await attach();
  await ok(`mkfs.ext4 -q -F ${NBD} 64M`);
  const acked = new Map<string, string>();
  const rounds: string[] = [];
  for (let round = 0; round < 3; round++) {
    const rnd = prng(0x91 + round);
    await ok(`mount -t ext4 ${NBD} ${MNT}`);
    const writer = run('sh', ['-c', `for i in $(seq 0 59); do dd if=/tmp/faults-src/$i of=${MNT}/r${round}-$i bs=4k conv=fsync 2>/dev/null || exit 1; echo ok $i; done`]);
    let out = '';
    writer.child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const killAfter = 1 + Math.floor(rnd() * 12);
    await within((async () => {
      while ((out.match(/ok \d+/g) ?? []).length < killAfter && writer.child.exitCode === null) await new Promise((r) => setTimeout(r, 10));
    })(), GUARD, `${killAfter} files acknowledged`);
    e.child.kill('SIGKILL');
    const w = await within(writer.done, GUARD, 'the writer ends after the export died');
    const okFiles = [...w.out.matchAll(/ok (\d+)/g)].map((m) => Number(m[1]));
    for (const i of okFiles) acked.set(`r${round}-${i}`, `/tmp/faults-src/${i}`);
    const writerFailed = w.code !== 0;
    // The recipe: unmount what is left, detach, restart the export, reattach, check, mount.
    await sh(`umount -l ${MNT} 2>/dev/null; true`);
    await ok(`nbd-client -d ${NBD}`);
    e = await startExport();
    await attach();
    const fsck = await sh(`e2fsck -fy ${NBD}`);
    assert.ok(fsck.code === 0 || fsck.code === 1, `e2fsck -fy: exit ${fsck.code}: ${fsck.out}`);
    const clean = await sh(`e2fsck -fn ${NBD}`);
    assert.equal(clean.code, 0, `clean after repair: ${clean.out}`);
    await ok(`mount -t ext4 ${NBD} ${MNT}`);
    for (const [name, source] of acked) {
      assert.ok(fs.readFileSync(path.join(MNT, name)).equals(fs.readFileSync(source)), `${name}: acknowledged before a kill -9, intact`);
    }
    await ok(`umount ${MNT}`);
    note(rounds, `round ${round}: killed after ${okFiles.length} acknowledged file(s) (asked ${killAfter}); writer exit ${w.code}${writerFailed ? ' (failed, not hung)' : ''}; e2fsck -fy exit ${fsck.code}; ${acked.size} acknowledged files intact so far`);
    assert.ok(writerFailed || okFiles.length === 60, 'the writer failed with the export dead, or had finished');
  }
  await ok(`nbd-client -d ${NBD}`);
  e.child.kill('SIGTERM');
  const last = await within(e.done, GUARD, 'the export stops');
  assert.equal(last.code, 0, last.out);
  console.log(`# ${rounds.length} rounds`);
});

test('nvme verify without --span on a 4 TiB namespace: the footprint first, then every written range read back equal', { timeout: 10 * 60_000 }, async () => {
  await ensureDevice();
  const r = await within(run(process.execPath, [CLI, 'verify', dev, '--seed', '5', '--writes', '24', '--max-bytes', '1M']).done, GUARD * 3, 'verify');
  assert.equal(r.code, 0, r.out);
  const m = /verify: 24 writes, (\d+) bytes, over (\d+) bytes of namespace 1 between LBA (\d+) and (\d+)/.exec(r.out);
  assert.ok(m, r.out);
  assert.ok(Number(m[4]) - Number(m[3]) > 2 ** 30, `the writes spread over the 4 TiB namespace (more than 512 GiB apart): ${m[0]}`);
  assert.match(r.out, /all equal/);
  console.log(`# ${r.out.trim().split('\n').join('\n# ')}`);
});
