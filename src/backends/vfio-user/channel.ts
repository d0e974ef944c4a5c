/**
 * One end of a vfio-user connection: sends commands and matches replies by message id, answers
 * the peer's commands, and reports the connection's end to everything still waiting.
 *
 * Two ways to wait for a reply:
 * - `request` (async): the socket is watched on the event loop; any number may be in flight.
 * - `requestSync`: for the Backend interface, whose methods are synchronous like VFIO ioctls.
 *   It spins on the non-blocking socket with short Atomics.wait sleeps until its reply arrives,
 *   answering the peer's own commands (the server's DMA_READ/DMA_WRITE) in the meantime, because
 *   the server may need them answered before it can reply. A server in the same thread can never
 *   answer, so in-process servers run on a worker thread (see src/server/thread.ts).
 *
 * Companion channels (twin-socket mode: the server's commands on a second socket) are pumped
 * during synchronous waits too.
 */
import { native, type WatchHandle } from '../../native/index';
import { UserpciError } from '../../errors';
import {
  Errno,
  MessageFlags,
  ProtocolError,
  RemoteError,
  commandName,
  isError,
  isReply,
  type MessageHeader,
} from './protocol';
import { ConnectionClosedError, MessageReader, MessageWriter, closeFds, type IncomingMessage, type ReaderLimits } from './transport';

export interface ReplyData {
  payload?: Uint8Array[];
  fds?: number[];
  /** errno for an error reply (no payload is sent with it). */
  error?: number;
  /** The fds were created for this reply only: close them once sent. */
  closeFdsAfterSend?: boolean;
}

/**
 * Answer one command from the peer. It owns `message.fds` once it returns normally (keep or close
 * them); when it throws, the channel closes them, so it must not keep any before validating.
 */
export type CommandHandler = (message: IncomingMessage) => ReplyData;

export interface ChannelOptions {
  fd: number;
  limits: ReaderLimits;
  onCommand: CommandHandler;
  /** Called once when the connection ends (peer gone, protocol broken, or close()). */
  onClose?: (reason: Error) => void;
  /** Keep the event loop alive while watching (servers: yes; clients: only while requests are pending). */
  keepAlive?: boolean;
  label?: string;
}

interface Pending {
  command: number;
  sync: boolean;
  reply?: IncomingMessage;
  error?: Error;
  resolve?: (m: IncomingMessage) => void;
  reject?: (e: Error) => void;
}

const SPINS_BEFORE_SLEEP = 64;
const SLEEP_MS = 0.05;
const MAX_ABANDONED = 256;
const sleepCell = new Int32Array(new SharedArrayBuffer(4));

export class Channel {
  readonly fd: number;
  readonly label: string;
  private readonly reader: MessageReader;
  private readonly writer: MessageWriter;
  private readonly onCommand: CommandHandler;
  private readonly onClose: ((reason: Error) => void) | undefined;
  private readonly keepAlive: boolean;
  private readonly pending = new Map<number, Pending>();
  /** Ids whose requester gave up (timeout): their late replies are dropped, not treated as bogus. */
  private readonly abandoned = new Set<number>();
  private nextId = 1;
  private asyncPending = 0;
  private readWatch: WatchHandle | undefined;
  private writeWatch: WatchHandle | undefined;
  private closedReason: Error | undefined;
  private pumping = false;
  /** Other channels to pump while blocked in requestSync (twin socket). */
  companions: Channel[] = [];

  constructor(options: ChannelOptions) {
    this.fd = options.fd;
    this.label = options.label ?? `vfio-user fd ${options.fd}`;
    this.reader = new MessageReader(options.fd, options.limits);
    this.writer = new MessageWriter(options.fd);
    this.onCommand = options.onCommand;
    this.onClose = options.onClose;
    this.keepAlive = options.keepAlive ?? false;
  }

  get closed(): boolean {
    return this.closedReason !== undefined;
  }

  get closeReason(): Error | undefined {
    return this.closedReason;
  }

  setLimits(limits: ReaderLimits): void {
    this.reader.limits = limits;
  }

  /** Start answering the peer and collecting replies on the event loop. */
  watch(): void {
    if (this.readWatch || this.closed) return;
    this.readWatch = native.watch(this.fd, 1, false, () => this.pump());
    native.watchRef(this.readWatch, this.keepAlive);
  }

  /** Send a command and wait for its reply on the event loop. */
  request(command: number, payload: Uint8Array[] = [], fds: number[] = []): Promise<IncomingMessage> {
    return new Promise((resolve, reject) => {
      let id: number;
      try {
        id = this.allocateId();
        this.pending.set(id, { command, sync: false, resolve, reject });
        this.asyncPending++;
        this.updateRef();
        this.sendCommand(id, command, payload, fds, 0);
      } catch (err) {
        reject(err as Error);
        return;
      }
      this.watch();
    });
  }

  /** Send a command that wants no reply (the No_reply flag). */
  notify(command: number, payload: Uint8Array[] = [], fds: number[] = []): void {
    this.ensureOpen();
    this.sendCommand(this.allocateId(), command, payload, fds, MessageFlags.NO_REPLY);
  }

  /** Send a command and block (spinning on the socket) until its reply or the timeout. */
  requestSync(command: number, payload: Uint8Array[] = [], fds: number[] = [], timeoutMs = 30_000): IncomingMessage {
    const id = this.allocateId();
    const entry: Pending = { command, sync: true };
    this.pending.set(id, entry);
    try {
      this.sendCommand(id, command, payload, fds, 0);
    } catch (err) {
      this.pending.delete(id);
      throw err;
    }
    const deadline = performance.now() + timeoutMs;
    let idle = 0;
    for (;;) {
      const progressed = this.pumpAll(() => entry.reply !== undefined || entry.error !== undefined);
      if (entry.reply) return entry.reply;
      if (entry.error) throw entry.error;
      if (this.closed) throw this.closedReason!;
      if (progressed) {
        idle = 0;
        continue;
      }
      if (performance.now() > deadline) {
        this.pending.delete(id);
        this.abandoned.add(id);
        if (this.abandoned.size > MAX_ABANDONED) this.fail(new ConnectionClosedError(`${this.label}: peer stopped answering`, 'ECONNRESET'));
        throw new UserpciError('ETIMEDOUT', `vfio-user ${commandName(command)}: no reply within ${timeoutMs} ms`);
      }
      if (++idle > SPINS_BEFORE_SLEEP) Atomics.wait(sleepCell, 0, 0, SLEEP_MS);
    }
  }

  /** End the connection: every waiter is rejected with `reason`, the socket is closed. */
  close(reason: Error = new ConnectionClosedError('vfio-user connection closed', 'ENODEV')): void {
    this.fail(reason);
  }

  // ---- internals ------------------------------------------------------------------------------

  private ensureOpen(): void {
    if (this.closedReason) {
      throw new ConnectionClosedError(`${this.label}: connection is closed (${this.closedReason.message})`, 'ENODEV');
    }
  }

  private allocateId(): number {
    this.ensureOpen();
    for (let tries = 0; tries < 0x10000; tries++) {
      const id = this.nextId;
      this.nextId = (this.nextId + 1) & 0xffff;
      if (!this.pending.has(id) && !this.abandoned.has(id)) return id;
    }
    throw new UserpciError('EBUSY', `${this.label}: all 65536 message ids are in flight`);
  }

  private sendCommand(id: number, command: number, payload: Uint8Array[], fds: number[], flags: number): void {
    const header = { id, command, flags: MessageFlags.TYPE_COMMAND | flags, error: 0 };
    this.write(() => this.writer.send(header, payload, fds));
  }

  private sendReply(request: MessageHeader, reply: ReplyData): void {
    const error = reply.error !== undefined;
    const header = {
      id: request.id,
      command: request.command,
      flags: MessageFlags.TYPE_REPLY | (error ? MessageFlags.ERROR : 0),
      error: error ? reply.error! : 0,
    };
    const fds = reply.fds ?? [];
    if (error && reply.closeFdsAfterSend) closeFds(fds);
    this.write(() => this.writer.send(header, error ? [] : reply.payload ?? [], error ? [] : fds, reply.closeFdsAfterSend === true));
  }

  private write(send: () => boolean): void {
    let done: boolean;
    try {
      done = send();
    } catch (err) {
      this.fail(err as Error);
      throw this.closedReason!;
    }
    if (!done) this.watchWritable();
  }

  private watchWritable(): void {
    if (this.writeWatch || this.closed) return;
    this.writeWatch = native.watch(this.fd, 2, false, () => {
      try {
        if (this.writer.flush()) this.stopWritable();
      } catch (err) {
        this.fail(err as Error);
      }
    });
  }

  private stopWritable(): void {
    if (this.writeWatch) native.watchStop(this.writeWatch);
    this.writeWatch = undefined;
  }

  private updateRef(): void {
    if (this.readWatch && !this.closed) native.watchRef(this.readWatch, this.keepAlive || this.asyncPending > 0);
  }

  private pumpAll(done: () => boolean): boolean {
    let progressed = this.pump(done);
    for (const c of this.companions) if (c.pump()) progressed = true;
    return progressed;
  }

  /**
   * Flush and drain what the socket has (stopping early once `done` holds, so later messages
   * wait for whoever expects them); true when anything moved. Never throws.
   */
  pump(done?: () => boolean): boolean {
    if (this.closed || this.pumping) return false;
    this.pumping = true;
    let progressed = false;
    try {
      if (this.writer.pending && this.writer.flush()) this.stopWritable();
      for (;;) {
        const message = this.reader.poll();
        if (!message) break;
        progressed = true;
        this.dispatch(message);
        if (this.closed || done?.()) break;
      }
    } catch (err) {
      this.fail(err as Error);
      progressed = true;
    } finally {
      this.pumping = false;
    }
    return progressed;
  }

  private dispatch(message: IncomingMessage): void {
    const { header } = message;
    if (isReply(header)) {
      this.dispatchReply(message);
      return;
    }
    let reply: ReplyData;
    const type = header.flags & MessageFlags.TYPE_MASK;
    if (type !== MessageFlags.TYPE_COMMAND) {
      // Neither command nor reply: say so, whatever its other flags ask.
      closeFds(message.fds);
      this.sendReply(header, { error: Errno.EINVAL });
      return;
    }
    try {
      reply = this.onCommand(message);
    } catch (err) {
      closeFds(message.fds);
      if (err instanceof ProtocolError && err.fatal) throw err;
      reply = { error: err instanceof ProtocolError ? err.errnoValue : errnoOf(err) };
    }
    // Fds in a reply stay the handler's (a region's memfd is shared, not handed over).
    if ((header.flags & MessageFlags.NO_REPLY) === 0) this.sendReply(header, reply);
  }

  private dispatchReply(message: IncomingMessage): void {
    const { header } = message;
    const entry = this.pending.get(header.id);
    if (!entry) {
      closeFds(message.fds);
      if (this.abandoned.delete(header.id)) return;
      throw new ProtocolError(`reply with id ${header.id} (${commandName(header.command)}) answers no request`, Errno.EINVAL, true);
    }
    if (entry.command !== header.command) {
      closeFds(message.fds);
      throw new ProtocolError(`reply ${header.id} is for ${commandName(header.command)}, the request was ${commandName(entry.command)}`, Errno.EINVAL, true);
    }
    this.pending.delete(header.id);
    if (!entry.sync) {
      this.asyncPending--;
      this.updateRef();
    }
    if (isError(header)) {
      closeFds(message.fds);
      const error = new RemoteError(header.command, header.error);
      if (entry.sync) entry.error = error;
      else entry.reject!(error);
      return;
    }
    if (entry.sync) entry.reply = message;
    else entry.resolve!(message);
  }

  private fail(reason: Error): void {
    if (this.closedReason) return;
    const error = reason instanceof UserpciError ? reason : new ConnectionClosedError(`${this.label}: ${reason.message}`);
    this.closedReason = error;
    if (this.readWatch) native.watchStop(this.readWatch);
    this.readWatch = undefined;
    this.stopWritable();
    this.writer.clear();
    this.reader.discard();
    for (const entry of this.pending.values()) {
      if (entry.sync) entry.error = error;
      else entry.reject!(error);
    }
    this.pending.clear();
    this.asyncPending = 0;
    try {
      native.close(this.fd);
    } catch {
      // already gone
    }
    this.onClose?.(error);
  }
}

/** errno for an error reply built from any thrown value. */
export function errnoOf(err: unknown): number {
  const code = (err as { code?: unknown })?.code;
  if (typeof code === 'string' && code in Errno) return Errno[code as keyof typeof Errno];
  return Errno.EIO;
}
