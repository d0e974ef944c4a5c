/**
 * The edu model on its own, against a recording DeviceContext: the register corners of QEMU's
 * hw/misc/edu.c that a served test cannot easily reach.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { UserpciError } from '../../src/errors';
import type { DeviceContext } from '../../src/models/device-model';
import { EduModel, EduReg, EDU_DMA_START } from '../../src/models/edu';

class RecordingContext implements DeviceContext {
  msi = false;
  intx = false;
  notified: number[] = [];
  intxChanges: boolean[] = [];
  dmaReads: [number, number][] = [];
  dmaWrites: [number, Uint8Array][] = [];
  logs: string[] = [];
  failDma = false;
  readonly clientConnected = true;
  readonly irq = {
    get msiEnabled(): boolean {
      return ctx.msi;
    },
    msixEnabled: false,
    notify: (vector: number) => void this.notified.push(vector),
    setIntx: (level: boolean) => {
      this.intx = level;
      this.intxChanges.push(level);
    },
    get intxAsserted(): boolean {
      return ctx.intx;
    },
  };
  readonly dma = {
    read: async (iova: number, length: number) => {
      this.dmaReads.push([iova, length]);
      if (this.failDma) throw new UserpciError('EFAULT', 'unmapped');
      return new Uint8Array(length).map((_, i) => (iova + i) & 0xff);
    },
    write: async (iova: number, data: Uint8Array) => {
      this.dmaWrites.push([iova, data.slice()]);
    },
  };
  log(message: string): void {
    this.logs.push(message);
  }
}

let ctx: RecordingContext;

function setup(options: ConstructorParameters<typeof EduModel>[0] = {}): EduModel {
  ctx = new RecordingContext();
  const model = new EduModel(options);
  model.attach(ctx);
  return model;
}

function read(model: EduModel, offset: number, size = 4): bigint {
  const data = new Uint8Array(size);
  model.bars.get(0)!.handlers!.read(offset, data);
  let v = 0n;
  for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(data[i]!);
  return v;
}

function write(model: EduModel, offset: number, value: bigint | number, size = 4): void {
  const data = new Uint8Array(size);
  let v = BigInt(value);
  for (let i = 0; i < size; i++, v >>= 8n) data[i] = Number(v & 0xffn);
  model.bars.get(0)!.handlers!.write(offset, data);
}

const tick = () => new Promise((r) => setImmediate(r));
const settle = () => new Promise((r) => setTimeout(r, 5));

test('access widths: 4 bytes below 0x80, 4 or 8 above; anything else reads all ones and is ignored', () => {
  const m = setup();
  assert.equal(read(m, EduReg.ID), 0x010000edn);
  assert.equal(read(m, EduReg.ID, 2), 0xffffn);
  assert.equal(read(m, EduReg.ID, 8), 0xffff_ffff_ffff_ffffn);
  write(m, EduReg.LIVENESS, 0x1234, 8);
  assert.equal(read(m, EduReg.LIVENESS), 0n, 'the 8-byte write was ignored');
  write(m, EduReg.LIVENESS, 0x1234, 2);
  assert.equal(read(m, EduReg.LIVENESS), 0n);
  write(m, EduReg.DMA_SRC, 0x1_2345_6789n, 8);
  assert.equal(read(m, EduReg.DMA_SRC, 8), 0x1_2345_6789n);
  assert.equal(read(m, EduReg.DMA_SRC, 4), 0x2345_6789n, 'a 4-byte read of a 64-bit register gives its low half');
  assert.equal(read(m, EduReg.DMA_SRC + 4, 4), 0xffff_ffffn, 'the high half is not a register of its own');
  write(m, EduReg.DMA_SRC, 0xabcd, 4);
  assert.equal(read(m, EduReg.DMA_SRC, 8), 0xabcdn, 'a 4-byte write replaces the whole value');
  assert.equal(read(m, EduReg.DMA_SRC, 2), 0xffffn);
  assert.equal(read(m, 0x10), 0xffff_ffffn, 'unassigned offsets read all ones');
  assert.equal(read(m, EDU_DMA_START), 0xffff_ffffn, 'the DMA buffer is not reachable through MMIO');
});

test('liveness inverts; factorial is busy until computed and ignores writes meanwhile', async () => {
  const m = setup();
  write(m, EduReg.LIVENESS, 0);
  assert.equal(read(m, EduReg.LIVENESS), 0xffff_ffffn);
  write(m, EduReg.FACTORIAL, 5);
  assert.equal(read(m, EduReg.STATUS) & 1n, 1n, 'computing');
  write(m, EduReg.FACTORIAL, 7);
  await tick();
  assert.equal(read(m, EduReg.STATUS) & 1n, 0n);
  assert.equal(read(m, EduReg.FACTORIAL), 120n, 'the second write was ignored while busy');
  write(m, EduReg.FACTORIAL, 0);
  await tick();
  assert.equal(read(m, EduReg.FACTORIAL), 1n, '0! = 1');
  write(m, EduReg.STATUS, 0x81);
  assert.equal(read(m, EduReg.STATUS), 0x80n, 'only the interrupt bit is writable');
  write(m, EduReg.FACTORIAL, 3);
  await tick();
  assert.deepEqual(ctx.intxChanges, [true], 'factorial done raised INTx');
  assert.equal(read(m, EduReg.IRQ_STATUS), 1n);
});

test('interrupts: INTx follows the status register as a level; MSI fires per raise', () => {
  const m = setup();
  write(m, EduReg.IRQ_RAISE, 0x3);
  write(m, EduReg.IRQ_ACK, 0x1);
  assert.equal(ctx.intx, true, 'still asserted while any bit is set');
  write(m, EduReg.IRQ_ACK, 0x2);
  assert.equal(ctx.intx, false);
  assert.equal(read(m, EduReg.IRQ_STATUS), 0n);
  ctx.msi = true;
  write(m, EduReg.IRQ_RAISE, 0x8);
  write(m, EduReg.IRQ_RAISE, 0x8);
  assert.deepEqual(ctx.notified, [0, 0]);
  const changes = ctx.intxChanges.length;
  write(m, EduReg.IRQ_ACK, 0x8);
  assert.equal(ctx.intxChanges.length, changes, 'with MSI on, the ack leaves INTx alone');
  write(m, EduReg.IRQ_RAISE, 0);
  assert.deepEqual(ctx.notified, [0, 0], 'raising nothing with nothing pending does not interrupt');
});

test('DMA: addresses are clamped to dma_mask (28 bits by default), as QEMU does', async () => {
  const m = setup();
  write(m, EduReg.DMA_SRC, 0x1_0000_1000n, 8);
  write(m, EduReg.DMA_DST, EDU_DMA_START, 8);
  write(m, EduReg.DMA_COUNT, 16, 8);
  write(m, EduReg.DMA_CMD, 1, 8);
  await settle();
  assert.deepEqual(ctx.dmaReads, [[0x1000, 16]]);
  assert.deepEqual([...m.dmaBuffer.subarray(0, 4)], [0x00, 0x01, 0x02, 0x03]);
  assert.ok(ctx.logs.some((l) => l.includes('clamping')));
  const wide = setup({ dmaMask: (1n << 40n) - 1n });
  write(wide, EduReg.DMA_SRC, EDU_DMA_START, 8);
  write(wide, EduReg.DMA_DST, 0x1_0000_1000n, 8);
  write(wide, EduReg.DMA_COUNT, 8, 8);
  write(wide, EduReg.DMA_CMD, 3, 8);
  await settle();
  assert.equal(ctx.dmaWrites[0]![0], 0x1_0000_1000, 'inside a 40-bit mask the address stands');
});

test('DMA: registers are frozen while a transfer runs; completion clears RUN and raises 0x100', async () => {
  const m = setup();
  write(m, EduReg.DMA_SRC, 0x2000, 8);
  write(m, EduReg.DMA_DST, EDU_DMA_START + 0x100, 8);
  write(m, EduReg.DMA_COUNT, 32, 8);
  write(m, EduReg.DMA_CMD, 0x5, 8);
  write(m, EduReg.DMA_SRC, 0x9000, 8);
  write(m, EduReg.DMA_CMD, 0x7, 8);
  assert.equal(read(m, EduReg.DMA_SRC, 8), 0x2000n, 'frozen');
  assert.equal(read(m, EduReg.DMA_CMD, 8), 0x5n);
  await settle();
  assert.equal(read(m, EduReg.DMA_CMD, 8), 0x4n, 'RUN cleared, the rest kept');
  assert.deepEqual(ctx.dmaReads, [[0x2000, 32]]);
  assert.equal(read(m, EduReg.IRQ_STATUS), 0x100n);
  assert.equal(ctx.intx, true);
  write(m, EduReg.DMA_CMD, 0x4, 8);
  await settle();
  assert.equal(ctx.dmaReads.length, 1, 'a command without RUN starts nothing');
});

test('DMA: ranges outside the 4 KiB buffer and faulting transfers complete without copying', async () => {
  const m = setup();
  write(m, EduReg.DMA_SRC, 0x2000, 8);
  write(m, EduReg.DMA_DST, EDU_DMA_START + 4000, 8);
  write(m, EduReg.DMA_COUNT, 200, 8);
  write(m, EduReg.DMA_CMD, 1, 8);
  await settle();
  assert.deepEqual(ctx.dmaReads, [], 'QEMU would overrun its buffer; the model refuses');
  assert.equal(read(m, EduReg.DMA_CMD, 8) & 1n, 0n);
  write(m, EduReg.DMA_DST, EDU_DMA_START, 8);
  write(m, EduReg.DMA_COUNT, 8, 8);
  ctx.failDma = true;
  write(m, EduReg.DMA_CMD, 1, 8);
  await settle();
  assert.equal(read(m, EduReg.DMA_CMD, 8) & 1n, 0n, 'a faulting DMA still completes');
  assert.ok(ctx.logs.some((l) => l.includes('DMA failed')));
});

test('config space: edu\'s header and a 64-bit single-vector MSI capability at 0x40', () => {
  const m = setup();
  const c = m.config;
  assert.equal(c.u16(0), 0x1234);
  assert.equal(c.u16(2), 0x11e8);
  assert.equal(c.u8(8), 0x10);
  assert.equal(c.u32(8) >>> 8, 0x00ff00);
  assert.equal(c.u8(0x3d), 1);
  assert.equal(c.u8(0x34), 0x40);
  assert.equal(c.u8(0x40), 0x05);
  assert.equal(c.u16(0x42), 0x0080, '64-bit, one vector, disabled');
  assert.equal(c.size, 256);
  assert.equal(c.bars[0]!.size, 1 << 20);
});
