/**
 * DMA that can never land in the wrong place (issue 10), written once and run against every way
 * of reaching an edu device: QEMU's real edu through the guest kernel's vfio-pci, and the
 * TypeScript edu model over vfio-user. Each case is one the suites missed and that failed:
 *
 * - memory mapped first and written afterwards, for every direction and kind of JS memory (a
 *   read-only pin of untouched memory pinned the shared zero page: the device read zeros);
 * - memory whose backing can change under a mapping (resizable, growable, detached, transferred);
 * - a DMA mask wider than the device's (the device truncated IOVAs into another mapping);
 * - a DMA left running at close, and a new owner mapping memory right after (it landed there);
 * - bad input that threw TypeError, and IOVA-exhaustion messages that said the wrong thing.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import type { PciDevice } from '../../src/device/device';
import { openDevice } from '../../src/device/open';
import { EduDriver } from '../../src/drivers/edu/edu-driver';
import * as R from '../../src/drivers/edu/registers';
import { pattern } from './edu-driver-suite';

const PCI_COMMAND = 0x04;
const PCI_COMMAND_MASTER = 0x4;
const MiB = 1 << 20;

export interface DmaSafetyTarget {
  label: string;
  /** Opens the edu device with this mask (the default: no mask given at all). */
  open(dmaMask?: number | bigint): Promise<PciDevice>;
  /** Address or socket of the device, for bad-input checks. */
  target: string;
  /** Extra memory kinds this target can offer (e.g. hugepage DMA buffers in the guest). */
  extraKinds?: MemoryKind[];
  /** Rounds of "DMA in flight at close, then a new owner" (each costs one DMA time of the device). */
  closeRounds: number;
}

export interface MemoryKind {
  name: string;
  /** Fresh, never-written memory of at least `length` bytes, and what to release afterwards. */
  make(device: PciDevice, length: number): { view: Uint8Array; dispose(): void };
  /** Largest length worth testing (the first and the last page are used). */
  length: number;
  /** DmaBuffer memory is used at its own IOVA instead of through mapDma. */
  coherent?: boolean;
}

const BASE_KINDS: MemoryKind[] = [
  { name: 'Uint8Array (1 MiB)', length: MiB, make: (_d, n) => ({ view: new Uint8Array(n), dispose() {} }) },
  { name: 'Buffer.allocUnsafe (1 MiB)', length: MiB, make: (_d, n) => ({ view: Buffer.allocUnsafe(n), dispose() {} }) },
  { name: 'Buffer pool slice (2000 bytes)', length: 2000, make: (_d, n) => ({ view: Buffer.allocUnsafe(n), dispose() {} }) },
  { name: 'SharedArrayBuffer view (64 KiB)', length: 64 << 10, make: (_d, n) => ({ view: new Uint8Array(new SharedArrayBuffer(n)), dispose() {} }) },
  {
    name: 'DmaBuffer (64 KiB, at its own IOVA)', length: 64 << 10, coherent: true,
    make: (d, n) => {
      const b = d.allocDma(n, { hugePages: 'never' });
      return { view: Object.assign(new Uint8Array(b.buffer, 0, n), { dmaIova: b.iova }), dispose: () => b.free() };
    },
  },
  {
    name: 'view into a DmaBuffer, mapped again (64 KiB)', length: 60 << 10,
    make: (d, n) => {
      const b = d.allocDma(n + 8192, { hugePages: 'never' });
      return { view: new Uint8Array(b.buffer, 100, n), dispose: () => b.free() };
    },
  },
];

/** Where the device sees byte `offset` of the memory. */
type Iova = (offset: number) => number;

/**
 * Map first, then write, then let the device read; and let the device write, then look. Each at
 * the first and the last page of the memory.
 */
async function mapThenWrite(device: PciDevice, edu: EduDriver, kind: MemoryKind, direction: 'to-device' | 'from-device' | 'bidirectional'): Promise<void> {
  const { view, dispose } = kind.make(device, kind.length);
  try {
    let iovaOf: Iova;
    let unmap = () => {};
    if (kind.coherent) {
      const base = (view as Uint8Array & { dmaIova: number }).dmaIova;
      iovaOf = (offset) => base + offset;
    } else {
      const m = device.mapDma(view, direction);
      iovaOf = (offset) => m.iova + offset;
      unmap = () => m.unmap();
    }
    const chunk = Math.min(R.DMA_BUFFER_USABLE, view.length);
    const offsets = view.length > chunk ? [0, view.length - chunk] : [0];
    for (const [i, offset] of offsets.entries()) {
      const seed = 11 + 10 * i + direction.length;
      // The process writes only now, after the memory was mapped.
      view.set(pattern(chunk, seed), offset);
      if (direction !== 'from-device') {
        await edu.dma('to-device', iovaOf(offset), 0, chunk);
        const seen = await edu.copyFromDevice(0, chunk);
        assert.deepEqual(seen, pattern(chunk, seed), `${kind.name}, ${direction}, offset ${offset}: the device read what the process wrote after mapping`);
      }
      if (direction !== 'to-device') {
        await edu.copyToDevice(pattern(chunk, seed + 100), 0);
        await edu.dma('from-device', iovaOf(offset), 0, chunk);
        assert.deepEqual(new Uint8Array(view.buffer, view.byteOffset + offset, chunk), pattern(chunk, seed + 100), `${kind.name}, ${direction}, offset ${offset}: the process sees what the device wrote`);
      }
    }
    unmap();
  } finally {
    dispose();
  }
}

function commandRegister(device: PciDevice): number {
  return device.config.read16(PCI_COMMAND);
}

/** Poll the edu's DMA-running bit until the engine is idle (a hang guard only; no clock asserted). */
async function waitDmaIdle(device: PciDevice): Promise<void> {
  const regs = device.bar(0);
  const guard = Date.now() + 30_000;
  while (regs.read32(R.REG_DMA_CMD) & R.DMA_CMD_START) {
    if (Date.now() > guard) throw new Error('edu DMA engine never went idle');
    await new Promise((r) => setImmediate(r));
  }
}

export function registerDmaSafetySuite(target: DmaSafetyTarget): void {
  const { label } = target;
  const kinds = [...BASE_KINDS, ...(target.extraKinds ?? [])];

  for (const direction of ['to-device', 'from-device', 'bidirectional'] as const) {
    test(`${label}: map first, write afterwards (${direction}): the device and the process see the same bytes, every memory kind`, async () => {
      await using device = await target.open(R.EDU_DEFAULT_DMA_MASK);
      const edu = new EduDriver(device);
      for (const kind of kinds) {
        if (kind.coherent && direction !== 'bidirectional') continue; // coherent memory is always both ways
        await mapThenWrite(device, edu, kind, direction);
      }
    });
  }

  test(`${label}: memory whose backing can change is refused with EINVAL; a mapped buffer cannot be transferred away`, async () => {
    await using device = await target.open(R.EDU_DEFAULT_DMA_MASK);
    const resizable = new (ArrayBuffer as any)(8192, { maxByteLength: 65536 }) as ArrayBuffer;
    const growable = new (SharedArrayBuffer as any)(8192, { maxByteLength: 65536 }) as SharedArrayBuffer;
    for (const [what, memory] of [
      ['a resizable ArrayBuffer', resizable],
      ['a view over a resizable ArrayBuffer', new Uint8Array(resizable, 0, 4096)],
      ['a length-tracking view over a resizable ArrayBuffer', new Uint8Array(resizable)],
      ['a growable SharedArrayBuffer', growable],
      ['a view over a growable SharedArrayBuffer', new Uint8Array(growable)],
    ] as const) {
      assert.throws(() => device.mapDma(memory as never, 'bidirectional'), (e: any) => e.name !== 'TypeError' && e.code === 'EINVAL' && /resiz|grow/i.test(e.message), what);
    }
    assert.equal(device.dma.liveMappings, 0, 'nothing was left mapped');
    // Detached memory (transferred away) is refused, as a buffer and as a view.
    const gone = new ArrayBuffer(4096);
    const goneView = new Uint8Array(gone);
    structuredClone(gone, { transfer: [gone] });
    assert.throws(() => device.mapDma(gone, 'to-device'), (e: any) => e.code === 'EINVAL' && /detached/.test(e.message));
    assert.throws(() => device.mapDma(goneView, 'to-device'), (e: any) => e.code === 'EINVAL' && /detached/.test(e.message));
    // A SharedArrayBuffer (fixed size) is mapped as a bare buffer and through a view alike.
    const shared = new SharedArrayBuffer(8192);
    device.mapDma(shared as never, 'bidirectional').unmap();
    device.mapDma(new Uint8Array(shared, 4096), 'bidirectional').unmap();
    // Once mapped, a buffer cannot be moved to another owner (which could free it under the device).
    const held = new ArrayBuffer(8192);
    const m = device.mapDma(held, 'bidirectional');
    try {
      structuredClone(held, { transfer: [held] });
    } catch {
      // Refusing the transfer is as good as copying instead of moving.
    }
    assert.equal(held.byteLength, 8192, 'the mapped buffer is still attached');
    const edu = new EduDriver(device);
    await edu.copyToDevice(pattern(4000, 77), 0);
    await edu.dma('from-device', m.iova, 0, 4000);
    assert.deepEqual(new Uint8Array(held, 0, 4000), pattern(4000, 77));
    m.unmap();
  });

  test(`${label}: a DMA mask wider than the device's 28 bits is refused by the driver; narrower ones work`, async () => {
    for (const wide of [2 ** 40 - 1, 0xffffffff, (1n << 64n) - 1n]) {
      const device = await target.open(wide);
      try {
        assert.throws(() => new EduDriver(device), (e: any) => e.code === 'EINVAL' && /28/.test(e.message), `mask 0x${wide.toString(16)}`);
      } finally {
        device.close();
      }
    }
    for (const mask of [R.EDU_DEFAULT_DMA_MASK, 0xffffff]) {
      await using device = await target.open(mask);
      const edu = new EduDriver(device);
      assert.equal(device.dmaLimit, mask);
      await edu.copyToDevice(pattern(100, 3), 0);
      assert.deepEqual(await edu.copyFromDevice(0, 100), pattern(100, 3));
    }
    // No mask at all: the driver narrows it to what its device can address.
    await using device = await target.open();
    new EduDriver(device);
    assert.equal(device.dmaLimit, R.EDU_DEFAULT_DMA_MASK);
    const b = device.allocDma(4096);
    assert.ok(b.iova + b.size - 1 <= R.EDU_DEFAULT_DMA_MASK);
  });

  test(`${label}: bus mastering is off when openDevice returns, and on once the driver has quiesced its device`, async () => {
    await using device = await target.open(R.EDU_DEFAULT_DMA_MASK);
    assert.equal(commandRegister(device) & PCI_COMMAND_MASTER, 0, 'no bus mastering before a driver asked for it');
    const edu = new EduDriver(device);
    await edu.copyToDevice(pattern(10, 1), 0);
    assert.notEqual(commandRegister(device) & PCI_COMMAND_MASTER, 0, 'the driver switched it on');
  });

  test(`${label}: a DMA left running at close never lands in the next owner's memory (${target.closeRounds} rounds)`, async () => {
    for (let round = 0; round < target.closeRounds; round++) {
      const old = await target.open(R.EDU_DEFAULT_DMA_MASK);
      const oldEdu = new EduDriver(old);
      const target0 = old.mapDma(new Uint8Array(4096), 'from-device'); // the first IOVA this owner got
      await oldEdu.copyToDevice(new Uint8Array(R.DMA_BUFFER_USABLE).fill(0xe7), 0);
      oldEdu.startDma('from-device', target0.iova, 0, R.DMA_BUFFER_USABLE, false);
      old.close(); // the transfer is still running
      await using next = await target.open(R.EDU_DEFAULT_DMA_MASK);
      const victim = new Uint8Array(256 << 10);
      const m = next.mapDma(victim, 'bidirectional');
      await waitDmaIdle(next); // the old transfer has ended, one way or another
      const hit = victim.findIndex((b) => b !== 0);
      assert.equal(hit, -1, `round ${round}: the old owner's DMA wrote into the new owner's buffer at byte ${hit} (IOVA 0x${(m.iova + hit).toString(16)}; old target 0x${target0.iova.toString(16)})`);
      const edu = new EduDriver(next);
      await edu.dma('from-device', m.iova, 0, 16);
      assert.ok(victim.subarray(0, 16).every((b) => b === 0xe7), 'the new owner can DMA');
      m.unmap();
    }
  });

  test(`${label}: bad input is a UserpciError with a sensible code, never a TypeError`, async () => {
    await assert.rejects(openDevice(target.target, null as never), (e: any) => e.name !== 'TypeError' && e.code === 'EINVAL' && /options/.test(e.message));
    await assert.rejects(openDevice(target.target, 5 as never), (e: any) => e.code === 'EINVAL');
    await assert.rejects(openDevice(target.target, { dmaMask: '0xfff' } as never), (e: any) => e.code === 'EINVAL');
    await using device = await target.open(R.EDU_DEFAULT_DMA_MASK);
    assert.throws(() => device.allocDma(4096, { hugePages: 'bogus' as never }), (e: any) => e.code === 'EINVAL' && /hugePages/.test(e.message));
    assert.throws(() => device.allocDma(4096, null as never), (e: any) => e.code === 'EINVAL');
    assert.throws(() => device.mapDma(null as never, 'to-device'), (e: any) => e.code === 'EINVAL');
    assert.throws(() => device.mapDma({ length: 8 } as never, 'to-device'), (e: any) => e.code === 'EINVAL');
    assert.equal(device.dma.liveBuffers + device.dma.liveMappings, 0);
  });

  test(`${label}: IOVA space under a narrow mask: allocDma and mapDma say the same, true thing when it is full`, async () => {
    await using device = await target.open(0xffffff); // 16 MiB of IOVA space
    const tooBig = 32 * MiB;
    const fromAlloc = (() => { try { device.allocDma(tooBig, { hugePages: 'never' }); } catch (e) { return e as any; } })();
    const fromMap = (() => { try { device.mapDma(new Uint8Array(tooBig), 'to-device'); } catch (e) { return e as any; } })();
    for (const e of [fromAlloc, fromMap]) {
      assert.ok(e, 'refused');
      assert.equal(e.code, 'ENOMEM');
      assert.match(e.message, /0xffffff/);
      assert.doesNotMatch(e.message, /fragment/, 'nothing is fragmented: the space is too small');
      const free = Number(/(\d+) bytes (?:are )?free/.exec(e.message)?.[1]);
      assert.ok(free > 0 && free <= 16 * MiB, `free bytes reported for the space under the mask, not the whole aperture: ${e.message}`);
    }
    const strip = (m: string) => m.replace(/\d+/g, 'N');
    assert.equal(strip(fromAlloc.message), strip(fromMap.message), 'one wording for one condition');
  });
}
