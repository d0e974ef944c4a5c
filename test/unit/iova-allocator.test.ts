import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { IovaAllocator } from '../../src/dma/iova-allocator';
import { dmaLimitFromMask } from '../../src/device/device';

const MSI_SPLIT = [
  { start: 0, end: 0xfedfffff },
  { start: 0xfef00000, end: 2 ** 39 - 1 },
];

test('allocations stay inside the usable ranges, skip the MSI window and never hand out 0', () => {
  const a = new IovaAllocator(MSI_SPLIT);
  const first = a.allocate(4096);
  assert.equal(first, 4096);
  const big = a.allocate(0xfee00000 - 0x2000); // fills the rest of the low range exactly
  assert.equal(big + 0xfee00000 - 0x2000 - 1, 0xfedfffff);
  const next = a.allocate(4096);
  assert.ok(next >= 0xfef00000, `0x${next.toString(16)} is above the MSI window`);
});

test('the per-call limit (a DMA mask) is honoured, and exhaustion is a clear ENOMEM', () => {
  const a = new IovaAllocator(MSI_SPLIT);
  const limit = dmaLimitFromMask(0xfffffff);
  const got: number[] = [];
  for (let i = 0; i < 100; i++) got.push(a.allocate(1 << 20, 4096, limit));
  for (const iova of got) assert.ok(iova + (1 << 20) - 1 <= limit);
  assert.throws(() => a.allocate(256 << 20, 4096, limit), (e: any) => e.code === 'ENOMEM' && /0xfffffff/.test(e.message));
  // A device without the narrow mask still gets the space that reaches above it.
  assert.ok(a.allocate(256 << 20) + (256 << 20) - 1 > limit);
});

test('freed space is merged and reused', () => {
  const a = new IovaAllocator([{ start: 0, end: 0x10fff }]); // 16 usable pages (page 0 excluded)
  const pages = Array.from({ length: 16 }, () => a.allocate(4096));
  assert.throws(() => a.allocate(4096), (e: any) => e.code === 'ENOMEM');
  for (const p of pages) a.release(p);
  assert.equal(a.available, 16 * 4096);
  assert.equal(a.allocate(16 * 4096), 0x1000, 'fragments merged back into one span');
  assert.throws(() => a.release(0x5000), (e: any) => e.code === 'EINVAL');
});

test('alignment and size validation', () => {
  const a = new IovaAllocator(MSI_SPLIT);
  a.allocate(4096);
  const huge = a.allocate(2 << 20, 2 << 20);
  assert.equal(huge % (2 << 20), 0);
  for (const bad of [0, -1, 1.5, NaN, 2 ** 60]) assert.throws(() => a.allocate(bad), (e: any) => e.code === 'EINVAL' || e.code === 'ENOMEM');
  assert.throws(() => a.allocate(4096, 3 * 4096), (e: any) => e.code === 'EINVAL');
});

test('DMA masks: 2^n-1 accepted, anything else EINVAL', () => {
  assert.equal(dmaLimitFromMask(undefined), Number.MAX_SAFE_INTEGER);
  assert.equal(dmaLimitFromMask(0xffffffff), 0xffffffff);
  assert.equal(dmaLimitFromMask((1n << 64n) - 1n), Number.MAX_SAFE_INTEGER);
  assert.equal(dmaLimitFromMask((1n << 40n) - 1n), 2 ** 40 - 1);
  for (const bad of [0, -1, 0x1000, 0xff, 0xfff0, 1.5, (1n << 65n) - 1n, Number.MAX_VALUE]) {
    assert.throws(() => dmaLimitFromMask(bad as number | bigint), (e: any) => e.code === 'EINVAL', String(bad));
  }
});

test('with a cursor: next fit from a per-allocator start, folded under each caller\'s limit; freed IOVAs not reused at once', () => {
  const starts = new Set<number>();
  for (const cursor of [0, 12345 * 4096, 2 ** 40 + 7, 2 ** 46]) {
    const a = new IovaAllocator(MSI_SPLIT, 4096, { cursor });
    const first = a.allocate(4096, 4096, 0xfffffff);
    assert.ok(first >= 4096 && first + 4095 <= 0xfffffff, `0x${first.toString(16)} under the 28-bit limit`);
    starts.add(first);
    a.release(first);
    const second = a.allocate(4096, 4096, 0xfffffff);
    assert.equal(second, first + 4096, 'the cursor moved on past the freed range');
  }
  assert.equal(starts.size, 4, 'different cursors, different first IOVAs');
  // When the cursor's side is full, the search wraps around to the bottom.
  const small = new IovaAllocator([{ start: 0, end: 0x10fff }], 4096, { cursor: 0xc000 });
  const got = Array.from({ length: 16 }, () => small.allocate(4096));
  assert.equal(got[0], 0xd000, 'the cursor is an offset from the lowest usable IOVA');
  assert.deepEqual([...got].sort((x, y) => x - y), Array.from({ length: 16 }, (_, i) => (i + 1) * 4096));
});

test('exhaustion says what is true under the caller\'s limit: free bytes there, fragmented only when it is', () => {
  const a = new IovaAllocator(MSI_SPLIT);
  assert.throws(() => a.allocate(32 << 20, 4096, 0xffffff), (e: any) => e.code === 'ENOMEM' && /no 33554432-byte range at or below 0xffffff/.test(e.message)
    && /16773120 bytes are free there$/.test(e.message));
  const pieces = Array.from({ length: 8 }, () => a.allocate(1 << 20, 4096, 0xffffff));
  for (const p of pieces.filter((_, i) => i % 2 === 0)) a.release(p);
  assert.throws(() => a.allocate(2 << 20, 4096, 0x7fffff), (e: any) => e.code === 'ENOMEM' && /fragmented \(the largest free range is 1048576 bytes\)/.test(e.message));
  assert.throws(() => a.check(32 << 20, 4096, 0xffffff), (e: any) => e.code === 'ENOMEM');
});

test('churn: allocations never overlap, free bytes are conserved, and everything merges back into one span', () => {
  const a = new IovaAllocator(MSI_SPLIT, 4096, { cursor: 2 ** 38 + 5 * 4096 });
  const total = a.available;
  let seed = 12345;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const live = new Map<number, number>();
  for (let step = 0; step < 5000; step++) {
    if (live.size > 0 && rand(3) === 0) {
      const keys = [...live.keys()];
      const iova = keys[rand(keys.length)]!;
      a.release(iova);
      live.delete(iova);
    } else {
      const size = (1 + rand(16)) * 4096;
      const iova = a.allocate(size, rand(4) === 0 ? 65536 : 4096, rand(2) === 0 ? 0xffffffff : Number.MAX_SAFE_INTEGER);
      for (const [s, l] of live) assert.ok(iova + size <= s || s + l <= iova, `0x${iova.toString(16)}+${size} overlaps 0x${s.toString(16)}+${l}`);
      assert.ok(iova + size <= 0xfee00000 || iova >= 0xfef00000, 'outside the MSI window');
      live.set(iova, size);
    }
    let used = 0;
    for (const l of live.values()) used += l;
    assert.equal(a.available + used, total);
  }
  for (const iova of live.keys()) a.release(iova);
  assert.equal(a.available, total);
  assert.equal(a.allocate(0xfee00000 - 0x1000, 4096, 0xfedfffff), 0x1000, 'the low range is one span again');
});

test('take/giveBack (the owner keeps the size): a range given back twice, or never taken, is EINVAL and changes nothing', () => {
  const a = new IovaAllocator(MSI_SPLIT, 4096, { cursor: 1 << 30 });
  const total = a.available;
  const x = a.take(3 * 4096);
  const y = a.take(4096);
  a.giveBack(x, 3 * 4096);
  assert.throws(() => a.giveBack(x, 3 * 4096), (e: any) => e.code === 'EINVAL');
  assert.throws(() => a.giveBack(x + 4096, 4096), (e: any) => e.code === 'EINVAL');
  assert.throws(() => a.giveBack(y - 4096, 2 * 4096), (e: any) => e.code === 'EINVAL', 'overlaps the free range before y');
  assert.equal(a.available, total - 4096);
  a.giveBack(y, 4096);
  assert.equal(a.available, total);
});
