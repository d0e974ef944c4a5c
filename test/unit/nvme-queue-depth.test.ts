/**
 * Queue depths up to the controller's limit: an I/O queue of CAP.MQES + 1 entries (4096, as
 * QEMU's nvme offers) holds 4095 commands. Its SQ (256 KiB) and CQ (64 KiB) span many pages and
 * are created as physically contiguous queues named by PRP1 alone (no PRP list).
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { NvmeSimulator } from '../support/nvme-simulator';
import { NvmeController } from '../../src/drivers/nvme/controller';
import { fillPattern } from '../../src/drivers/nvme/workload';
import * as R from '../../src/drivers/nvme/registers';

for (const depth of [127, 128, 255, 1024, 4095]) {
  test(`queue depth ${depth}: created with PRP1 only, all ${depth} commands in flight at once, data read back`, { timeout: 120_000 }, async () => {
    const { device, sim } = NvmeSimulator.open({ maxQueueEntries: 4096, blocks: 8192 });
    const ctrl = await NvmeController.open(device, { defaultQueue: false });
    try {
      const ns = await ctrl.namespace(1);
      for (const interrupts of [false, true]) {
        const before = sim.log.length;
        const q = await ctrl.createQueuePair({ depth, interrupts });
        const creates = sim.log.slice(before).filter((c) => c.qid === 0 && (c.opcode === R.ADMIN_CREATE_IO_SQ || c.opcode === R.ADMIN_CREATE_IO_CQ));
        assert.equal(creates.length, 2);
        for (const c of creates) {
          assert.equal(c.status, 0);
          assert.equal(c.prp2, 0, 'a contiguous queue is named by PRP1 alone');
        }
        assert.equal(q.entries, depth + 1);
        // depth writes of one block each, all submitted before any completes, then read back.
        const data = fillPattern(new Uint8Array(depth * 512), depth);
        const buf = ctrl.allocBuffer(depth * 512);
        new Uint8Array(buf.buffer, 0, data.length).set(data);
        const writes = Array.from({ length: depth }, (_, i) => ns.writeDma(i, buf, i * 512, 512, q));
        assert.equal(q.outstanding, depth, 'every command is in flight');
        await Promise.all(writes);
        new Uint8Array(buf.buffer).fill(0);
        await Promise.all(Array.from({ length: depth }, (_, i) => ns.readDma(i, buf, i * 512, 512, q)));
        assert.deepEqual(new Uint8Array(buf.buffer, 0, data.length), data);
        buf.free();
        await ctrl.deleteQueuePair(q);
      }
    } finally {
      await ctrl.close();
      device.close();
    }
  });
}

test('a depth beyond CAP.MQES is refused with EINVAL naming the limit', async () => {
  const { device } = NvmeSimulator.open({ maxQueueEntries: 4096 });
  const ctrl = await NvmeController.open(device, { defaultQueue: false });
  try {
    await assert.rejects(ctrl.createQueuePair({ depth: 4096 }), { code: 'EINVAL', message: /1\.\.4095.*CAP\.MQES/ });
  } finally {
    await ctrl.close();
    device.close();
  }
});
