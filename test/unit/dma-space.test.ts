/**
 * DmaSpace's streaming maps on a backend that records what it is asked to map (the IOMMU side
 * is tested in the guest and over vfio-user): the address a later map of a buffer takes without
 * asking the addon is the one the addon gives, a buffer detached after a map is refused again,
 * and the list of live mappings stays right in any unmap order.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { DmaSpace } from '../../src/dma/dma-space';
import { native, constants } from '../../src/native/index';
import type { Backend, BackendDmaMapRequest } from '../../src/device/backend';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

function recordingSpace(): { space: DmaSpace; maps: BackendDmaMapRequest[]; unmaps: [number, number][] } {
  const maps: BackendDmaMapRequest[] = [];
  const unmaps: [number, number][] = [];
  const backend = {
    name: 'recording',
    iommuAperture: () => ({ domain: {}, ranges: [{ start: 0, end: 2 ** 39 - 1 }], pageSize: 4096 }),
    dmaMap: (r: BackendDmaMapRequest) => void maps.push(r),
    dmaUnmap: (iova: number, size: number) => void unmaps.push([iova, size]),
  } as unknown as Backend;
  return { space: new DmaSpace(backend, 2 ** 39 - 1), maps, unmaps };
}

test('every map of a buffer, first or later, small or pooled, at any offset, reaches the addon\'s address for its bytes', () => {
  const { space, maps } = recordingSpace();
  const small = new Uint8Array(16); // on the V8 heap until its buffer is first touched
  const big = new Uint8Array(3 * 4096 + 100);
  const pooled = Buffer.from('pooled bytes');
  for (let round = 0; round < 3; round++) {
    for (const view of [small, big, big.subarray(5000, 9000), big.subarray(4096), pooled, new Uint16Array(big.buffer, 8, 4)]) {
      const m = space.map(view, 'bidirectional');
      const r = maps[maps.length - 1]!;
      const address = native.addressOf(view);
      assert.equal(r.vaddr, Math.floor(address / 4096) * 4096, `vaddr of a ${view.byteLength}-byte view, round ${round}`);
      assert.equal(r.size, Math.ceil((address + view.byteLength) / 4096) * 4096 - r.vaddr);
      assert.equal(m.iova, r.iova + (address - r.vaddr));
      assert.equal(r.memoryIova, m.iova);
      assert.equal(r.memory.byteLength, view.byteLength);
      assert.equal(native.addressOf(r.memory), address);
      assert.deepEqual(m.segments, [{ iova: m.iova, length: view.byteLength }]);
      assert.ok(Object.isFrozen(m.segments));
      m.unmap();
    }
    gc(); // a collection moves what is still on the V8 heap
  }
});

test('a buffer detached after it was mapped is refused when mapped again', () => {
  const { space } = recordingSpace();
  const memory = native.mmap(2 * 4096, constants.PROT_READ | constants.PROT_WRITE, constants.MAP_PRIVATE | constants.MAP_ANONYMOUS, -1, 0);
  const view = new Uint8Array(memory, 100, 200);
  space.map(view, 'to-device').unmap();
  native.munmap(memory); // detaches every view
  assert.throws(() => space.map(view, 'to-device'), (e: any) => e.code === 'EINVAL' && /detached/.test(e.message));
  assert.equal(space.liveMappings, 0);
});

test('live mappings are counted and taken down right in any unmap order; unmapping twice or elsewhere is EINVAL', () => {
  const { space, unmaps } = recordingSpace();
  const other = recordingSpace().space;
  const buffer = new Uint8Array(8 * 4096);
  const maps = Array.from({ length: 6 }, (_, i) => space.map(buffer.subarray(i * 4096, (i + 1) * 4096), 'from-device'));
  assert.equal(space.liveMappings, 6);
  for (const i of [2, 0, 5]) maps[i]!.unmap();
  assert.equal(space.liveMappings, 3);
  assert.deepEqual(maps.map((m) => m.mapped), [false, true, false, true, true, false]);
  assert.throws(() => maps[2]!.unmap(), (e: any) => e.code === 'EINVAL' && /already unmapped/.test(e.message));
  assert.throws(() => other.unmap(maps[1]!), (e: any) => e.code === 'EINVAL' && /another device/.test(e.message));
  assert.deepEqual(unmaps.map(([iova]) => iova), [2, 0, 5].map((i) => maps[i]!.pageIova));
  space.releaseAll('closed');
  assert.equal(space.liveMappings, 0);
  assert.ok(maps.every((m) => !m.mapped));
  assert.deepEqual(new Set(unmaps.slice(3).map(([iova]) => iova)), new Set([1, 3, 4].map((i) => maps[i]!.pageIova)));
});

test('a DMA buffer a live streaming mapping covers (of its own device or another) is not freed: EBUSY, and it stays usable', () => {
  const { space, unmaps } = recordingSpace();
  const other = recordingSpace().space;
  const buf = space.allocate(3 * 4096);
  const bytes = new Uint8Array(buf.buffer);
  bytes[100] = 7;
  const own = space.map(bytes.subarray(4096, 8192), 'from-device');
  const foreign = other.map(buf.buffer, 'to-device');
  assert.throws(() => buf.free(), (e: any) => e.code === 'EBUSY' && /2 streaming mappings/.test(e.message) && /unmap them first/.test(e.message));
  assert.equal(buf.freed, false);
  assert.equal(space.liveBuffers, 1);
  assert.equal(bytes[100], 7, 'the memory is still there');
  assert.ok(!unmaps.some(([iova]) => iova === buf.iova), 'the buffer stays mapped for the device');
  own.unmap();
  assert.throws(() => buf.free(), (e: any) => e.code === 'EBUSY' && /1 streaming mapping of/.test(e.message));
  foreign.unmap();
  buf.free();
  assert.equal(buf.freed, true);
  assert.equal(space.liveBuffers, 0);
  assert.equal(bytes.byteLength, 0, 'freed memory is detached');
  assert.deepEqual(unmaps[unmaps.length - 1], [buf.iova, buf.size]);
  space.releaseAll('closed');
  other.releaseAll('closed');
});

test('closing a device whose buffer another device still maps leaves that memory to the mapping; a closed device\'s mappings no longer hold a free', () => {
  const a = recordingSpace().space;
  const b = recordingSpace().space;
  const shared = a.allocate(4096);
  const view = new Uint8Array(shared.buffer);
  const map = b.map(view, 'bidirectional');
  a.releaseAll('a is closed');
  assert.equal(shared.freed, true);
  assert.equal(view.byteLength, 4096, 'the pages another device maps are not unmapped under it');
  view[0] = 42;
  assert.equal(view[0], 42);
  map.unmap();
  b.releaseAll('b is closed');

  const c = recordingSpace().space;
  const d = recordingSpace().space;
  const buf = c.allocate(4096);
  d.map(buf.buffer, 'from-device');
  d.releaseAll('d is closed'); // its mappings are gone with it
  buf.free();
  assert.equal(buf.freed, true);
  c.releaseAll('c is closed');
});

test('a Uint8Array mapped again (remembered by its identity), and a new view of its buffer, map at their own bytes; detached, both are refused', () => {
  const { space, maps } = recordingSpace();
  const memory = native.mmap(4 * 4096, constants.PROT_READ | constants.PROT_WRITE, constants.MAP_PRIVATE | constants.MAP_ANONYMOUS, -1, 0);
  const view = new Uint8Array(memory, 300, 5000);
  const address = native.addressOf(view);
  const first = space.map(view, 'to-device');
  const again = space.map(view, 'from-device');
  const slice = space.map(view.subarray(4000), 'bidirectional');
  assert.deepEqual([maps[0]!.vaddr, maps[0]!.size], [Math.floor(address / 4096) * 4096, 2 * 4096]);
  assert.deepEqual([maps[1]!.vaddr, maps[1]!.size], [maps[0]!.vaddr, maps[0]!.size]);
  assert.equal(first.iova - maps[0]!.iova, address % 4096);
  assert.equal(again.iova - maps[1]!.iova, address % 4096);
  assert.equal(maps[2]!.vaddr, Math.floor((address + 4000) / 4096) * 4096);
  assert.equal(slice.iova - maps[2]!.iova, (address + 4000) % 4096);
  assert.equal(native.addressOf(maps[2]!.memory), address + 4000);
  for (const m of [first, again, slice]) m.unmap();
  const unmapped = new Uint8Array(memory, 0, 100); // a view of the known buffer, never mapped itself
  native.munmap(memory);
  assert.throws(() => space.map(view, 'to-device'), (e: any) => e.code === 'EINVAL' && /detached/.test(e.message));
  assert.throws(() => space.map(unmapped, 'to-device'), (e: any) => e.code === 'EINVAL' && /detached/.test(e.message));
  assert.equal(space.liveMappings, 0);
});

test('a view of library memory hands its memfd on while the memfd is open, on every map; once its buffer was released under another device\'s mapping, no more', () => {
  const a = recordingSpace().space;
  const { space: b, maps } = recordingSpace(); // a backend that does not pin: it may need the fd
  const shared = a.allocate(2 * 4096);
  const fd = shared.fd;
  const view = new Uint8Array(shared.buffer);
  const first = b.map(view, 'bidirectional');
  const again = b.map(view, 'to-device');
  assert.deepEqual(maps.map((r) => [r.fd, r.fdOffset]), [[fd, 0], [fd, 0]]);
  again.unmap();
  a.releaseAll('a is closed'); // the fd is closed; the pages stay for b's mapping
  const late = b.map(view, 'to-device');
  assert.equal(maps[2]!.fd, undefined, 'a closed memfd (whose number another file may carry now) is not handed on');
  assert.equal(maps[2]!.vaddr, maps[0]!.vaddr);
  late.unmap();
  first.unmap();
  b.releaseAll('b is closed');
});
