/**
 * Region over a real mapping (the fast path) and over a backend's pread/pwrite (the slow path):
 * the same values, the same errors, and write64 of a number landing as the exact 64-bit integer.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { native, constants } from '../../src/native/index';
import { Region } from '../../src/device/region';
import type { Backend, BackendRegionInfo } from '../../src/device/backend';

const SIZE = 0x4000;

/** A region over an anonymous mapping (or, not mappable, over the backend's read/write); `memory` shows what it holds. */
function mappedRegion(info: Partial<BackendRegionInfo> = {}): { region: Region; memory: DataView; unmapped: () => number } {
  let unmaps = 0;
  const parts: { offset: number; view: ArrayBuffer }[] = [];
  const slow = new DataView(new ArrayBuffer(SIZE));
  const backend = {
    mapRegion: (_i: number, offset: number, size: number) => {
      const view = native.mmap(size, constants.PROT_READ | constants.PROT_WRITE, constants.MAP_SHARED | constants.MAP_ANONYMOUS, -1, 0);
      parts.push({ offset, view });
      return view;
    },
    unmapRegion: (b: ArrayBuffer) => {
      unmaps++;
      native.munmap(b);
    },
    regionRead: (_i: number, offset: number, into: Uint8Array) => {
      into.set(new Uint8Array(slow.buffer, offset, into.length));
      return into.length;
    },
    regionWrite: (_i: number, offset: number, from: Uint8Array) => {
      new Uint8Array(slow.buffer).set(from, offset);
      return from.length;
    },
  } as unknown as Backend;
  const region = new Region(backend, { index: 0, size: SIZE, readable: true, writable: true, mappable: true, sparseAreas: undefined, ...info }, 'test BAR0');
  const memory = parts.length === 1 && parts[0]!.offset === 0 ? new DataView(parts[0]!.view) : slow;
  return { region, memory, unmapped: () => unmaps };
}

const EDGES = [0, 1, 2, 0xff, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff, 2 ** 32, 2 ** 32 + 1, 0x1234_5678_9abc, 2 ** 52 - 1, 2 ** 52, 2 ** 52 + 1, 2 ** 53 - 1];

test('write64 of a number stores exactly that 64-bit integer, on the mapping and through the backend', () => {
  for (const sparse of [false, true]) {
    const { region, memory } = mappedRegion(sparse ? { mappable: false } : {});
    assert.equal(region.mapped, !sparse);
    const values = [...EDGES];
    let x = 0x2545f491;
    for (let i = 0; i < 2000; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      values.push(((x >>> 0) % 0x200000) * 0x1_0000_0000 + ((x * 2654435761) >>> 0));
    }
    for (const v of values) {
      region.write64(0x28, v);
      const got = memory.getUint32(0x28, true) + memory.getUint32(0x2c, true) * 0x1_0000_0000;
      assert.equal(got, v, `write64(${v}) (${sparse ? 'slow' : 'mapped'})`);
      assert.equal(region.read64(0x28), BigInt(v));
    }
    region.write64(0x30, 0xfedc_ba98_7654_3210n);
    assert.equal(region.read64(0x30), 0xfedc_ba98_7654_3210n);
    region.write64(0x30, -1n);
    assert.equal(region.read64(0x30), 0xffff_ffff_ffff_ffffn, 'a bigint is taken modulo 2^64');
  }
});

test('write64 refuses numbers that are not exact 64-bit integers', () => {
  const { region } = mappedRegion();
  for (const bad of [-1, 0.5, 2 ** 53, Number.NaN, Infinity]) {
    assert.throws(() => region.write64(0x28, bad), (e: any) => e.code === 'EINVAL', String(bad));
  }
});

test('reads and writes of every width see the memory; all-ones reads are counted', () => {
  const { region, memory } = mappedRegion();
  region.write32(0x10, 0xdeadbeef);
  assert.equal(memory.getUint32(0x10, true), 0xdeadbeef);
  assert.equal(region.read32(0x10), 0xdeadbeef);
  assert.equal(region.read16(0x12), 0xdead);
  assert.equal(region.read8(0x13), 0xde);
  region.write16(0x20, 0xbeef);
  region.write8(0x22, 0x7f);
  assert.equal(memory.getUint32(0x20, true), 0x007fbeef);
  assert.equal(region.allOnesReads, 0);
  region.write32(0x40, 0xffffffff);
  assert.equal(region.read32(0x40), 0xffffffff);
  assert.equal(region.read16(0x40), 0xffff);
  assert.equal(region.read8(0x41), 0xff);
  assert.equal(region.allOnesReads, 3);
});

test('the fast path refuses what the slow path refuses: range, alignment, non-integers', () => {
  const { region } = mappedRegion();
  const cases: [string, () => unknown, string][] = [
    ['read32 past the end', () => region.read32(SIZE), 'ERANGE'],
    ['read32 straddling the end', () => region.read32(SIZE - 2), 'ERANGE'],
    ['read32 misaligned', () => region.read32(2), 'EINVAL'],
    ['read16 misaligned', () => region.read16(1), 'EINVAL'],
    ['read32 negative', () => region.read32(-4), 'ERANGE'],
    ['read32 fraction', () => region.read32(4.5), 'EINVAL'],
    ['read32 NaN', () => region.read32(Number.NaN), 'EINVAL'],
    ['read32 string', () => region.read32('4' as unknown as number), 'EINVAL'],
    ['read8 past the end', () => region.read8(SIZE), 'ERANGE'],
    ['write32 past the end', () => region.write32(SIZE, 1), 'ERANGE'],
    ['write32 misaligned', () => region.write32(6, 1), 'EINVAL'],
    ['write16 negative', () => region.write16(-2, 1), 'ERANGE'],
    ['write64 misaligned', () => region.write64(4, 1), 'EINVAL'],
    ['write64 past the end', () => region.write64(SIZE, 1), 'ERANGE'],
    ['read64 misaligned', () => region.read64(12), 'EINVAL'],
  ];
  for (const [what, fn, code] of cases) assert.throws(fn, (e: any) => e.code === code, what);
});

test('read-only regions refuse writes; revoked regions answer ENODEV and are unmapped once', () => {
  const ro = mappedRegion({ writable: false }).region;
  assert.equal(ro.read32(0), 0);
  assert.throws(() => ro.write32(0, 1), (e: any) => e.code === 'EINVAL');
  assert.throws(() => ro.write64(0, 1), (e: any) => e.code === 'EINVAL');
  const { region, unmapped } = mappedRegion();
  region.write32(0, 5);
  region.revoke('device removed');
  region.revoke('again');
  assert.equal(unmapped(), 1);
  assert.equal(region.mapped, false);
  for (const fn of [() => region.read32(0), () => region.read8(0), () => region.write32(0, 1), () => region.write64(0, 1), () => region.read64(0)]) {
    assert.throws(fn, (e: any) => e.code === 'ENODEV');
  }
});
