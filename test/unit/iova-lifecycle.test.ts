/**
 * IOVAs across device close, for devices sharing one IOMMU domain (one VFIO container). The
 * domain here is a model of type1's: a map over an IOVA still mapped fails EEXIST, an unmap must
 * name a live map, and unmaps can be made to fail. Closing a device gives back to the domain's
 * allocator exactly the ranges its close took out of the IOMMU, leaves every other device's maps
 * alone, and never hands out again an IOVA still mapped (the real kernel: guest run 'edu',
 * test/guest/iova-lifecycle.test.ts). The proxy over the same model: a client's map whose unmap
 * failed keeps its memory and is refused to later clients.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { DmaSpace } from '../../src/dma/dma-space';
import { UserpciError } from '../../src/errors';
import type { Backend, BackendDmaMapRequest } from '../../src/device/backend';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openDevice } from '../../src/device/open';
import { EduDriver } from '../../src/drivers/edu/edu-driver';
import { startServerThread } from '../../src/vfio-user/server/thread';
import { ProxyHost } from '../../src/vfio-user/proxy/proxy-host';
import type { VfioBackend } from '../../src/backends/vfio/vfio-backend';
import { DmaFlags, Errno } from '../../src/vfio-user/protocol/codec';
import { native } from '../../src/native/index';

const PAGE = 4096;
/** 63 usable pages (IOVA 0 is never handed out): small, so a leak runs out of space within a few closes. */
const DOMAIN_END = 64 * PAGE - 1;

class ModelDomain {
  /** Live maps, by IOVA: size and the device that made it. */
  readonly maps = new Map<number, { size: number; owner: string }>();
  /** IOVAs whose unmap fails (as an IOMMU unmap that errors leaves the map in place). */
  readonly failUnmap = new Set<number>();

  backend(owner: string): Backend {
    return {
      kind: 'vfio',
      name: owner,
      pinsDmaMemory: true,
      iommuAperture: () => ({ domain: this, ranges: [{ start: 0, end: DOMAIN_END }], pageSize: PAGE }),
      dmaMap: (r: BackendDmaMapRequest) => {
        for (const [iova, m] of this.maps) {
          if (r.iova < iova + m.size && iova < r.iova + r.size) throw new UserpciError('EEXIST', `${owner}: IOVA 0x${r.iova.toString(16)} overlaps ${m.owner}'s map at 0x${iova.toString(16)}`);
        }
        this.maps.set(r.iova, { size: r.size, owner });
      },
      dmaUnmap: (iova: number, size: number) => {
        if (this.failUnmap.has(iova)) throw new UserpciError('EIO', `unmapping 0x${iova.toString(16)} failed`);
        const m = this.maps.get(iova);
        if (m === undefined || m.size !== size) throw new UserpciError('EINVAL', `${owner}: nothing mapped at 0x${iova.toString(16)} (+${size})`);
        this.maps.delete(iova);
      },
    } as unknown as Backend;
  }

  space(owner: string): DmaSpace {
    return new DmaSpace(this.backend(owner), DOMAIN_END);
  }

  owners(): string[] {
    return [...new Set([...this.maps.values()].map((m) => m.owner))].sort();
  }
}

test('a device opened and closed many times beside another in its domain gives its IOVAs back each time; the other\'s maps stay mapped and usable', () => {
  const domain = new ModelDomain();
  const b = domain.space('b');
  const bBuffer = b.allocate(4 * PAGE);
  const bMemory = new Uint8Array(3 * PAGE);
  const bMap = b.map(bMemory, 'to-device');
  const bRanges = [...domain.maps.entries()];
  const free = b.domainIovaFree;
  assert.equal(free, 63 * PAGE - bBuffer.size - bMap.pageSize);
  for (let round = 0; round < 40; round++) {
    const a = domain.space('a');
    const held = a.allocate(8 * PAGE);
    const streaming = a.map(new Uint8Array(2 * PAGE + 1), 'bidirectional');
    const small = a.map(new Uint8Array(100), 'from-device');
    assert.equal(a.domainIovaFree, free - held.size - streaming.pageSize - small.pageSize, `round ${round}: a's ranges come out of the shared allocator`);
    a.releaseAll('a is closed');
    assert.equal(b.domainIovaFree, free, `round ${round}: every IOVA a took is free again`);
    assert.deepEqual([...domain.maps.entries()], bRanges, `round ${round}: only b's maps are left in the IOMMU, as they were`);
    // What the user still holds of a closed device gives nothing back a second time.
    assert.throws(() => held.free(), (e: any) => e.code === 'EINVAL' && /already freed/.test(e.message));
    assert.throws(() => streaming.unmap(), (e: any) => e.code === 'EINVAL' && /already unmapped/.test(e.message));
    assert.equal(b.domainIovaFree, free, `round ${round}: nothing was given back twice`);
  }
  bMap.unmap();
  bBuffer.free();
  assert.deepEqual(domain.owners(), []);
  assert.equal(b.domainIovaFree, 63 * PAGE);
  b.releaseAll('b is closed');
});

test('a stale handle of a closed device cannot give back a range another device holds now', () => {
  const domain = new ModelDomain();
  const a = domain.space('a');
  const held = a.allocate(PAGE);
  const streaming = a.map(new Uint8Array(PAGE), 'to-device');
  a.releaseAll('a is closed');
  // b takes the whole space, so it holds whatever a had.
  const b = domain.space('b');
  const all = b.allocate(63 * PAGE);
  assert.equal(b.domainIovaFree, 0);
  assert.throws(() => held.free(), (e: any) => e.code === 'EINVAL');
  assert.throws(() => streaming.unmap(), (e: any) => e.code === 'EINVAL');
  assert.equal(b.domainIovaFree, 0);
  assert.deepEqual(domain.owners(), ['b']);
  all.free();
  b.releaseAll('b is closed');
});

test('an IOVA whose IOMMU unmap failed (at close, free or unmap) is never handed out again; the rest is', () => {
  const domain = new ModelDomain();
  const a = domain.space('a');
  const stuckAtClose = a.allocate(2 * PAGE);
  const goneAtClose = a.map(new Uint8Array(PAGE), 'from-device');
  const stuckAtFree = a.allocate(PAGE);
  const stuckAtUnmap = a.map(new Uint8Array(PAGE), 'to-device');
  const stuck = [stuckAtClose.iova, stuckAtFree.iova, stuckAtUnmap.pageIova];
  const stuckPages = (stuckAtClose.size + stuckAtFree.size + stuckAtUnmap.pageSize) / PAGE;
  for (const iova of stuck) domain.failUnmap.add(iova);
  assert.throws(() => stuckAtFree.free(), (e: any) => e.code === 'EIO');
  assert.throws(() => stuckAtUnmap.unmap(), (e: any) => e.code === 'EIO');
  a.releaseAll('a is closed');
  assert.ok(!domain.maps.has(goneAtClose.pageIova));
  assert.deepEqual([...domain.maps.keys()].sort(), [...stuck].sort(), 'the IOMMU still maps what failed to unmap');
  const b = domain.space('b');
  assert.equal(b.domainIovaFree, (63 - stuckPages) * PAGE, 'only what left the IOMMU came back');
  // Next fit walks the whole space several times: a stuck IOVA handed out would fail EEXIST in the model.
  for (let i = 0; i < 4 * 63; i++) b.allocate(PAGE).free();
  const rest: { free(): void }[] = [];
  for (;;) {
    try {
      rest.push(b.allocate(PAGE));
    } catch (err) {
      assert.equal((err as UserpciError).code, 'ENOMEM');
      break;
    }
  }
  assert.equal(rest.length, 63 - stuckPages, 'every page but the stuck ones is handed out');
  for (const r of rest) r.free();
  b.releaseAll('b is closed');
});

test('vfio-user: each connection is its own IOVA space, handed over whole at every open; a close takes every map out of the server; DMA works after each reopen', async () => {
  const socketPath = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'userpci-iova-')), 'edu.sock');
  const server = await startServerThread({ model: 'edu', socketPath });
  try {
    let whole: number | undefined;
    for (let round = 0; round < 6; round++) {
      const device = await openDevice(socketPath);
      whole ??= device.dma.domainIovaFree;
      assert.equal(device.dma.domainIovaFree, whole, `round ${round}: nothing of the last connection is held`);
      const edu = new EduDriver(device);
      const buffer = device.allocDma(1 << 20);
      const mine = new Uint8Array(8192);
      const streaming = device.mapDma(mine, 'bidirectional');
      assert.equal(device.dma.domainIovaFree, whole - buffer.size - streaming.pageSize);
      const bytes = new Uint8Array(buffer.buffer);
      bytes.set(Array.from({ length: 4095 }, (_, i) => (i + round) & 0xff));
      await edu.dma('to-device', buffer.iova, 0, 4095);
      await edu.dma('from-device', streaming.iova, 0, 4095);
      assert.deepEqual(mine.subarray(0, 4095), bytes.subarray(0, 4095));
      const unmaps: number[] = [];
      const backend = device.backend;
      const unmap = backend.dmaUnmap.bind(backend);
      backend.dmaUnmap = (iova: number, size: number) => {
        unmap(iova, size); // throws if the server refused it
        unmaps.push(iova);
      };
      device.close();
      assert.deepEqual(unmaps.sort(), [buffer.iova, streaming.pageIova].sort(), `round ${round}: every map was taken out of the server at close`);
      assert.equal(device.dma.domainIovaFree, whole, `round ${round}: and its IOVAs went back`);
    }
  } finally {
    await server.stop();
  }
});

/** The proxy's VFIO device over the model domain: no regions or interrupts, config space reads as zeros. */
function proxyOver(domain: ModelDomain): { host: ProxyHost; memories: Uint8Array[]; logged: string[] } {
  const backend = domain.backend('proxy') as Backend & Record<string, unknown>;
  const memories: Uint8Array[] = [];
  const map = backend.dmaMap.bind(backend);
  backend.dmaMap = (r: BackendDmaMapRequest) => {
    map(r);
    memories.push(r.memory);
  };
  Object.assign(backend, {
    deviceInfo: () => ({ numRegions: 0, numIrqs: 0 }),
    regionRead: (_index: number, _offset: number, into: Uint8Array) => into.fill(0),
    regionWrite: () => {},
  });
  const logged: string[] = [];
  return { host: new ProxyHost(backend as unknown as VfioBackend, { log: (m) => logged.push(m) }), memories, logged };
}

function clientMemory(size: number): number {
  const fd = native.memfdCreate('iova-lifecycle-client', 0);
  native.ftruncate(fd, size);
  return fd; // the proxy consumes it
}

test('proxy: a client\'s map whose IOMMU unmap failed at disconnect keeps its memory mapped, and later clients are refused its IOVAs with EBUSY, not EEXIST', () => {
  const domain = new ModelDomain();
  const { host, memories, logged } = proxyOver(domain);
  const RW = DmaFlags.READ | DmaFlags.WRITE;
  // First client: two maps; the IOMMU will refuse to unmap one of them.
  assert.equal(host.dmaMap(8 * PAGE, 2 * PAGE, RW, clientMemory(2 * PAGE), 0), 0);
  assert.equal(host.dmaMap(16 * PAGE, PAGE, RW, clientMemory(PAGE), 0), 0);
  const [stuckMemory, goneMemory] = memories;
  domain.failUnmap.add(8 * PAGE);
  host.clientDetached();
  assert.deepEqual([...domain.maps.keys()], [8 * PAGE], 'the IOMMU still maps what failed to unmap');
  assert.equal(stuckMemory!.length, 2 * PAGE, 'memory the device may still reach stays mapped in the proxy');
  stuckMemory![0] = 0xa5; // and writable: not unmapped under the device
  assert.equal(goneMemory!.length, 0, 'memory out of the IOMMU is unmapped');
  assert.ok(logged.some((m) => /0x8000/.test(m) && /unmap/i.test(m)), 'the failure is logged');
  // Next client: the stuck range (and any overlap) is refused as busy; the rest is free.
  assert.equal(host.dmaMap(8 * PAGE, 2 * PAGE, RW, clientMemory(2 * PAGE), 0), Errno.EBUSY);
  assert.equal(host.dmaMap(9 * PAGE, 4 * PAGE, RW, clientMemory(4 * PAGE), 0), Errno.EBUSY);
  assert.equal(host.dmaMap(16 * PAGE, PAGE, RW, clientMemory(PAGE), 0), 0, 'a range that left the IOMMU is mapped again');
  assert.equal(host.dmaMap(10 * PAGE, PAGE, RW, clientMemory(PAGE), 0), 0, 'right after the stuck range is free');
  assert.deepEqual([...domain.maps.keys()].sort((a, b) => a - b), [8 * PAGE, 10 * PAGE, 16 * PAGE]);
  // A live client's unmap that fails is reported, and its range goes the same way.
  domain.failUnmap.add(16 * PAGE);
  assert.equal(host.dmaUnmap(16 * PAGE, PAGE), Errno.EIO);
  assert.equal(memories[memories.length - 2]!.length, PAGE, 'kept mapped');
  host.clientDetached();
  assert.equal(host.dmaMap(16 * PAGE, PAGE, RW, clientMemory(PAGE), 0), Errno.EBUSY);
  assert.equal(host.dmaMap(10 * PAGE, PAGE, RW, clientMemory(PAGE), 0), 0);
  host.clientDetached();
  assert.deepEqual([...domain.maps.keys()].sort((a, b) => a - b), [8 * PAGE, 16 * PAGE], 'only the stuck ranges are left in the IOMMU');
});
