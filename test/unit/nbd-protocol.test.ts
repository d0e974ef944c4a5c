/**
 * The NBD server on the host, byte by byte: a hand-written client speaks the protocol over a
 * UNIX socket to a server exporting an in-memory device. Handshake variants, option errors,
 * the commands, pipelining, and malformed input.
 */
import { test, beforeEach, afterEach } from 'node:test';
import * as assert from 'node:assert/strict';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as fs from 'node:fs';
import { NbdServer, type NbdExport } from '../../src/exports/nbd/server';
import { MemoryBlockDevice } from '../../src/exports/nbd/block-device';
import * as P from '../../src/exports/nbd/protocol';

/** A minimal client: exact reads, option and command helpers. */
class Client {
  private buf = Buffer.alloc(0);
  private waiting: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  closed = false;

  constructor(readonly socket: net.Socket) {
    socket.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.pump();
    });
    socket.on('close', () => {
      this.closed = true;
      const w = this.waiting;
      this.waiting = null;
      w?.reject(new Error('closed'));
    });
    socket.on('error', () => undefined);
  }

  static connect(p: string): Promise<Client> {
    return new Promise((resolve, reject) => {
      const s = net.connect(p, () => resolve(new Client(s)));
      s.once('error', reject);
    });
  }

  private pump(): void {
    const w = this.waiting;
    if (w && this.buf.length >= w.n) {
      this.waiting = null;
      const out = this.buf.subarray(0, w.n);
      this.buf = this.buf.subarray(w.n);
      w.resolve(Buffer.from(out));
    }
  }

  read(n: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      if (this.closed && this.buf.length < n) return reject(new Error('closed'));
      this.waiting = { n, resolve, reject };
      this.pump();
    });
  }

  write(b: Buffer): void {
    this.socket.write(b);
  }

  /** Greeting, then client flags. */
  async hello(flags = P.CLIENT_FLAG_FIXED_NEWSTYLE | P.CLIENT_FLAG_NO_ZEROES): Promise<number> {
    const g = await this.read(18);
    assert.deepEqual(g.subarray(0, 8), P.NBD_MAGIC);
    assert.deepEqual(g.subarray(8, 16), P.IHAVEOPT);
    const u = Buffer.alloc(4);
    u.writeUInt32BE(flags, 0);
    this.write(u);
    return g.readUInt16BE(16);
  }

  option(option: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(16);
    P.IHAVEOPT.copy(h, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(data.length, 12);
    this.write(Buffer.concat([h, data]));
  }

  async optionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.read(20);
    assert.deepEqual(h.subarray(0, 8), P.OPTION_REPLY_MAGIC);
    const len = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: len ? await this.read(len) : Buffer.alloc(0) };
  }

  /** NBD_OPT_GO on `name`: returns size and transmission flags, and any block size info. */
  async go(name: string, infos: number[] = [P.INFO_BLOCK_SIZE]): Promise<{ size: number; flags: number; block?: number[] }> {
    this.option(P.OPT_GO, goData(name, infos));
    let size = -1;
    let flags = -1;
    let block: number[] | undefined;
    for (;;) {
      const r = await this.optionReply();
      if (r.type === P.REP_ACK) break;
      if (r.type !== P.REP_INFO) throw new Error(`GO failed: reply 0x${r.type.toString(16)} ${r.data.toString()}`);
      const t = r.data.readUInt16BE(0);
      if (t === P.INFO_EXPORT) {
        size = Number(r.data.readBigUInt64BE(2));
        flags = r.data.readUInt16BE(10);
      } else if (t === P.INFO_BLOCK_SIZE) {
        block = [r.data.readUInt32BE(2), r.data.readUInt32BE(6), r.data.readUInt32BE(10)];
      }
    }
    return { size, flags, block };
  }

  private nextHandle = 1n;

  send(type: number, offset: number, length: number, payload?: Buffer, flags = 0): bigint {
    const handle = this.nextHandle++;
    this.write(P.encodeRequestHeader({ type, handle, offset, length, flags }));
    if (payload) this.write(payload);
    return handle;
  }

  async reply(readLength = 0): Promise<{ error: number; handle: bigint; data: Buffer }> {
    const h = await this.read(16);
    assert.equal(h.readUInt32BE(0), P.SIMPLE_REPLY_MAGIC);
    const error = h.readUInt32BE(4);
    return { error, handle: h.readBigUInt64BE(8), data: error === 0 && readLength > 0 ? await this.read(readLength) : Buffer.alloc(0) };
  }

  close(): void {
    this.socket.destroy();
  }
}

function goData(name: string, infos: number[]): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 4 + n.length + 2 + 2 * i));
  return b;
}

let dir: string;
let sock: string;
let server: NbdServer;
let disk: MemoryBlockDevice;
let ro: MemoryBlockDevice;

beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-test-'));
  sock = path.join(dir, 'nbd.sock');
  disk = new MemoryBlockDevice(1 << 20, 512);
  ro = new MemoryBlockDevice(64 * 1024, 4096, true);
  const exports: NbdExport[] = [{ name: 'disk', description: 'test disk', device: disk }, { name: 'ro', device: ro }];
  server = new NbdServer(exports, { maxInflight: 8 });
  await server.listen({ path: sock });
});

afterEach(async () => {
  await server.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('fixed newstyle greeting; NBD_OPT_LIST names the exports; unknown options get ERR_UNSUP', async () => {
  const c = await Client.connect(sock);
  const flags = await c.hello();
  assert.equal(flags, P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES);
  c.option(P.OPT_LIST);
  const names: string[] = [];
  for (;;) {
    const r = await c.optionReply();
    assert.equal(r.option, P.OPT_LIST);
    if (r.type === P.REP_ACK) break;
    assert.equal(r.type, P.REP_SERVER);
    names.push(r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString());
  }
  assert.deepEqual(names, ['disk', 'ro']);
  for (const opt of [P.OPT_STARTTLS, P.OPT_STRUCTURED_REPLY, P.OPT_SET_META_CONTEXT, 1234]) {
    c.option(opt);
    const r = await c.optionReply();
    assert.equal(r.option, opt);
    assert.equal(r.type, P.REP_ERR_UNSUP);
  }
  c.option(P.OPT_LIST, Buffer.from('x'));
  assert.equal((await c.optionReply()).type, P.REP_ERR_INVALID);
  c.option(P.OPT_ABORT);
  assert.equal((await c.optionReply()).type, P.REP_ACK);
  await assert.rejects(c.read(1));
});

test('NBD_OPT_INFO and NBD_OPT_GO: export info, block sizes, name and description; unknown export is ERR_UNKNOWN', async () => {
  const c = await Client.connect(sock);
  await c.hello();
  c.option(P.OPT_GO, goData('nope', []));
  const r = await c.optionReply();
  assert.equal(r.type, P.REP_ERR_UNKNOWN);
  c.option(P.OPT_GO, Buffer.from([0, 0, 0, 9, 1])); // name length beyond the data
  assert.equal((await c.optionReply()).type, P.REP_ERR_INVALID);
  c.option(P.OPT_INFO, goData('disk', [P.INFO_NAME, P.INFO_DESCRIPTION, P.INFO_BLOCK_SIZE]));
  const seen: number[] = [];
  for (;;) {
    const x = await c.optionReply();
    if (x.type === P.REP_ACK) break;
    assert.equal(x.type, P.REP_INFO);
    const t = x.data.readUInt16BE(0);
    seen.push(t);
    if (t === P.INFO_NAME) assert.equal(x.data.subarray(2).toString(), 'disk');
    if (t === P.INFO_DESCRIPTION) assert.equal(x.data.subarray(2).toString(), 'test disk');
  }
  assert.deepEqual(seen.sort(), [P.INFO_EXPORT, P.INFO_NAME, P.INFO_DESCRIPTION, P.INFO_BLOCK_SIZE].sort());
  // INFO leaves us in the handshake: GO now.
  const info = await c.go('disk');
  assert.equal(info.size, 1 << 20);
  assert.equal(info.flags & P.TFLAG_HAS_FLAGS, P.TFLAG_HAS_FLAGS);
  assert.ok(info.flags & P.TFLAG_SEND_FLUSH && info.flags & P.TFLAG_SEND_TRIM && info.flags & P.TFLAG_SEND_WRITE_ZEROES && info.flags & P.TFLAG_SEND_FUA);
  assert.equal(info.flags & P.TFLAG_READ_ONLY, 0);
  assert.deepEqual(info.block, [1, 4096, 32 << 20]);
  c.send(P.CMD_DISC, 0, 0);
  await assert.rejects(c.read(1));
});

test('NBD_OPT_EXPORT_NAME with and without the 124 zero bytes; unknown name disconnects', async () => {
  for (const noZeroes of [true, false]) {
    const c = await Client.connect(sock);
    await c.hello(P.CLIENT_FLAG_FIXED_NEWSTYLE | (noZeroes ? P.CLIENT_FLAG_NO_ZEROES : 0));
    c.option(P.OPT_EXPORT_NAME, Buffer.from('ro'));
    const r = await c.read(noZeroes ? 10 : 134);
    assert.equal(Number(r.readBigUInt64BE(0)), 64 * 1024);
    assert.equal(r.readUInt16BE(8) & P.TFLAG_READ_ONLY, P.TFLAG_READ_ONLY);
    if (!noZeroes) assert.ok(r.subarray(10).every((b) => b === 0));
    c.send(P.CMD_READ, 0, 512);
    assert.equal((await c.reply(512)).error, 0);
    c.close();
  }
  const c = await Client.connect(sock);
  await c.hello();
  c.option(P.OPT_EXPORT_NAME, Buffer.from('missing'));
  await assert.rejects(c.read(1));
  // The empty name is the default (first) export.
  const d = await Client.connect(sock);
  await d.hello();
  assert.equal((await d.go('')).size, 1 << 20);
  d.close();
});

test('read, write, flush, trim, write zeroes; FUA accepted; unaligned offsets are fine for the memory device', async () => {
  const c = await Client.connect(sock);
  await c.hello();
  await c.go('disk');
  const data = Buffer.alloc(8192);
  for (let i = 0; i < data.length; i++) data[i] = (i * 13) & 0xff;
  c.send(P.CMD_WRITE, 4096, data.length, data, P.CMD_FLAG_FUA);
  assert.equal((await c.reply()).error, 0);
  assert.deepEqual(Buffer.from(disk.data.subarray(4096, 4096 + 8192)), data);
  c.send(P.CMD_READ, 4096 + 7, 100);
  assert.deepEqual((await c.reply(100)).data, data.subarray(7, 107));
  c.send(P.CMD_FLUSH, 0, 0);
  assert.equal((await c.reply()).error, 0);
  assert.equal(disk.flushes, 1);
  c.send(P.CMD_TRIM, 4096, 512);
  assert.equal((await c.reply()).error, 0);
  c.send(P.CMD_WRITE_ZEROES, 4096 + 512, 512);
  assert.equal((await c.reply()).error, 0);
  assert.ok(disk.data.subarray(4096, 5120).every((b) => b === 0));
  assert.deepEqual(Buffer.from(disk.data.subarray(5120, 12288)), data.subarray(1024));
  c.send(P.CMD_DISC, 0, 0);
  await assert.rejects(c.read(1));
});

test('errors answered and the connection goes on: out of range, read-only, bad flags, unknown commands, device failures', async () => {
  const c = await Client.connect(sock);
  await c.hello();
  await c.go('disk');
  const cases: [number, number, number, Buffer | undefined, number, number][] = [
    [P.CMD_READ, (1 << 20) - 100, 200, undefined, 0, P.EINVAL],
    [P.CMD_WRITE, (1 << 20) - 100, 200, Buffer.alloc(200), 0, P.ENOSPC],
    [P.CMD_TRIM, 1 << 20, 1, undefined, 0, P.EINVAL],
    [P.CMD_READ, 0, 0, undefined, 0, P.EINVAL],
    [P.CMD_FLUSH, 5, 0, undefined, 0, P.EINVAL],
    [P.CMD_READ, 0, 512, undefined, 0x8000, P.EINVAL],
    [P.CMD_CACHE, 0, 512, undefined, 0, P.EINVAL],
    [P.CMD_BLOCK_STATUS, 0, 512, undefined, 0, P.EINVAL],
    [99, 0, 512, undefined, 0, P.EINVAL],
    [P.CMD_WRITE_ZEROES, 0, 512, undefined, P.CMD_FLAG_FAST_ZERO, P.ENOTSUP],
  ];
  for (const [type, offset, length, payload, flags, want] of cases) {
    const h = c.send(type, offset, length, payload, flags);
    const r = await c.reply();
    assert.equal(r.handle, h);
    assert.equal(r.error, want, `${P.commandName(type)} at ${offset}+${length} flags ${flags}`);
  }
  disk.failures.push(Object.assign(new Error('media'), { code: 'EIO' }), Object.assign(new Error('no space'), { code: 'ENOSPC' }));
  c.send(P.CMD_READ, 0, 512);
  assert.equal((await c.reply()).error, P.EIO);
  c.send(P.CMD_WRITE, 0, 512, Buffer.alloc(512));
  assert.equal((await c.reply()).error, P.ENOSPC);
  c.send(P.CMD_READ, 0, 512);
  assert.equal((await c.reply(512)).error, 0);
  c.close();
  const r = await Client.connect(sock);
  await r.hello();
  await r.go('ro');
  r.send(P.CMD_WRITE, 0, 4096, Buffer.alloc(4096));
  assert.equal((await r.reply()).error, P.EPERM);
  r.send(P.CMD_TRIM, 0, 4096);
  assert.equal((await r.reply()).error, P.EPERM);
  r.close();
});

test('malformed input ends the connection: bad option magic, bad request magic, unknown client flags, oversized write', async () => {
  {
    const c = await Client.connect(sock);
    await c.hello();
    c.write(Buffer.alloc(16));
    await assert.rejects(c.read(1));
  }
  {
    const c = await Client.connect(sock);
    await c.hello(0x80);
    await assert.rejects(c.read(1));
  }
  {
    const c = await Client.connect(sock);
    await c.hello();
    await c.go('disk');
    const bad = P.encodeRequestHeader({ type: P.CMD_READ, handle: 1n, offset: 0, length: 512 });
    bad.writeUInt32BE(0xdeadbeef, 0);
    c.write(bad);
    await assert.rejects(c.read(1));
  }
  {
    const c = await Client.connect(sock);
    await c.hello();
    await c.go('disk');
    c.send(P.CMD_WRITE, 0, (32 << 20) + 1);
    await assert.rejects(c.read(1));
  }
  {
    // A huge option length is refused (ERR_TOO_BIG after draining it), then the handshake goes on.
    const c = await Client.connect(sock);
    await c.hello();
    c.option(P.OPT_GO, Buffer.alloc(5000));
    assert.equal((await c.optionReply()).type, P.REP_ERR_TOO_BIG);
    assert.equal((await c.go('disk')).size, 1 << 20);
    c.close();
  }
  // The server still serves.
  const ok = await Client.connect(sock);
  await ok.hello();
  assert.equal((await ok.go('disk')).size, 1 << 20);
  ok.close();
});

test('pipelined requests run concurrently and are answered by handle, beyond the in-flight limit', async () => {
  const slow = new MemoryBlockDevice(1 << 20, 512);
  let running = 0;
  let maxRunning = 0;
  const orig = slow.read.bind(slow);
  slow.read = async (offset: number, length: number) => {
    running++;
    maxRunning = Math.max(maxRunning, running);
    await new Promise((r) => setTimeout(r, offset % 3));
    running--;
    return orig(offset, length);
  };
  for (let i = 0; i < 64; i++) slow.data[i * 512] = i;
  const s2 = new NbdServer(slow, { maxInflight: 8 });
  const p2 = path.join(dir, 'slow.sock');
  await s2.listen({ path: p2 });
  const c = await Client.connect(p2);
  await c.hello();
  await c.go('');
  const handles = new Map<bigint, number>();
  for (let i = 0; i < 64; i++) handles.set(c.send(P.CMD_READ, i * 512, 512), i);
  for (let i = 0; i < 64; i++) {
    const r = await c.reply(512);
    assert.equal(r.error, 0);
    assert.equal(r.data[0], handles.get(r.handle));
    handles.delete(r.handle);
  }
  assert.equal(handles.size, 0);
  assert.ok(maxRunning > 1 && maxRunning <= 8, `ran ${maxRunning} at once`);
  c.close();
  await s2.close();
});
