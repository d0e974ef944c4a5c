/**
 * Conformance with the vfio-user specification (QEMU docs/interop/vfio-user.rst), message by
 * message, for both of our ends:
 * - our server, spoken to byte by byte by a raw client written here;
 * - our client, answered by a scripted peer written here (replies queued before each call,
 *   since the client's calls block; what the client sent is read back afterwards).
 * Rules covered: argsz short / exact / larger, flags, reply capabilities a subset of the proposal,
 * the VERSION JSON's NUL, limits announced in VERSION, fd counts, error replies with and without
 * payload, ordering and No_reply, twin socket, unmap-all, REGION_WRITE_MULTI, and the server's
 * backpressure and stall protection.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';
import * as fs from 'node:fs';
import { native, constants } from '../../src/native/index';
import { connectVfioUserFd, type VfioUserClient } from '../../src/vfio-user/client/client';
import {
  Command,
  DmaUnmapFlags,
  Errno,
  MessageFlags,
  REGION_INFO_SIZE,
  Vfio,
  decodeDmaUnmap,
  decodeRegionInfoReply,
  decodeRegionInfoRequest,
  decodeSetIrqs,
  decodeVersion,
  encodeDeviceInfo,
  encodeDmaMap,
  encodeDmaUnmap,
  encodeHeader,
  encodeIrqInfo,
  encodeRegionAccess,
  encodeRegionInfoReply,
  encodeRegionInfoRequest,
  encodeSetIrqs,
  encodeVersion,
  encodeWriteMulti,
  type MessageHeader,
} from '../../src/vfio-user/protocol/codec';
import { ConnectionClosedError, MessageReader, type IncomingMessage } from '../../src/vfio-user/protocol/transport';
import { serveVfioUser, type VfioUserServer } from '../../src/vfio-user/server/server';
import { TestDeviceModel, TestdevReg } from '../../src/models/testdev';

function message(header: Partial<MessageHeader> & { command: number }, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(16 + payload.length);
  out.set(encodeHeader({ id: header.id ?? 7, command: header.command, size: header.size ?? out.length, flags: header.flags ?? 0, error: header.error ?? 0 }));
  out.set(payload, 16);
  return out;
}

function u32(value: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, value >>> 0, true);
  return b;
}

function argszOf(payload: Uint8Array): number {
  return new DataView(payload.buffer, payload.byteOffset, payload.byteLength).getUint32(0, true);
}

/** Resolves when fd is readable (or errored): the test waits on the socket, never on a clock. */
function readable(fd: number): Promise<void> {
  return new Promise((resolve) => {
    const h = native.watch(fd, 1, false, () => {
      native.watchStop(h);
      resolve();
    });
  });
}

// ==== our server ==============================================================================

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'userpci-conformance-'));
let server: VfioUserServer;
let model: TestDeviceModel;
const socket = path.join(dir, 'server.sock');
const XFER = 4096;

before(async () => {
  model = new TestDeviceModel();
  server = await serveVfioUser(model, { socketPath: socket, maxDataXferSize: XFER, maxMsgFds: 4 });
});

after(async () => {
  await server.close();
});

class RawClient {
  readonly fd: number;
  private readonly reader: MessageReader;
  private nextId = 100;

  constructor(path = socket) {
    this.fd = native.unixConnect(path);
    this.reader = new MessageReader(this.fd, { maxMessageSize: 1 << 21, maxFds: 8 });
  }

  send(bytes: Uint8Array, fds: number[] = []): void {
    assert.equal(native.sendmsg(this.fd, [bytes], fds), bytes.length);
  }

  async next(): Promise<IncomingMessage | 'closed'> {
    for (;;) {
      try {
        const m = this.reader.poll();
        if (m) return m;
      } catch (err) {
        if (err instanceof ConnectionClosedError) return 'closed';
        throw err;
      }
      await readable(this.fd);
    }
  }

  /** Send a command, return its reply (asserting it is one, for this command and id). */
  async call(command: number, payload: Uint8Array = new Uint8Array(0), fds: number[] = []): Promise<IncomingMessage> {
    const id = this.nextId++;
    this.send(message({ id, command }, payload), fds);
    const reply = await this.next();
    assert.notEqual(reply, 'closed', `${command}: the server closed the connection`);
    const r = reply as IncomingMessage;
    assert.equal(r.header.flags & MessageFlags.TYPE_MASK, MessageFlags.TYPE_REPLY);
    assert.equal(r.header.id, id, 'the reply carries the request id');
    assert.equal(r.header.command, command, 'the reply carries the command');
    return r;
  }

  async negotiate(capabilities: Record<string, unknown> = { max_msg_fds: 4, max_data_xfer_size: XFER }): Promise<IncomingMessage> {
    const json = Buffer.from(JSON.stringify({ capabilities }) + '\0');
    const payload = new Uint8Array(4 + json.length);
    payload.set(json, 4);
    return this.call(Command.VERSION, payload);
  }

  close(): void {
    native.close(this.fd);
  }
}

const errorOf = (r: IncomingMessage) => (r.header.flags & MessageFlags.ERROR ? r.header.error : 0);

async function withClient(fn: (c: RawClient) => Promise<void>, capabilities?: Record<string, unknown>): Promise<void> {
  const c = new RawClient();
  try {
    const v = await c.negotiate(capabilities);
    assert.equal(errorOf(v), 0);
    await fn(c);
  } finally {
    c.close();
    await server.whenIdle();
  }
}

test('server VERSION: same major, minor at most the proposal, capabilities a subset of the proposal', async () => {
  const c = new RawClient();
  try {
    const reply = await c.negotiate({ max_msg_fds: 2, max_data_xfer_size: 1024 });
    const v = decodeVersion(reply.payload);
    assert.equal(v.major, 0);
    assert.ok(v.minor <= 0, 'we proposed minor 0');
    assert.deepEqual([...v.named].sort(), ['maxDataXferSize', 'maxMsgFds'], 'nothing the client did not propose');
    assert.equal(v.capabilities.maxDataXferSize, XFER, 'the value is the server\'s own limit');
    assert.equal(reply.payload[reply.payload.length - 1], 0, 'the JSON ends with its NUL');
    assert.equal(reply.fds.length, 0, 'no twin socket was proposed, none is passed');
  } finally {
    c.close();
    await server.whenIdle();
  }
});

test('server VERSION: JSON without its NUL is refused; a server limit stricter than a default the client relies on closes', async () => {
  const c = new RawClient();
  try {
    const json = Buffer.from(JSON.stringify({ capabilities: { max_data_xfer_size: XFER } }));
    const payload = new Uint8Array(4 + json.length);
    payload.set(json, 4);
    assert.equal(errorOf(await c.call(Command.VERSION, payload)), Errno.EINVAL);
  } finally {
    c.close();
    await server.whenIdle();
  }
  const d = new RawClient();
  try {
    // No max_data_xfer_size proposed: the client may send 1 MiB, this server takes 4 KiB.
    d.send(message({ command: Command.VERSION }, encodeVersion({ major: 0, minor: 0, capabilities: { maxMsgFds: 1 } })));
    assert.equal(await d.next(), 'closed');
  } finally {
    d.close();
    await server.whenIdle();
  }
});

test('server twin socket: offered only when proposed, as one fd named by fd_index', async () => {
  await withClient(
    async () => {},
    { max_msg_fds: 4, max_data_xfer_size: XFER },
  );
  const c = new RawClient();
  try {
    const reply = await c.negotiate({ max_msg_fds: 4, max_data_xfer_size: XFER, twin_socket: { supported: true } });
    const v = decodeVersion(reply.payload);
    assert.equal(v.capabilities.twinSocket?.supported, true);
    assert.equal(reply.fds.length, 1);
    assert.equal(v.capabilities.twinSocket?.fdIndex, 0);
    for (const fd of reply.fds) native.close(fd);
  } finally {
    c.close();
    await server.whenIdle();
  }
});

test('server argsz: short is EINVAL, exact and larger are answered with the size the reply needs', async () => {
  await withClient(async (c) => {
    // DEVICE_GET_INFO
    assert.equal(errorOf(await c.call(Command.DEVICE_GET_INFO, encodeDeviceInfo({ argsz: 8, flags: 0, numRegions: 0, numIrqs: 0 }))), Errno.EINVAL);
    for (const argsz of [16, 64]) {
      const r = await c.call(Command.DEVICE_GET_INFO, encodeDeviceInfo({ argsz, flags: 0, numRegions: 0, numIrqs: 0 }));
      assert.equal(r.payload.length, 16);
      assert.equal(argszOf(r.payload), 16);
    }
    // DEVICE_GET_IRQ_INFO
    assert.equal(errorOf(await c.call(Command.DEVICE_GET_IRQ_INFO, encodeIrqInfo({ argsz: 4, flags: 0, index: 1, count: 0 }))), Errno.EINVAL);
    for (const argsz of [16, 100]) {
      const r = await c.call(Command.DEVICE_GET_IRQ_INFO, encodeIrqInfo({ argsz, flags: 0, index: 1, count: 0 }));
      assert.equal(r.payload.length, 16);
    }
    // DEVICE_GET_REGION_INFO: BAR0 has two sparse areas, so the whole reply is larger than the fixed part.
    assert.equal(errorOf(await c.call(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest(0, 8))), Errno.EINVAL);
    const exact = await c.call(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest(0, REGION_INFO_SIZE));
    const needed = argszOf(exact.payload);
    assert.ok(needed > REGION_INFO_SIZE, 'the reply names the larger size it needs');
    assert.equal(exact.payload.length, REGION_INFO_SIZE, 'and sends no more than was allowed');
    assert.equal(exact.fds.length, 0, 'the fd comes only with the complete reply');
    const full = await c.call(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest(0, needed + 64));
    const info = decodeRegionInfoReply(full.payload);
    assert.equal(info.argsz, needed);
    assert.equal(full.payload.length, needed);
    assert.ok(info.flags & Vfio.REGION_INFO_FLAG_CAPS);
    assert.equal(info.sparseAreas?.length, 2);
    assert.equal(full.fds.length, 1);
    for (const fd of full.fds) native.close(fd);
    // DMA_UNMAP: argsz is the room for the reply, which echoes the 24-byte entry.
    const memfd = native.memfdCreate('conformance', 0);
    native.ftruncate(memfd, 8192);
    assert.equal(errorOf(await c.call(Command.DMA_MAP, encodeDmaMap({ flags: 3, offset: 0, address: 0x10000, size: 4096 }), [memfd])), 0);
    assert.equal(errorOf(await c.call(Command.DMA_MAP, encodeDmaMap({ flags: 3, offset: 4096, address: 0x20000, size: 4096 }), [memfd])), 0);
    native.close(memfd);
    assert.equal(errorOf(await c.call(Command.DMA_UNMAP, encodeDmaUnmap({ argsz: 16, address: 0x10000, size: 4096 }))), Errno.EINVAL);
    const unmapped = await c.call(Command.DMA_UNMAP, encodeDmaUnmap({ argsz: 24, address: 0x10000, size: 4096 }));
    assert.equal(errorOf(unmapped), 0);
    assert.deepEqual(decodeDmaUnmap(unmapped.payload), { argsz: 24, flags: 0, address: 0x10000, size: 4096 });
    const larger = await c.call(Command.DMA_UNMAP, encodeDmaUnmap({ argsz: 64, address: 0x20000, size: 4096 }));
    assert.equal(errorOf(larger), 0);
    assert.equal(larger.payload.length, 24);
    // DMA_MAP: argsz is the structure's size.
    assert.equal(errorOf(await c.call(Command.DMA_MAP, (() => { const b = encodeDmaMap({ flags: 3, offset: 0, address: 0x30000, size: 4096 }); b[0] = 8; return b; })())), Errno.EINVAL);
    // SET_IRQS: argsz is the request's size including data, checked against what was sent.
    const setIrqs = async (argsz: number) => {
      const b = encodeSetIrqs({ flags: Vfio.IRQ_SET_DATA_EVENTFD | Vfio.IRQ_SET_ACTION_TRIGGER, index: 0, start: 0, count: 1 });
      new DataView(b.buffer).setUint32(0, argsz, true);
      const efd = native.eventfd(0, constants.EFD_NONBLOCK);
      const r = await c.call(Command.DEVICE_SET_IRQS, b, [efd]);
      native.close(efd);
      return errorOf(r);
    };
    assert.equal(await setIrqs(3), Errno.EINVAL);
    assert.equal(await setIrqs(64), Errno.EINVAL, 'argsz beyond the message');
    assert.equal(await setIrqs(20), 0);
    const bools = encodeSetIrqs({ flags: Vfio.IRQ_SET_DATA_BOOL | Vfio.IRQ_SET_ACTION_TRIGGER, index: 1, start: 0, count: 1, bools: new Uint8Array([0]) });
    new DataView(bools.buffer).setUint32(0, 20, true);
    assert.equal(errorOf(await c.call(Command.DEVICE_SET_IRQS, bools)), Errno.EINVAL, 'bool data outside argsz');
  });
});

test('server DMA_UNMAP flags: unmap-all needs address and size 0; a dirty bitmap is not supported', async () => {
  await withClient(async (c) => {
    for (const address of [0x10000, 0x20000, 0x30000]) {
      assert.equal(errorOf(await c.call(Command.DMA_MAP, encodeDmaMap({ flags: 1, offset: 0, address, size: 4096 }))), 0);
    }
    assert.equal(errorOf(await c.call(Command.DMA_UNMAP, encodeDmaUnmap({ flags: DmaUnmapFlags.ALL, address: 0x10000, size: 4096 }))), Errno.EINVAL);
    assert.equal(errorOf(await c.call(Command.DMA_UNMAP, encodeDmaUnmap({ flags: DmaUnmapFlags.GET_DIRTY_BITMAP, address: 0x10000, size: 4096 }))), Errno.ENOTSUP);
    assert.equal(errorOf(await c.call(Command.DMA_UNMAP, encodeDmaUnmap({ flags: 0x80, address: 0x10000, size: 4096 }))), Errno.EINVAL);
    const all = await c.call(Command.DMA_UNMAP, encodeDmaUnmap({ flags: DmaUnmapFlags.ALL, address: 0, size: 0 }));
    assert.equal(errorOf(all), 0);
    assert.equal(decodeDmaUnmap(all.payload).flags, DmaUnmapFlags.ALL);
    assert.equal(server.host.dmaSpace.count, 0, 'every map is gone');
    assert.equal(errorOf(await c.call(Command.DMA_UNMAP, encodeDmaUnmap({ address: 0x20000, size: 4096 }))), Errno.ENOENT);
  });
});

test('server REGION_WRITE_MULTI: every write lands, in order; write_multiple is answered only when proposed', async () => {
  await withClient(
    async (c) => {
      const r = await c.call(
        Command.REGION_WRITE_MULTI,
        encodeWriteMulti([
          { offset: TestdevReg.SCRATCH, region: 0, data: u32(1) },
          { offset: TestdevReg.SCRATCH, region: 0, data: u32(0xfeed) },
          { offset: 0x3010, region: 0, data: new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]) },
        ]),
      );
      assert.equal(errorOf(r), 0);
      assert.equal(new DataView(r.payload.buffer, r.payload.byteOffset).getBigUint64(0, true), 3n);
      const back = await c.call(Command.REGION_READ, encodeRegionAccess({ offset: TestdevReg.SCRATCH, region: 0, count: 4 }));
      assert.deepEqual([...back.payload.subarray(16)], [...u32(0xfeed)], 'the later write wins');
      assert.deepEqual([...new Uint8Array(model.memory, 0x3010, 8)], [1, 2, 3, 4, 5, 6, 7, 8]);
      // One bad entry: nothing is written.
      const bad = await c.call(Command.REGION_WRITE_MULTI, encodeWriteMulti([{ offset: TestdevReg.SCRATCH, region: 0, data: u32(5) }, { offset: 1 << 30, region: 0, data: u32(5) }]));
      assert.equal(errorOf(bad), Errno.EINVAL);
      const still = await c.call(Command.REGION_READ, encodeRegionAccess({ offset: TestdevReg.SCRATCH, region: 0, count: 4 }));
      assert.deepEqual([...still.payload.subarray(16)], [...u32(0xfeed)]);
    },
    { max_msg_fds: 4, max_data_xfer_size: XFER, write_multiple: true },
  );
  const c = new RawClient();
  try {
    const v = decodeVersion((await c.negotiate({ max_data_xfer_size: XFER, write_multiple: true })).payload);
    assert.equal(v.capabilities.writeMultiple, true);
  } finally {
    c.close();
    await server.whenIdle();
  }
});

test('server limits and fds: count over max_data_xfer_size is E2BIG; more fds than max_msg_fds closes; a client taking no fds gets no mmap', async () => {
  await withClient(async (c) => {
    assert.equal(errorOf(await c.call(Command.REGION_READ, encodeRegionAccess({ offset: 0, region: 0, count: XFER + 1 }))), Errno.E2BIG);
    assert.equal(errorOf(await c.call(Command.REGION_READ, encodeRegionAccess({ offset: 0, region: 0, count: XFER }))), 0);
    const fds = Array.from({ length: 5 }, () => native.eventfd(0, constants.EFD_NONBLOCK));
    c.send(message({ command: Command.DEVICE_SET_IRQS }, encodeSetIrqs({ flags: 0x24, index: 2, start: 0, count: 5 })), fds);
    for (const fd of fds) native.close(fd);
    assert.equal(await c.next(), 'closed');
  });
  await withClient(
    async (c) => {
      const r = await c.call(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest(0, 4096));
      const info = decodeRegionInfoReply(r.payload);
      assert.equal(r.fds.length, 0);
      assert.equal(info.flags & Vfio.REGION_INFO_FLAG_MMAP, 0);
    },
    { max_msg_fds: 0, max_data_xfer_size: XFER },
  );
});

test('server ordering: pipelined commands are answered in order, by id; No_reply gets none', async () => {
  await withClient(async (c) => {
    const ids = [31, 32, 33, 34];
    c.send(message({ id: 30, command: Command.REGION_WRITE, flags: MessageFlags.NO_REPLY }, new Uint8Array([...encodeRegionAccess({ offset: TestdevReg.SCRATCH, region: 0, count: 4 }), ...u32(42)])));
    for (const id of ids) c.send(message({ id, command: Command.REGION_READ }, encodeRegionAccess({ offset: TestdevReg.SCRATCH, region: 0, count: 4 })));
    for (const id of ids) {
      const r = await c.next();
      assert.notEqual(r, 'closed');
      assert.equal((r as IncomingMessage).header.id, id);
      assert.deepEqual([...(r as IncomingMessage).payload.subarray(16)], [...u32(42)], 'the No_reply write happened first');
    }
  });
});

test('server backpressure: replies a client never reads stop the server reading, memory stays bounded', async () => {
  await withClient(async (c) => {
    const request = message({ command: Command.REGION_READ }, encodeRegionAccess({ offset: 0, region: 0, count: XFER }));
    let sent = 0;
    let blocked = false;
    // Up to 40 MiB of replies asked for; a server without backpressure would queue them all.
    for (let i = 0; i < 10_000; i++) {
      const n = native.sendmsg(c.fd, [request], []);
      if (n < 0) {
        // Our socket is full: give the server a turn; if it is still full after that, it stopped reading.
        await new Promise((r) => setImmediate(r));
        if (native.sendmsg(c.fd, [request], []) < 0) {
          blocked = true;
          break;
        }
      }
      sent++;
      if (i % 16 === 0) await new Promise((r) => setImmediate(r));
    }
    assert.ok(blocked, `the server kept reading ${sent} requests whose replies nobody read`);
    const bound = 2 * (XFER + 64 * 1024 + 64) + (XFER + 32);
    assert.ok(server.queuedReplyBytes <= bound, `${server.queuedReplyBytes} reply bytes queued (bound ${bound})`);
  });
});

test('server stall protection: a client stopping mid-message is dropped and the next one is served', { timeout: 60_000 }, async () => {
  const stallSocket = path.join(dir, 'stall.sock');
  const stallServer = await serveVfioUser(new TestDeviceModel(), { socketPath: stallSocket, maxDataXferSize: XFER, stallTimeoutMs: 200 });
  try {
    const stuck = new RawClient(stallSocket);
    await stuck.negotiate();
    const half = message({ command: Command.REGION_READ }, encodeRegionAccess({ offset: 0, region: 0, count: 4 })).subarray(0, 20);
    stuck.send(half);
    const next = new RawClient(stallSocket);
    try {
      const v = await next.negotiate(); // waits in the backlog until the stuck client is dropped
      assert.equal(errorOf(v), 0);
      assert.equal(await stuck.next(), 'closed');
      const r = await next.call(Command.DEVICE_GET_INFO, encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 }));
      assert.equal(errorOf(r), 0);
    } finally {
      next.close();
      stuck.close();
    }
  } finally {
    await stallServer.close();
  }
});

// ==== our client ==============================================================================

function reply(id: number, command: number, payload: Uint8Array = new Uint8Array(0), error = 0): Uint8Array {
  return message({ id, command, flags: MessageFlags.TYPE_REPLY | (error ? MessageFlags.ERROR : 0), error }, payload);
}

/** Everything the client sent so far, as messages. */
function drain(peer: number): IncomingMessage[] {
  const reader = new MessageReader(peer, { maxMessageSize: 1 << 21, maxFds: 16 });
  const out: IncomingMessage[] = [];
  for (;;) {
    const m = reader.poll();
    if (!m) return out;
    out.push(m);
  }
}

function scripted(capabilities: Parameters<typeof encodeVersion>[0]['capabilities'] = { maxMsgFds: 4 }): { client: VfioUserClient; peer: number } {
  const [clientFd, peer] = native.socketpair();
  native.sendmsg(peer, [reply(1, Command.VERSION, encodeVersion({ major: 0, minor: 0, capabilities }))], []);
  const client = connectVfioUserFd(clientFd, { name: 'scripted', twinSocket: false, timeoutMs: 5000 });
  return { client, peer };
}

test('client VERSION: proposes 0.x with its limits and the JSON\'s NUL', () => {
  const { client, peer } = scripted();
  try {
    const [version] = drain(peer);
    assert.equal(version!.header.command, Command.VERSION);
    assert.equal(version!.payload[version!.payload.length - 1], 0);
    const v = decodeVersion(version!.payload);
    assert.equal(v.major, 0);
    assert.ok(v.named.has('maxMsgFds') && v.named.has('maxDataXferSize'));
  } finally {
    client.close();
    native.close(peer);
  }
});

test('client VERSION: a reply without the JSON\'s NUL, or enabling twin socket without a socket, is refused', () => {
  for (const payload of [
    (() => {
      const json = Buffer.from('{"capabilities":{}}');
      const p = new Uint8Array(4 + json.length);
      p.set(json, 4);
      return p;
    })(),
    encodeVersion({ major: 0, minor: 0, capabilities: { twinSocket: { supported: true } } }),
  ]) {
    const [clientFd, peer] = native.socketpair();
    native.sendmsg(peer, [reply(1, Command.VERSION, payload)], []);
    assert.throws(() => connectVfioUserFd(clientFd, { name: 'scripted', twinSocket: true, timeoutMs: 5000 }), (e: any) => typeof e.code === 'string' && e.code !== 'ERR_ASSERTION');
    native.close(peer);
  }
});

test('client region info: a reply naming a larger argsz without CAPS is asked again with that argsz', () => {
  const { client, peer } = scripted();
  const memfd = native.memfdCreate('bar', 0);
  native.ftruncate(memfd, 16 * 4096);
  try {
    const areas = Array.from({ length: 9 }, (_, i) => ({ offset: i * 0x1000 + (i > 4 ? 0x1000 : 0), size: 0x1000 }));
    const full = encodeRegionInfoReply({ flags: 0x7 | Vfio.REGION_INFO_FLAG_CAPS, index: 0, size: 16 * 4096, offset: 0, sparseAreas: areas }, 1 << 16).bytes;
    // First answer: the fixed part only, argsz naming the whole, flags 0x7 without CAPS.
    const first = full.slice(0, REGION_INFO_SIZE);
    const dv = new DataView(first.buffer);
    dv.setUint32(4, 0x7, true);
    dv.setUint32(12, 0, true);
    native.sendmsg(peer, [reply(2, Command.DEVICE_GET_REGION_INFO, first)], []);
    native.sendmsg(peer, [reply(3, Command.DEVICE_GET_REGION_INFO, full)], [memfd]);
    const info = client.regionInfo(0);
    assert.equal(info.mappable, true);
    assert.equal(info.sparseAreas?.length, 9);
    const sent = drain(peer).filter((m) => m.header.command === Command.DEVICE_GET_REGION_INFO);
    assert.equal(sent.length, 2);
    assert.equal(decodeRegionInfoRequest(sent[1]!.payload).argsz, argszOf(full), 'asked again with the argsz the server named');
    const page = new Uint32Array(client.mapRegion(0, 0x6000, 0x1000));
    page[0] = 0x1234;
    client.unmapRegion(page.buffer as ArrayBuffer);
  } finally {
    native.close(memfd);
    client.close();
    native.close(peer);
  }
});

test('client error replies: with or without payload they fail the call with the errno, and the connection lives on', () => {
  const { client, peer } = scripted();
  try {
    native.sendmsg(peer, [reply(2, Command.REGION_READ, encodeRegionAccess({ offset: 0, region: 0, count: 4 }), Errno.EINVAL)], []);
    assert.throws(() => client.regionRead(0, 0, new Uint8Array(4)), (e: any) => e.code === 'EINVAL');
    native.sendmsg(peer, [reply(3, Command.DEVICE_RESET, new Uint8Array(0), Errno.EIO)], []);
    assert.throws(() => client.reset(), (e: any) => e.code === 'EIO');
    const data = new Uint8Array(20);
    data.set(encodeRegionAccess({ offset: 0, region: 0, count: 4 }));
    data.set(u32(0xcafe), 16);
    native.sendmsg(peer, [reply(4, Command.REGION_READ, data)], []);
    const into = new Uint8Array(4);
    client.regionRead(0, 0, into);
    assert.deepEqual(into, u32(0xcafe));
  } finally {
    client.close();
    native.close(peer);
  }
});

test('client argsz and fd counts: fixed sizes as the spec gives them; SET_IRQS never carries more fds than the server takes', () => {
  const { client, peer } = scripted({ maxMsgFds: 1 });
  const efds = Array.from({ length: 3 }, () => native.eventfd(0, constants.EFD_NONBLOCK));
  try {
    native.sendmsg(peer, [reply(2, Command.DEVICE_GET_INFO, encodeDeviceInfo({ argsz: 16, flags: 3, numRegions: 9, numIrqs: 5 }))], []);
    client.deviceInfo();
    native.sendmsg(peer, [reply(3, Command.DEVICE_GET_IRQ_INFO, encodeIrqInfo({ argsz: 16, flags: 1, index: 2, count: 8 }))], []);
    client.irqInfo(2);
    for (let id = 4; id <= 7; id++) native.sendmsg(peer, [reply(id, Command.DEVICE_SET_IRQS)], []);
    client.setIrqEventfds(2, 0, efds);
    const sent = drain(peer);
    assert.equal(argszOf(sent.find((m) => m.header.command === Command.DEVICE_GET_INFO)!.payload), 16);
    assert.equal(argszOf(sent.find((m) => m.header.command === Command.DEVICE_GET_IRQ_INFO)!.payload), 16);
    const sets = sent.filter((m) => m.header.command === Command.DEVICE_SET_IRQS);
    assert.equal(sets.length, 4, 'one sizing message, then one per fd');
    assert.deepEqual(sets.map((m) => [m.fds.length, decodeSetIrqs(m.payload).count]), [[0, 3], [1, 1], [1, 1], [1, 1]]);
    for (const m of sets) {
      assert.equal(argszOf(m.payload), m.payload.length);
      for (const fd of m.fds) native.close(fd);
    }
  } finally {
    for (const fd of efds) native.close(fd);
    client.close();
    native.close(peer);
  }
});

test('client DMA_UNMAP: argsz leaves room for the echoed entry', () => {
  const { client, peer } = scripted();
  try {
    const memory = new Uint8Array(4096);
    native.sendmsg(peer, [reply(2, Command.DMA_MAP), reply(3, Command.DMA_UNMAP, encodeDmaUnmap({ address: 0x4000, size: 4096 }))], []);
    client.dmaMap({ iova: 0x4000, size: 4096, vaddr: native.addressOf(memory), memory, memoryIova: 0x4000, deviceReads: true, deviceWrites: false });
    client.dmaUnmap(0x4000, 4096);
    const unmap = drain(peer).find((m) => m.header.command === Command.DMA_UNMAP)!;
    assert.deepEqual(decodeDmaUnmap(unmap.payload), { argsz: 24, flags: 0, address: 0x4000, size: 4096 });
  } finally {
    client.close();
    native.close(peer);
  }
});
