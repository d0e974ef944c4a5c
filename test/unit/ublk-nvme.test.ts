/**
 * The ublk NVMe adapter's callback path on the simulated controller: reads and plain writes go
 * to the NVMe queue as one command each, zero copy from the tag's DMA buffer, and end in the
 * tag's callback; what it leaves to the promise methods (FUA, flush, discard, write zeroes,
 * memory that is not its own) it declines; a refused request still ends in the callback.
 * (The ublk queue that drives it needs a 6.0+ kernel: test/guest/ublk.test.ts.)
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { NvmeSimulator } from '../support/nvme-simulator';
import { NvmeController } from '../../src/drivers/nvme/controller';
import { NvmeUblkDevice } from '../../src/exports/ublk/nvme';
import * as R from '../../src/drivers/nvme/registers';
import * as U from '../../src/uapi/ublk';

async function setup() {
  const { device, sim } = NvmeSimulator.open({ blockSize: 512, blocks: (4 << 20) / 512 });
  const ctrl = await NvmeController.open(device, { defaultQueue: { depth: 16 } });
  const ns = await ctrl.namespace(1);
  const dev = new NvmeUblkDevice(ns, ctrl.defaultQueue!);
  return { sim, ctrl, dev, async [Symbol.asyncDispose]() { await ctrl.close(); device.close(); } };
}

function io(dev: NvmeUblkDevice, op: number, offset: number, length: number, fua: boolean, handle: number): { taken: boolean; done: Promise<Error | null> } {
  let taken = false;
  const done = new Promise<Error | null>((resolve) => {
    taken = dev.startIo(op, offset, length, fua, handle, resolve);
  });
  return { taken, done };
}

test('ublk NVMe adapter: reads and writes on the callback path are one NVMe command each, zero copy from the tag buffer', async () => {
  await using t = await setup();
  const buf = t.dev.allocIoBuffer(64 * 1024);
  const handle = t.dev.ioBufferHandle(buf);
  assert.ok(handle >= 0, 'a buffer from allocIoBuffer has a handle');
  const dma = t.ctrl.registeredBuffer(buf.buffer);
  assert.equal(handle, dma!.iova, 'the handle is the buffer\'s IOVA');
  for (let i = 0; i < 8192; i++) buf[i] = (i * 13 + 5) & 0xff;
  const expected = Buffer.from(buf.subarray(0, 8192));

  const before = t.sim.log.length;
  const w = io(t.dev, U.UBLK_IO_OP_WRITE, 4096, 8192, false, handle);
  assert.equal(w.taken, true);
  assert.equal(await w.done, null);
  const wr = t.sim.log.slice(before);
  assert.deepEqual(wr.map((r) => r.opcode), [R.NVM_WRITE]);
  assert.equal(wr[0]!.prp1, handle, 'the device reads the tag buffer itself');
  assert.equal(wr[0]!.cdw12 & R.RW_FUA, 0);
  assert.deepEqual(Buffer.from(t.sim.disk.subarray(4096, 4096 + 8192)), expected);

  buf.fill(0);
  const r = io(t.dev, U.UBLK_IO_OP_READ, 4096, 8192, false, handle);
  assert.equal(r.taken, true);
  assert.equal(await r.done, null);
  assert.equal(t.sim.log.at(-1)!.opcode, R.NVM_READ);
  assert.deepEqual(Buffer.from(buf.subarray(0, 8192)), expected);
  t.dev.freeIoBuffer(buf);
});

test('ublk NVMe adapter: FUA writes, flush, discard, write zeroes and foreign memory are left to the promise methods', async () => {
  await using t = await setup();
  const buf = t.dev.allocIoBuffer(4096);
  const handle = t.dev.ioBufferHandle(buf);
  const before = t.sim.log.length;
  const declined = (op: number, fua: boolean, h = handle) => {
    const r = io(t.dev, op, 0, 4096, fua, h);
    return r.taken;
  };
  assert.equal(declined(U.UBLK_IO_OP_WRITE, true), false, 'FUA write');
  assert.equal(declined(U.UBLK_IO_OP_FLUSH, false), false);
  assert.equal(declined(U.UBLK_IO_OP_DISCARD, false), false);
  assert.equal(declined(U.UBLK_IO_OP_WRITE_ZEROES, false), false);
  assert.equal(t.dev.ioBufferHandle(new Uint8Array(4096)), -1, 'memory not from allocIoBuffer has no handle');
  assert.equal(declined(U.UBLK_IO_OP_READ, false, -1), false);
  assert.equal(t.sim.log.length, before, 'nothing was submitted for a declined request');
  const ro = new NvmeUblkDevice(t.dev.namespace, t.ctrl.defaultQueue!, true);
  const rbuf = ro.allocIoBuffer(4096);
  assert.equal(io(ro, U.UBLK_IO_OP_WRITE, 0, 4096, false, ro.ioBufferHandle(rbuf)).taken, false, 'a read-only device leaves writes to the promise path');
  ro.freeIoBuffer(rbuf);
  t.dev.freeIoBuffer(buf);
});

test('ublk NVMe adapter: a request the driver refuses still ends in its callback, with the driver\'s error', async () => {
  await using t = await setup();
  const buf = t.dev.allocIoBuffer(8192);
  const handle = t.dev.ioBufferHandle(buf);
  const r = io(t.dev, U.UBLK_IO_OP_READ, t.dev.size - 4096, 8192, false, handle);
  assert.equal(r.taken, true);
  const err = await r.done;
  assert.ok(err instanceof Error);
  assert.equal((err as { code?: string }).code, 'ERANGE');
  t.dev.freeIoBuffer(buf);
});

test('ublk NVMe adapter: requests started between plug() and unplug() share one SQ doorbell', async () => {
  await using t = await setup();
  const q = t.ctrl.defaultQueue!;
  const bufs = Array.from({ length: 8 }, () => t.dev.allocIoBuffer(4096));
  const before = q.doorbells;
  t.dev.plug();
  const ios = bufs.map((b, i) => io(t.dev, U.UBLK_IO_OP_READ, i * 4096, 4096, false, t.dev.ioBufferHandle(b)));
  assert.equal(q.doorbells, before, 'nothing rung while plugged');
  t.dev.unplug();
  assert.equal(q.doorbells, before + 1, 'one doorbell for the eight');
  for (const r of ios) {
    assert.equal(r.taken, true);
    assert.equal(await r.done, null);
  }
  for (const b of bufs) t.dev.freeIoBuffer(b);
});
