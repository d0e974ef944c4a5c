/**
 * An NVMe namespace (on the simulated controller) exported as an NBD block device: aligned
 * requests map onto NVMe commands, unaligned ones are widened (reads) or read-modify-written
 * (writes) without losing concurrent updates; trim and write zeroes; errors mapped to NBD's.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { NvmeSimulator } from '../support/nvme-simulator';
import { NvmeController } from '../../src/drivers/nvme/controller';
import { NvmeBlockDevice } from '../../src/exports/nbd/nvme-device';
import { errnoFor } from '../../src/exports/nbd/server';
import * as R from '../../src/drivers/nvme/registers';
import * as P from '../../src/exports/nbd/protocol';

async function setup(blockSize = 512, oncs?: number) {
  const { device, sim } = NvmeSimulator.open({ blockSize, blocks: (4 << 20) / blockSize, ...(oncs === undefined ? {} : { oncs }) });
  const ctrl = await NvmeController.open(device, { defaultQueue: { depth: 16 } });
  const ns = await ctrl.namespace(1);
  const dev = new NvmeBlockDevice(ns);
  return { sim, ctrl, dev, async [Symbol.asyncDispose]() { await ctrl.close(); device.close(); } };
}

function bytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + seed * 31) & 0xff;
  return b;
}

test('aligned I/O maps straight onto NVMe commands', async () => {
  await using t = await setup(4096);
  assert.equal(t.dev.size, 4 << 20);
  assert.equal(t.dev.blockSize, 4096);
  const data = bytes(64 * 1024, 1);
  const before = t.sim.log.length;
  await t.dev.write(8192, data, false);
  assert.equal(t.dev.readModifyWrites, 0);
  assert.deepEqual(t.sim.log.slice(before).map((r) => r.opcode), [R.NVM_WRITE]);
  assert.deepEqual(Buffer.from(await t.dev.read(8192, data.length)), data);
  await t.dev.write(0, bytes(4096, 2), true);
  assert.equal(t.sim.log.at(-1)!.cdw12 & R.RW_FUA, R.RW_FUA, 'FUA passed through');
});

test('unaligned reads and writes on a 4096-byte namespace; concurrent overlapping ones lose nothing', async () => {
  await using t = await setup(4096);
  const image = Buffer.alloc(t.dev.size);
  const base = bytes(256 * 1024, 3);
  await t.dev.write(0, base, false);
  base.copy(image, 0);
  // Many small unaligned writes at once, several in the same blocks.
  const writes: Promise<void>[] = [];
  for (let i = 0; i < 60; i++) {
    const off = (i * 1531) % (200 * 1024);
    const len = 1 + ((i * 977) % 9000);
    const d = bytes(len, 100 + i);
    d.copy(image, off);
    writes.push(t.dev.write(off, d, false));
  }
  // Plus aligned writes racing with them in the same area.
  const aligned = bytes(8192, 9);
  aligned.copy(image, 40960);
  writes.push(t.dev.write(40960, aligned, false));
  await Promise.all(writes);
  assert.ok(t.dev.readModifyWrites > 50);
  const back = Buffer.from(await t.dev.read(0, 256 * 1024));
  // The aligned write is ordered after the RMWs it overlaps that came before it, and the ones
  // after it wait for it: the final image is the issue-order image.
  assert.ok(back.equals(image.subarray(0, 256 * 1024)), 'every byte as written, in issue order');
  assert.deepEqual(Buffer.from(await t.dev.read(4095, 3)), image.subarray(4095, 4098));
});

test('trim deallocates whole blocks inside the range; write zeroes covers partial blocks too', async () => {
  await using t = await setup(512);
  await t.dev.write(0, bytes(8192, 5), false);
  await t.dev.trim(100, 2000); // whole blocks 1..4
  assert.equal(t.sim.log.at(-1)!.opcode, R.NVM_DATASET_MANAGEMENT);
  const after = Buffer.from(await t.dev.read(0, 8192));
  assert.deepEqual(after.subarray(0, 512), bytes(8192, 5).subarray(0, 512));
  assert.ok(after.subarray(512, 2048).every((b) => b === 0));
  assert.deepEqual(after.subarray(2048), bytes(8192, 5).subarray(2048));
  await t.dev.writeZeroes(3000, 3000, false);
  const z = Buffer.from(await t.dev.read(0, 8192));
  assert.ok(z.subarray(3000, 6000).every((b) => b === 0));
  assert.deepEqual(z.subarray(6000), bytes(8192, 5).subarray(6000));
  await t.dev.trim(10, 20); // no whole block: nothing to do
});

test('without Dataset Management and Write Zeroes: no trim advertised, zeroes written as data', async () => {
  await using t = await setup(512, 0);
  assert.equal(t.dev.canTrim, false);
  await t.dev.write(0, bytes(4096, 1), false);
  await t.dev.writeZeroes(512, 1024, false);
  assert.equal(t.sim.log.at(-1)!.opcode, R.NVM_WRITE);
  assert.ok(Buffer.from(await t.dev.read(512, 1024)).every((b) => b === 0));
});

test('errors map onto NBD error numbers', () => {
  assert.equal(errnoFor({ code: 'ERANGE' }), P.EINVAL);
  assert.equal(errnoFor({ code: 'EROFS' }), P.EPERM);
  assert.equal(errnoFor({ code: 'ENOTSUP' }), P.ENOTSUP);
  assert.equal(errnoFor({ code: 'ETIMEDOUT' }), P.EIO);
  assert.equal(errnoFor(new Error('x')), P.EIO);
});
