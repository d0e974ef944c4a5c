/**
 * One end of a vfio-user connection: sends commands and matches replies by message id, answers
 * the peer's commands, and reports the connection's end to everything still waiting.
 *
 * Two ways to wait for a reply:
 * - `request` (async): the socket is watched on the event loop; any number may be in flight.
 * - `requestSync`: for the Backend interface, whose methods are synchronous like VFIO ioctls.
 *   It blocks this thread in poll(2) on the socket(s) until its reply arrives or the timeout
 *   passes, answering the peer's own commands (the server's DMA_READ/DMA_WRITE) in the meantime,
 *   because the server may need them answered before it can reply. A server in the same thread
 *   can never answer, so in-process servers run on a worker thread (see src/vfio-user/server/thread.ts).
 *
 * Companion channels (twin-socket mode: the server's commands on a second socket) are pumped
 * during synchronous waits too.
 */
import { native, constants, type WatchHandle } from '../../native/index';
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
} from './codec';
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
  /**
   * Backpressure: while more than this many bytes of our output wait for the peer to read them,
   * stop reading its commands (a peer that pipelines requests and never reads the replies then
   * fills its own socket, not our memory). Default: unbounded (a client's own requests are bounded
   * by its callers).
   */
  maxQueuedBytes?: number;
  /**
   * Close the connection when the peer stops halfway through a message, or leaves our output
   * unread, for this long (ms) without a byte of progress. Default: never.
   */
  stallTimeoutMs?: number;
}

interface Pending {
  command: number;
  sync: boolean;
  reply?: IncomingMessage;
  error?: Error;
  resolve?: (m: IncomingMessage) => void;
  reject?: (e: Error) => void;
}

const MAX_ABANDONED = 256;
/**
 * While some socket has queued output but another has none, the queued ones are polled for
 * writability and readability and the others are looked at again after this long (poll(2) here
 * takes one event mask for all fds).
 */
const MIXED_WAIT_SLICE_MS = 1;
/** poll(2)'s timeout is an int. */
const MAX_POLL_MS = 0x7fffffff;

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
  /**
   * One libuv watcher for the socket (libuv refuses a second one on the same fd): readable once
   * watch() was called, writable too while output is queued.
   */
  private watcher: WatchHandle | undefined;
  private watcherEvents = 0;
  private watcherRef = false;
  private reading = false;
  private closedReason: Error | undefined;
  private pumping = false;
  /** Other channels to pump while blocked in requestSync (twin socket). */
  companions: Channel[] = [];
  private readonly maxQueuedBytes: number;
  private readonly stallTimeoutMs: number | undefined;
  private stallTimer: NodeJS.Timeout | undefined;
  private stallMark = -1;

  constructor(options: ChannelOptions) {
    this.fd = options.fd;
    this.label = options.label ?? `vfio-user fd ${options.fd}`;
    this.reader = new MessageReader(options.fd, options.limits);
    this.writer = new MessageWriter(options.fd);
    this.onCommand = options.onCommand;
    this.onClose = options.onClose;
    this.keepAlive = options.keepAlive ?? false;
    this.maxQueuedBytes = options.maxQueuedBytes ?? Infinity;
    this.stallTimeoutMs = options.stallTimeoutMs;
  }

  /** Bytes of our output the peer has not read yet. */
  get queuedBytes(): number {
    return this.writer.queuedBytes;
  }

  /** Reading the peer pauses while our output to it is over the bound. */
  private get throttled(): boolean {
    return this.writer.queuedBytes > this.maxQueuedBytes;
  }

  /**
   * The stall watchdog: armed while the peer owes us the rest of a message or has our output
   * unread; fires only if no byte moved either way for a whole period.
   */
  private watchStall(): void {
    if (this.stallTimeoutMs === undefined || this.closed) return;
    const owed = this.reader.midMessage || this.writer.pending;
    if (!owed) {
      if (this.stallTimer) clearTimeout(this.stallTimer);
      this.stallTimer = undefined;
      return;
    }
    if (this.stallTimer) return;
    this.stallMark = this.reader.received + this.writer.sentBytes;
    this.stallTimer = setTimeout(() => {
      this.stallTimer = undefined;
      if (this.closed) return;
      const progress = this.reader.received + this.writer.sentBytes;
      if (progress === this.stallMark && (this.reader.midMessage || this.writer.pending)) {
        const what = this.reader.midMessage ? 'stopped in the middle of a message' : 'left our replies unread';
        this.fail(new ConnectionClosedError(`${this.label}: peer ${what} for ${this.stallTimeoutMs} ms`, 'ETIMEDOUT'));
        return;
      }
      this.watchStall();
    }, this.stallTimeoutMs);
    this.stallTimer.unref();
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
    if (this.reading || this.closed) return;
    this.reading = true;
    this.updateWatcher();
  }

  /** Send a command and wait for its reply on the event loop. */
  request(command: number, payload: Uint8Array[] = [], fds: number[] = []): Promise<IncomingMessage> {
    return new Promise((resolve, reject) => {
      let id: number;
      try {
        id = this.allocateId();
        this.pending.set(id, { command, sync: false, resolve, reject });
        this.asyncPending++;
        this.updateWatcher();
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

  /**
   * Send a command and block this thread until its reply or the timeout. The wait is poll(2) on
   * the socket (and the companions'): the thread sleeps until the peer sends something, serves
   * what arrives (the server's DMA_READ/DMA_WRITE), and goes back to sleep until its own reply is
   * in. Must not be called from inside this channel's own command handler (it could never read
   * its reply there).
   */
  requestSync(command: number, payload: Uint8Array[] = [], fds: number[] = [], timeoutMs = 30_000): IncomingMessage {
    if (this.pumping) throw new UserpciError('EDEADLK', `${this.label}: a synchronous ${commandName(command)} from inside a command handler could never read its reply`);
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
    for (;;) {
      const progressed = this.pumpAll(() => entry.reply !== undefined || entry.error !== undefined);
      if (entry.reply) return entry.reply;
      if (entry.error) throw entry.error;
      if (this.closed) throw this.closedReason!;
      if (progressed) continue;
      const remaining = deadline - performance.now();
      if (remaining <= 0) {
        this.pending.delete(id);
        this.abandoned.add(id);
        if (this.abandoned.size > MAX_ABANDONED) this.fail(new ConnectionClosedError(`${this.label}: peer stopped answering`, 'ECONNRESET'));
        throw new UserpciError('ETIMEDOUT', `vfio-user ${commandName(command)}: no reply within ${timeoutMs} ms`);
      }
      this.waitForPeer(remaining);
    }
  }

  /**
   * Sleep in poll(2) until one of our sockets can be read (or, when output is queued, written),
   * or `maxMs` passes. Whatever woke us is dealt with by the caller's next pump.
   */
  private waitForPeer(maxMs: number): void {
    const open = [this, ...this.companions].filter((c) => !c.closed);
    const writing = open.filter((c) => c.writer.pending);
    const timeout = Number.isFinite(maxMs) ? Math.min(MAX_POLL_MS, Math.max(1, Math.ceil(maxMs))) : -1;
    try {
      if (writing.length === 0) {
        native.poll(open.map((c) => c.fd), constants.POLLIN, timeout);
      } else {
        // Readability of the others is checked again after a short slice.
        const slice = writing.length === open.length ? timeout : Math.min(MIXED_WAIT_SLICE_MS, timeout < 0 ? MIXED_WAIT_SLICE_MS : timeout);
        native.poll(writing.map((c) => c.fd), constants.POLLIN | constants.POLLOUT, slice);
      }
    } catch (err) {
      // EBADF and the like: the socket is unusable, so the connection is over.
      this.fail(new ConnectionClosedError(`${this.label}: waiting for the peer failed: ${(err as Error).message}`));
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
    if (!done) this.updateWatcher();
  }

  /**
   * Make the watcher match what we wait for: readable once watch() was called, writable while
   * output is queued (a new watcher when that changes). It keeps the loop alive for servers, for
   * pending async requests, and while output is queued.
   */
  private updateWatcher(): void {
    if (this.closed) return;
    this.watchStall();
    const events = (this.reading && !this.throttled ? 1 : 0) | (this.writer.pending ? 2 : 0);
    let fresh = false;
    if (events !== this.watcherEvents) {
      if (this.watcher) native.watchStop(this.watcher);
      this.watcher = undefined;
      this.watcherEvents = 0;
      if (events !== 0) {
        try {
          this.watcher = native.watch(this.fd, events, false, (status, ready) => this.onReady(status, ready));
        } catch (err) {
          this.fail(err as Error);
          return;
        }
        this.watcherEvents = events;
        fresh = true;
      }
    }
    if (!this.watcher) return;
    const ref = this.keepAlive || this.asyncPending > 0 || (events & 2) !== 0;
    if (ref !== this.watcherRef || fresh) native.watchRef(this.watcher, ref);
    this.watcherRef = ref;
  }

  private onReady(status: number, ready: number): void {
    if (this.reading && (status < 0 || (ready & 1) !== 0)) {
      this.pump(); // flushes queued output too
      return;
    }
    try {
      this.writer.flush();
    } catch (err) {
      this.fail(err as Error);
      return;
    }
    this.updateWatcher();
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
      if (this.writer.pending) this.writer.flush();
      for (;;) {
        if (this.throttled) break;
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
    this.updateWatcher();
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
      this.updateWatcher();
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
    if (this.stallTimer) clearTimeout(this.stallTimer);
    this.stallTimer = undefined;
    if (this.watcher) native.watchStop(this.watcher);
    this.watcher = undefined;
    this.watcherEvents = 0;
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
