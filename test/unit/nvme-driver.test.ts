/**
 * The NVMe driver against the simulated controller (src/drivers/nvme/simulator.ts): the real
 * PciDevice, Region, DMA and interrupt code run underneath, only the controller is simulated.
 * What QEMU's nvme cannot be made to do (drop a command, raise CSTS.CFS, count doorbells and
 * check every PRP list) is tested here; the guest suite repeats the rest on QEMU's device.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { NvmeSimulator, type SimulatorOptions } from '../support/nvme-simulator';
import { NvmeController, type NvmeControllerOptions } from '../../src/drivers/nvme/controller';
import { NvmeStatusError, decodeStatus } from '../../src/drivers/nvme/errors';
import * as R from '../../src/drivers/nvme/registers';
import type { PciDevice } from '../../src/device/device';

async function setup(sim: SimulatorOptions = {}, opts: NvmeControllerOptions = {}) {
  const { device, sim: s } = NvmeSimulator.open(sim);
  const ctrl = await NvmeController.open(device, { defaultQueue: { depth: 16 }, ...opts });
  const ns = await ctrl.namespace(1);
  return { device, sim: s, ctrl, ns, async [Symbol.asyncDispose]() { await ctrl.close(); device.close(); } };
}

function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

function closeDevice(device: PciDevice): void {
  if (!device.closed) device.close();
}

test('bring-up: CC programmed from CAP (4 KiB pages, 64/16-byte entries), admin queue, identify, queue count', async () => {
  await using t = await setup({ readyDelayMs: 30, maxQueuePairs: 4 }, { queuePairs: 8 });
  const cc = t.device.bar(0).read32(R.REG_CC);
  assert.equal(cc & R.CC_EN, 1);
  assert.equal((cc >>> 7) & 0xf, 0, 'MPS = 4 KiB');
  assert.equal((cc >>> 16) & 0xf, 6, 'IOSQES = 64 bytes');
  assert.equal((cc >>> 20) & 0xf, 4, 'IOCQES = 16 bytes');
  assert.equal((cc >>> 4) & 7, 0, 'NVM command set');
  assert.equal(t.ctrl.identity.model, 'userpci NVMe simulator');
  assert.equal(t.ctrl.identity.serial, 'SIM0001');
  assert.equal(t.ctrl.grantedQueuePairs, 4, 'the controller granted fewer than asked');
  assert.equal(t.ctrl.maxTransfer, 128 * 1024, 'MDTS 5 = 32 pages');
  assert.equal(t.ctrl.capabilities.readyTimeoutMs, 1000);
  assert.deepEqual(await t.ctrl.namespaceIds(), [1]);
  assert.equal(t.ns.blocks, 8192);
  assert.equal(t.ns.blockSize, 512);
  assert.equal(t.ns.lbaFormats.length, 2);
});

test('PRP: one page, two pages, a PRP list, and a list chained over list pages, at odd dword offsets', async () => {
  await using t = await setup({ mdts: 10, blocks: 32768 }, { defaultQueue: { depth: 4 } });
  assert.equal(t.ctrl.maxTransfer, 4 << 20);
  const buf = t.ctrl.allocBuffer(5 << 20);
  const cases: [number, number][] = [
    [0, 512], [4092, 1024], [0, 4096], [4, 8192], [0, 8192], [100, 12288], [0, 64 * 1024], [2048, 2 << 20],
    [0, 4 << 20], [4, 4 << 20 - 4096], [4, 4 << 20],
  ];
  let lba = 0;
  for (const [offset, length] of cases) {
    const data = pattern(length, offset + length);
    new Uint8Array(buf.buffer, offset, length).set(data);
    const sent = t.sim.log.length;
    await t.ns.writeDma(lba, buf, offset, length);
    const writes = t.sim.log.slice(sent);
    assert.ok(writes.every((w) => w.opcode === R.NVM_WRITE && w.status === 0));
    const pagesTouched = Math.ceil(((buf.iova + offset) % 4096 + length) / 4096);
    assert.ok(writes.every((w) => w.segments!.length <= 1024), 'no command touches more than maxTransfer / page pages');
    assert.equal(writes.reduce((n, w) => n + w.segments!.reduce((m, s) => m + s[1], 0), 0), length);
    if (pagesTouched <= 1024) {
      assert.equal(writes.length, 1);
      assert.equal(writes[0]!.segments!.length, pagesTouched, `${length} bytes at +${offset}: one PRP per page touched`);
      if (pagesTouched === 1) assert.equal(writes[0]!.prp2, 0);
      if (pagesTouched === 2) assert.equal(writes[0]!.prp2 % 4096, 0, 'PRP2 is the second page itself');
    } else {
      assert.equal(writes.length, 2, `${length} bytes at +${offset}: split so that each command stays within 1024 pages`);
    }
    new Uint8Array(buf.buffer, offset, length).fill(0);
    await t.ns.readDma(lba, buf, offset, length);
    assert.deepEqual(new Uint8Array(buf.buffer, offset, length), data, `${length} bytes at +${offset} read back`);
    assert.deepEqual(t.sim.disk.subarray(lba * 512, lba * 512 + length), data);
    lba += length / 512;
    if (lba + 8192 > 32768) lba = 0;
  }
  // Over 513 pages: the list is longer than a page and chains into a second list page.
  const chained = t.sim.log.filter((r) => r.segments && r.segments.length > 513);
  assert.ok(chained.length >= 2, 'a PRP list longer than one page was used');
});

test('requests larger than MDTS are split; plain buffers go through bounce memory', async () => {
  await using t = await setup({ mdts: 3 }); // 32 KiB per command
  const data = pattern(300 * 1024 + 512, 9);
  const before = t.sim.log.length;
  await t.ns.write(7, data);
  const writes = t.sim.log.slice(before).filter((r) => r.opcode === R.NVM_WRITE);
  assert.equal(writes.length, Math.ceil(data.length / (32 * 1024)));
  for (const w of writes) assert.ok(((w.cdw12 & 0xffff) + 1) * 512 <= 32 * 1024);
  const back = new Uint8Array(data.length);
  await t.ns.read(7, back);
  assert.deepEqual(back, data);
  // A view over a registered DMA buffer goes zero copy: its own IOVA is in PRP1.
  const buf = t.ctrl.allocBuffer(64 * 1024);
  const view = new Uint8Array(buf.buffer, 512, 4096);
  await t.ns.read(7, view);
  assert.equal(t.sim.log.at(-1)!.prp1, buf.iova + 512);
  assert.deepEqual(view, data.subarray(0, 4096));
});

test('errors: beyond the end is ERANGE, misalignment and bad lengths EINVAL, before anything is sent', async () => {
  await using t = await setup();
  const sent = t.sim.log.length;
  const buf = t.ctrl.allocBuffer(8192);
  await assert.rejects(t.ns.read(8191, new Uint8Array(1024)), { code: 'ERANGE', message: /beyond the end of the namespace \(8192 blocks of 512 bytes\)/ });
  await assert.rejects(t.ns.write(8192, new Uint8Array(512)), { code: 'ERANGE' });
  await assert.rejects(t.ns.readDma(0, buf, 2, 512), { code: 'EINVAL', message: /not 4-byte aligned/ });
  await assert.rejects(t.ns.readIova(0, buf.iova + 1, 512), { code: 'EINVAL' });
  await assert.rejects(t.ns.read(0, new Uint8Array(100)), { code: 'EINVAL', message: /not a positive multiple of the 512-byte block size/ });
  await assert.rejects(t.ns.read(-1, new Uint8Array(512)), { code: 'EINVAL' });
  await assert.rejects(t.ns.read(1.5, new Uint8Array(512)), { code: 'EINVAL' });
  await assert.rejects(t.ns.readDma(0, buf, 4096, 8192), { code: 'ERANGE' });
  await assert.rejects(t.ns.trim(8000, 500), { code: 'ERANGE' });
  assert.equal(t.sim.log.length, sent, 'nothing reached the controller');
});

test('NVMe status errors are decoded: LBA Out of Range, Invalid Field, media errors', async () => {
  await using t = await setup();
  t.sim.failNext(0x80);
  const err = await t.ns.read(0, new Uint8Array(512)).then(() => null, (e: unknown) => e);
  assert.ok(err instanceof NvmeStatusError);
  assert.equal(err.code, 'ERANGE');
  assert.equal(err.statusText, 'LBA Out of Range');
  assert.match(err.message, /Read failed: LBA Out of Range \(SCT 0x0, SC 0x80\)/);
  t.sim.failNext(0x4000 | 0x281);
  await assert.rejects(t.ns.write(0, new Uint8Array(512)), (e: NvmeStatusError) => e.code === 'EIO' && e.dnr && /Unrecovered Read Error/.test(e.message));
  assert.deepEqual(decodeStatus(0x102), { sct: 1, sc: 2, crd: 0, more: false, dnr: false, text: 'Invalid Queue Size' });
  assert.equal(decodeStatus(0x0002).text, 'Invalid Field in Command');
  assert.equal(decodeStatus(0x0785).text, 'Vendor Specific 0x85');
  // A failed part of a split request fails the request, and the queue carries on.
  t.sim.failNext(0, 0x06);
  await assert.rejects(t.ns.read(0, new Uint8Array(256 * 1024)), { code: 'EIO', message: /Internal Error/ });
  await t.ns.read(0, new Uint8Array(4096));
});

test('4096-byte LBA format', async () => {
  await using t = await setup({ blockSize: 4096, blocks: 1024 });
  assert.equal(t.ns.blockSize, 4096);
  assert.equal(t.ns.identity.formatIndex, 1);
  await assert.rejects(t.ns.write(0, new Uint8Array(512)), { code: 'EINVAL', message: /4096-byte block size/ });
  const data = pattern(40960, 4);
  await t.ns.write(1000, data);
  assert.deepEqual(t.sim.disk.subarray(1000 * 4096, 1000 * 4096 + 40960), data);
  await assert.rejects(t.ns.write(1020, data), { code: 'ERANGE' });
});

test('queue depth is a hard limit: more requests than slots wait, none is lost, order of completion is free', async () => {
  await using t = await setup({}, { defaultQueue: { depth: 4 } });
  const q = t.ctrl.defaultQueue!;
  const jobs: Promise<void>[] = [];
  let maxBusy = 0;
  for (let i = 0; i < 50; i++) {
    jobs.push(t.ns.write(i * 8, pattern(4096, i)));
    maxBusy = Math.max(maxBusy, q.outstanding);
  }
  assert.equal(maxBusy, 4);
  await Promise.all(jobs);
  for (let i = 0; i < 50; i++) assert.deepEqual(t.sim.disk.subarray(i * 4096, i * 4096 + 4096), pattern(4096, i));
  assert.equal(q.outstanding, 0);
  assert.deepEqual(q.debugState().waiting, 0);
});

test('batch submission: one SQ doorbell for a batch; completions acknowledged once per pass', async () => {
  await using t = await setup({}, { defaultQueue: { depth: 32 } });
  const q = t.ctrl.defaultQueue!;
  const buf = t.ctrl.allocBuffer(32 * 4096);
  const before = t.sim.sqDoorbellWrites;
  const jobs = q.batch(() => Array.from({ length: 32 }, (_, i) => t.ns.readDma(i * 8, buf, i * 4096, 4096, q)));
  assert.equal(t.sim.sqDoorbellWrites - before, 1, 'one doorbell for 32 commands');
  await Promise.all(jobs);
  // Callback API: no promise per I/O; what callbacks submit during a pass shares a doorbell.
  let done = 0;
  const before2 = t.sim.sqDoorbellWrites;
  await new Promise<void>((resolve, reject) => {
    const cb = (err: Error | null) => {
      if (err) return reject(err);
      if (++done === 64) return resolve();
      if (done <= 32) t.ns.submit(false, done, buf.iova, 4096, q, cb);
    };
    q.batch(() => {
      for (let i = 0; i < 32; i++) t.ns.submit(false, i, buf.iova + i * 4096, 4096, q, cb);
    });
  });
  assert.ok(t.sim.sqDoorbellWrites - before2 <= 4, `few doorbells for 64 commands (${t.sim.sqDoorbellWrites - before2})`);
});

test('MSI-X: completions by interrupt on chosen vectors; the vector count can change at run time', async () => {
  await using t = await setup({ msixVectors: 6 }, { defaultQueue: false });
  const q1 = await t.ctrl.createQueuePair({ depth: 8, interrupts: true });
  assert.equal(q1.mode, 'interrupt');
  assert.equal(t.device.interrupts.active.length, 2, 'vectors 0..1 enabled for queue 1');
  await t.ns.write(0, pattern(4096, 1), q1);
  const v1 = q1.interruptVector!;
  assert.ok(v1.total >= 1, 'the completion came by MSI-X');
  // More vectors: the same vector object stays attached.
  t.device.enableInterrupts('msix', 5);
  assert.equal(q1.interruptVector, v1);
  const q2 = await t.ctrl.createQueuePair({ depth: 8, interrupts: true, vector: 4 });
  const back = new Uint8Array(4096);
  await t.ns.read(0, back, q2);
  assert.deepEqual(back, pattern(4096, 1));
  assert.ok(q2.interruptVector!.total >= 1);
  await t.ns.read(0, back, q1);
  assert.ok(v1.total >= 2);
  // Fewer vectors: queue 2's vector goes away and it falls back to polling.
  t.ctrl.setInterruptVectors(2);
  assert.equal(q2.mode, 'poll');
  assert.equal(q1.mode, 'interrupt');
  await t.ns.read(0, back, q2);
  await t.ns.read(0, back, q1);
  // A polled queue next to them.
  const q3 = await t.ctrl.createQueuePair({ depth: 8 });
  assert.equal(q3.mode, 'poll');
  await t.ns.read(0, back, q3);
});

test('queue pairs: as many as granted, then ENOSPC; deleting one frees its id', async () => {
  await using t = await setup({ maxQueuePairs: 3 }, { defaultQueue: false });
  const qs = await t.ctrl.createQueuePairs(10, { depth: 4 });
  assert.equal(qs.length, 3);
  assert.deepEqual(qs.map((q) => q.qid), [1, 2, 3]);
  await assert.rejects(t.ctrl.createQueuePair(), { code: 'ENOSPC' });
  await Promise.all(qs.map((q, i) => t.ns.write(i, pattern(512, i), q)));
  await t.ctrl.deleteQueuePair(qs[1]!);
  assert.equal(t.sim.ioQueueCount, 2);
  await assert.rejects(t.ns.read(0, new Uint8Array(512), qs[1]), { code: 'ECANCELED' });
  const again = await t.ctrl.createQueuePair({ depth: 4 });
  assert.equal(again.qid, 2);
  await assert.rejects(t.ctrl.createQueuePair({ depth: 5000 }), { code: 'EINVAL', message: /CAP.MQES/ });
});

test('a command that never completes times out (ETIMEDOUT); the controller is reset and I/O goes on', async () => {
  await using t = await setup({}, { defaultQueue: { depth: 8, timeoutMs: 200 } });
  t.sim.dropNext(1);
  await assert.rejects(t.ns.read(0, new Uint8Array(512)), { code: 'ETIMEDOUT', message: /Read \(CID \d+\) not completed within 200 ms/ });
  while (t.ctrl.resets === 0 || t.sim.disables === 0) await new Promise((r) => setTimeout(r, 10));
  await t.ns.write(3, pattern(512, 3));
  const back = new Uint8Array(512);
  await t.ns.read(3, back);
  assert.deepEqual(back, pattern(512, 3));
});

test('CSTS.CFS: commands in flight fail with EIO, the controller is reset, later I/O works', async () => {
  await using t = await setup({}, { defaultQueue: { depth: 8, timeoutMs: 60_000 } });
  await t.ns.write(0, pattern(4096, 5));
  t.sim.raiseFatal();
  const inflight = t.ns.read(0, new Uint8Array(4096));
  await assert.rejects(inflight, { code: 'EIO', message: /controller reset \(fatal status \(CSTS.CFS\)\)/ });
  assert.equal(t.ctrl.resets, 1);
  assert.equal(t.ctrl.status().fatal, false);
  const back = new Uint8Array(4096);
  await t.ns.read(0, back);
  assert.deepEqual(back, pattern(4096, 5));
});

test('device.reset() (function-level reset) then reinitialize(): same queues, same DMA buffers', async () => {
  await using t = await setup({ msixVectors: 4 }, { defaultQueue: { depth: 8 } });
  const qi = await t.ctrl.createQueuePair({ depth: 8, interrupts: true });
  const buf = t.ctrl.allocBuffer(8192);
  new Uint8Array(buf.buffer).set(pattern(8192, 11));
  await t.ns.writeDma(100, buf, 0, 8192);
  t.device.reset();
  assert.equal(t.sim.enabled, false);
  await t.ctrl.reinitialize();
  assert.equal(t.sim.enabled, true);
  new Uint8Array(buf.buffer).fill(0);
  await t.ns.readDma(100, buf, 0, 8192);
  assert.deepEqual(new Uint8Array(buf.buffer, 0, 8192), pattern(8192, 11));
  await t.ns.readDma(100, buf, 0, 4096, qi);
  assert.equal(qi.mode, 'interrupt');
});

test('flush, trim (Dataset Management) and Write Zeroes', async () => {
  await using t = await setup();
  await t.ns.write(0, pattern(64 * 512, 2));
  await t.ns.flush();
  assert.equal(t.sim.log.at(-1)!.opcode, R.NVM_FLUSH);
  await t.ns.trim(8, 8);
  const dsm = t.sim.log.at(-1)!;
  assert.equal(dsm.opcode, R.NVM_DATASET_MANAGEMENT);
  assert.equal(dsm.cdw11 & R.DSM_DEALLOCATE, R.DSM_DEALLOCATE);
  assert.ok(t.sim.disk.subarray(8 * 512, 16 * 512).every((b) => b === 0));
  await t.ns.writeZeroes(20, 4);
  assert.ok(t.sim.disk.subarray(20 * 512, 24 * 512).every((b) => b === 0));
  assert.deepEqual(t.sim.disk.subarray(0, 8 * 512), pattern(64 * 512, 2).subarray(0, 8 * 512));
  const { device, sim } = NvmeSimulator.open({ oncs: 0 });
  const ctrl = await NvmeController.open(device, {});
  const ns = await ctrl.namespace(1);
  await assert.rejects(ns.trim(0, 1), { code: 'ENOTSUP' });
  await ctrl.close();
  closeDevice(device);
  assert.equal(sim.shutdowns, 1);
});

test('close: I/O queues deleted, CC.SHN normal shutdown; later calls fail clearly', async () => {
  const { device, sim } = NvmeSimulator.open();
  const ctrl = await NvmeController.open(device, { defaultQueue: { depth: 4 } });
  const ns = await ctrl.namespace(1);
  await ctrl.createQueuePair({ depth: 4 });
  assert.equal(sim.ioQueueCount, 2);
  await ctrl.close();
  assert.equal(sim.ioQueueCount, 0);
  assert.equal(sim.shutdowns, 1);
  assert.equal(ctrl.status().shutdown, 'complete');
  await assert.rejects(ns.read(0, new Uint8Array(512)), { code: 'ECANCELED', message: /was closed/ });
  await assert.rejects(ctrl.adminCommand(R.ADMIN_IDENTIFY, 0, 1), { code: 'ECANCELED' });
  await ctrl.close(); // idempotent
  closeDevice(device);
});

test('open refuses what is not an NVMe controller, and a controller that never gets ready', async () => {
  const { device, sim } = NvmeSimulator.open({ readyDelayMs: 5000, timeoutUnits: 1 });
  await assert.rejects(NvmeController.open(device), { code: 'ETIMEDOUT', message: /CAP.TO = 500 ms/ });
  closeDevice(device);
  const other = NvmeSimulator.open();
  other.sim.config[0x0b] = 0x02; // network controller
  await assert.rejects(NvmeController.open(other.device), { code: 'ENODEV', message: /not an NVMe controller/ });
  closeDevice(other.device);
  void sim;
});
