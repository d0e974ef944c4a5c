/**
 * The deterministic write/verify workload (src/drivers/nvme/workload.ts): the same seed is the
 * same plan and the same bytes anywhere (the host-side backing-file check relies on it), and a
 * run on the simulated controller reads back what it wrote.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { planWrites, applyPlan, fillPattern, runWorkload, planFootprint, expectedBytes } from '../../src/drivers/nvme/workload';
import { NvmeSimulator } from '../support/nvme-simulator';
import { NvmeController } from '../../src/drivers/nvme/controller';

test('plans are deterministic, inside the span, block multiples, dword-aligned buffer offsets', () => {
  const opts = { seed: 99, blocks: 65536, blockSize: 512, count: 200, maxBytes: 1 << 20 };
  const a = planWrites(opts);
  assert.deepEqual(planWrites(opts), a);
  assert.notDeepEqual(planWrites({ ...opts, seed: 100 }), a);
  for (const w of a) {
    assert.ok(w.length > 0 && w.length % 512 === 0 && w.length <= 1 << 20);
    assert.ok(w.lba >= 0 && w.lba + w.length / 512 <= 65536);
    assert.equal(w.bufferOffset % 4, 0);
  }
  assert.ok(a.some((w) => w.length === 1 << 20 || w.length === (1 << 20) - 512), 'boundary sizes are drawn');
  assert.deepEqual(fillPattern(new Uint8Array(10), 5), fillPattern(new Uint8Array(10), 5));
  const image = new Uint8Array(65536 * 512);
  applyPlan(image, a, 512);
  const last = a.at(-1)!;
  assert.deepEqual(image.subarray(last.lba * 512, last.lba * 512 + last.length), fillPattern(new Uint8Array(last.length), last.dataSeed));
});

test('runWorkload on the simulator: split, zero-copy and bounce writes read back equal; a corrupted block is found', async () => {
  const { device, sim } = NvmeSimulator.open({ mdts: 3, blocks: 16384 });
  const ctrl = await NvmeController.open(device, { defaultQueue: { depth: 8 } });
  try {
    const ns = await ctrl.namespace(1);
    const plan = planWrites({ seed: 3, blocks: ns.blocks, blockSize: 512, count: 30, maxBytes: 256 * 1024 });
    const r = await runWorkload(ns, plan, { concurrency: 3 });
    assert.deepEqual(r.mismatches, []);
    assert.equal(r.writes, 30);
    const image = new Uint8Array(sim.disk.length);
    applyPlan(image, plan, 512);
    assert.ok(Buffer.from(sim.disk).equals(Buffer.from(image)), 'the disk holds exactly the plan');
    // A corrupted read-back is reported, block by block.
    const orig = ns.readDma.bind(ns);
    let first = true;
    ns.readDma = async (lba, buf, offset, length, queue) => {
      await orig(lba, buf, offset, length, queue);
      if (first) {
        first = false;
        new Uint8Array(buf.buffer, offset, length)[517] ^= 0xff;
      }
    };
    const bad = await runWorkload(ns, plan.slice(0, 5), { concurrency: 2 });
    assert.equal(bad.mismatches.length, 1);
    assert.equal(bad.mismatches[0]!.firstBadByte, 5);
    assert.deepEqual(await runWorkload(ns, []), { writes: 0, bytesWritten: 0, bytesVerified: 0, mismatches: [], ms: 0 });
  } finally {
    await ctrl.close();
    device.close();
  }
});

test('a 4 TiB namespace without a span: the footprint is known before writing, the verification needs no image of the span, and the disk holds the plan', { timeout: 120_000 }, async () => {
  const blocks = (4 * 2 ** 40) / 512;
  const { device, sim } = NvmeSimulator.open({ blocks, mdts: 5, sparse: true });
  const ctrl = await NvmeController.open(device, { defaultQueue: { depth: 8 } });
  try {
    const ns = await ctrl.namespace(1);
    assert.equal(ns.size, 4 * 2 ** 40);
    const plan = planWrites({ seed: 11, blocks: ns.blocks, blockSize: 512, count: 24, maxBytes: 1 << 20 });
    const fp = planFootprint(plan, 512, { concurrency: 4, maxTransfer: ns.maxTransfer });
    assert.ok(fp.endLba - fp.firstLba > blocks / 2, 'the writes spread over the namespace');
    assert.ok(fp.bytesCovered <= fp.bytesWritten && fp.bytesWritten <= 24 << 20);
    assert.ok(fp.dmaBytes < 16 << 20, `bounded DMA memory (${fp.dmaBytes})`);
    const r = await runWorkload(ns, plan, { concurrency: 4 });
    assert.deepEqual(r.mismatches, []);
    assert.equal(r.bytesVerified, fp.bytesCovered);
    // The device holds what the plan says, block for block, wherever the writes landed.
    for (const w of plan) {
      assert.deepEqual(sim.readDisk(w.lba * 512, w.length), expectedBytes(plan, 512, w.lba, w.length / 512), `LBA ${w.lba}`);
    }
  } finally {
    await ctrl.close();
    device.close();
  }
});
