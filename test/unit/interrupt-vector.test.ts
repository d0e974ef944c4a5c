/**
 * InterruptVector on a plain eventfd, signalled the way the kernel signals it (an 8-byte write):
 * the delivery semantics without a device. The guest suites prove it against vfio-pci.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as os from 'node:os';
import * as path from 'node:path';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { native, constants } from '../../src/native/index';
import { runNodeUnprivileged, runningAsRoot, stagedPath } from '../support/unprivileged';
import { InterruptVector } from '../../src/irq/interrupt-vector';

const tick = () => new Promise((r) => setTimeout(r, 10));

test('interrupts with nobody listening are counted and taken by the next wait', async () => {
  const v = new InterruptVector('msi', 0);
  native.eventfdWrite(v.fd, 1);
  await tick();
  native.eventfdWrite(v.fd, 1);
  await tick();
  assert.equal(v.pending, 2);
  assert.equal(await v.wait(), 2);
  assert.equal(v.pending, 0);
  assert.equal(v.total, 2);
  v.close();
});

test('wait resolves on the next interrupt, times out, aborts, and rejects on close', async () => {
  const v = new InterruptVector('msi', 3);
  const w = v.wait();
  setTimeout(() => native.eventfdWrite(v.fd, 1), 5);
  assert.equal(await w, 1);
  await assert.rejects(v.wait({ timeoutMs: 20 }), (e: any) => e.code === 'ETIMEDOUT' && /vector 3/.test(e.message));
  const ac = new AbortController();
  const aborted = v.wait({ signal: ac.signal });
  ac.abort();
  await assert.rejects(aborted, (e: any) => e.name === 'AbortError');
  const last = v.wait();
  v.close();
  await assert.rejects(last, (e: any) => e.code === 'ENODEV');
  await assert.rejects(v.wait(), (e: any) => e.code === 'ENODEV');
});

test('event and async-iterator forms see every interrupt once', async () => {
  const v = new InterruptVector('msix', 0);
  let events = 0;
  v.on('interrupt', (n: number) => { events += n; });
  for (let i = 0; i < 5; i++) {
    native.eventfdWrite(v.fd, 1);
    await tick();
  }
  assert.equal(events, 5);
  assert.equal(v.pending, 0, 'a listener took them');
  v.removeAllListeners('interrupt');
  let iterated = 0;
  const loop = (async () => {
    for await (const n of v) iterated += n;
  })();
  for (let i = 0; i < 4; i++) {
    native.eventfdWrite(v.fd, 1);
    await tick();
  }
  v.close();
  await loop;
  assert.equal(iterated, 4);
  assert.equal(v.total, 9);
});

test('a pending wait keeps the process alive; an idle armed vector does not', () => {
  const mod = JSON.stringify(require.resolve('../../src/irq/interrupt-vector'));
  const idle = spawnSync(process.execPath, ['-e', `const {InterruptVector}=require(${mod}); new InterruptVector('msi',0);`], { timeout: 10_000 });
  assert.equal(idle.status, 0);
  // A wait with nothing else on the loop: another process signals the eventfd 300 ms later.
  const waiting = spawnSync(process.execPath, ['-e', `
    const {InterruptVector}=require(${mod}); const { spawn } = require('node:child_process');
    const v = new InterruptVector('msi',0);
    const signaller = 'setTimeout(() => require("fs").writeSync(3, Buffer.from([1,0,0,0,0,0,0,0])), 300)';
    spawn(process.execPath, ['-e', signaller], { stdio: ['ignore', 'ignore', 'inherit', v.fd] }).unref();
    v.wait().then((n) => console.log('got', n));`], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(waiting.status, 0, waiting.stderr);
  assert.match(waiting.stdout, /got 1/);
});

test('a closed vector collected later does not steal the events of a new one on the same fd number', async () => {
  const v8 = await import('node:v8');
  const vm = await import('node:vm');
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  let old: InterruptVector | undefined = new InterruptVector('intx', 0);
  const reusedFd = old.fd;
  old.close();
  old = undefined;
  const fresh = new InterruptVector('msi', 0);
  assert.equal(fresh.fd, reusedFd, 'the kernel reused the fd number');
  for (let i = 0; i < 3; i++) {
    gc();
    await tick();
  }
  native.eventfdWrite(fresh.fd, 1);
  assert.equal(await fresh.wait({ timeoutMs: 1000 }), 1);
  fresh.close();
});

test('polled delivery: nothing arrives on the event loop; poll() takes the count and delivers it there and then', async () => {
  const v = new InterruptVector('msix', 0);
  assert.equal(v.deliverPolled(), v);
  assert.equal(v.delivery, 'polled');
  const seen: number[] = [];
  native.eventfdWrite(v.fd, 2);
  await tick();
  assert.equal(v.total, 0, 'no watcher took it');
  assert.equal(v.poll(), 2);
  assert.equal(v.pending, 2);
  assert.equal(await v.wait(), 2);
  v.on('interrupt', (n: number) => seen.push(n));
  assert.equal(v.poll(), 0, 'nothing new');
  native.eventfdWrite(v.fd, 1);
  assert.equal(v.poll(), 1);
  assert.deepEqual(seen, [1], 'the listener ran inside poll()');
  assert.equal(v.total, 3);
  await v.deliverOnEventLoop();
  const w = v.wait({ timeoutMs: 5000 });
  native.eventfdWrite(v.fd, 1);
  assert.equal(await w, 1, 'back on the event loop');
  v.close();
  assert.equal(v.poll(), 0, 'a closed vector takes nothing');
});

const HANDLERS = path.resolve(__dirname, '../support/irq-thread-handler.js');

/** Block this thread (no event-loop turn) until words[i] reaches `value`; false if it never does (hang guard). */
function blockUntil(words: Int32Array, i: number, value: number): boolean {
  for (let round = 0; round < 100; round++) {
    const now = Atomics.load(words, i);
    if (now >= value) return true;
    Atomics.wait(words, i, now, 100);
  }
  return Atomics.load(words, i) >= value;
}

test('thread delivery: the handler runs on its own thread while the main thread is blocked', async () => {
  const v = new InterruptVector('msix', 1);
  const words = new SharedArrayBuffer(8);
  const w = new Int32Array(words);
  await v.deliverOnThread({ module: HANDLERS, data: { words } });
  assert.equal(v.delivery, 'thread');
  await assert.rejects(v.wait(), (e: any) => e.code === 'EBUSY');
  native.eventfdWrite(v.fd, 3);
  // The main thread blocks here: no event-loop turn runs until the handler has been called.
  assert.ok(blockUntil(w, 1, 1), 'the handler ran while the main thread was blocked');
  assert.equal(Atomics.load(w, 0), 3);
  assert.equal(v.total, 3);
  for (let i = 0; i < 50; i++) {
    const counted = Atomics.load(w, 0);
    native.eventfdWrite(v.fd, 1);
    assert.ok(blockUntil(w, 0, counted + 1));
  }
  assert.equal(Atomics.load(w, 0), 53);
  assert.equal(v.total, 53);
  await v.deliverOnEventLoop();
  assert.equal(v.delivery, 'event-loop');
  const next = v.wait({ timeoutMs: 5000 });
  native.eventfdWrite(v.fd, 1);
  assert.equal(await next, 1, 'the event loop takes interrupts again');
  assert.equal(Atomics.load(w, 0), 53, 'the ended thread took nothing more');
  assert.equal(v.total, 54);
  v.close();
});

test('thread delivery: handler errors are reported and the thread goes on; a bad handler module fails the switch', async () => {
  const v = new InterruptVector('msix', 2);
  const words = new SharedArrayBuffer(8);
  const w = new Int32Array(words);
  const errors: Error[] = [];
  v.on('handler-error', (e: Error) => errors.push(e));
  await v.deliverOnThread({ module: HANDLERS, export: 'failing', data: { words } });
  for (let i = 0; i < 2; i++) {
    native.eventfdWrite(v.fd, 1);
    assert.ok(blockUntil(w, 1, i + 1));
  }
  for (let i = 0; i < 500 && errors.length < 2; i++) await tick();
  assert.equal(errors.length, 2);
  assert.match(errors[0]!.message, /handler failed on purpose/);
  assert.equal(v.handlerErrors, 2);
  v.close();
  assert.equal(v.delivery, 'thread');
  await assert.rejects(v.deliverOnThread({ module: HANDLERS }), (e: any) => e.code === 'ENODEV');

  const u = new InterruptVector('msix', 3);
  await assert.rejects(u.deliverOnThread({ module: HANDLERS, export: 'missing' }), (e: any) => e.code === 'EINVAL' && /missing/.test(e.message));
  assert.equal(u.delivery, 'event-loop');
  const next = u.wait({ timeoutMs: 5000 });
  native.eventfdWrite(u.fd, 1);
  assert.equal(await next, 1);
  u.close();
});

test('thread delivery: the thread runs on the CPUs asked for, by default on those the host takes the interrupt on; CPUs that cannot be used fail the switch', async () => {
  const cpu = os.availableParallelism() > 1 ? 1 : 0;
  const words = new SharedArrayBuffer(12);
  const w = new Int32Array(words);
  const asked = new InterruptVector('msix', 5);
  await asked.deliverOnThread({ module: HANDLERS, export: 'affinity', data: { words }, cpus: [cpu] });
  native.eventfdWrite(asked.fd, 1);
  assert.ok(blockUntil(w, 1, 1));
  assert.equal(Atomics.load(w, 2), 1 << cpu, 'pinned to the CPU asked for');
  asked.close();

  const fromIrq = new InterruptVector('msix', 6, undefined, () => [cpu]);
  await fromIrq.deliverOnThread({ module: HANDLERS, export: 'affinity', data: { words } });
  native.eventfdWrite(fromIrq.fd, 1);
  assert.ok(blockUntil(w, 1, 2));
  assert.equal(Atomics.load(w, 2), 1 << cpu, 'pinned to the CPU the IRQ is delivered on');
  fromIrq.close();

  const bad = new InterruptVector('msix', 7);
  await assert.rejects(bad.deliverOnThread({ module: HANDLERS, cpus: [-1] }), (e: any) => e.code === 'EINVAL');
  await assert.rejects(bad.deliverOnThread({ module: HANDLERS, cpus: [1000] }), (e: any) => e.code === 'EINVAL' && /could not start.*CPUs 1000/.test(e.message));
  assert.equal(bad.delivery, 'event-loop');
  const next = bad.wait({ timeoutMs: 5000 });
  native.eventfdWrite(bad.fd, 1);
  assert.equal(await next, 1, 'the eventfd is watched again after the failed switch');
  bad.close();
});

test('thread delivery: interrupts racing the switch back are taken once, by the thread or the event loop, and the eventfd is non-blocking again', async () => {
  const v = new InterruptVector('msix', 8);
  const words = new SharedArrayBuffer(8);
  const w = new Int32Array(words);
  for (let round = 0; round < 20; round++) {
    await v.deliverOnThread({ module: HANDLERS, data: { words } });
    const before = Atomics.load(w, 0);
    native.eventfdWrite(v.fd, 5);
    await v.deliverOnEventLoop();
    const byThread = Atomics.load(w, 0) - before;
    const byLoop = byThread < 5 ? await v.wait({ timeoutMs: 5000 }) : 0;
    assert.equal(byThread + byLoop, 5, `round ${round}: ${byThread} by the thread, ${byLoop} by the event loop`);
  }
  assert.equal(v.total, 100);
  v.deliverPolled();
  assert.equal(v.poll(), 0, 'an empty eventfd reads as nothing (it would block this thread if still blocking)');
  v.close();
});

test('thread delivery: a thread that ends by itself brings the vector back to the event loop, with an error reported', async () => {
  const v = new InterruptVector('msix', 9);
  const words = new SharedArrayBuffer(8);
  const w = new Int32Array(words);
  const errors: Error[] = [];
  v.on('handler-error', (e: Error) => errors.push(e));
  await v.deliverOnThread({ module: HANDLERS, export: 'exiting', data: { words } });
  native.eventfdWrite(v.fd, 1);
  assert.ok(blockUntil(w, 1, 1));
  for (let i = 0; i < 500 && v.delivery === 'thread'; i++) await tick();
  assert.equal(v.delivery, 'event-loop');
  assert.match(errors[0]!.message, /interrupt thread ended/);
  const next = v.wait({ timeoutMs: 5000 });
  native.eventfdWrite(v.fd, 2);
  assert.equal(await next, 2);
  assert.equal(v.total, 3);
  v.close();
});

test('thread delivery: realtimePriority runs the thread SCHED_FIFO at that priority; out of range is EINVAL, without the right EPERM', async () => {
  const words = new SharedArrayBuffer(16);
  const w = new Int32Array(words);
  const plain = new InterruptVector('msix', 10);
  await plain.deliverOnThread({ module: HANDLERS, export: 'policy', data: { words } });
  native.eventfdWrite(plain.fd, 1);
  assert.ok(blockUntil(w, 1, 1));
  assert.deepEqual([Atomics.load(w, 2), Atomics.load(w, 3)], [constants.SCHED_OTHER, 0], 'time-shared by default');
  plain.close();

  if (runningAsRoot) {
    const rt = new InterruptVector('msix', 11);
    await rt.deliverOnThread({ module: HANDLERS, export: 'policy', data: { words }, realtimePriority: 7 });
    native.eventfdWrite(rt.fd, 1);
    assert.ok(blockUntil(w, 1, 2));
    assert.deepEqual([Atomics.load(w, 2), Atomics.load(w, 3)], [constants.SCHED_FIFO, 7], 'SCHED_FIFO at the priority asked for');
    assert.ok(!/^policy\s*:\s*1$/m.test(readFileSync('/proc/thread-self/sched', 'utf8')), 'the main thread stays time-shared');
    rt.close();
  }

  const bad = new InterruptVector('msix', 12);
  for (const p of [0, 100, 1.5]) {
    await assert.rejects(bad.deliverOnThread({ module: HANDLERS, realtimePriority: p }), (e: any) => e.code === 'EINVAL' && /realtimePriority/.test(e.message));
  }
  assert.equal(bad.delivery, 'event-loop');
  bad.close();

  // Without CAP_SYS_NICE and with RLIMIT_RTPRIO 0 (as nobody) the switch fails with EPERM and the vector stays on the event loop.
  const dir = mkdtempSync(path.join(os.tmpdir(), 'irq-rt-'));
  chmodSync(dir, 0o755);
  const mod = path.join(dir, 'handler.js');
  writeFileSync(mod, 'exports.handler = () => {};\n', { mode: 0o644 });
  const script = `
    const { InterruptVector } = require(${JSON.stringify(stagedPath('dist/src/irq/interrupt-vector.js'))});
    const v = new InterruptVector('msi', 0);
    v.deliverOnThread({ module: ${JSON.stringify(mod)}, realtimePriority: 10 }).then(
      () => { console.log('started'); v.close(); },
      (e) => { console.log(e.code, v.delivery); v.close(); });`;
  const r = runNodeUnprivileged(['-e', script], { rtprio: 0 });
  rmSync(dir, { recursive: true, force: true });
  assert.equal(r.stdout.trim(), 'EPERM event-loop', r.stderr);
});
