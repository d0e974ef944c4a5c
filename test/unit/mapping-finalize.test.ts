/**
 * The addon records every mapping so munmap can find it and a collected ArrayBuffer is unmapped
 * exactly once. Dropping N mappings must cost O(N) in all: the records sit in a hash table, and
 * this counts the chain links it walks (no clocks) while 100k collected mappings are finalized.
 * A global list unlinked by a scan, as before, walks about N/2 links per mapping.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { native, constants } from '../../src/native/index';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;
const PRIVATE_ANON = constants.MAP_PRIVATE | constants.MAP_ANONYMOUS;

function tick(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Map `n` pages, drop them all, let GC finalize them; chain links walked per finalized mapping. */
async function stepsPerFinalize(n: number): Promise<number> {
  const base = native.mappingStats().live;
  let held: ArrayBuffer[] | undefined = [];
  for (let i = 0; i < n; i++) held.push(native.mmap(constants.PAGE_SIZE, constants.PROT_READ, PRIVATE_ANON, -1, 0));
  assert.equal(native.mappingStats().live, base + n);
  const before = native.mappingStats().steps;
  held = undefined;
  // Finalizers run on the JS thread after a collection; a bounded number of rounds is the hang guard.
  for (let round = 0; round < 500 && native.mappingStats().live > base; round++) {
    gc();
    await tick();
  }
  const after = native.mappingStats();
  assert.equal(after.live, base, 'every dropped mapping was finalized');
  return (after.steps - before) / n;
}

test('finalizing 100k mappings walks a bounded number of links per mapping (linear in all)', async () => {
  const small = await stepsPerFinalize(10_000);
  const large = await stepsPerFinalize(100_000);
  // Ten times the mappings must not mean more work per mapping (a scan would mean ~10x more).
  assert.ok(large <= 4, `links walked per finalized mapping at 100k: ${large}`);
  assert.ok(large <= 2 * small + 1, `per-mapping work grew with N: ${small} at 10k, ${large} at 100k`);
});

test('munmap still finds its mapping among many, and refuses a second unmap', () => {
  const many = Array.from({ length: 2000 }, () => native.mmap(constants.PAGE_SIZE, constants.PROT_READ, PRIVATE_ANON, -1, 0));
  const before = native.mappingStats().steps;
  for (const ab of many) native.munmap(ab);
  assert.ok(native.mappingStats().steps - before <= 4 * many.length, 'each lookup walks a short chain');
  for (const ab of many.slice(0, 10)) assert.throws(() => native.munmap(ab), (e: any) => e.code === 'EINVAL');
});
