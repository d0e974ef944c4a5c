/**
 * Which memory a backend can map for DMA (`mapsAnyMemory`), and streaming maps of memory the
 * library allocated handing their memfd on, so that a server reaching memory only by fd (a proxy
 * for a real device) can map them. The proxy itself is shown against QEMU's edu in the guest
 * (test/guest/proxy-edu.test.ts); here the client's question and DmaSpace's answer, in detail.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { native } from '../../src/native/index';
import { connectVfioUserFd, type VfioUserClient } from '../../src/vfio-user/client/client';
import { Command, DmaFlags, Errno, MessageFlags, decodeDmaMap, decodeDmaUnmap, encodeDmaUnmap, encodeHeader, encodeVersion } from '../../src/vfio-user/protocol/codec';
import { MessageReader, type IncomingMessage } from '../../src/vfio-user/protocol/transport';
import { DmaSpace } from '../../src/dma/dma-space';
import type { Backend, BackendDmaMapRequest } from '../../src/device/backend';
import { UserpciError } from '../../src/errors';

function reply(id: number, command: number, payload: Uint8Array = new Uint8Array(0), error = 0): Uint8Array {
  const out = new Uint8Array(16 + payload.length);
  out.set(encodeHeader({ id, command, size: out.length, flags: MessageFlags.TYPE_REPLY | (error ? MessageFlags.ERROR : 0), error }));
  out.set(payload, 16);
  return out;
}

function sentBy(peer: number): IncomingMessage[] {
  const reader = new MessageReader(peer, { maxMessageSize: 1 << 16, maxFds: 4 });
  const out: IncomingMessage[] = [];
  for (let m = reader.poll(); m; m = reader.poll()) out.push(m);
  return out;
}

function scripted(): { client: VfioUserClient; peer: number } {
  const [clientFd, peer] = native.socketpair();
  native.sendmsg(peer, [reply(1, Command.VERSION, encodeVersion({ major: 0, minor: 0, capabilities: { maxMsgFds: 4 } }))], []);
  return { client: connectVfioUserFd(clientFd, { name: 'scripted', twinSocket: false, timeoutMs: 5000 }), peer };
}

test('vfio-user mapsAnyMemory: a server that refuses a map without fd (ENOTSUP) is asked once, with a read-only page and no fd', () => {
  const { client, peer } = scripted();
  try {
    native.sendmsg(peer, [reply(2, Command.DMA_MAP, new Uint8Array(0), Errno.ENOTSUP)], []);
    assert.equal(client.mapsAnyMemory(), false);
    assert.equal(client.mapsAnyMemory(), false, 'the answer is kept');
    const sent = sentBy(peer).filter((m) => m.header.command !== Command.VERSION);
    assert.equal(sent.length, 1, 'one question, asked once');
    assert.equal(sent[0]!.header.command, Command.DMA_MAP);
    assert.equal(sent[0]!.fds.length, 0);
    const map = decodeDmaMap(sent[0]!.payload);
    assert.deepEqual([map.flags, map.size], [DmaFlags.READ, 4096], 'one page the device may only read');
  } finally {
    client.close();
    native.close(peer);
  }
});

test('vfio-user mapsAnyMemory: a server that takes it hears the unmap at once, at an IOVA none of our maps uses', () => {
  const { client, peer } = scripted();
  try {
    const memory = new Uint8Array(8192);
    native.sendmsg(peer, [reply(2, Command.DMA_MAP)], []);
    client.dmaMap({ iova: 0, size: 8192, vaddr: native.addressOf(memory), memory, memoryIova: 0, deviceReads: true, deviceWrites: true });
    native.sendmsg(peer, [reply(3, Command.DMA_MAP), reply(4, Command.DMA_UNMAP, encodeDmaUnmap({ address: 8192, size: 4096 }))], []);
    assert.equal(client.mapsAnyMemory(), true);
    const [, probe, unmap] = sentBy(peer).filter((m) => m.header.command !== Command.VERSION);
    assert.equal(decodeDmaMap(probe!.payload).address, 8192, 'past the map at [0, 8192)');
    assert.deepEqual([decodeDmaUnmap(unmap!.payload).address, decodeDmaUnmap(unmap!.payload).size], [8192, 4096]);
    assert.equal(client.mapsAnyMemory(), true);
    assert.equal(sentBy(peer).length, 0, 'asked once');
  } finally {
    client.close();
    native.close(peer);
  }
});

test('vfio-user mapsAnyMemory: any other failure is the caller\'s to hear, not an answer', () => {
  const { client, peer } = scripted();
  try {
    native.sendmsg(peer, [reply(2, Command.DMA_MAP, new Uint8Array(0), Errno.EINVAL)], []);
    assert.throws(() => client.mapsAnyMemory(), (e: any) => e.code === 'EINVAL');
  } finally {
    client.close();
    native.close(peer);
  }
});

test('vfio-user: a map the server refuses as busy (a proxy whose IOMMU unmap failed there) is EBUSY saying so, and the client keeps no record of it', () => {
  const { client, peer } = scripted();
  const fd = native.memfdCreate('dma-reach-busy', 0);
  try {
    native.ftruncate(fd, 8192);
    const memory = new Uint8Array(8192);
    const request = { iova: 0x10000, size: 8192, vaddr: native.addressOf(memory), memory, memoryIova: 0x10000, fd, fdOffset: 0, deviceReads: true, deviceWrites: true };
    native.sendmsg(peer, [reply(2, Command.DMA_MAP, new Uint8Array(0), Errno.EBUSY)], []);
    assert.throws(() => client.dmaMap(request), (e: any) => e instanceof UserpciError && e.code === 'EBUSY' && /busy in its IOMMU/.test(e.message) && /0x10000/.test(e.message));
    native.sendmsg(peer, [reply(3, Command.DMA_MAP)], []);
    client.dmaMap({ ...request, iova: 0x20000, memoryIova: 0x20000 });
    const maps = sentBy(peer).filter((m) => m.header.command === Command.DMA_MAP);
    assert.deepEqual(maps.map((m) => decodeDmaMap(m.payload).address), [0x10000, 0x20000]);
    for (const m of maps) for (const received of m.fds) native.close(received);
  } finally {
    native.close(fd);
    client.close();
    native.close(peer);
  }
});

test('vfio-user IOVAs stay where any IOMMU behind a server can map them: below 2^39, outside the x86 MSI window', () => {
  const { client, peer } = scripted();
  try {
    const { ranges } = client.iommuAperture();
    assert.ok(ranges.every((r) => r.start <= r.end && r.end < 2 ** 39), JSON.stringify(ranges));
    assert.ok(ranges.every((r) => r.end < 0xfee00000 || r.start > 0xfeefffff), 'the MSI window is left out');
    assert.ok(ranges.some((r) => r.start === 0) && ranges.some((r) => r.end === 2 ** 39 - 1), 'and nothing else');
  } finally {
    client.close();
    native.close(peer);
  }
});

/** A backend that reaches memory only by fd, as the proxy's server does, and records each map. */
function fdOnlyBackend(): { backend: Backend; maps: BackendDmaMapRequest[] } {
  const maps: BackendDmaMapRequest[] = [];
  const backend = {
    kind: 'vfio-user',
    name: 'fd-only',
    mapsAnyMemory: () => false,
    iommuAperture: () => ({ domain: {}, ranges: [{ start: 0, end: 2 ** 40 }], pageSize: 4096 }),
    dmaMap: (r: BackendDmaMapRequest) => {
      if (r.fd === undefined) throw new UserpciError('ENOTSUP', 'fd-only: the server cannot reach memory without an fd');
      maps.push(r);
    },
    dmaUnmap: () => {},
  } as unknown as Backend;
  return { backend, maps };
}

test('mapDma of library memory (a view of an allocDma buffer) hands its memfd on, at the offset of the mapped pages', () => {
  const { backend, maps } = fdOnlyBackend();
  const space = new DmaSpace(backend, 2 ** 40 - 1);
  const buffer = space.allocate(4 * 4096, { hugePages: 'never' });
  const view = new Uint8Array(buffer.buffer, 2 * 4096 - 100, 300); // pages 1 and 2
  const m = space.map(view, 'to-device');
  const request = maps.at(-1)!;
  assert.equal(request.fd, buffer.fd);
  assert.equal(request.fdOffset, 4096);
  assert.equal(request.size, 2 * 4096);
  assert.equal(m.iova % 4096, 4096 - 100);
  assert.notEqual(m.iova, buffer.iova + 2 * 4096 - 100, 'a streaming map has its own IOVA');
  m.unmap();
  // Plain memory has no fd: the backend's refusal reaches the caller with its code.
  const before = maps.length;
  assert.throws(() => space.map(new Uint8Array(4096), 'to-device'), (e: any) => e.code === 'ENOTSUP');
  assert.equal(maps.length, before, 'nothing was mapped');
  buffer.free();
  space.releaseAll('test');
});
