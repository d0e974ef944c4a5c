/**
 * An NBD server (fixed newstyle handshake, simple replies) over any BlockDevice, on a UNIX or
 * TCP socket. The kernel's nbd driver (through nbd-client) or qemu-nbd-style clients attach to it.
 *
 * Handshake: NBD_OPT_EXPORT_NAME, NBD_OPT_GO and NBD_OPT_INFO (with NBD_INFO_BLOCK_SIZE,
 * NAME and DESCRIPTION), NBD_OPT_LIST, NBD_OPT_ABORT; everything else is answered
 * NBD_REP_ERR_UNSUP (TLS, structured replies, metadata contexts).
 * Transmission: READ, WRITE (FUA), FLUSH, TRIM, WRITE_ZEROES, DISC; requests run concurrently
 * (up to `maxInflight` per connection) and are answered as they complete, by handle.
 * A malformed request (bad magic, a write payload too large to take) ends the connection;
 * a well-formed one the export cannot do gets an error reply and the connection goes on.
 *
 * When an export's device is lost for good (BlockDevice.whenLost: an NVMe controller unplugged
 * or reset under us), the server emits 'device-lost' (name, error); every request still in
 * flight or arriving later is answered with ESHUTDOWN (the protocol's "the server is going
 * away"), and each connection on that export is closed by the server as soon as nothing of it
 * is in flight, so the kernel's client marks its socket dead instead of waiting. New clients
 * asking for the export get NBD_REP_ERR_SHUTDOWN.
 */
import { checkFunction, checkInteger, checkString, describeValue, optionsObject } from '../../arguments';
import { InvalidArgumentError } from '../../errors';
import * as net from 'node:net';
import * as fs from 'node:fs';
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import type { BlockDevice } from './block-device';
import * as P from './protocol';

export interface NbdExport {
  name: string;
  description?: string;
  device: BlockDevice;
}

export interface NbdServerOptions {
  /** Requests served at once per connection; reading stops while this many are in flight. Default 64. */
  maxInflight?: number;
  /** Largest option payload accepted in the handshake; default 4096. */
  maxOptionLength?: number;
  /** Diagnostics (connections, protocol violations). */
  log?: (message: string) => void;
}

export type ListenTarget = { path: string } | { port: number; host?: string };

/** After its device is lost, a connection is closed once idle for this long (requests already sent still get answers). */
const LOST_QUIET_MS = 200;

class ConnectionClosed extends Error {
  constructor(reason = 'connection closed') {
    super(reason);
    this.name = 'ConnectionClosed';
  }
}

/** Exact-length reads over a stream. */
class StreamReader {
  private chunks: Buffer[] = [];
  private available = 0;
  private want = 0;
  private wake: (() => void) | null = null;
  private ended: Error | null = null;

  constructor(private readonly stream: Duplex) {
    stream.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.available += d.length;
      if (this.wake && this.available >= this.want) this.fire();
    });
    const end = (err?: Error) => {
      this.ended ??= new ConnectionClosed(err ? err.message : 'connection closed');
      this.fire();
    };
    stream.on('end', () => end());
    stream.on('close', () => end());
    stream.on('error', (e) => end(e));
  }

  private fire(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  async read(n: number): Promise<Buffer> {
    while (this.available < n) {
      if (this.ended) throw this.ended;
      this.want = n;
      await new Promise<void>((r) => (this.wake = r));
    }
    this.available -= n;
    if (this.chunks[0]!.length >= n) {
      const head = this.chunks[0]!;
      if (head.length === n) this.chunks.shift();
      else this.chunks[0] = head.subarray(n);
      return head.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0]!;
      const take = Math.min(c.length, n - off);
      c.copy(out, off, 0, take);
      off += take;
      if (take === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(take);
    }
    return out;
  }

  pause(): void {
    this.stream.pause();
  }

  resume(): void {
    this.stream.resume();
  }
}

export class NbdServer extends EventEmitter {
  private readonly exports: NbdExport[];
  private readonly maxInflight: number;
  private readonly maxOptionLength: number;
  private readonly log: (message: string) => void;
  private servers: net.Server[] = [];
  private readonly sockets = new Set<Duplex>();
  private stopping = false;
  private readonly lostExports = new Map<NbdExport, Error>();
  private readonly lostHooks = new Set<{ exp: NbdExport; onLost: () => void }>();
  /** Requests served since the start, by command name. */
  readonly counts: Record<string, number> = {};
  /** Requests answered with ESHUTDOWN because their export's device was lost. */
  shutdownReplies = 0;
  /** Connections the server closed because their export's device was lost. */
  lostConnections = 0;

  constructor(exports: NbdExport[] | BlockDevice, options: NbdServerOptions = {}) {
    super();
    options = optionsObject(options, 'NbdServer options');
    this.exports = Array.isArray(exports) ? exports : [{ name: '', device: exports }];
    if (this.exports.length === 0) throw new InvalidArgumentError('NBD server needs at least one export');
    for (const exp of this.exports) {
      if (exp === null || typeof exp !== 'object' || typeof exp.name !== 'string' || exp.device === null || typeof exp.device !== 'object') {
        throw new InvalidArgumentError(`an NBD export is a BlockDevice, or { name, device } with a BlockDevice, got ${describeValue(exp?.device ?? exp)}`);
      }
    }
    this.maxInflight = options.maxInflight ?? 64;
    checkInteger(this.maxInflight, 1, 65536, 'maxInflight');
    this.maxOptionLength = options.maxOptionLength ?? 4096;
    checkInteger(this.maxOptionLength, 0, 16 << 20, 'maxOptionLength');
    if (options.log !== undefined) checkFunction(options.log, 'log');
    this.log = options.log ?? (() => undefined);
    for (const exp of this.exports) {
      void exp.device.whenLost?.().then((error) => this.exportLost(exp, error));
    }
  }

  /** The export's device is gone: answer, disconnect, refuse (see the file's header). */
  private exportLost(exp: NbdExport, error: Error): void {
    if (this.lostExports.has(exp)) return;
    this.lostExports.set(exp, error);
    this.log(`nbd: export "${exp.name}" lost its device: ${error.message}`);
    for (const hook of [...this.lostHooks]) if (hook.exp === exp) hook.onLost();
    this.emit('device-lost', exp.name, error);
  }

  get connections(): number {
    return this.sockets.size;
  }

  /** Listen on a UNIX socket (a stale one is replaced) or a TCP port. Resolves with the bound address. */
  async listen(target: ListenTarget): Promise<string | net.AddressInfo> {
    if (target === null || typeof target !== 'object') throw new InvalidArgumentError(`listen takes { path } or { port, host }, got ${describeValue(target)}`);
    if ('path' in target) checkString(target.path, 'listen path');
    else {
      checkInteger((target as { port?: unknown }).port, 0, 65535, 'listen port');
      if (target.host !== undefined) checkString(target.host, 'listen host');
    }
    const server = net.createServer((socket) => {
      socket.setNoDelay?.(true);
      void this.serve(socket);
    });
    if ('path' in target) {
      try {
        if (fs.statSync(target.path).isSocket()) fs.unlinkSync(target.path);
      } catch {
        // no stale socket
      }
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if ('path' in target) server.listen(target.path, () => resolve());
      else server.listen(target.port, target.host ?? '127.0.0.1', () => resolve());
    });
    this.servers.push(server);
    const address = server.address();
    return address ?? ('path' in target ? target.path : '');
  }

  /** Stop listening, end every connection once its requests in flight are answered. */
  async close(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    this.servers = [];
    for (const s of this.sockets) s.end();
    const deadline = Date.now() + 5000;
    while (this.sockets.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    for (const s of this.sockets) s.destroy();
  }

  /** Serve one connected stream until the client leaves; resolves when it is closed. */
  async serve(socket: Duplex): Promise<void> {
    this.sockets.add(socket);
    const reader = new StreamReader(socket);
    const peer = (socket as net.Socket).remoteAddress ?? 'local';
    this.log(`nbd: connection from ${peer}`);
    this.emit('connection', socket);
    try {
      const chosen = await this.handshake(socket, reader);
      if (chosen) await this.transmission(socket, reader, chosen.export, chosen.noZeroes);
    } catch (err) {
      if (!(err instanceof ConnectionClosed)) this.log(`nbd: ${(err as Error).message}`);
    } finally {
      this.sockets.delete(socket);
      if (!socket.destroyed) socket.end();
      socket.destroy();
      this.log(`nbd: connection from ${peer} closed`);
      this.emit('disconnect', socket);
    }
  }

  // ------------------------------------------------------------------ handshake

  private async handshake(socket: Duplex, reader: StreamReader): Promise<{ export: NbdExport; noZeroes: boolean } | null> {
    const greeting = Buffer.alloc(18);
    P.NBD_MAGIC.copy(greeting, 0);
    P.IHAVEOPT.copy(greeting, 8);
    greeting.writeUInt16BE(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES, 16);
    socket.write(greeting);
    const clientFlags = (await reader.read(4)).readUInt32BE(0);
    if ((clientFlags & ~(P.CLIENT_FLAG_FIXED_NEWSTYLE | P.CLIENT_FLAG_NO_ZEROES)) !== 0) {
      throw new Error(`client flags 0x${clientFlags.toString(16)} include unknown bits; disconnecting`);
    }
    const noZeroes = (clientFlags & P.CLIENT_FLAG_NO_ZEROES) !== 0;
    for (;;) {
      const head = await reader.read(16);
      if (!head.subarray(0, 8).equals(P.IHAVEOPT)) throw new Error('option without the IHAVEOPT magic; disconnecting');
      const option = head.readUInt32BE(8);
      const length = head.readUInt32BE(12);
      if (length > this.maxOptionLength) {
        if (length > 16 << 20) throw new Error(`option ${option} announces ${length} bytes; disconnecting`);
        await reader.read(length); // take it off the wire, then refuse
        socket.write(P.encodeOptionReply(option, P.REP_ERR_TOO_BIG, Buffer.from('option too long')));
        continue;
      }
      const data = length > 0 ? Buffer.from(await reader.read(length)) : Buffer.alloc(0);
      switch (option) {
        case P.OPT_EXPORT_NAME: {
          const exp = this.findExport(data.toString('utf8'));
          if (!exp) throw new Error(`NBD_OPT_EXPORT_NAME for unknown export "${data.toString('utf8')}"; disconnecting`);
          if (this.lostExports.has(exp)) throw new Error(`NBD_OPT_EXPORT_NAME for "${exp.name}", whose device is gone; disconnecting`);
          const reply = Buffer.alloc(noZeroes ? 10 : 134);
          reply.writeBigUInt64BE(BigInt(exp.device.size), 0);
          reply.writeUInt16BE(this.transmissionFlags(exp.device), 8);
          socket.write(reply);
          return { export: exp, noZeroes };
        }
        case P.OPT_ABORT:
          socket.write(P.encodeOptionReply(option, P.REP_ACK));
          return null;
        case P.OPT_LIST: {
          if (length !== 0) {
            socket.write(P.encodeOptionReply(option, P.REP_ERR_INVALID, Buffer.from('NBD_OPT_LIST takes no data')));
            break;
          }
          for (const e of this.exports) {
            const name = Buffer.from(e.name, 'utf8');
            const d = Buffer.alloc(4 + name.length);
            d.writeUInt32BE(name.length, 0);
            name.copy(d, 4);
            socket.write(P.encodeOptionReply(option, P.REP_SERVER, d));
          }
          socket.write(P.encodeOptionReply(option, P.REP_ACK));
          break;
        }
        case P.OPT_INFO:
        case P.OPT_GO: {
          const chosen = this.infoOrGo(socket, option, data);
          if (chosen && option === P.OPT_GO) return { export: chosen, noZeroes };
          break;
        }
        default:
          // STARTTLS, STRUCTURED_REPLY, metadata contexts and anything newer.
          socket.write(P.encodeOptionReply(option, P.REP_ERR_UNSUP, Buffer.from(`option ${option} is not supported`)));
      }
    }
  }

  /** NBD_OPT_INFO / NBD_OPT_GO: replies, and the export when it was found. */
  private infoOrGo(socket: Duplex, option: number, data: Buffer): NbdExport | null {
    const invalid = (why: string) => {
      socket.write(P.encodeOptionReply(option, P.REP_ERR_INVALID, Buffer.from(why)));
      return null;
    };
    if (data.length < 6) return invalid('option data too short');
    const nameLength = data.readUInt32BE(0);
    if (4 + nameLength + 2 > data.length) return invalid('export name length exceeds the option data');
    const name = data.subarray(4, 4 + nameLength).toString('utf8');
    const count = data.readUInt16BE(4 + nameLength);
    if (data.length !== 4 + nameLength + 2 + 2 * count) return invalid('information request count does not match the option length');
    const requests = new Set<number>();
    for (let i = 0; i < count; i++) requests.add(data.readUInt16BE(4 + nameLength + 2 + 2 * i));
    const exp = this.findExport(name);
    if (!exp) {
      socket.write(P.encodeOptionReply(option, P.REP_ERR_UNKNOWN, Buffer.from(`no export named "${name}"`)));
      return null;
    }
    const lost = this.lostExports.get(exp);
    if (lost) {
      socket.write(P.encodeOptionReply(option, P.REP_ERR_SHUTDOWN, Buffer.from(`the device behind "${exp.name}" is gone: ${lost.message}`)));
      return null;
    }
    const dev = exp.device;
    const info = Buffer.alloc(12);
    info.writeUInt16BE(P.INFO_EXPORT, 0);
    info.writeBigUInt64BE(BigInt(dev.size), 2);
    info.writeUInt16BE(this.transmissionFlags(dev), 10);
    socket.write(P.encodeOptionReply(option, P.REP_INFO, info));
    if (requests.has(P.INFO_NAME)) {
      const n = Buffer.from(exp.name, 'utf8');
      const b = Buffer.alloc(2 + n.length);
      b.writeUInt16BE(P.INFO_NAME, 0);
      n.copy(b, 2);
      socket.write(P.encodeOptionReply(option, P.REP_INFO, b));
    }
    if (requests.has(P.INFO_DESCRIPTION) && exp.description) {
      const n = Buffer.from(exp.description, 'utf8');
      const b = Buffer.alloc(2 + n.length);
      b.writeUInt16BE(P.INFO_DESCRIPTION, 0);
      n.copy(b, 2);
      socket.write(P.encodeOptionReply(option, P.REP_INFO, b));
    }
    if (requests.has(P.INFO_BLOCK_SIZE)) {
      // Any alignment works (unaligned writes are read-modify-write), the device's block is best.
      const b = Buffer.alloc(14);
      b.writeUInt16BE(P.INFO_BLOCK_SIZE, 0);
      b.writeUInt32BE(1, 2);
      b.writeUInt32BE(Math.max(dev.blockSize, 4096), 6);
      b.writeUInt32BE(dev.maxRequest, 10);
      socket.write(P.encodeOptionReply(option, P.REP_INFO, b));
    }
    socket.write(P.encodeOptionReply(option, P.REP_ACK));
    return exp;
  }

  private findExport(name: string): NbdExport | undefined {
    // The empty name is the default export.
    return this.exports.find((e) => e.name === name) ?? (name === '' ? this.exports[0] : undefined);
  }

  private transmissionFlags(dev: BlockDevice): number {
    let f = P.TFLAG_HAS_FLAGS | P.TFLAG_SEND_FLUSH | P.TFLAG_SEND_FUA;
    if (dev.readOnly) f |= P.TFLAG_READ_ONLY;
    if (dev.canTrim && !dev.readOnly) f |= P.TFLAG_SEND_TRIM;
    if (dev.canWriteZeroes && !dev.readOnly) f |= P.TFLAG_SEND_WRITE_ZEROES;
    return f;
  }

  // ------------------------------------------------------------------ transmission

  private async transmission(socket: Duplex, reader: StreamReader, exp: NbdExport, _noZeroes: boolean): Promise<void> {
    const dev = exp.device;
    let inflight = 0;
    let drained: (() => void) | null = null;
    let slot: (() => void) | null = null;
    let lost = this.lostExports.has(exp);
    // Device gone: requests the client had already sent keep arriving and are answered; once
    // nothing is in flight and the line has been quiet a moment, hang up (the client's socket
    // dies, so it stops waiting for a server that cannot serve).
    let quiet: NodeJS.Timeout | null = null;
    let requestsRead = 0;
    const hangUpIfIdle = () => {
      if (!lost || inflight > 0 || socket.destroyed || socket.writableEnded) return;
      if (quiet) clearTimeout(quiet);
      quiet = setTimeout(() => {
        // A starved process runs expired timers before the I/O that waited meanwhile: let one
        // poll phase read what the client had already sent before deciding the line is quiet.
        const seen = requestsRead;
        setImmediate(() => {
          if (requestsRead !== seen || inflight > 0 || socket.destroyed || socket.writableEnded) return;
          this.lostConnections++;
          socket.end();
          setTimeout(() => socket.destroy(), 1000).unref();
        });
      }, LOST_QUIET_MS);
      quiet.unref();
    };
    const hook = { exp, onLost: () => {
      lost = true;
      hangUpIfIdle();
    } };
    const done = () => {
      inflight--;
      if (slot) {
        const s = slot;
        slot = null;
        s();
      }
      if (inflight === 0 && drained) drained();
      hangUpIfIdle();
    };
    const reply = (error: number, handle: Buffer, data?: Uint8Array) => {
      if (error === P.ESHUTDOWN) this.shutdownReplies++;
      if (socket.destroyed || socket.writableEnded) return;
      socket.write(P.encodeSimpleReply(error, handle));
      if (data && error === 0) socket.write(data);
    };
    this.lostHooks.add(hook);
    try {
      for (;;) {
        if (inflight >= this.maxInflight) {
          reader.pause();
          await new Promise<void>((r) => (slot = r));
          reader.resume();
        }
        let raw: Buffer;
        try {
          raw = await reader.read(P.REQUEST_HEADER_SIZE);
        } catch (err) {
          if (this.stopping || err instanceof ConnectionClosed) break;
          throw err;
        }
        const req = P.decodeRequestHeader(raw);
        if (!req) throw new Error('request without the NBD request magic; disconnecting');
        const name = P.commandName(req.type);
        this.counts[name] = (this.counts[name] ?? 0) + 1;
        requestsRead++;
        let payload: Buffer | undefined;
        if (req.type === P.CMD_WRITE) {
          if (req.length > dev.maxRequest) throw new Error(`WRITE of ${req.length} bytes exceeds the ${dev.maxRequest}-byte maximum; disconnecting`);
          payload = Buffer.from(await reader.read(req.length));
        }
        if (req.type === P.CMD_DISC) break;
        if (lost) {
          reply(P.ESHUTDOWN, req.handle);
          hangUpIfIdle();
          continue;
        }
        const error = this.check(dev, req);
        if (error !== 0) {
          reply(error, req.handle);
          continue;
        }
        inflight++;
        void this.execute(dev, req, payload).then(
          (data) => reply(0, req.handle, data),
          (err) => reply(errnoFor(err), req.handle),
        ).finally(done);
      }
      if (inflight > 0) await new Promise<void>((r) => (drained = r));
    } finally {
      this.lostHooks.delete(hook);
      if (quiet) clearTimeout(quiet);
    }
  }

  /** 0 when the request may run, else the error to answer with. */
  private check(dev: BlockDevice, req: P.RequestHeader): number {
    const known = P.CMD_FLAG_FUA | P.CMD_FLAG_NO_HOLE | P.CMD_FLAG_DF | P.CMD_FLAG_FAST_ZERO;
    if ((req.flags & ~known) !== 0) return P.EINVAL;
    const writes = req.type === P.CMD_WRITE || req.type === P.CMD_TRIM || req.type === P.CMD_WRITE_ZEROES;
    switch (req.type) {
      case P.CMD_READ:
      case P.CMD_WRITE:
      case P.CMD_TRIM:
      case P.CMD_WRITE_ZEROES:
        if (writes && dev.readOnly) return P.EPERM;
        if (req.type === P.CMD_TRIM && !dev.canTrim) return P.EINVAL;
        if ((req.flags & P.CMD_FLAG_FAST_ZERO) !== 0) return P.ENOTSUP;
        if (req.length === 0) return P.EINVAL;
        if (req.type === P.CMD_READ && req.length > dev.maxRequest) return P.EINVAL;
        if (req.offset + req.length > dev.size) return req.type === P.CMD_WRITE || req.type === P.CMD_WRITE_ZEROES ? P.ENOSPC : P.EINVAL;
        return 0;
      case P.CMD_FLUSH:
        return req.offset === 0 && req.length === 0 ? 0 : P.EINVAL;
      default:
        return P.EINVAL; // CACHE, BLOCK_STATUS (not negotiated) and unknown commands
    }
  }

  private async execute(dev: BlockDevice, req: P.RequestHeader, payload: Buffer | undefined): Promise<Uint8Array | undefined> {
    const fua = (req.flags & P.CMD_FLAG_FUA) !== 0;
    switch (req.type) {
      case P.CMD_READ:
        return dev.read(req.offset, req.length);
      case P.CMD_WRITE:
        await dev.write(req.offset, payload!, fua);
        return undefined;
      case P.CMD_FLUSH:
        await dev.flush();
        return undefined;
      case P.CMD_TRIM:
        await dev.trim(req.offset, req.length);
        if (fua) await dev.flush();
        return undefined;
      case P.CMD_WRITE_ZEROES:
        await dev.writeZeroes(req.offset, req.length, fua);
        return undefined;
      default:
        throw Object.assign(new Error('unsupported'), { code: 'EINVAL' });
    }
  }
}

/** NBD's error number for an error from the device. */
export function errnoFor(err: unknown): number {
  switch ((err as { code?: string } | null)?.code) {
    case 'EPERM':
    case 'EROFS':
    case 'EACCES':
      return P.EPERM;
    case 'ENOSPC':
      return P.ENOSPC;
    case 'EINVAL':
    case 'ERANGE':
      return P.EINVAL;
    case 'ENOMEM':
      return P.ENOMEM;
    case 'ENOTSUP':
      return P.ENOTSUP;
    case 'ENODEV':
    case 'ESHUTDOWN':
    case 'ECANCELED':
      return P.ESHUTDOWN;
    default:
      return P.EIO;
  }
}
