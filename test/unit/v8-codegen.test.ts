/**
 * Register writes rely on V8 emitting one full-width store per typed-array store and dropping
 * none (src/device/region.ts). This checks the optimized machine code of the running V8, so a
 * Node upgrade that changes either fact fails here rather than silently on a device.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

function optimizedCode(source: string): string {
  const r = spawnSync(process.execPath, ['--print-opt-code', '-e', source], { encoding: 'utf8', maxBuffer: 64 << 20 });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

test('consecutive 32-bit stores to one element stay two full-width movl', () => {
  const code = optimizedCode(`
    const u = new Uint32Array(new ArrayBuffer(64));
    function doorbell(a, b) { u[1] = a; u[1] = b; }
    for (let i = 0; i < 200000; i++) doorbell(i, i + 1);`);
  const section = code.split('--- Raw source ---').find((s) => /^name = doorbell$/m.test(s));
  assert.ok(section, 'V8 optimized doorbell()');
  const stores = section.split('\n').filter((l) => /\bmovl \[[a-z0-9]+\+0x4\],/.test(l));
  assert.equal(stores.length, 2, `both stores emitted as 32-bit movl:\n${stores.join('\n')}`);
});

test('16-bit and 64-bit stores keep their width', () => {
  const code = optimizedCode(`
    const u16 = new Uint16Array(new ArrayBuffer(64));
    const u64 = new BigUint64Array(new ArrayBuffer(64));
    function w(a, b) { u16[2] = a; u64[1] = b; }
    for (let i = 0; i < 200000; i++) w(i & 0xffff, BigInt(i));`);
  const section = code.split('--- Raw source ---').find((s) => /^name = w$/m.test(s))!;
  assert.ok(section, 'V8 optimized w()');
  assert.ok(/\bmovw \[[a-z0-9]+\+0x4\],/.test(section), '16-bit store is a movw');
  assert.ok(/REX\.W movq \[[a-z0-9]+\+0x8\],/.test(section), '64-bit store is a movq');
});
