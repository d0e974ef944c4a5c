/**
 * The client backend against the testdev model (sparse mmap, MSI with per-vector masks, MSI-X,
 * split transfers, pipelined requests) and against a scripted peer that vanishes.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';
import { native, constants } from '../../src/native/index';
import { connectVfioUser, connectVfioUserFd, type VfioUserClient } from '../../src/vfio-user/client/client';
import { Command, MessageFlags, Vfio, encodeHeader, encodeVersion, encodeRegionAccess } from '../../src/vfio-user/protocol/codec';
import { MessageReader } from '../../src/vfio-user/protocol/transport';
import { startServerThread, type ServerThread } from '../../src/vfio-user/server/thread';
import { TestdevReg } from '../../src/models/testdev';

let server: ServerThread;

before(async () => {
  server = await startServerThread({ model: 'testdev', socketPath: path.join(os.tmpdir(), `userpci-testdev-${process.pid}.sock`), maxDataXferSize: 1024 });
});

after(async () => {
  await server.stop();
});

function u32(value: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, value >>> 0, true);
  return b;
}

function read32(c: VfioUserClient, region: number, offset: number): number {
  const b = new Uint8Array(4);
  c.regionRead(region, offset, b);
  return new DataView(b.buffer).getUint32(0, true);
}

/** Command.BusMaster: MSI and MSI-X messages are memory writes, sent only with it on (as DMA). */
function setBusMaster(c: VfioUserClient, on: boolean): void {
  const command = read32(c, Vfio.PCI_CONFIG_REGION_INDEX, 0x04) & 0xffff;
  c.regionWrite(Vfio.PCI_CONFIG_REGION_INDEX, 0x04, new Uint8Array([on ? command | 0x4 : command & ~0x4, command >> 8]));
}

test('sparse mmap: mappable pages are shared memory, the others trap to the model', () => {
  const c = connectVfioUser(server.socketPath);
  try {
    const info = c.regionInfo(0);
    assert.equal(info.size, 16 * 1024);
    assert.equal(info.mappable, true);
    assert.deepEqual(info.sparseAreas, [{ offset: 0x1000, size: 0x1000 }, { offset: 0x3000, size: 0x1000 }]);
    const page1 = c.mapRegion(0, 0x1000, 0x1000);
    const page3 = c.mapRegion(0, 0x3000, 0x1000);
    Atomics.store(new Uint32Array(page1), 4, 0xabcd1234);
    assert.equal(read32(c, 0, 0x1010), 0xabcd1234, 'a message access sees what the mapping wrote');
    c.regionWrite(0, 0x3020, u32(0x600d));
    assert.equal(Atomics.load(new Uint32Array(page3), 8), 0x600d, 'and the other way round');
    c.regionWrite(0, TestdevReg.SCRATCH, u32(77));
    assert.equal(read32(c, 0, TestdevReg.SCRATCH), 77);
    assert.equal(read32(c, 0, 0x2040), 0x2040, 'page 2 is trapped');
    assert.throws(() => c.mapRegion(0, 0, 0x1000), (e: any) => e.code === 'ERANGE');
    assert.throws(() => c.mapRegion(0, 0x1000, 0x2000), (e: any) => e.code === 'ERANGE');
    assert.equal(c.regionInfo(2).mappable, false, 'the MSI-X BAR is never mapped');
    c.unmapRegion(page1);
    c.unmapRegion(page3);
    assert.throws(() => c.unmapRegion(page1), (e: any) => e.code === 'EINVAL');
  } finally {
    c.close();
  }
});

test('transfers beyond the server\'s max_data_xfer_size are split; async requests pipeline', async () => {
  const c = connectVfioUser(server.socketPath);
  try {
    assert.equal(c.serverMaxDataXferSize, 1024);
    const page = new Uint8Array(c.mapRegion(0, 0x3000, 0x1000));
    const pattern = new Uint8Array(0x1000).map((_, i) => (i * 13) & 0xff);
    assert.equal(c.regionWrite(0, 0x3000, pattern), 0x1000);
    assert.deepEqual(page.slice(), pattern);
    const back = new Uint8Array(0x1000);
    assert.equal(c.regionRead(0, 0x3000, back), 0x1000);
    assert.deepEqual(back, pattern);
    // Eight reads in flight at once, each answered by id, in any order.
    const reads = Array.from({ length: 8 }, (_, i) => {
      const into = new Uint8Array(512);
      return c.regionReadAsync(0, 0x3000 + i * 512, into).then(() => into);
    });
    const results = await Promise.all(reads);
    results.forEach((r, i) => assert.deepEqual(r, pattern.subarray(i * 512, (i + 1) * 512)));
    await c.regionWriteAsync(0, TestdevReg.SCRATCH, u32(5));
    assert.equal(read32(c, 0, TestdevReg.SCRATCH), 5);
    c.unmapRegion(page.buffer as ArrayBuffer);
  } finally {
    c.close();
  }
});

test('MSI-X: vectors on their eventfds, -1 leaves a vector unrouted, masks hold interrupts pending', () => {
  const c = connectVfioUser(server.socketPath);
  const fds = [0, 1, 2, 3].map(() => native.eventfd(0, constants.EFD_NONBLOCK));
  try {
    assert.deepEqual(c.irqInfo(Vfio.PCI_MSIX_IRQ_INDEX), { index: 2, count: 4, flags: Vfio.IRQ_INFO_EVENTFD | Vfio.IRQ_INFO_NORESIZE });
    c.setIrqEventfds(Vfio.PCI_MSIX_IRQ_INDEX, 0, [fds[0]!, -1, fds[2]!, fds[3]!]);
    setBusMaster(c, true);
    const notify = (v: number) => c.regionWrite(0, TestdevReg.NOTIFY, u32(v));
    notify(0);
    notify(3);
    notify(1);
    assert.deepEqual(fds.map((fd) => native.eventfdRead(fd)), [1, 0, 0, 1]);
    // Mask vector 2 in the table (vector control at +12); its interrupt waits in the PBA.
    c.regionWrite(2, 2 * 16 + 12, u32(1));
    notify(2);
    assert.equal(native.eventfdRead(fds[2]!), 0);
    assert.equal(read32(c, 2, 0x800) & 0b100, 0b100, 'pending bit');
    c.regionWrite(2, 2 * 16 + 12, u32(0));
    assert.equal(native.eventfdRead(fds[2]!), 1, 'delivered on unmask');
    assert.equal(read32(c, 2, 0x800), 0b010, 'vector 2 no longer pending; unrouted vector 1 (masked) is');
    // Function mask in the capability's message control does the same for every vector.
    const cap = findCapability(c, 0x11);
    const control = new Uint8Array(2);
    c.regionRead(Vfio.PCI_CONFIG_REGION_INDEX, cap + 2, control);
    assert.ok(control[1]! & 0x80, 'MSI-X enabled by SET_IRQS');
    c.regionWrite(Vfio.PCI_CONFIG_REGION_INDEX, cap + 3, new Uint8Array([control[1]! | 0x40]));
    notify(0);
    assert.equal(native.eventfdRead(fds[0]!), 0);
    c.regionWrite(Vfio.PCI_CONFIG_REGION_INDEX, cap + 3, new Uint8Array([control[1]! & ~0x40]));
    assert.equal(native.eventfdRead(fds[0]!), 1);
    c.disableIrqs(Vfio.PCI_MSIX_IRQ_INDEX);
    notify(0);
    assert.equal(native.eventfdRead(fds[0]!), 0);
  } finally {
    c.close();
    fds.forEach((fd) => native.close(fd));
  }
});

test('MSI with per-vector masking: two vectors, mask bits hold, pending bits deliver', () => {
  const c = connectVfioUser(server.socketPath);
  const fds = [native.eventfd(0, constants.EFD_NONBLOCK), native.eventfd(0, constants.EFD_NONBLOCK)];
  try {
    assert.equal(c.irqInfo(Vfio.PCI_MSI_IRQ_INDEX).count, 2);
    c.setIrqEventfds(Vfio.PCI_MSI_IRQ_INDEX, 0, fds);
    setBusMaster(c, true);
    const cap = findCapability(c, 0x05);
    const maskAt = cap + 16; // 64-bit layout: control, address lo/hi, data, reserved, mask, pending
    c.regionWrite(0, TestdevReg.NOTIFY, u32(1));
    assert.equal(native.eventfdRead(fds[1]!), 1);
    c.regionWrite(Vfio.PCI_CONFIG_REGION_INDEX, maskAt, u32(0b01));
    c.regionWrite(0, TestdevReg.NOTIFY, u32(0));
    assert.equal(native.eventfdRead(fds[0]!), 0);
    assert.equal(read32(c, Vfio.PCI_CONFIG_REGION_INDEX, maskAt + 4), 0b01, 'pending');
    c.regionWrite(Vfio.PCI_CONFIG_REGION_INDEX, maskAt, u32(0));
    assert.equal(native.eventfdRead(fds[0]!), 1);
    c.disableIrqs(Vfio.PCI_MSI_IRQ_INDEX);
  } finally {
    c.close();
    fds.forEach((fd) => native.close(fd));
  }
});

test('eventfds are split to the server\'s max_msg_fds (1 here), each vector still on its own fd', async () => {
  const narrow = await startServerThread({ model: 'testdev', socketPath: path.join(os.tmpdir(), `userpci-testdev-narrow-${process.pid}.sock`), maxMsgFds: 1 });
  const c = connectVfioUser(narrow.socketPath);
  const fds = [0, 1, 2, 3].map(() => native.eventfd(0, constants.EFD_NONBLOCK));
  try {
    c.setIrqEventfds(Vfio.PCI_MSIX_IRQ_INDEX, 0, fds);
    setBusMaster(c, true);
    for (const v of [3, 1, 0, 2]) c.regionWrite(0, TestdevReg.NOTIFY, u32(v));
    assert.deepEqual(fds.map((fd) => native.eventfdRead(fd)), [1, 1, 1, 1]);
    // DMA maps still pass their one fd.
    const memfd = native.memfdCreate('narrow', 0);
    native.ftruncate(memfd, 4096);
    const memory = new Uint8Array(native.mmap(4096, constants.PROT_READ | constants.PROT_WRITE, constants.MAP_SHARED, memfd, 0));
    c.dmaMap({ iova: 0, size: 4096, vaddr: native.addressOf(memory), memory, memoryIova: 0, fd: memfd, fdOffset: 0, deviceReads: true, deviceWrites: true });
    c.dmaUnmap(0, 4096);
    native.munmap(memory.buffer as ArrayBuffer);
    native.close(memfd);
  } finally {
    c.close();
    fds.forEach((fd) => native.close(fd));
    await narrow.stop();
  }
});

test('with bus mastering off no MSI or MSI-X message leaves the device (a masked vector still goes pending); INTx is unaffected', () => {
  const c = connectVfioUser(server.socketPath);
  const fds = [0, 1, 2, 3].map(() => native.eventfd(0, constants.EFD_NONBLOCK));
  const notify = (v: number) => c.regionWrite(0, TestdevReg.NOTIFY, u32(v));
  try {
    assert.equal(read32(c, Vfio.PCI_CONFIG_REGION_INDEX, 0x04) & 0x4, 0, 'a new client finds mastering off');
    c.setIrqEventfds(Vfio.PCI_MSIX_IRQ_INDEX, 0, fds);
    notify(0);
    notify(3);
    assert.deepEqual(fds.map((fd) => native.eventfdRead(fd)), [0, 0, 0, 0], 'MSI-X dropped');
    assert.equal(read32(c, 2, 0x800), 0, 'an unmasked vector dropped is not pending either');
    c.regionWrite(2, 1 * 16 + 12, u32(1));
    notify(1);
    assert.equal(read32(c, 2, 0x800), 0b10, 'a masked vector still goes pending');
    setBusMaster(c, true);
    notify(0);
    assert.equal(native.eventfdRead(fds[0]!), 1, 'delivered once mastering is on');
    c.regionWrite(2, 1 * 16 + 12, u32(0));
    assert.equal(native.eventfdRead(fds[1]!), 1, 'the pending one on unmask, with mastering on');
    setBusMaster(c, false);
    notify(2);
    assert.equal(native.eventfdRead(fds[2]!), 0, 'dropped again once mastering is off');
    c.disableIrqs(Vfio.PCI_MSIX_IRQ_INDEX);

    c.setIrqEventfds(Vfio.PCI_MSI_IRQ_INDEX, 0, fds.slice(0, 2));
    notify(1);
    assert.equal(native.eventfdRead(fds[1]!), 0, 'MSI dropped');
    setBusMaster(c, true);
    notify(1);
    assert.equal(native.eventfdRead(fds[1]!), 1, 'MSI delivered with mastering on');
    c.disableIrqs(Vfio.PCI_MSI_IRQ_INDEX);

    setBusMaster(c, false);
    c.setIrqEventfds(Vfio.PCI_INTX_IRQ_INDEX, 0, [fds[3]!]);
    c.regionWrite(0, TestdevReg.INTX, u32(1));
    assert.equal(native.eventfdRead(fds[3]!), 1, 'INTx is a wire, not a write: delivered regardless');
    c.regionWrite(0, TestdevReg.INTX, u32(0));
    c.disableIrqs(Vfio.PCI_INTX_IRQ_INDEX);
  } finally {
    c.close();
    fds.forEach((fd) => native.close(fd));
  }
});

function findCapability(c: VfioUserClient, id: number): number {
  const config = new Uint8Array(256);
  c.regionRead(Vfio.PCI_CONFIG_REGION_INDEX, 0, config);
  for (let at = config[0x34]!, n = 0; at && n < 48; at = config[at + 1]!, n++) if (config[at] === id) return at;
  throw new Error(`capability ${id} not found`);
}

// ---- a scripted peer in this thread: replies are written before the client asks -----------

function reply(id: number, command: number, payload: Uint8Array = new Uint8Array(0), flags = MessageFlags.TYPE_REPLY, error = 0): Uint8Array {
  const out = new Uint8Array(16 + payload.length);
  out.set(encodeHeader({ id, command, size: out.length, flags, error }));
  out.set(payload, 16);
  return out;
}

/** A connected client whose server is `peer`, a raw socket this test writes to by hand. */
function scriptedClient(options: { timeoutMs?: number } = {}): { client: VfioUserClient; peer: number } {
  const [clientFd, peer] = native.socketpair();
  native.sendmsg(peer, [reply(1, Command.VERSION, encodeVersion({ major: 0, minor: 0, capabilities: { maxMsgFds: 4 } }))], []);
  const client = connectVfioUserFd(clientFd, { name: 'scripted', twinSocket: false, ...options });
  return { client, peer };
}

test('the peer vanishing mid-request rejects every pending call with ENODEV, as do later calls', async () => {
  const { client, peer } = scriptedClient();
  const pending = [1, 2, 3].map((i) => client.regionReadAsync(0, i * 4, new Uint8Array(4)));
  native.close(peer);
  const results = await Promise.allSettled(pending);
  for (const r of results) {
    assert.equal(r.status, 'rejected');
    assert.equal((r as PromiseRejectedResult).reason.code, 'ENODEV');
  }
  assert.throws(() => client.regionRead(0, 0, new Uint8Array(4)), (e: any) => e.code === 'ENODEV');
  client.close();
});

test('a sync call whose reply is cut off by the peer closing fails with ENODEV', () => {
  const { client, peer } = scriptedClient();
  // Half a reply (the header promises 20 bytes of payload, 4 arrive), then the peer is gone.
  const partial = reply(2, Command.REGION_READ, new Uint8Array(20)).subarray(0, 20);
  native.sendmsg(peer, [partial], []);
  native.close(peer);
  assert.throws(() => client.regionRead(0, 0, new Uint8Array(4)), (e: any) => e.code === 'ENODEV');
  client.close();
});

test('a server that never answers times out (ETIMEDOUT) instead of hanging', () => {
  const { client, peer } = scriptedClient({ timeoutMs: 100 });
  assert.throws(() => client.regionRead(0, 0, new Uint8Array(4)), (e: any) => e.code === 'ETIMEDOUT');
  // Its late reply is dropped, the next call still works.
  const late = new Uint8Array(20);
  late.set(encodeRegionAccess({ offset: 0, region: 0, count: 4 }));
  native.sendmsg(peer, [reply(2, Command.REGION_READ, late), reply(3, Command.REGION_READ, late)], []);
  assert.equal(client.regionRead(0, 0, new Uint8Array(4)), 4);
  client.close();
  native.close(peer);
});

test('the client answers the server\'s DMA_READ/DMA_WRITE from its maps while it waits for its own reply', () => {
  const { client, peer } = scriptedClient();
  const memory = new Uint8Array(4096).map((_, i) => i & 0xff);
  native.sendmsg(peer, [reply(2, Command.DMA_MAP)], []);
  client.dmaMap({ iova: 0x10000, size: 4096, vaddr: native.addressOf(memory), memory, memoryIova: 0x10000, deviceReads: true, deviceWrites: true });
  // The server's requests, then the reply to the client's next call.
  const dmaRead = new Uint8Array(16);
  new DataView(dmaRead.buffer).setBigUint64(0, 0x10010n, true);
  new DataView(dmaRead.buffer).setBigUint64(8, 4n, true);
  const dmaWrite = new Uint8Array(20);
  dmaWrite.set(dmaRead);
  new DataView(dmaWrite.buffer).setBigUint64(0, 0x10020n, true);
  dmaWrite.set([9, 8, 7, 6], 16);
  const outside = new Uint8Array(16);
  new DataView(outside.buffer).setBigUint64(0, 0x20000n, true);
  new DataView(outside.buffer).setBigUint64(8, 4n, true);
  const command = (id: number, cmd: number, payload: Uint8Array) => {
    const m = reply(id, cmd, payload);
    new DataView(m.buffer).setUint32(8, MessageFlags.TYPE_COMMAND, true);
    return m;
  };
  const resetReply = reply(3, Command.DEVICE_RESET);
  native.sendmsg(peer, [command(100, Command.DMA_READ, dmaRead), command(101, Command.DMA_WRITE, dmaWrite), command(102, Command.DMA_READ, outside), resetReply], []);
  client.reset();
  assert.deepEqual([...memory.subarray(0x20, 0x24)], [9, 8, 7, 6], 'DMA_WRITE landed');
  const reader = new MessageReader(peer, { maxMessageSize: 1 << 20, maxFds: 4 });
  const seen = new Map<number, { flags: number; error: number; payload: Uint8Array }>();
  for (let m = reader.poll(); m; m = reader.poll()) seen.set(m.header.id, { flags: m.header.flags, error: m.header.error, payload: m.payload });
  assert.deepEqual([...seen.get(100)!.payload.subarray(16)], [0x10, 0x11, 0x12, 0x13], 'DMA_READ answered with the bytes');
  assert.equal(seen.get(101)!.flags & MessageFlags.ERROR, 0);
  assert.equal(seen.get(102)!.flags & MessageFlags.ERROR, MessageFlags.ERROR, 'outside every map: an error reply');
  assert.equal(seen.get(102)!.error, 14, 'EFAULT');
  client.close();
  native.close(peer);
});
