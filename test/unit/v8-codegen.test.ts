/**
 * Register writes rely on V8 emitting one full-width store per typed-array store and dropping
 * none (src/device/region.ts). This checks the optimized machine code of the running V8, so a
 * Node upgrade that changes either fact fails here rather than silently on a device.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

/**
 * Optimized code of a script. Optimization runs on the main thread (no concurrent recompilation),
 * so what gets optimized does not depend on how busy the machine is.
 */
function optimizedCode(source: string, flags: string[] = []): string {
  const r = spawnSync(process.execPath, ['--print-opt-code', '--no-concurrent-recompilation', ...flags, '-e', source], { encoding: 'utf8', maxBuffer: 64 << 20 });
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

/** Optimized code of each named function (its own section of --print-opt-code output). */
function sections(code: string, names: string[]): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const s of code.split('--- Raw source ---')) {
    const m = /^name = (\S+)$/m.exec(s);
    if (!m || !names.includes(m[1]!)) continue;
    // Instruction lines only, past the prologue (its `testb [reg+..],0x1` checks the code object's deopt flag).
    out.set(m[1]!, s.split('\n').filter((l) => /^0x[0-9a-f]+\s+[0-9a-f]+\s/.test(l) && parseInt(l.split(/\s+/)[1]!, 16) >= 0x10));
  }
  for (const n of names) assert.ok(out.has(n), `V8 optimized ${n}()`);
  return out;
}

/** A memory operand of a typed-array element at this byte offset in the mapping. */
const at = (offset: number) => String.raw`\[r\w+\+r\w+\*1\+0x${offset.toString(16)}\]`;

test('a bare typed-array load feeding a bit test is narrowed (why Region does more than a plain load)', () => {
  const code = optimizedCode(`
    const u = new Uint32Array(new ArrayBuffer(64));
    function bit() { return (u[1] & 1) !== 0; }
    for (let i = 0; i < 200000; i++) bit();`);
  const lines = sections(code, ['bit']).get('bit')!;
  assert.ok(lines.some((l) => /\btestb \[/.test(l)), `V8 narrowed the 32-bit load to a one-byte test:\n${lines.join('\n')}`);
});

test('Region on a mapping: full-width loads even under bit tests, never merged; one store per write; write64(number) is one 8-byte store', () => {
  const region = path.resolve(__dirname, '../../src/device/region.js');
  const nativeIndex = path.resolve(__dirname, '../../src/native/index.js');
  const code = optimizedCode(`
    const { Region } = require(${JSON.stringify(region)});
    const { native, constants } = require(${JSON.stringify(nativeIndex)});
    const backend = {
      mapRegion: (i, o, s) => native.mmap(s, constants.PROT_READ | constants.PROT_WRITE, constants.MAP_SHARED | constants.MAP_ANONYMOUS, -1, 0),
      unmapRegion: (b) => native.munmap(b),
    };
    const r = new Region(backend, { index: 0, size: 0x4000, readable: true, writable: true, mappable: true, sparseAreas: undefined }, 'bar');
    function pollBit() { return (r.read32(0x1c) & 1) !== 0; }
    function pollHigh16() { return (r.read16(0x22) & 0x100) !== 0; }
    function pollByte() { return (r.read8(0x25) & 0x80) !== 0; }
    function twice() { return r.read32(0x34) + r.read32(0x34); }
    function doorbell(a, b) { r.write32(0x1008, a); r.write32(0x1008, b); }
    function w16(a) { r.write16(0x40a, a); }
    function w8(a) { r.write8(0x40d, a); }
    function w64(a) { r.write64(0x28, a); }
    for (let i = 0; i < 200000; i++) {
      pollBit(); pollHigh16(); pollByte(); twice(); doorbell(i, i + 1); w16(i & 0xffff); w8(i & 0xff); w64(i * 4096);
    }`);
  const s = sections(code, ['pollBit', 'pollHigh16', 'pollByte', 'twice', 'doorbell', 'w16', 'w8', 'w64']);
  const has = (fn: string, re: RegExp) => s.get(fn)!.filter((l) => re.test(l)).length;
  const show = (fn: string) => `\n${s.get(fn)!.join('\n')}`;
  const memTest = /\b(test|cmp)[bwlq]? \[r\w+\+r\w+\*1/;
  assert.equal(has('pollBit', new RegExp(`\\bmovl r\\w+,${at(0x1c)}`)), 1, `read32 under '& 1' is one movl load${show('pollBit')}`);
  assert.equal(has('pollBit', memTest), 0, `no narrowed memory test${show('pollBit')}`);
  assert.equal(has('pollHigh16', new RegExp(`\\bmovzxwl r\\w+,${at(0x22)}`)), 1, `read16 under '& 0x100' is one 16-bit load${show('pollHigh16')}`);
  assert.equal(has('pollHigh16', memTest), 0, `no narrowed memory test${show('pollHigh16')}`);
  assert.equal(has('pollByte', new RegExp(`\\bmovzxbl r\\w+,${at(0x25)}`)), 1, `read8 is one byte load${show('pollByte')}`);
  assert.equal(has('twice', new RegExp(`\\bmovl r\\w+,${at(0x34)}`)), 2, `two reads of one register are two loads (not merged)${show('twice')}`);
  assert.equal(has('doorbell', new RegExp(`\\bmovl ${at(0x1008)},`)), 2, `two doorbell writes are two movl${show('doorbell')}`);
  assert.equal(has('w16', new RegExp(`\\bmovw ${at(0x40a)},`)), 1, `write16 is one movw${show('w16')}`);
  assert.equal(has('w8', new RegExp(`\\bmovb ${at(0x40d)},`)), 1, `write8 is one movb${show('w8')}`);
  assert.equal(has('w64', new RegExp(`\\b(vmovsd|movsd|REX\\.W movq) ${at(0x28)},`)), 1, `write64(number) is one 8-byte store${show('w64')}`);
});

test('NVMe driver on a device: the CQ status word is read full width, each SQ entry is sixteen 32-bit stores, each doorbell one 32-bit store', () => {
  // The real driver at QD32 on bench:native's in-process instant device (mapped BAR, queues in place).
  // The doorbell functions run too rarely at QD32 to be optimized on their own: they are made to
  // be (natives syntax), so that the code checked is what V8 makes of them when they are hot.
  const dist = path.resolve(__dirname, '../..');
  const code = optimizedCode(`
    const { InstantNvme } = require(${JSON.stringify(path.join(dist, 'bench/native/instant-nvme.js'))});
    const { NvmeController } = require(${JSON.stringify(path.join(dist, 'src/drivers/nvme/controller.js'))});
    (async () => {
      const { device, nvme } = InstantNvme.open();
      const ctrl = await nvme.answering(() => NvmeController.open(device, { defaultQueue: false }));
      const ns = await nvme.answering(() => ctrl.namespace(1));
      const q = await nvme.answering(() => ctrl.createQueuePair({ depth: 32, pollSpinUs: 0, pollBurst: 0 }));
      const buf = ctrl.allocBuffer(2 << 20);
      let done = 0;
      const cbs = Array.from({ length: 32 }, (_, slot) => () => { done++; if (done + q.outstanding < 300000) ns.submit(false, (done % 1000) * 8, buf.iova + slot * 4096, 4096, q, cbs[slot]); });
      q.batch(() => { for (let i = 0; i < 32; i++) ns.submit(false, i * 8, buf.iova + i * 4096, 4096, q, cbs[i]); });
      while (done < 300000) { nvme.run(); q.poll(); }
      // The queue is idle: ringing either doorbell again with the same value tells the device nothing new.
      const proto = Object.getPrototypeOf(q);
      for (const fn of [proto.ringSq, proto.ringCq]) {
        %PrepareFunctionForOptimization(fn);
        fn.call(q); fn.call(q);
        %OptimizeFunctionOnNextCall(fn);
        fn.call(q);
      }
      process.exit(0);
    })();`, ['--allow-natives-syntax']);
  const s = sections(code, ['reap', 'writeCommand', 'ringSq', 'ringCq']);
  const reap = s.get('reap')!;
  const write = s.get('writeCommand')!;
  // A narrowed test on a Uint32Array element would be `testb/testw [base+index*4]`.
  assert.equal(reap.filter((l) => /\btest[bw] \[r\w+\+r\w+\*4/.test(l)).length, 0, `no narrowed read of a CQ entry:\n${reap.join('\n')}`);
  assert.ok(reap.some((l) => /\(AtomicsLoad\)|\bmovl r\w+,\[r\w+\+r\w+\*4\]/.test(l)), `the status word is read whole (Atomics.load or movl):\n${reap.join('\n')}`);
  assert.ok(reap.some((l) => /\bmovl r\w+,\[r\w+\+r\w+\*4\]/.test(l)), `the command-specific dword is a 32-bit load:\n${reap.join('\n')}`);
  const dwordStores = write.filter((l) => /\bmovl \[r\w+\+r\w+\*4(\+0x[0-9a-f]+)?\],/.test(l)).length;
  assert.ok(dwordStores >= 16, `a submission entry is written as 32-bit stores (${dwordStores} found):\n${write.join('\n')}`);
  for (const fn of ['ringSq', 'ringCq']) {
    const lines = s.get(fn)!;
    const stores = lines.filter((l) => /\bmov[bwlq]? \[r\w+\+r\w+\*(1|2|4|8)(\+0x[0-9a-f]+)?\],/.test(l) || /\bxchg/.test(l));
    assert.equal(stores.length, 1, `${fn}: one store into the BAR:\n${lines.join('\n')}`);
    assert.match(stores[0]!, /\bmovl \[r\w+\+r\w+\*4\],/, `${fn}: the doorbell is a plain 32-bit store (no xchg, no narrowing)`);
  }
});

/** Script lines both virtqueue cases start with: a 16 KiB BAR (`bar`) and 64 KiB of queue memory (`memory`, `size` entries) on anonymous mappings. */
function virtqueueSetup(dist: string): string {
  return `const { Region } = require(${JSON.stringify(path.join(dist, 'src/device/region.js'))});
    const { native, constants } = require(${JSON.stringify(path.join(dist, 'src/native/index.js'))});
    const anon = (size) => native.mmap(size, constants.PROT_READ | constants.PROT_WRITE, constants.MAP_SHARED | constants.MAP_ANONYMOUS, -1, 0);
    const bar = new Region({ mapRegion: (i, o, s) => anon(s), unmapRegion: (b) => native.munmap(b) }, { index: 0, size: 0x4000, readable: true, writable: true, mappable: true, sparseAreas: undefined }, 'bar');
    const size = 256;
    const memory = anon(65536);`;
}

test('virtio split queue: descriptors and rings keep their widths, the avail index is stored after the ring entry with a barrier before used.flags is read, used.idx is reloaded, the doorbell is one 16-bit store', () => {
  const dist = path.resolve(__dirname, '../..');
  const code = optimizedCode(`
    const { SplitQueue, splitQueueLayout } = require(${JSON.stringify(path.join(dist, 'src/drivers/virtio/split-queue.js'))});
    ${virtqueueSetup(dist)}
    const q = new SplitQueue(0, size, memory, 0, 0x100000, () => bar.write16(0x3004, 0));
    const usedIdx = new Uint16Array(memory, splitQueueLayout(size).usedOffset, 3);
    function offer(i) { const id = i & 255; q.setDescriptor(id, 0x200000 + id * 4096, 4096, 2); q.push(id); q.publish(); q.kick(); }
    function take() { const n = q.usedCount(); let sum = 0; for (let k = 0; k < n; k++) sum += q.usedId(k) + q.usedLength(k); return sum; }
    let sum = 0;
    for (let i = 0; i < 200000; i++) { offer(i); usedIdx[1] = i & 0xffff; sum += take(); }
    if (sum < 0) console.log(sum);`);
  const s = sections(code, ['offer', 'take']);
  const offer = s.get('offer')!;
  const take = s.get('take')!;
  const show = (lines: string[]) => `\n${lines.join('\n')}`;
  const index = (re: RegExp) => offer.findIndex((l) => re.test(l));
  // Descriptor: address low/high and length as 32-bit stores, flags and next as 16-bit stores.
  assert.ok(offer.filter((l) => /\bmovl \[r\w+\+r\w+\*4\],/.test(l)).length >= 3, `descriptor dwords are 32-bit stores${show(offer)}`);
  const ring = index(/\bmovw \[r\w+\+r\w+\*2\],r\w+$/);
  // avail.idx with Atomics.store (an xchg in the builtin): the full barrier between publishing and
  // reading used.flags, without which a notification can be lost.
  const availIdx = index(/\(AtomicsStore\)/);
  const flagsLoad = index(/\(AtomicsLoad\)/);
  const doorbell = index(/\bmovw \[r\w+\+r\w+\*1\+0x3004\],/);
  assert.ok(ring >= 0, `the ring entry is a 16-bit store${show(offer)}`);
  assert.ok(availIdx >= 0, `avail.idx is published with Atomics.store (a locked store: the barrier before used.flags is read)${show(offer)}`);
  assert.ok(ring < availIdx, `the ring entry is stored before avail.idx${show(offer)}`);
  assert.ok(flagsLoad > availIdx, `used.flags is read (Atomics.load) after publishing${show(offer)}`);
  assert.ok(doorbell > flagsLoad, `the doorbell is one 16-bit store, after the flags check${show(offer)}`);
  assert.equal(offer.filter((l) => /\bxchg/.test(l)).length, 0, `no locked store into the BAR or the descriptors${show(offer)}`);
  assert.ok(take.some((l) => /\(AtomicsLoad\)/.test(l)), `used.idx is reloaded on every call (Atomics.load)${show(take)}`);
  assert.equal(take.filter((l) => /\btest[bw] \[r\w+\+r\w+\*/.test(l)).length, 0, `no narrowed read of the used ring${show(take)}`);
  assert.ok(take.filter((l) => /\bmovl r\w+,\[r\w+\+r\w+\*(1|4)(\+0x[0-9a-f]+)?\]/.test(l)).length >= 2, `used id and length are 32-bit loads${show(take)}`);
});

test('virtio packed queue: descriptors keep their widths, the held-back flags store comes last and is locked (the barrier), then the device event flags are loaded (Atomics) and the doorbell is one 16-bit store; used flags are reloaded full width', () => {
  const dist = path.resolve(__dirname, '../..');
  const code = optimizedCode(`
    const { PackedQueue, packedQueueLayout } = require(${JSON.stringify(path.join(dist, 'src/drivers/virtio/packed-queue.js'))});
    ${virtqueueSetup(dist)}
    function doorbell() { bar.write16(0x3004, 0); }
    const q = new PackedQueue(0, size, memory, 0, 0x100000, doorbell);
    const ring = new Uint16Array(memory, 0, 8 * size);
    let wrap = 0x8080;
    // The device: marks the descriptor at position p used with its wrap bits.
    function device(p) { ring[8 * p + 7] = wrap; if (p === size - 1) wrap ^= 0x8080; }
    function offer(i) { const id = i & 255; q.setDescriptor(id, 0x200000 + id * 4096, 4096, 2); q.push(id); q.publish(); q.kick(); }
    function take() { const n = q.usedCount(); let sum = 0; for (let k = 0; k < n; k++) sum += q.usedId(k) + q.usedLength(k); q.consume(n); return sum; }
    let sum = 0;
    for (let i = 0; i < 200000; i++) { offer(i); device(i & 255); sum += take(); }
    if (sum < 0) console.log(sum);`);
  const s = sections(code, ['offer', 'take', 'usedCount']);
  // V8's inlining budget decides where the doorbell store lands: in offer, or in kick, doorbell or
  // Region.write16 optimized on their own and called from offer. Wherever it is, it is one movw.
  const bell = /\bmovw \[r\w+\+r\w+\*1\+0x3004\],/;
  const withBell = code.split('--- Raw source ---').filter((x) => /^name = (offer|kick|doorbell|write16)$/m.test(x) && x.split('\n').some((l) => bell.test(l)));
  const offer = s.get('offer')!;
  // usedCount is either inlined into take or optimized on its own: check whichever holds the scan.
  const take = [...s.get('take')!, ...s.get('usedCount')!];
  const show = (lines: string[]) => `\n${lines.join('\n')}`;
  const index = (re: RegExp) => offer.findIndex((l) => re.test(l));
  const lastIndex = (re: RegExp) => offer.reduce((last, l, i) => (re.test(l) ? i : last), -1);
  // Descriptor: address low/high and length as 32-bit stores, id and flags as 16-bit stores.
  assert.ok(offer.filter((l) => /\bmovl \[r\w+\+r\w+\*(1|4)(\+0x[0-9a-f]+)?\],/.test(l)).length >= 3, `descriptor dwords are 32-bit stores${show(offer)}`);
  const wordStores = /\bmovw \[r\w+\+r\w+\*(1|2)(\+0x[0-9a-f]+)?\],/;
  assert.ok(offer.filter((l) => wordStores.test(l)).length >= 2, `id and flags are 16-bit stores${show(offer)}`);
  const lastDword = lastIndex(/\bmovl \[r\w+\+r\w+\*(1|4)(\+0x[0-9a-f]+)?\],/);
  // The held-back flags with Atomics.store (an xchg in the builtin): the full barrier between
  // exposing the batch and reading the device's event flags.
  const flagsStore = index(/\(AtomicsStore\)/);
  const flagsLoad = index(/\(AtomicsLoad\)/);
  const inlined = index(bell);
  const doorbell = inlined >= 0 ? inlined : offer.findIndex((l, i) => i > flagsLoad && /\bcall r\w+$/.test(l));
  assert.ok(withBell.length > 0, `the doorbell is a 16-bit store somewhere in the optimized code${show(offer)}`);
  for (const sec of withBell) {
    const lines = sec.split('\n');
    assert.equal(lines.filter((l) => bell.test(l)).length, 1, `one doorbell store per function:\n${sec}`);
    const load = lines.findIndex((l) => /\(AtomicsLoad\)/.test(l));
    if (load >= 0) assert.ok(load < lines.findIndex((l) => bell.test(l)), `the flags check comes before the doorbell:\n${sec}`);
  }
  assert.ok(lastDword >= 0 && flagsStore > lastDword, `the flags are stored (Atomics.store) after the descriptor's dwords${show(offer)}`);
  assert.ok(flagsLoad > flagsStore, `the device event flags are read (Atomics.load) after the flags store${show(offer)}`);
  assert.ok(doorbell > flagsLoad, `the doorbell (one 16-bit store) comes after the flags check${show(offer)}`);
  assert.equal(offer.filter((l) => /\bxchg/.test(l)).length, 0, `no locked store into the BAR or the descriptors${show(offer)}`);
  assert.ok(take.some((l) => /\(AtomicsLoad\)/.test(l)), `used flags are reloaded on every call (Atomics.load)${show(take)}`);
  assert.equal(take.filter((l) => /\btest[bw] \[r\w+\+r\w+\*/.test(l)).length, 0, `no narrowed read of the ring${show(take)}`);
  assert.ok(take.some((l) => /\bmovzxwl r\w+,\[r\w+\+r\w+\*(1|2)(\+0x[0-9a-f]+)?\]/.test(l)), `the buffer id is a 16-bit load${show(take)}`);
  assert.ok(take.some((l) => /\bmovl r\w+,\[r\w+\+r\w+\*(1|4)(\+0x[0-9a-f]+)?\]/.test(l)), `the used length is a 32-bit load${show(take)}`);
});

test('virtio queues with EVENT_IDX: the device\'s event word is loaded (Atomics) after the locked publishing store and before the doorbell; arming stores the event with Atomics.store before the used ring is reloaded (Atomics)', () => {
  const dist = path.resolve(__dirname, '../..');
  const code = optimizedCode(`
    const { SplitQueue, splitQueueLayout } = require(${JSON.stringify(path.join(dist, 'src/drivers/virtio/split-queue.js'))});
    const { PackedQueue, packedQueueLayout } = require(${JSON.stringify(path.join(dist, 'src/drivers/virtio/packed-queue.js'))});
    ${virtqueueSetup(dist)}
    const s = new SplitQueue(0, size, memory, 0, 0x100000, () => bar.write16(0x3004, 0), true);
    const pmem = anon(65536);
    const p = new PackedQueue(1, size, pmem, 0, 0x200000, () => bar.write16(0x3008, 0), true);
    const sl = splitQueueLayout(size);
    const used16 = new Uint16Array(memory, sl.usedOffset, 3 + 4 * size);
    const ring = new Uint16Array(pmem, 0, 8 * size);
    const devEvents = new Uint16Array(pmem, packedQueueLayout(size).deviceOffset, 2);
    devEvents[1] = 2; // DESC
    s.setInterrupts(true);
    p.setInterrupts(true);
    let wrap = 0x8080;
    function offerSplit(i) { const id = i & 255; s.setDescriptor(id, 0x300000 + id * 4096, 4096, 2); s.push(id); s.publish(); return s.kick(); }
    function armSplit() { const n = s.usedCount(); s.consume(n); return s.armInterrupt(); }
    function offerPacked(i) { const id = i & 255; p.setDescriptor(id, 0x300000 + id * 4096, 4096, 2); p.push(id); p.publish(); return p.kick(); }
    function armPacked() { const n = p.usedCount(); p.consume(n); return p.armInterrupt(); }
    let sum = 0;
    for (let i = 0; i < 200000; i++) {
      // The device's events: every other offer at the new entry (a doorbell), else just past it (none).
      used16[2 + 4 * size] = (i & 1) ? i & 0xffff : (i + 1) & 0xffff;
      devEvents[0] = ((i & 1) ? (i & 255) : ((i + 1) & 255)) | (((i >> 8) & 1) ? 0 : 0x8000);
      sum += offerSplit(i) + offerPacked(i);
      // The device returns what was offered 8 offers ago: the rings always hold some (arming re-reads them).
      if (i >= 8) {
        used16[1] = (i - 7) & 0xffff;
        const u = (i - 8) & 255;
        ring[8 * u + 7] = wrap; if (u === 255) wrap ^= 0x8080;
      }
      sum += armSplit() + armPacked();
    }
    if (sum < 0) console.log(sum);`);
  const s = sections(code, ['offerSplit', 'armSplit', 'offerPacked', 'armPacked']);
  // Both queues' usedCount, where optimized on their own: each reads the device's word with Atomics.load.
  const usedCountSections = code.split('--- Raw source ---').filter((x) => /^name = usedCount$/m.test(x));
  const usedCountLoads = usedCountSections.length > 0 && usedCountSections.every((x) => /\(AtomicsLoad\)/.test(x));
  const show = (lines: string[]) => `\n${lines.join('\n')}`;
  const first = (lines: string[], re: RegExp) => lines.findIndex((l) => re.test(l));
  for (const [fn, bell] of [['offerSplit', 0x3004], ['offerPacked', 0x3008]] as const) {
    const lines = s.get(fn)!;
    const store = first(lines, /\(AtomicsStore\)/);
    const load = first(lines, /\(AtomicsLoad\)/);
    const doorbellRe = new RegExp(String.raw`\bmovw \[r\w+\+r\w+\*1\+0x${bell.toString(16)}\],`);
    const inlined = first(lines, doorbellRe);
    const doorbell = inlined >= 0 ? inlined : lines.findIndex((l, i) => i > load && /\bcall r\w+$/.test(l));
    assert.ok(store >= 0, `${fn}: published with Atomics.store (the full barrier)${show(lines)}`);
    assert.ok(load > store, `${fn}: the device's event word is read with Atomics.load after it${show(lines)}`);
    assert.ok(doorbell > load, `${fn}: the doorbell comes after the event check${show(lines)}`);
    if (inlined >= 0) assert.equal(lines.filter((l) => doorbellRe.test(l)).length, 1, `${fn}: one 16-bit doorbell store${show(lines)}`);
    assert.equal(lines.filter((l) => /\bxchg/.test(l)).length, 0, `${fn}: no locked store into the BAR or the ring${show(lines)}`);
    assert.equal(lines.filter((l) => /\btest[bw] \[r\w+\+r\w+\*/.test(l)).length, 0, `${fn}: no narrowed read of device-written memory${show(lines)}`);
  }
  for (const fn of ['armSplit', 'armPacked']) {
    const lines = s.get(fn)!;
    const stores = lines.map((l, i) => (/\(AtomicsStore\)/.test(l) ? i : -1)).filter((i) => i >= 0);
    const loads = lines.map((l, i) => (/\(AtomicsLoad\)/.test(l) ? i : -1)).filter((i) => i >= 0);
    assert.equal(stores.length, 1, `${fn}: the event index/offset is stored once, with Atomics.store${show(lines)}`);
    // usedCount() inlined (an Atomics.load after the store) or called (optimized on its own, with its Atomics.load).
    const reread = loads.some((i) => i > stores[0]!) || (lines.some((l, i) => i > stores[0]! && /\bcall r\w+$/.test(l)) && usedCountLoads);
    assert.ok(reread, `${fn}: the used ring is read again (Atomics.load) after it${show(lines)}`);
    assert.equal(lines.filter((l) => /\btest[bw] \[r\w+\+r\w+\*/.test(l)).length, 0, `${fn}: no narrowed read of the used ring${show(lines)}`);
  }
});
