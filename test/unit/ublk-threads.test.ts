/**
 * What ublk's per-queue threads rely on, on the host: the DMA buffer a queue thread gets holds
 * everything its NvmeQueue and its tags take (nvmeThreadPoolBytes), and the controller's reserved
 * queue pairs (an NvmeQueue built elsewhere over the controller's DMA memory, created on the
 * controller by IOVA, its id kept from createQueuePair, following a controller reset when its
 * owner can (else told, as when the controller is closed), deleted on the controller). The
 * threads themselves need a 6.0+ kernel with ublk: test/guest/ublk-threads.test.ts.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { NvmeSimulator } from '../support/nvme-simulator';
import { NvmeController } from '../../src/drivers/nvme/controller';
import { NvmeQueue, type QueueHost } from '../../src/drivers/nvme/queue';
import * as R from '../../src/drivers/nvme/registers';
import type { DmaBuffer } from '../../src/dma/dma-space';
import { nvmeThreadPoolBytes } from '../../src/exports/ublk/nvme-thread';

test('a queue thread\'s DMA buffer holds its NvmeQueue (rings, PRP lists, DSM ranges) and its tags, with little to spare', () => {
  for (const [depth, pageSize, maxTransfer, mqes] of [[1, 4096, 4096, 2048], [64, 4096, 512 << 10, 2048], [128, 4096, 128 << 10, 64], [64, 8192, 1 << 20, 2048], [4096, 4096, 512 << 10, 2048]] as const) {
    let taken = 0;
    const page = (n: number) => Math.ceil(n / 4096) * 4096;
    const host = {
      name: 'sizing', regs: null, pageSize, maxTransfer, maxQueueEntries: mqes, doorbellStride: 4,
      allocDma: (size: number) => {
        taken += page(size);
        return { buffer: new ArrayBuffer(size), iova: 0x100000, size, freed: false, free() {} } as unknown as DmaBuffer;
      },
      queueTimedOut() {}, queueStalled() {}, queueFault() {},
    } as unknown as QueueHost;
    const q = new NvmeQueue(host, 1, depth, {});
    // The DSM ranges are taken on the first deallocate: count them as the queue would.
    taken += page(depth * R.DSM_RANGE_SIZE);
    taken += depth * page(maxTransfer);
    const pool = nvmeThreadPoolBytes(depth, pageSize, maxTransfer, mqes, maxTransfer);
    assert.ok(taken <= pool, `depth ${depth}, page ${pageSize}, transfer ${maxTransfer}: ${taken} bytes taken, pool ${pool}`);
    assert.ok(pool - taken <= 8 * 4096, `depth ${depth}: the pool is sized to what is taken (${pool - taken} bytes spare)`);
    q.destroy(new Error('done'));
  }
});

test('reserved queue pair: built over the controller\'s memory, created by IOVA, its id kept, told of a reset, deleted on the controller', async () => {
  const { device, sim } = NvmeSimulator.open({ blockSize: 512, blocks: 8192 });
  const ctrl = await NvmeController.open(device, { defaultQueue: false });
  try {
    const lost: Error[] = [];
    const qid = ctrl.reserveQueuePair((e) => lost.push(e));
    assert.equal(qid, 1);
    const other = await ctrl.createQueuePair({ depth: 8 });
    assert.equal(other.qid, 2, 'createQueuePair skips the reserved id');
    // The queue as a thread builds it: its own NvmeQueue on the controller's registers and memory.
    const q = new NvmeQueue(ctrl, qid, 8, {});
    await ctrl.createReservedQueuePair(qid, q);
    await assert.rejects(ctrl.createReservedQueuePair(qid, q), { code: 'EINVAL' });
    const created = sim.log.filter((r) => r.qid === 0 && (r.opcode === R.ADMIN_CREATE_IO_CQ || r.opcode === R.ADMIN_CREATE_IO_SQ) && (r.cdw10 & 0xffff) === qid);
    assert.deepEqual(created.map((r) => r.prp1), [q.cqIova, q.sqIova]);
    const buf = ctrl.allocBuffer(4096);
    new Uint8Array(buf.buffer).fill(0x5a);
    await q.rw(R.NVM_WRITE, 1, 512, 16, buf.iova, null, 4096, 0, null);
    assert.equal(sim.log.at(-1)!.qid, qid, 'the write went through the reserved queue');
    assert.equal(sim.disk[16 * 512 + 7], 0x5a);
    const mark = sim.log.length;
    await ctrl.recover('test');
    assert.equal(lost.length, 1, 'a reset tells the owner once');
    assert.equal(lost[0]!.message.includes('reset'), true);
    q.destroy(lost[0]!);
    assert.ok(!sim.log.slice(mark).some((r) => r.qid === 0 && r.opcode === R.ADMIN_CREATE_IO_CQ && (r.cdw10 & 0xffff) === qid), 'not re-created by the reset');
    const q2 = new NvmeQueue(ctrl, qid, 8, {});
    await ctrl.createReservedQueuePair(qid, q2);
    await ctrl.deleteReservedQueuePair(qid);
    const tail = sim.log.slice(-2);
    assert.deepEqual(tail.map((r) => [r.opcode, r.cdw10 & 0xffff]), [[R.ADMIN_DELETE_IO_SQ, qid], [R.ADMIN_DELETE_IO_CQ, qid]]);
    q2.destroy(new Error('deleted'));
    const again = ctrl.reserveQueuePair(() => undefined);
    assert.equal(again, 1, 'the id is free again');
  } finally {
    await ctrl.close();
    device.close();
  }
});

test('reserved queue pair whose owner follows resets: suspended, reset once the controller stopped, re-created over the same rings, resumed; in-flight fails EIO, waiting goes out', async () => {
  const { device, sim } = NvmeSimulator.open({ blockSize: 512, blocks: 8192 });
  const ctrl = await NvmeController.open(device, { defaultQueue: { depth: 8 } });
  try {
    const steps: string[] = [];
    const lost: Error[] = [];
    let q: NvmeQueue | null = null;
    const qid = ctrl.reserveQueuePair({
      lost: (e) => lost.push(e),
      suspend: () => {
        steps.push('suspend');
        q!.suspend();
      },
      // As a queue thread does it (nvme-thread.ts), here on the same thread.
      reset: async (e) => {
        steps.push(`reset ready=${ctrl.status().ready}`);
        q!.abortAll(e, false);
        q!.resetRings();
      },
      resume: () => {
        steps.push('resume');
        q!.resume();
      },
    });
    q = new NvmeQueue(ctrl, qid, 8, {});
    await ctrl.createReservedQueuePair(qid, q);
    const buf = ctrl.allocBuffer(3 * 4096);
    const a = new Uint8Array(buf.buffer, 0, 4096).fill(0xa1);
    await q.rw(R.NVM_WRITE, 1, 512, 16, buf.iova, null, 4096, 0, null);
    // One write the controller never answers (in flight at the reset), one submitted during it.
    sim.dropNext(1);
    const inflight = q.rw(R.NVM_WRITE, 1, 512, 64, buf.iova, null, 4096, 0, null)!.then(() => 'ok', (e: { code: string }) => e.code);
    while (sim.dropped === 0) await new Promise((r) => setImmediate(r));
    const mark = sim.log.length;
    const recovering = ctrl.recover('test');
    new Uint8Array(buf.buffer, 4096, 4096).fill(0xb2);
    const waited = q.rw(R.NVM_WRITE, 1, 512, 32, buf.iova + 4096, null, 4096, 0, null);
    await recovering;
    assert.equal(await inflight, 'EIO', 'the command the controller held failed with EIO');
    await waited;
    assert.deepEqual(steps, ['suspend', 'reset ready=false', 'resume'], 'suspended, reset only once the controller stopped, resumed once re-created');
    assert.equal(lost.length, 0, 'not lost');
    const created = sim.log.slice(mark).filter((r) => r.qid === 0 && (r.opcode === R.ADMIN_CREATE_IO_CQ || r.opcode === R.ADMIN_CREATE_IO_SQ) && (r.cdw10 & 0xffff) === qid);
    assert.deepEqual(created.map((r) => r.prp1), [q.cqIova, q.sqIova], 're-created over the same rings');
    assert.deepEqual(sim.disk.subarray(16 * 512, 16 * 512 + 4096), a, 'written before the reset');
    assert.deepEqual(sim.disk.subarray(32 * 512, 32 * 512 + 4096), new Uint8Array(4096).fill(0xb2), 'submitted during the reset, written after it');
    const back = new Uint8Array(buf.buffer, 8192, 4096);
    await q.rw(R.NVM_READ, 1, 512, 16, buf.iova + 8192, null, 4096, 0, null);
    assert.deepEqual(back, a, 'the re-created pair reads');
    assert.equal(sim.log.at(-1)!.qid, qid);
    // A second reset works the same (its rings started over once already).
    await ctrl.recover('again');
    await q.rw(R.NVM_READ, 1, 512, 32, buf.iova + 8192, null, 4096, 0, null);
    assert.deepEqual(back, new Uint8Array(4096).fill(0xb2));
    await ctrl.deleteReservedQueuePair(qid);
    q.destroy(new Error('deleted'));
  } finally {
    await ctrl.close();
    device.close();
  }
});

test('reserved queue pair: an owner that cannot follow a reset (its reset rejects) is told it is lost; the controller\'s own queues come back', async () => {
  const { device, sim } = NvmeSimulator.open({ blockSize: 512, blocks: 8192 });
  const ctrl = await NvmeController.open(device, { defaultQueue: { depth: 8 } });
  try {
    const lost: Error[] = [];
    let q: NvmeQueue | null = null;
    const qid = ctrl.reserveQueuePair({
      lost: (e) => lost.push(e),
      suspend: () => q!.suspend(),
      reset: () => Promise.reject(new Error('thread gone')),
      resume: () => assert.fail('not resumed'),
    });
    q = new NvmeQueue(ctrl, qid, 8, {});
    await ctrl.createReservedQueuePair(qid, q);
    const mark = sim.log.length;
    await ctrl.recover('test');
    assert.equal(lost.length, 1);
    assert.match(lost[0]!.message, /could not follow a controller reset/);
    assert.ok(!sim.log.slice(mark).some((r) => r.qid === 0 && r.opcode === R.ADMIN_CREATE_IO_CQ && (r.cdw10 & 0xffff) === qid), 'not re-created');
    const ns = await ctrl.namespace(1);
    await ns.write(0, new Uint8Array(512).fill(7));
    q.destroy(lost[0]!);
    await ctrl.deleteReservedQueuePair(qid);
  } finally {
    await ctrl.close();
    device.close();
  }
});

test('reserved queue pair: closing the controller tells its owner', async () => {
  const { device } = NvmeSimulator.open({ blockSize: 512, blocks: 8192 });
  const ctrl = await NvmeController.open(device, { defaultQueue: false });
  const lost: Error[] = [];
  ctrl.reserveQueuePair((e) => lost.push(e));
  await ctrl.close();
  device.close();
  assert.equal(lost.length, 1);
  assert.equal((lost[0] as { code?: string }).code, 'ECANCELED');
});
