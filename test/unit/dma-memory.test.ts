import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { allocateDmaMemory, releaseDmaMemory } from '../../src/dma/dma-memory';
import { runNodeUnprivileged, stagedPath } from '../support/unprivileged';

test('DMA memory is page-rounded, shared through a memfd, and released', () => {
  const m = allocateDmaMemory(5000, 'never');
  assert.equal(m.size, 8192);
  assert.equal(m.pageSize, 4096);
  new Uint8Array(m.buffer).fill(7);
  const view = new Uint8Array(m.buffer);
  releaseDmaMemory(m);
  assert.equal(view.length, 0, 'views detach when the memory is released');
});

test('more than the machine can lock is a clear ENOMEM, not the OOM killer', () => {
  assert.throws(() => allocateDmaMemory(2 ** 45), (e: any) => e.code === 'ENOMEM' && /RLIMIT_MEMLOCK/.test(e.message));
});

test('over RLIMIT_MEMLOCK without CAP_IPC_LOCK: ENOMEM naming the limit', () => {
  const mod = JSON.stringify(stagedPath('dist/src/dma/dma-memory.js'));
  // A child with a 64 KiB memlock limit and no capabilities (as the nobody user).
  const script = `try { require(${mod}).allocateDmaMemory(1 << 20, 'never'); console.log('allocated'); } catch (e) { console.log(e.code, e.message); }`;
  const r = runNodeUnprivileged(['-e', script], { memlockKiB: 64 });
  assert.match(r.stdout, /^ENOMEM .*RLIMIT_MEMLOCK is 65536 bytes/, r.stderr);
});
