/**
 * Interrupts and revocation on the real edu device through the guest's vfio-pci: the three ways
 * to consume a vector, the thread and polled deliveries, INTx masking, a 10,000-interrupt soak,
 * and hot removal. (Interrupt-driven factorial and DMA completion are in the shared edu driver suite, run by vfio-edu.test.ts.)
 */
import { test, before } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { openDevice } from '../../src/device/open';
import { EduDriver } from '../../src/drivers/edu/edu-driver';
import { EDU_DEVICE_ID, EDU_VENDOR_ID } from '../../src/drivers/edu/registers';
import { bindToVfio } from '../../src/pci/bind';
import { requireGuest, boundDevices, findDevices } from './guest-env';

let edu0: string;

before(() => {
  requireGuest();
  [edu0] = boundDevices(EDU_VENDOR_ID, EDU_DEVICE_ID, 2) as [string];
});

function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

test('msi: event, promise (timeout, AbortSignal) and async-iterator forms; unheard interrupts are counted', { timeout: 120_000 }, async () => {
  await using device = await openDevice(edu0);
  const edu = new EduDriver(device);
  const [vector] = device.enableInterrupts('msi');
  const v = vector!;
  // Nobody listening: counted, not lost.
  // Each one reaches the vector before the next is raised: two MSIs raised faster than the CPU
  // services them coalesce (x86 edge semantics), which a fixed sleep cannot rule out under load.
  for (let i = 0; i < 3; i++) {
    edu.raiseInterrupt(0x1000);
    edu.acknowledgeInterrupt();
    while (v.total < i + 1) await new Promise((r) => setTimeout(r, 5)); // the test's timeout guards a hang
  }
  assert.equal(v.pending, 3);
  assert.equal(await v.wait(), 3, 'the next wait takes them');
  // Promise form with timeout.
  await assert.rejects(v.wait({ timeoutMs: 50 }), (e: any) => e.code === 'ETIMEDOUT');
  // AbortSignal.
  const ac = new AbortController();
  const aborted = v.wait({ signal: ac.signal });
  ac.abort();
  await assert.rejects(aborted, (e: any) => e.name === 'AbortError');
  // Event form. Listeners alone do not keep the process alive: ask for it while we listen.
  v.ref();
  const seen = new Promise<number>((resolve) => v.once('interrupt', resolve));
  edu.raiseInterrupt(0x1000);
  assert.equal(await seen, 1);
  v.unref();
  edu.acknowledgeInterrupt();
  // Async iterator.
  let n = 0;
  const iterate = (async () => {
    for await (const count of v) {
      n += count;
      edu.acknowledgeInterrupt();
      if (n >= 5) break;
      edu.raiseInterrupt(0x1000);
    }
  })();
  edu.raiseInterrupt(0x1000);
  await iterate;
  assert.equal(n, 5);
  // Disabling rejects waiters clearly.
  const pendingWait = v.wait();
  device.disableInterrupts();
  await assert.rejects(pendingWait, (e: any) => e.code === 'ENODEV');
});

test('intx: the line stays masked until the driver acknowledges and unmasks', async () => {
  await using device = await openDevice(edu0);
  const edu = new EduDriver(device);
  const [v] = device.enableInterrupts('intx');
  edu.raiseInterrupt(0x1);
  assert.equal(await v!.wait({ timeoutMs: 5000 }), 1);
  // Masked by VFIO: raising again while masked and unacknowledged delivers nothing.
  edu.raiseInterrupt(0x2);
  await assert.rejects(v!.wait({ timeoutMs: 200 }), (e: any) => e.code === 'ETIMEDOUT');
  assert.equal(edu.acknowledgeInterrupt(), 0x3);
  v!.unmask();
  edu.raiseInterrupt(0x4);
  assert.equal(await v!.wait({ timeoutMs: 5000 }), 1);
  edu.acknowledgeInterrupt();
  v!.unmask();
});

/** COMMAND and STATUS as the device holds them (sysfs reads the real config space, not VFIO's virtual copy). */
function commandAndStatus(address: string): { intxDisabled: boolean; intxPending: boolean } {
  const cfg = fs.readFileSync(`/sys/bus/pci/devices/${address}/config`);
  return { intxDisabled: (cfg.readUInt16LE(4) & 0x400) !== 0, intxPending: (cfg.readUInt16LE(6) & 0x8) !== 0 };
}

test('the INTx pin is disabled (Interrupt Disable) unless INTx delivery is on: an interrupt raised meanwhile stays pending in the device, not asserted on the line', async () => {
  await using device = await openDevice(edu0);
  const edu = new EduDriver(device);
  assert.deepEqual(commandAndStatus(edu0), { intxDisabled: true, intxPending: false }, 'after open');
  edu.raiseInterrupt(0x1);
  assert.deepEqual(commandAndStatus(edu0), { intxDisabled: true, intxPending: true }, 'raised with no delivery on: pending, pin disabled');
  assert.equal(edu.acknowledgeInterrupt(), 0x1);
  assert.equal(commandAndStatus(edu0).intxPending, false, 'acknowledged');
  const [v] = device.enableInterrupts('intx');
  assert.equal(commandAndStatus(edu0).intxDisabled, false, 'INTx delivery on: pin enabled');
  edu.raiseInterrupt(0x2);
  assert.equal(await v!.wait({ timeoutMs: 5000 }), 1);
  assert.equal(edu.acknowledgeInterrupt(), 0x2);
  v!.unmask();
  device.enableInterrupts('msi');
  assert.equal(commandAndStatus(edu0).intxDisabled, true, 'MSI on: pin disabled again');
  device.enableInterrupts('intx');
  assert.equal(commandAndStatus(edu0).intxDisabled, false, 'INTx on again');
  device.disableInterrupts();
  assert.equal(commandAndStatus(edu0).intxDisabled, true, 'interrupts off: pin disabled');
});

test('10,000-interrupt soak: no lost or duplicated completion, stable fds and memory', async () => {
  await using device = await openDevice(edu0);
  const edu = new EduDriver(device);
  const [v] = device.enableInterrupts('msi');
  const fdsBefore = openFds();
  let rssBefore = 0;
  let taken = 0;
  for (let i = 0; i < 10_000; i++) {
    if (i === 1000) rssBefore = process.memoryUsage().rss; // after warm-up
    edu.raiseInterrupt(0x1);
    taken += await v!.wait({ timeoutMs: 5000 });
    assert.equal(edu.acknowledgeInterrupt(), 0x1);
  }
  assert.equal(taken, 10_000, 'every interrupt delivered exactly once');
  assert.equal(v!.total, 10_000);
  assert.equal(v!.pending, 0);
  await assert.rejects(v!.wait({ timeoutMs: 100 }), (e: any) => e.code === 'ETIMEDOUT', 'no duplicate arrives late');
  assert.equal(openFds(), fdsBefore);
  const growth = process.memoryUsage().rss - rssBefore;
  assert.ok(growth < 16 << 20, `RSS grew ${growth} bytes over 9,000 interrupts`);
});

test('msi: wait, acknowledge, then listen and interrupt again (raise, raise with the status still set, factorial, DMA): every listener fires, two MSIs per sequence', { timeout: 300_000 }, async () => {
  await using device = await openDevice(edu0);
  const edu = new EduDriver(device);
  await edu.ready();
  const v = edu.useInterrupts('msi')!;
  const staging = device.allocDma(4096);
  v.ref(); // a listener alone does not keep the process alive
  const perOperation = 100;
  for (const operation of ['raise', 'raise-unacked', 'factorial', 'dma'] as const) {
    for (let i = 0; i < perOperation; i++) {
      edu.raiseInterrupt(0x1);
      assert.equal(await v.wait(), 1, `${operation} ${i}: the wait`);
      if (operation !== 'raise-unacked') assert.equal(edu.acknowledgeInterrupt(), 0x1);
      const heard = new Promise<number>((resolve) => v.once('interrupt', resolve));
      if (operation === 'raise' || operation === 'raise-unacked') edu.raiseInterrupt(0x100);
      else if (operation === 'factorial') assert.equal(await edu.factorial(5), 120);
      else await edu.dma('to-device', staging.iova, 0, 64);
      assert.equal(await heard, 1, `${operation} ${i}: the listener`);
      const status = edu.acknowledgeInterrupt();
      if (operation === 'raise') assert.equal(status, 0x100);
      if (operation === 'raise-unacked') assert.equal(status, 0x101, 'edu raises again while its status is set');
    }
  }
  v.unref();
  assert.equal(v.total, 2 * 4 * perOperation, 'two MSIs per sequence, none lost or doubled');
  assert.equal(v.pending, 0);
  staging.free();
});

test('msi on a dedicated thread (time-shared, then SCHED_FIFO) and polled: each interrupt reaches the handler once while the main thread blocks; the thread runs on the CPUs the kernel takes the IRQ on', { timeout: 300_000 }, async () => {
  await using device = await openDevice(edu0);
  const edu = new EduDriver(device);
  const [v] = device.enableInterrupts('msi');
  const irqCpus = v!.hostCpus();
  // What the kernel says, read here independently of the library.
  const line = fs.readFileSync('/proc/interrupts', 'utf8').split('\n').find((l) => l.trimEnd().endsWith(` vfio-msi[0](${edu0})`));
  assert.ok(line, 'the kernel lists the MSI');
  const effective = fs.readFileSync(`/proc/irq/${parseInt(line, 10)}/effective_affinity_list`, 'utf8').trim();
  const expanded = effective.split(',').flatMap((part) => {
    const [a, b = a] = part.split('-').map(Number) as [number, number?];
    return Array.from({ length: b! - a + 1 }, (_, k) => a + k);
  });
  assert.deepEqual(irqCpus, expanded, 'hostCpus() is the IRQ\'s effective affinity');
  const words = new SharedArrayBuffer(12);
  const w = new Int32Array(words);
  await v!.deliverOnThread({ module: path.resolve(__dirname, '../support/irq-thread-handler.js'), export: 'affinity', data: { words } });
  for (let i = 1; i <= 200; i++) {
    edu.raiseInterrupt(0x1);
    // The main thread blocks: no event-loop turn until the thread's handler has run.
    // Up to 60 s per interrupt, a hang guard: on a busy host one took over 10 s (6.12 guest).
    for (let k = 0; k < 600 && Atomics.load(w, 1) < i; k++) Atomics.wait(w, 1, i - 1, 100);
    assert.equal(Atomics.load(w, 1), i, `interrupt ${i} handled on the thread`);
    assert.equal(edu.acknowledgeInterrupt(), 0x1);
  }
  assert.equal(Atomics.load(w, 0), 200, 'each interrupt counted once');
  let mask = 0;
  for (const c of irqCpus!) mask |= 1 << c;
  assert.equal(Atomics.load(w, 2), mask, 'the thread runs on the IRQ\'s CPUs');
  await v!.deliverOnEventLoop();
  assert.equal(v!.total, 200);
  // realtimePriority: the same delivery from a SCHED_FIFO thread.
  const rtWords = new SharedArrayBuffer(16);
  const rt = new Int32Array(rtWords);
  await v!.deliverOnThread({ module: path.resolve(__dirname, '../support/irq-thread-handler.js'), export: 'policy', data: { words: rtWords }, realtimePriority: 50 });
  for (let i = 1; i <= 20; i++) {
    edu.raiseInterrupt(0x1);
    for (let k = 0; k < 600 && Atomics.load(rt, 1) < i; k++) Atomics.wait(rt, 1, i - 1, 100);
    assert.equal(Atomics.load(rt, 1), i, `interrupt ${i} handled on the SCHED_FIFO thread`);
    assert.equal(edu.acknowledgeInterrupt(), 0x1);
  }
  assert.deepEqual([Atomics.load(rt, 0), Atomics.load(rt, 2), Atomics.load(rt, 3)], [20, 1, 50], 'each interrupt counted once, on a thread SCHED_FIFO (policy 1) at priority 50');
  await v!.deliverOnEventLoop();
  assert.equal(v!.total, 220);
  v!.deliverPolled();
  for (let i = 0; i < 200; i++) {
    edu.raiseInterrupt(0x1);
    let n = 0;
    while (n === 0) n = v!.poll(); // the test's timeout guards a hang
    assert.equal(n, 1);
    assert.equal(edu.acknowledgeInterrupt(), 0x1);
  }
  assert.equal(v!.total, 420);
});

test('armed interrupts do not keep the process alive', () => {
  const script = `
    const { openDevice } = require(${JSON.stringify(path.resolve(__dirname, '../../src/device/open.js'))});
    openDevice(${JSON.stringify(edu0)}).then((d) => { d.enableInterrupts('msi'); console.log('armed'); });`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.signal, null, 'exited on its own');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /armed/);
});

test('hot removal: the waiting process gets removed, its wait rejects, it keeps running; rescan brings the device back', async () => {
  const sysDir = `/sys/bus/pci/devices/${edu0}`;
  const child = spawn(process.execPath, [path.join(__dirname, 'wait-removal.js'), edu0], { stdio: ['ignore', 'pipe', 'pipe'] });
  const events: Record<string, any>[] = [];
  let buffered = '';
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const waitFor = (name: string, ms: number) => new Promise<Record<string, any>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "${name}" from the child in ${ms} ms; got ${JSON.stringify(events)} ${stderr}`)), ms);
    const check = () => {
      const e = events.find((x) => x.event === name);
      if (e) { clearTimeout(timer); resolve(e); return true; }
      return false;
    };
    if (check()) return;
    child.stdout.on('data', () => { check(); });
  });
  child.stdout.on('data', (d) => {
    buffered += d;
    const lines = buffered.split('\n');
    buffered = lines.pop()!;
    for (const l of lines) if (l.trim()) events.push(JSON.parse(l));
  });
  await waitFor('ready', 60_000);
  fs.writeFileSync(`${sysDir}/remove`, '1'); // blocks until the driver let go
  assert.equal(fs.existsSync(sysDir), false);
  const rejected = await waitFor('wait-rejected', 10_000);
  assert.equal(rejected.code, 'ENODEV');
  await waitFor('removed', 10_000);
  const after = await waitFor('after', 10_000);
  assert.equal(after.bar, 'ENODEV');
  assert.equal(after.alloc, 'ENODEV');
  assert.equal(after.irq, 'ENODEV');
  assert.equal(after.dmaViewLength, 0, 'DMA views are detached');
  assert.equal(after.removed, true);
  await waitFor('still-running', 10_000);
  assert.equal(await exited, 0, stderr);
  assert.ok(!events.some((e) => e.event === 'crash'));

  fs.writeFileSync('/sys/bus/pci/rescan', '1');
  for (let i = 0; i < 50 && !findDevices(EDU_VENDOR_ID, EDU_DEVICE_ID).includes(edu0); i++) await new Promise((r) => setTimeout(r, 100));
  assert.ok(fs.existsSync(sysDir), 'rescan brought the device back');
  bindToVfio(edu0);
  await using device = await openDevice(edu0);
  const edu = new EduDriver(device);
  assert.equal(await edu.factorial(5), 120);
});
