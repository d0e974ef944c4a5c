/**
 * Malformed input on both ends. The server (here on this thread's event loop) must answer every
 * bad message with an error reply or drop the connection, and keep serving the next client. The
 * client must turn every bad reply into a UserpciError (never a TypeError, RangeError, hang or
 * leaked fd). A seeded generator makes failures reproducible.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native, constants } from '../../src/native/index';
import { UserpciError } from '../../src/errors';
import { connectVfioUserFd } from '../../src/vfio-user/client/client';
import {
  Command,
  Errno,
  MessageFlags,
  Vfio,
  encodeDmaMap,
  encodeDmaUnmap,
  encodeHeader,
  encodeRegionAccess,
  encodeRegionInfoReply,
  encodeSetIrqs,
  encodeVersion,
  type MessageHeader,
} from '../../src/vfio-user/protocol/codec';
import { ConnectionClosedError, MessageReader, type IncomingMessage } from '../../src/vfio-user/protocol/transport';
import { serveVfioUser, type VfioUserServer } from '../../src/vfio-user/server/server';
import { EduModel } from '../../src/models/edu';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function message(header: Partial<MessageHeader> & { command: number }, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(16 + payload.length);
  out.set(encodeHeader({ id: header.id ?? 7, command: header.command, size: header.size ?? out.length, flags: header.flags ?? 0, error: header.error ?? 0 }));
  out.set(payload, 16);
  return out;
}

function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- the server side ----------------------------------------------------------------------

let server: VfioUserServer;
const socket = path.join(os.tmpdir(), `userpci-fuzz-${process.pid}.sock`);

before(async () => {
  server = await serveVfioUser(new EduModel(), { socketPath: socket, maxDataXferSize: 4096 });
});

after(async () => {
  await server.close();
});

class RawClient {
  readonly fd: number;
  private readonly reader: MessageReader;

  constructor() {
    this.fd = native.unixConnect(socket);
    this.reader = new MessageReader(this.fd, { maxMessageSize: 1 << 20, maxFds: 8 });
  }

  send(bytes: Uint8Array, fds: number[] = []): void {
    assert.equal(native.sendmsg(this.fd, [bytes], fds), bytes.length);
  }

  /** The next message, or 'closed'; a server that neither answers nor closes fails the test. */
  async next(timeoutMs = 3000): Promise<IncomingMessage | 'closed'> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const m = this.reader.poll();
        if (m) return m;
      } catch (err) {
        if (err instanceof ConnectionClosedError) return 'closed';
        throw err;
      }
      if (Date.now() > deadline) throw new Error('the server neither answered nor closed the connection');
      await sleep(1);
    }
  }

  async negotiate(): Promise<void> {
    this.send(message({ id: 1, command: Command.VERSION }, encodeVersion({ major: 0, minor: 0, capabilities: { maxMsgFds: 8, maxDataXferSize: 4096 } })));
    const reply = await this.next();
    assert.notEqual(reply, 'closed');
  }

  close(): void {
    native.close(this.fd);
  }
}

/** Send one message on a fresh, negotiated connection; return the error errno or 'closed'. */
async function answerTo(bytes: Uint8Array, fds: number[] = [], negotiate = true): Promise<number | 'closed' | 'ok'> {
  const client = new RawClient();
  try {
    if (negotiate) await client.negotiate();
    client.send(bytes, fds);
    const reply = await client.next();
    if (reply === 'closed') return 'closed';
    assert.equal(reply.header.flags & MessageFlags.TYPE_MASK, MessageFlags.TYPE_REPLY);
    assert.equal(reply.header.id, 7, 'the reply echoes the message id');
    return reply.header.flags & MessageFlags.ERROR ? reply.header.error : 'ok';
  } finally {
    client.close();
    await server.whenIdle();
  }
}

test('server: each malformed message gets an error reply or a clean disconnect', async () => {
  const big = 2 ** 60;
  const huge = new Uint8Array(16);
  new DataView(huge.buffer).setBigUint64(0, BigInt(big), true);
  new DataView(huge.buffer).setUint32(12, 4, true);
  const cases: [string, Uint8Array, number[], boolean, number | 'closed'][] = [
    ['a command before VERSION', message({ command: Command.DEVICE_GET_INFO }, new Uint8Array(16)), [], false, Errno.EINVAL],
    ['VERSION with bad JSON', message({ command: Command.VERSION }, Buffer.from('\0\0\0\0{oops\0')), [], false, Errno.EINVAL],
    ['VERSION with major 1', message({ command: Command.VERSION }, encodeVersion({ major: 1, minor: 0 })), [], false, 'closed'],
    ['a second VERSION', message({ command: Command.VERSION }, encodeVersion({ major: 0, minor: 0 })), [], true, Errno.EINVAL],
    ['size below the header', message({ command: Command.DEVICE_GET_INFO, size: 8 }), [], true, 'closed'],
    ['size of 4 GiB', message({ command: Command.REGION_WRITE, size: 0xffffffff }), [], true, 'closed'],
    ['an unknown command', message({ command: 999 }), [], true, Errno.ENOSYS],
    ['DMA_READ sent to the server', message({ command: Command.DMA_READ }, new Uint8Array(16)), [], true, Errno.EINVAL],
    ['GET_INFO with a short payload', message({ command: Command.DEVICE_GET_INFO }, new Uint8Array(8)), [], true, Errno.EINVAL],
    ['GET_REGION_INFO for region 4000', message({ command: Command.DEVICE_GET_REGION_INFO }, regionInfoRequest(4000, 32)), [], true, Errno.EINVAL],
    ['GET_REGION_INFO with argsz 8', message({ command: Command.DEVICE_GET_REGION_INFO }, regionInfoRequest(0, 8)), [], true, Errno.EINVAL],
    ['REGION_READ at 2^60', message({ command: Command.REGION_READ }, huge), [], true, Errno.ERANGE],
    ['REGION_READ past the BAR', message({ command: Command.REGION_READ }, encodeRegionAccess({ offset: 2 ** 40, region: 0, count: 4 })), [], true, Errno.EINVAL],
    ['REGION_READ of region 9', message({ command: Command.REGION_READ }, encodeRegionAccess({ offset: 0, region: 9, count: 4 })), [], true, Errno.EINVAL],
    ['REGION_READ of 1 MiB (over max_data_xfer_size)', message({ command: Command.REGION_READ }, encodeRegionAccess({ offset: 0, region: 0, count: 1 << 20 })), [], true, Errno.E2BIG],
    ['REGION_WRITE whose count disagrees with its data', message({ command: Command.REGION_WRITE }, concat(encodeRegionAccess({ offset: 0, region: 0, count: 8 }), new Uint8Array(4))), [], true, Errno.EINVAL],
    ['REGION_READ carrying an fd', message({ command: Command.REGION_READ }, encodeRegionAccess({ offset: 0, region: 0, count: 4 })), ['eventfd'] as never, true, Errno.EINVAL],
    ['DMA_MAP with two fds', message({ command: Command.DMA_MAP }, encodeDmaMap({ flags: 3, offset: 0, address: 0, size: 4096 })), ['memfd', 'memfd'] as never, true, Errno.EINVAL],
    ['DMA_MAP larger than its file', message({ command: Command.DMA_MAP }, encodeDmaMap({ flags: 3, offset: 0, address: 0, size: 1 << 30 })), ['memfd'] as never, true, Errno.EINVAL],
    ['DMA_MAP with unknown flags', message({ command: Command.DMA_MAP }, encodeDmaMap({ flags: 0x80, offset: 0, address: 0, size: 4096 })), [], true, Errno.EINVAL],
    ['DMA_UNMAP of nothing', message({ command: Command.DMA_UNMAP }, encodeDmaUnmap({ address: 0, size: 4096 })), [], true, Errno.ENOENT],
    ['DMA_UNMAP with argsz 0', message({ command: Command.DMA_UNMAP }, new Uint8Array(24)), [], true, Errno.EINVAL],
    ['SET_IRQS with two data flags', message({ command: Command.DEVICE_SET_IRQS }, encodeSetIrqs({ flags: 0x23, index: 0, start: 0, count: 1 })), [], true, Errno.EINVAL],
    ['SET_IRQS for 2^32-1 vectors', message({ command: Command.DEVICE_SET_IRQS }, encodeSetIrqs({ flags: 0x21, index: 1, start: 0, count: 0xffffffff })), [], true, Errno.EINVAL],
    ['SET_IRQS with fewer fds than count', message({ command: Command.DEVICE_SET_IRQS }, encodeSetIrqs({ flags: 0x24, index: 2, start: 0, count: 3 })), ['eventfd'] as never, true, Errno.EINVAL],
    ['SET_IRQS on index 99', message({ command: Command.DEVICE_SET_IRQS }, encodeSetIrqs({ flags: 0x21, index: 99, start: 0, count: 1 })), [], true, Errno.EINVAL],
    ['a reply nobody asked for', message({ command: Command.DMA_READ, flags: MessageFlags.TYPE_REPLY }, new Uint8Array(16)), [], true, 'closed'],
  ];
  const before = openFds();
  for (const [label, bytes, fdKinds, negotiate, expected] of cases) {
    const fds = (fdKinds as unknown as string[]).map((kind) => {
      if (kind === 'eventfd') return native.eventfd(0, constants.EFD_NONBLOCK);
      const fd = native.memfdCreate('fuzz', 0);
      native.ftruncate(fd, 4096);
      return fd;
    });
    const answer = await answerTo(bytes, fds, negotiate);
    for (const fd of fds) native.close(fd);
    assert.equal(answer, expected, label);
  }
  assert.equal(openFds(), before, 'every fd the server received was released');
  assert.equal(await answerTo(message({ command: Command.DEVICE_GET_INFO }, infoRequest())), 'ok', 'and it still serves');
});

test('server: half a message followed by a vanished client leaves it ready for the next', async () => {
  const client = new RawClient();
  await client.negotiate();
  client.send(message({ command: Command.REGION_WRITE, size: 100 }).subarray(0, 10));
  client.close();
  await server.whenIdle();
  assert.equal(await answerTo(message({ command: Command.DEVICE_GET_INFO }, infoRequest())), 'ok');
});

test('server: 600 random messages, each answered or the connection dropped; the server lives on', async () => {
  const random = rng(0x5eed);
  const before = openFds();
  let client = new RawClient();
  await client.negotiate();
  let replies = 0;
  let drops = 0;
  for (let i = 0; i < 600; i++) {
    const command = random() < 0.9 ? 1 + Math.floor(random() * 18) : Math.floor(random() * 65536);
    const length = random() < 0.5 ? [16, 20, 24, 32][Math.floor(random() * 4)]! : Math.floor(random() * 80);
    const payload = new Uint8Array(length).map(() => (random() < 0.5 ? 0 : Math.floor(random() * 256)));
    // Small region numbers, offsets and counts sometimes, so accesses reach the model.
    if (random() < 0.5 && length >= 16) {
      const v = new DataView(payload.buffer);
      v.setUint32(4, 0, true);
      v.setUint32(0, Math.floor(random() * 0x100), true);
      v.setUint32(8, Math.floor(random() * 9), true);
      v.setUint32(12, [1, 2, 4, 8][Math.floor(random() * 4)]!, true);
    }
    const flags = random() < 0.8 ? 0 : Math.floor(random() * 64);
    const fds = random() < 0.1 ? [native.eventfd(0, constants.EFD_NONBLOCK)] : [];
    client.send(message({ id: i & 0xffff, command, flags }, payload), fds);
    for (const fd of fds) native.close(fd);
    if (flags & MessageFlags.NO_REPLY && (flags & MessageFlags.TYPE_MASK) === MessageFlags.TYPE_COMMAND) {
      // No reply wanted: check the connection with a GET_INFO instead.
      client.send(message({ id: 0xfffe, command: Command.DEVICE_GET_INFO }, infoRequest()));
    }
    const reply = await client.next();
    if (reply === 'closed') {
      drops++;
      client.close();
      await server.whenIdle();
      client = new RawClient();
      await client.negotiate();
    } else {
      replies++;
      assert.equal(reply.header.flags & MessageFlags.TYPE_MASK, MessageFlags.TYPE_REPLY);
    }
  }
  client.close();
  await server.whenIdle();
  assert.ok(replies > 300, `${replies} replies, ${drops} drops`);
  assert.equal(await answerTo(message({ command: Command.DEVICE_GET_INFO }, infoRequest())), 'ok');
  assert.equal(openFds(), before, 'no fd leaked');
});

function infoRequest(): Uint8Array {
  const b = new Uint8Array(16);
  new DataView(b.buffer).setUint32(0, 16, true);
  return b;
}

function regionInfoRequest(index: number, argsz: number): Uint8Array {
  const b = new Uint8Array(32);
  new DataView(b.buffer).setUint32(0, argsz, true);
  new DataView(b.buffer).setUint32(8, index, true);
  return b;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

// ---- the client side ----------------------------------------------------------------------

function versionReply(capabilities: Parameters<typeof encodeVersion>[0]['capabilities'] = { maxMsgFds: 4 }, major = 0): Uint8Array {
  return message({ id: 1, command: Command.VERSION, flags: MessageFlags.TYPE_REPLY }, encodeVersion({ major, minor: 0, capabilities }));
}

/** A client connected to a scripted peer; `script` is what the peer has already sent. */
function clientWith(script: Uint8Array[], fds: number[] = [], timeoutMs = 200) {
  const [clientFd, peer] = native.socketpair();
  native.sendmsg(peer, [script[0]!], []);
  const client = connectVfioUserFd(clientFd, { name: 'fuzz', twinSocket: false, timeoutMs });
  // The rest only now: a reply that arrives before its request is itself a protocol error.
  for (const [i, bytes] of script.entries()) if (i > 0) native.sendmsg(peer, [bytes], i === 1 ? fds : []);
  return { client, peer };
}

function isUserpciError(code?: string) {
  return (e: unknown) => e instanceof UserpciError && (code === undefined || e.code === code);
}

test('client: bad VERSION replies fail the connection cleanly', () => {
  const before = openFds();
  for (const [label, reply] of [
    ['major 1', versionReply({}, 1)],
    ['garbage JSON', message({ id: 1, command: Command.VERSION, flags: 1 }, Buffer.from('\0\0\0\0{{{\0'))],
    ['twin socket without its fd', versionReply({ twinSocket: { supported: true, fdIndex: 0 } })],
    ['pgsizes of 0', versionReply({ pgsizes: 0 })],
    ['an error reply', message({ id: 1, command: Command.VERSION, flags: MessageFlags.TYPE_REPLY | MessageFlags.ERROR, error: Errno.ENOTSUP })],
    ['the wrong command', message({ id: 1, command: Command.DEVICE_RESET, flags: 1 })],
  ] as const) {
    const [clientFd, peer] = native.socketpair();
    native.sendmsg(peer, [reply], []);
    assert.throws(() => connectVfioUserFd(clientFd, { twinSocket: true, timeoutMs: 200 }), isUserpciError(), label);
    native.close(peer);
  }
  assert.equal(openFds(), before);
});

test('client: bad replies become UserpciErrors and close the connection; error replies do not', () => {
  const before = openFds();
  const readReply = (id: number, payload: Uint8Array, header: Partial<MessageHeader> = {}) =>
    message({ id, command: Command.REGION_READ, flags: MessageFlags.TYPE_REPLY, ...header }, payload);
  const good = concat(encodeRegionAccess({ offset: 0, region: 0, count: 4 }), new Uint8Array(4));
  const cases: [string, Uint8Array, string | undefined][] = [
    ['a reply id that matches nothing', readReply(9, good), 'EPROTO'],
    ['a reply for another command', message({ id: 2, command: Command.REGION_WRITE, flags: 1 }, good), 'EPROTO'],
    ['a size of 4 GiB', readReply(2, good, { size: 0xffffffff }), 'EPROTO'],
    ['a size below the header', readReply(2, good, { size: 3 }), 'EPROTO'],
    ['a count that disagrees with the data', readReply(2, concat(encodeRegionAccess({ offset: 0, region: 0, count: 8 }), new Uint8Array(4))), 'EINVAL'],
    ['data for another offset', readReply(2, concat(encodeRegionAccess({ offset: 4, region: 0, count: 4 }), new Uint8Array(4))), 'EINVAL'],
    ['a payload too short', readReply(2, new Uint8Array(3)), 'EINVAL'],
  ];
  for (const [label, bytes, code] of cases) {
    const { client, peer } = clientWith([versionReply(), bytes]);
    assert.throws(() => client.regionRead(0, 0, new Uint8Array(4)), isUserpciError(code), label);
    assert.throws(() => client.regionRead(0, 0, new Uint8Array(4)), isUserpciError('ENODEV'), `${label}: connection closed`);
    client.close();
    native.close(peer);
  }
  // An error reply is the server's answer, not a broken connection.
  const { client, peer } = clientWith([versionReply(), readReply(2, new Uint8Array(0), { flags: MessageFlags.TYPE_REPLY | MessageFlags.ERROR, error: Errno.EINVAL }), readReply(3, good)]);
  assert.throws(() => client.regionRead(0, 0, new Uint8Array(4)), isUserpciError('EINVAL'));
  assert.equal(client.regionRead(0, 0, new Uint8Array(4)), 4);
  client.close();
  native.close(peer);
  assert.equal(openFds(), before);
});

test('client: unexpected fds are closed; more than it accepts fails the connection', () => {
  const before = openFds();
  const good = concat(encodeRegionAccess({ offset: 0, region: 0, count: 4 }), new Uint8Array(4));
  const reply = message({ id: 2, command: Command.REGION_READ, flags: 1 }, good);
  const three = [0, 1, 2].map(() => native.eventfd(0, 0));
  {
    const { client, peer } = clientWith([versionReply(), reply], three);
    assert.equal(client.regionRead(0, 0, new Uint8Array(4)), 4);
    client.close();
    native.close(peer);
  }
  const many = Array.from({ length: 20 }, () => native.eventfd(0, 0));
  {
    const { client, peer } = clientWith([versionReply(), reply], many);
    assert.throws(() => client.regionRead(0, 0, new Uint8Array(4)), isUserpciError('EPROTO'));
    client.close();
    native.close(peer);
  }
  [...three, ...many].forEach((fd) => native.close(fd));
  assert.equal(openFds(), before, 'no fd leaked');
});

test('client: hostile region info (capability loops, endless argsz growth) is refused', () => {
  const info = (id: number, bytes: Uint8Array) => message({ id, command: Command.DEVICE_GET_REGION_INFO, flags: 1 }, bytes);
  const full = encodeRegionInfoReply({ flags: 7, index: 0, size: 8192, offset: 0, sparseAreas: [{ offset: 0, size: 4096 }] }, 4096).bytes;
  const loop = full.slice();
  new DataView(loop.buffer).setUint32(36, 32, true);
  {
    const { client, peer } = clientWith([versionReply(), info(2, loop)]);
    assert.throws(() => client.regionInfo(0), isUserpciError());
    client.close();
    native.close(peer);
  }
  const greedy = encodeRegionInfoReply({ flags: 7, index: 0, size: 8192, offset: 0, sparseAreas: Array.from({ length: 100000 }, () => ({ offset: 0, size: 4096 })) }, 32).bytes;
  {
    const { client, peer } = clientWith([versionReply(), info(2, greedy)]);
    assert.throws(() => client.regionInfo(0), isUserpciError('E2BIG'));
    client.close();
    native.close(peer);
  }
  const otherIndex = encodeRegionInfoReply({ flags: 3, index: 5, size: 8192, offset: 0 }, 4096).bytes;
  {
    const { client, peer } = clientWith([versionReply(), info(2, otherIndex)]);
    assert.throws(() => client.regionInfo(0), isUserpciError());
    client.close();
    native.close(peer);
  }
});

test('client: 400 random replies never crash, hang or leak', () => {
  const random = rng(0xc11e);
  const before = openFds();
  for (let i = 0; i < 400; i++) {
    const length = Math.floor(random() * 48);
    const payload = new Uint8Array(length).map(() => Math.floor(random() * 256));
    if (random() < 0.5 && length >= 16) payload.set(encodeRegionAccess({ offset: 0, region: 0, count: length - 16 }));
    const header: Partial<MessageHeader> & { command: number } = {
      id: random() < 0.8 ? 2 : Math.floor(random() * 65536),
      command: random() < 0.7 ? Command.REGION_READ : Math.floor(random() * 20),
      flags: random() < 0.7 ? MessageFlags.TYPE_REPLY : Math.floor(random() * 64),
      error: Math.floor(random() * 200),
    };
    if (random() < 0.05) header.size = Math.floor(random() * 0xffffffff);
    const { client, peer } = clientWith([versionReply(), message(header, payload)], [], 30);
    try {
      client.regionRead(0, 0, new Uint8Array(Math.max(0, length - 16)));
    } catch (err) {
      assert.ok(err instanceof UserpciError, `iteration ${i}: ${(err as Error).stack}`);
    }
    client.close();
    native.close(peer);
  }
  assert.equal(openFds(), before);
});

test('client: a DMA_WRITE from the server for memory it may not write gets EPERM', () => {
  const memory = new Uint8Array(4096);
  const command = new Uint8Array(20);
  new DataView(command.buffer).setBigUint64(0, 0x1000n, true);
  new DataView(command.buffer).setBigUint64(8, 4n, true);
  const { client, peer } = clientWith([
    versionReply(),
    message({ id: 2, command: Command.DMA_MAP, flags: 1 }),
    message({ id: 50, command: Command.DMA_WRITE }, command),
    message({ id: 3, command: Command.DEVICE_RESET, flags: 1 }),
  ]);
  client.dmaMap({ iova: 0x1000, size: 4096, vaddr: native.addressOf(memory), memory, memoryIova: 0x1000, deviceReads: true, deviceWrites: false });
  client.reset();
  const reader = new MessageReader(peer, { maxMessageSize: 1 << 16, maxFds: 4 });
  const seen: IncomingMessage[] = [];
  for (let m = reader.poll(); m; m = reader.poll()) seen.push(m);
  const answer = seen.find((m) => m.header.id === 50)!;
  assert.equal(answer.header.flags & MessageFlags.ERROR, MessageFlags.ERROR);
  assert.equal(answer.header.error, Errno.EPERM);
  assert.ok(memory.every((b) => b === 0), 'memory untouched');
  client.close();
  native.close(peer);
  assert.equal(Vfio.PCI_NUM_REGIONS, 9);
});
