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

test('over RLIMIT_MEMLOCK without CAP_IPC_LOCK: ENOMEM (errno too) saying asked, charged and the limit', () => {
  const mod = JSON.stringify(stagedPath('dist/src/dma/dma-memory.js'));
  // A child with a 64 KiB memlock limit and no capabilities (as the nobody user).
  const script = `try { require(${mod}).allocateDmaMemory(1 << 20, 'never'); console.log('allocated'); } catch (e) { console.log(e.code, e.errno, e.message); }`;
  const r = runNodeUnprivileged(['-e', script], { memlockKiB: 64 });
  assert.match(r.stdout, /^ENOMEM -12 .*locking 1048576 bytes .*0 bytes are already charged.* the limit is 65536 bytes/, r.stderr);
});

test('memory the backend pins itself is not mlocked as well (the kernel would charge it twice)', () => {
  const vmLck = () => Number(/^VmLck:\s*(\d+) kB$/m.exec(require('node:fs').readFileSync('/proc/self/status', 'utf8'))![1]);
  const before = vmLck();
  const pinned = allocateDmaMemory(64 << 10, { hugePages: 'never', lock: false });
  assert.equal(vmLck(), before, 'nothing charged by allocation: the pin will be');
  const locked = allocateDmaMemory(64 << 10, { hugePages: 'never' });
  assert.equal(vmLck(), before + 64, 'mlocked memory is charged once');
  releaseDmaMemory(pinned);
  releaseDmaMemory(locked);
  assert.throws(() => allocateDmaMemory(4096, { hugePages: 'bogus' as never }), (e: any) => e.code === 'EINVAL' && /hugePages/.test(e.message));
});
