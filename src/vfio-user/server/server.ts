/**
 * serveVfioUser: serve a device model on an AF_UNIX socket, one client at a time. While a client
 * is connected, later ones wait in the listen backlog; when it leaves (cleanly or not) its DMA
 * maps and eventfds are dropped, the device keeps its state, and the next client is accepted.
 * Event-driven throughout: the listening socket and connections are watched on the event loop.
 */
import * as fs from 'node:fs';
import { native, type WatchHandle } from '../../native/index';
import { checkString, describeValue, optionsObject } from '../../arguments';
import { InvalidArgumentError, UserpciError, wrapSystemError } from '../../errors';
import { DeviceHost } from './device-host';
import { Session, type SessionHost } from './session';
import type { DeviceModel } from '../../models/device-model';

export interface ServeOptions {
  /** Listen on this path (a stale socket file there is replaced). */
  socketPath?: string;
  /** Serve this already-connected socket (e.g. one end of a socketpair, or --fd); no listening. */
  connectedFd?: number;
  /** max_data_xfer_size we advertise (default 1 MiB). */
  maxDataXferSize?: number;
  /** max_msg_fds we advertise (default 16). */
  maxMsgFds?: number;
  /** Offer twin-socket mode (default true). */
  twinSocket?: boolean;
  log?: (message: string) => void;
  /**
   * The server serves one client at a time (a device has one owner, as with VFIO); a client that
   * stops halfway through a message, or leaves our replies unread, for this long (ms) is
   * disconnected so the next one can be served. Default 30 s.
   */
  stallTimeoutMs?: number;
  onClientConnected?: () => void;
  onClientDisconnected?: (reason: Error) => void;
}

/** A host the server can serve: a device model's, or a real device's (the proxy). */
export type ServedHost = SessionHost & { dispose(): void; requestRelease?(): boolean };

export class VfioUserServer<H extends ServedHost = DeviceHost> {
  private listenFd = -1;
  private listenWatch: WatchHandle | undefined;
  private session: Session | undefined;
  private closed = false;
  private served = 0;
  private readonly idleWaiters: (() => void)[] = [];

  constructor(
    readonly host: H,
    private readonly options: ServeOptions,
  ) {}

  get socketPath(): string | undefined {
    return this.options.socketPath;
  }

  get clientConnected(): boolean {
    return this.session !== undefined;
  }

  /** Reply bytes the connected client has not read yet. */
  get queuedReplyBytes(): number {
    return this.session?.queuedBytes ?? 0;
  }

  /** Clients served so far (connected at least once). */
  get clientsServed(): number {
    return this.served;
  }

  /** @internal started by serveVfioUser */
  start(): void {
    if (this.options.connectedFd !== undefined) {
      prepareConnectedFd(this.options.connectedFd);
      this.startSession(this.options.connectedFd);
      return;
    }
    const path = this.options.socketPath!;
    removeStaleSocket(path);
    try {
      this.listenFd = native.unixListen(path, 4);
    } catch (err) {
      throw wrapSystemError(err, `listening on ${path}`);
    }
    this.resumeListening();
  }

  /** Resolves when no client is connected (immediately if none is). */
  whenIdle(): Promise<void> {
    if (!this.session) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Ask the connected client to let go (its REQ irq eventfd); true if it had one. */
  requestRelease(): boolean {
    return this.host.requestRelease?.() ?? false;
  }

  /** Stop serving: the client is disconnected, the socket file removed, the model disposed. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.pauseListening();
    if (this.listenFd >= 0) {
      native.close(this.listenFd);
      this.listenFd = -1;
      if (this.options.socketPath) fs.rmSync(this.options.socketPath, { force: true });
    }
    this.session?.close();
    this.host.dispose();
  }

  private resumeListening(): void {
    if (this.closed || this.listenFd < 0 || this.listenWatch) return;
    this.listenWatch = native.watch(this.listenFd, 1, false, () => this.acceptNext());
    // A client may already be waiting in the backlog.
    setImmediate(() => this.acceptNext());
  }

  private pauseListening(): void {
    if (this.listenWatch) native.watchStop(this.listenWatch);
    this.listenWatch = undefined;
  }

  private acceptNext(): void {
    if (this.closed || this.session || this.listenFd < 0) return;
    let fd: number;
    try {
      fd = native.unixAccept(this.listenFd);
    } catch (err) {
      this.options.log?.(`accept failed: ${(err as Error).message}`);
      return;
    }
    if (fd < 0) return;
    this.pauseListening();
    this.startSession(fd);
  }

  private startSession(fd: number): void {
    this.served++;
    this.options.log?.(`client ${this.served} connected`);
    this.session = new Session(
      this.host,
      fd,
      {
        maxDataXferSize: this.options.maxDataXferSize ?? 1 << 20,
        maxMsgFds: this.options.maxMsgFds ?? 16,
        twinSocket: this.options.twinSocket ?? true,
        log: this.options.log ?? (() => {}),
        stallTimeoutMs: this.options.stallTimeoutMs ?? 30_000,
      },
      (reason) => this.sessionEnded(reason),
    );
    this.options.onClientConnected?.();
  }

  private sessionEnded(reason: Error): void {
    this.session = undefined;
    this.options.log?.(`client disconnected: ${reason.message}`);
    this.options.onClientDisconnected?.(reason);
    for (const resolve of this.idleWaiters.splice(0)) resolve();
    if (this.options.connectedFd !== undefined) {
      void this.close();
      return;
    }
    this.resumeListening();
  }
}

/** Start serving `model`; resolves once the socket is listening. */
export async function serveVfioUser(model: DeviceModel, options: ServeOptions): Promise<VfioUserServer> {
  if (model === null || typeof model !== 'object' || model.config === null || typeof model.config !== 'object' || typeof model.bars?.get !== 'function' || typeof model.attach !== 'function') {
    throw new InvalidArgumentError(`serveVfioUser takes a device model (a DeviceModel, e.g. createModel('edu')), got ${describeValue(model)}`);
  }
  options = optionsObject(options, 'serveVfioUser options') as ServeOptions;
  if (options.socketPath !== undefined) checkString(options.socketPath, 'socketPath');
  if ((options.socketPath === undefined) === (options.connectedFd === undefined)) {
    throw new InvalidArgumentError('serveVfioUser needs exactly one of socketPath and connectedFd');
  }
  const server = new VfioUserServer(new DeviceHost(model, { log: options.log }), options);
  server.start();
  return server;
}

/** Serve any host (the proxy's real device) the same way. */
export function serveHost<H extends ServedHost>(host: H, options: ServeOptions): VfioUserServer<H> {
  if ((options.socketPath === undefined) === (options.connectedFd === undefined)) {
    throw new InvalidArgumentError('serveHost needs exactly one of socketPath and connectedFd');
  }
  const server = new VfioUserServer(host, options);
  server.start();
  return server;
}

const S_IFMT = 0o170000;
const S_IFSOCK = 0o140000;

/**
 * An inherited socket (`serve --fd N`, a socketpair end) may come blocking; the channel's reads
 * and writes must never block the event loop, so make it non-blocking. Anything but an open
 * socket is refused here, before a session is built on it.
 */
function prepareConnectedFd(fd: number): void {
  if (!Number.isInteger(fd) || fd < 0) throw new InvalidArgumentError(`connectedFd must be a file descriptor, got ${fd}`);
  let mode: number;
  try {
    mode = native.fstat(fd).mode;
  } catch (err) {
    throw wrapSystemError(err, `fd ${fd}`, { EBADF: 'not an open file descriptor' });
  }
  if ((mode & S_IFMT) !== S_IFSOCK) throw new InvalidArgumentError(`fd ${fd} is not a socket (a connected AF_UNIX stream socket is needed)`);
  try {
    native.setNonBlocking(fd, true);
  } catch (err) {
    throw wrapSystemError(err, `making fd ${fd} non-blocking`);
  }
}

function removeStaleSocket(path: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(path);
  } catch {
    return;
  }
  if (!stat.isSocket()) throw new UserpciError('EEXIST', `${path} exists and is not a socket; refusing to replace it`);
  let live = -1;
  try {
    live = native.unixConnect(path);
  } catch {
    // nobody listens there: a leftover from a server that died
  }
  if (live >= 0) {
    native.close(live);
    throw new UserpciError('EADDRINUSE', `another server is listening on ${path}`);
  }
  fs.rmSync(path, { force: true });
}
