/**
 * The NVMe driver when its device goes wrong under load, on the simulated controller (the real
 * PciDevice, Region, DMA and interrupt code underneath): removal through VFIO's device-request
 * notifier, a reset by someone else, BAR accesses that fail (all ones, or thrown as by a
 * vfio-user client whose server went away), the device closed under the driver, and CSTS.CFS.
 * Each fault is injected many times at a random point of a QD32 load through the promise and
 * callback APIs on polled and MSI-X queues. Every I/O must settle (success or a typed error,
 * never a TypeError), later I/O must fail with ENODEV, close() must complete, and the queue's
 * timers must be gone. The guest suite repeats the removal on QEMU's nvme.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { NvmeSimulator } from '../support/nvme-simulator';
import { QueueLoad, within, type LoadApi, type LoadOutcome } from '../support/nvme-load';
import { NvmeController } from '../../src/drivers/nvme/controller';
import { prng, fillPattern } from '../../src/drivers/nvme/workload';

const ROUNDS_PER_CASE = 6;
const GUARD_MS = 15_000;

type Fault = 'remove' | 'external-reset' | 'bar-ones' | 'bar-throw' | 'device-closed';

interface Round {
  fault: Fault;
  api: LoadApi;
  interrupts: boolean;
  seed: number;
}

function timers(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
}

/** A random point of the load: after 0..(3 * depth) completions, plus 0..3 event-loop turns. */
async function randomPoint(load: QueueLoad, rnd: () => number): Promise<void> {
  const after = Math.floor(rnd() * 96);
  while (load.completed < after && load.outcome.pending > 0) await new Promise((r) => setImmediate(r));
  for (let i = Math.floor(rnd() * 4); i > 0; i--) await new Promise((r) => setImmediate(r));
}

async function faultRound(round: Round): Promise<{ outcome: LoadOutcome; later: string[] }> {
  const rnd = prng(round.seed);
  const { device, sim } = NvmeSimulator.open({ blocks: 65536 });
  const timersBefore = timers();
  const ctrl = await NvmeController.open(device, { defaultQueue: false, queuePairs: 2 });
  const ns = await ctrl.namespace(1);
  const queue = await ctrl.createQueuePair({ depth: 32, interrupts: round.interrupts, timeoutMs: 60_000 });
  const buffer = ctrl.allocBuffer(32 * 4096);
  const load = new QueueLoad(ns, queue, round.api, 32, buffer, round.seed);
  load.start();
  await randomPoint(load, rnd);
  switch (round.fault) {
    case 'remove': assert.ok(sim.requestRemoval(), 'the device-request notifier is armed'); break;
    case 'external-reset': sim.externalReset(); break;
    case 'bar-ones': sim.failBar('ones'); break;
    case 'bar-throw': sim.failBar('throw'); break;
    case 'device-closed': device.close(); break;
  }
  const failure = await within(load.failed, GUARD_MS, `${round.fault}: the first I/O failure`);
  const outcome = await within(load.stop(), GUARD_MS, `${round.fault}: every I/O settled`);
  assert.equal((failure as { code?: string }).code, 'ENODEV', `${round.fault}: ${failure.stack}`);
  // Later I/O, through each API: ENODEV, never a throw.
  const later: string[] = [];
  const code = (e: unknown) => `${(e as Error).name}:${(e as { code?: string }).code}`;
  await ns.read(0, new Uint8Array(4096), queue).then(() => later.push('ok'), (e) => later.push(code(e)));
  await ns.readDma(0, buffer, 0, 4096, queue).then(() => later.push('ok'), (e) => later.push(code(e)));
  await ns.flush(queue).then(() => later.push('ok'), (e) => later.push(code(e)));
  await ns.read(0, new Uint8Array(4096)).then(() => later.push('ok'), (e) => later.push(code(e)));
  later.push(await new Promise<string>((resolve) => {
    try {
      ns.submit(false, 0, buffer.iova, 4096, queue, (e) => resolve(e ? code(e) : 'ok'));
    } catch (e) {
      resolve(`thrown ${code(e)}`);
    }
  }));
  await within(ctrl.close(), GUARD_MS, `${round.fault}: close()`);
  if (!device.closed) device.close();
  assert.equal(queue.destroyed, true);
  assert.equal(timers(), timersBefore, 'no timer of the driver is left');
  return { outcome, later };
}

const FAULTS: Fault[] = ['remove', 'external-reset', 'bar-ones', 'bar-throw', 'device-closed'];
const COMBOS: [LoadApi, boolean][] = [['promise', false], ['callback', false], ['promise', true], ['callback', true]];

for (const fault of FAULTS) {
  test(`${fault} at a random point of a QD32 load (promise/callback, polled/MSI-X, ${ROUNDS_PER_CASE} rounds each): every I/O settles, failures are ENODEV, later I/O ENODEV, close() completes`, { timeout: 120_000 }, async () => {
    const seen: string[] = [];
    for (const [api, interrupts] of COMBOS) {
      for (let i = 0; i < ROUNDS_PER_CASE; i++) {
        const seed = 0xfa017 + i * 7919 + (interrupts ? 1 : 0) * 31 + (api === 'callback' ? 1 : 0) * 17 + FAULTS.indexOf(fault) * 100003;
        const { outcome, later } = await faultRound({ fault, api, interrupts, seed });
        assert.deepEqual(outcome.untyped, [], 'no TypeError, no untyped error');
        assert.equal(outcome.pending, 0);
        for (const key of Object.keys(outcome.errors)) assert.match(key, /:ENODEV$/, `${fault} ${api} ${interrupts ? 'msix' : 'polled'}: ${JSON.stringify(outcome.errors)}`);
        assert.ok(later.every((l) => l === 'DeviceGoneError:ENODEV' || l === 'UserpciError:ENODEV'), `later I/O: ${later.join(', ')}`);
        seen.push(`${api}/${interrupts ? 'msix' : 'poll'}: ${outcome.ok} ok, ${JSON.stringify(outcome.errors)}`);
      }
    }
    console.log(`# ${fault}: ${seen.length} rounds\n# ${seen.join('\n# ')}`);
  });
}

test(`CSTS.CFS at a random point of a QD32 load (${ROUNDS_PER_CASE * 4} rounds): I/O in flight fails EIO, the controller is reset and serves again; when the reset fails too (the status stays), later I/O is ENODEV and close() completes`, { timeout: 120_000 }, async () => {
  const seen: string[] = [];
  for (const [api, interrupts] of COMBOS) {
    for (let i = 0; i < ROUNDS_PER_CASE + 1; i++) {
      const sticky = i === ROUNDS_PER_CASE;
      const seed = 0xcf5 + i * 104729 + (interrupts ? 3 : 0) + (api === 'callback' ? 5 : 0);
      const rnd = prng(seed);
      const { device, sim } = NvmeSimulator.open({ blocks: 65536 });
      const ctrl = await NvmeController.open(device, { defaultQueue: false, queuePairs: 2 });
      const ns = await ctrl.namespace(1);
      const queue = await ctrl.createQueuePair({ depth: 32, interrupts, timeoutMs: 60_000 });
      const buffer = ctrl.allocBuffer(32 * 4096);
      const load = new QueueLoad(ns, queue, api, 32, buffer, seed);
      load.start();
      await randomPoint(load, rnd);
      sim.raiseFatal(sticky);
      const failure = await within(load.failed, GUARD_MS, 'the first failure after CSTS.CFS');
      const outcome = await within(load.stop(), GUARD_MS, 'every I/O settled');
      assert.deepEqual(outcome.untyped, []);
      // In flight: aborted by the reset (EIO); once a reset fails, everything is ENODEV.
      for (const key of Object.keys(outcome.errors)) assert.match(key, sticky ? /:(EIO|ENODEV)$/ : /:EIO$/, JSON.stringify(outcome.errors));
      assert.match(String((failure as { code?: string }).code), sticky ? /^(EIO|ENODEV)$/ : /^EIO$/, failure.message);
      if (sticky) {
        await assert.rejects(ns.read(0, new Uint8Array(4096), queue), { code: 'ENODEV' });
      } else {
        // After the reset the same queue serves again, and data goes where it should.
        await within(waitFor(() => ctrl.status().ready && !ctrl.isClosed), GUARD_MS, 'recovery');
        const data = fillPattern(new Uint8Array(8192), seed);
        await ns.write(4000, data, queue);
        const back = new Uint8Array(8192);
        await ns.read(4000, back, queue);
        assert.deepEqual(back, data);
        assert.ok(ctrl.resets >= 1);
      }
      await within(ctrl.close(), GUARD_MS, 'close()');
      device.close();
      seen.push(`${api}/${interrupts ? 'msix' : 'poll'}${sticky ? ' sticky' : ''}: ${outcome.ok} ok, ${JSON.stringify(outcome.errors)}`);
    }
  }
  console.log(`# CSTS.CFS: ${seen.length} rounds\n# ${seen.join('\n# ')}`);
});

async function waitFor(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}

test('the NVMe controller listens to its device: removal with nothing in flight fails the next I/O with ENODEV at once', async () => {
  const { device, sim } = NvmeSimulator.open();
  const ctrl = await NvmeController.open(device, { defaultQueue: { depth: 8 } });
  const ns = await ctrl.namespace(1);
  const lost = new Promise<Error>((r) => ctrl.once('lost', r));
  sim.requestRemoval();
  await within(new Promise<void>((r) => device.once('removed', () => r())), GUARD_MS, 'removed');
  assert.equal(ctrl.isClosed, true, 'the controller gave up when the device was removed');
  assert.equal((await lost as { code?: string }).code, 'ENODEV');
  await assert.rejects(ns.write(0, new Uint8Array(512)), { code: 'ENODEV' });
  await assert.rejects(ctrl.identifyController(), { code: 'ENODEV' });
  await ctrl.close();
});

test('a command the queue cannot write (its bounce memory gone under it) fails its request and the queue; nothing hangs', async () => {
  const { device } = NvmeSimulator.open();
  const ctrl = await NvmeController.open(device, { defaultQueue: false });
  const ns = await ctrl.namespace(1);
  const queue = await ctrl.createQueuePair({ depth: 8 });
  await ns.write(0, new Uint8Array(4096), queue); // a plain buffer: the queue allocates bounce memory
  // Freed behind the queue's back (as when the device's memory went without the controller
  // hearing): copying the next write in throws inside the submission.
  (queue as unknown as { bounceMem: { free(): void } }).bounceMem.free();
  const failure = await within(ns.write(0, new Uint8Array(4096), queue).then(() => null, (e: Error) => e), GUARD_MS, 'the write settled');
  assert.ok(failure, 'the write failed');
  assert.equal(failure.name, 'UserpciError', failure.stack);
  assert.equal(queue.destroyed, true, 'the controller gave up the queue');
  await assert.rejects(ns.readIova(0, 0x10000, 4096, queue), { code: failure && (failure as { code?: string }).code });
  await within(ctrl.close(), GUARD_MS, 'close()');
});
