/**
 * Message framing over a non-blocking AF_UNIX stream socket, for both ends.
 *
 * Reading: the 16-byte header is read on its own with recvmsg, so file descriptors (which ride
 * with the header, as libvfio-user expects) are collected there and a read never runs into the
 * next message and takes its descriptors. The body follows in a second read. Both reads are
 * resumable: a message that arrives in pieces is assembled across calls.
 *
 * Writing: fds go with the first byte in the same sendmsg as the header. A socket buffer that is
 * full leaves the rest queued; the owner flushes again (the server when the fd turns writable,
 * the synchronous client in its wait loop).
 */
import { native } from '../../native/index';
import { UserpciError } from '../../errors';
import { Errno, HEADER_SIZE, ProtocolError, decodeHeader, encodeHeader, type MessageHeader } from './codec';

export interface IncomingMessage {
  header: MessageHeader;
  payload: Uint8Array;
  fds: number[];
}

export interface ReaderLimits {
  /** Largest whole message (header included) accepted; a larger size closes the connection. */
  maxMessageSize: number;
  /** Most fds accepted with one message; more is a protocol error (the extras are closed). */
  maxFds: number;
}

/** The peer closed the connection or it broke. */
export class ConnectionClosedError extends UserpciError {
  constructor(message: string, code: 'ECONNRESET' | 'ENODEV' | 'EPIPE' | 'ETIMEDOUT' = 'ECONNRESET') {
    super(code, message);
    this.name = 'ConnectionClosedError';
  }
}

export function closeFds(fds: number[]): void {
  for (const fd of fds) {
    try {
      native.close(fd);
    } catch {
      // already closed: nothing else to release
    }
  }
}

export class MessageReader {
  private readonly headerBytes = new Uint8Array(HEADER_SIZE);
  private headerFilled = 0;
  private header: MessageHeader | undefined;
  private body: Uint8Array | undefined;
  private bodyFilled = 0;
  private fds: number[] = [];
  /** Bytes received so far, ever: lets a watchdog tell a slow peer from a stalled one. */
  received = 0;

  constructor(
    readonly fd: number,
    public limits: ReaderLimits,
  ) {}

  /** True while a message has begun to arrive but is not whole yet. */
  get midMessage(): boolean {
    return this.header !== undefined || this.headerFilled > 0;
  }

  /**
   * The next whole message, or undefined when the socket has nothing more for now. Throws
   * ConnectionClosedError at end of stream and a fatal ProtocolError when framing breaks; in
   * both cases the connection is finished.
   */
  poll(): IncomingMessage | undefined {
    while (this.header === undefined) {
      const r = this.receive(this.headerBytes.subarray(this.headerFilled));
      if (r < 0) return undefined;
      this.headerFilled += r;
      if (this.headerFilled < HEADER_SIZE) continue;
      const header = decodeHeader(this.headerBytes);
      if (header.size > this.limits.maxMessageSize) {
        throw new ProtocolError(`message of ${header.size} bytes exceeds the ${this.limits.maxMessageSize}-byte limit`, Errno.EMSGSIZE, true);
      }
      this.header = header;
      this.body = new Uint8Array(header.size - HEADER_SIZE);
      this.bodyFilled = 0;
    }
    const body = this.body!;
    while (this.bodyFilled < body.length) {
      const r = this.receive(body.subarray(this.bodyFilled));
      if (r < 0) return undefined;
      this.bodyFilled += r;
    }
    const message: IncomingMessage = { header: this.header, payload: body, fds: this.fds };
    this.header = undefined;
    this.body = undefined;
    this.headerFilled = 0;
    this.fds = [];
    return message;
  }

  /** Fds of a message still being assembled: closed when the connection is abandoned. */
  discard(): void {
    closeFds(this.fds);
    this.fds = [];
  }

  private receive(into: Uint8Array): number {
    let r;
    try {
      r = native.recvmsg(this.fd, into, Math.max(0, this.limits.maxFds - this.fds.length));
    } catch (err) {
      // A reset is the peer vanishing, like end of stream: say so in the same words.
      const code = (err as { code?: string }).code;
      if (code === 'ECONNRESET' || code === 'EPIPE') throw new ConnectionClosedError(`vfio-user peer closed the connection (${code})`);
      throw new ConnectionClosedError(`vfio-user socket read failed: ${(err as Error).message}`);
    }
    for (const fd of r.fds) this.fds.push(fd);
    if (r.bytes > 0) this.received += r.bytes;
    if (r.truncated) {
      throw new ProtocolError(`message carried more than ${this.limits.maxFds} file descriptors`, Errno.EINVAL, true);
    }
    if (r.bytes === 0) throw new ConnectionClosedError('vfio-user peer closed the connection');
    return r.bytes;
  }
}

interface QueuedMessage {
  parts: Uint8Array[];
  fds: number[];
  /** Bytes of this message already on the wire. */
  sent: number;
  total: number;
  /** Fds that were only lent to this message: closed once it is sent (or dropped). */
  closeFdsAfterSend: boolean;
}

export class MessageWriter {
  private queue: QueuedMessage[] = [];
  /** Bytes queued and not yet on the wire. */
  queuedBytes = 0;
  /** Bytes sent so far, ever (a watchdog's progress mark). */
  sentBytes = 0;

  constructor(readonly fd: number) {}

  get pending(): boolean {
    return this.queue.length > 0;
  }

  /** Queue a message (header filled in here) and try to send it at once; true when all went out. */
  send(header: Omit<MessageHeader, 'size'>, payload: Uint8Array[], fds: number[] = [], closeFdsAfterSend = false): boolean {
    let size = HEADER_SIZE;
    for (const p of payload) size += p.byteLength;
    const head = encodeHeader({ ...header, size });
    this.queue.push({ parts: [head, ...payload.filter((p) => p.byteLength > 0)], fds, sent: 0, total: size, closeFdsAfterSend });
    this.queuedBytes += size;
    return this.flush();
  }

  /** Send what the socket takes; true when the queue is empty. Throws ConnectionClosedError. */
  flush(): boolean {
    while (this.queue.length > 0) {
      const m = this.queue[0]!;
      const parts = remainingParts(m);
      let n;
      try {
        n = native.sendmsg(this.fd, parts.slice(0, 16), m.sent === 0 ? m.fds : []);
      } catch (err) {
        throw new ConnectionClosedError(`vfio-user peer is gone (write failed: ${(err as Error).message})`, 'ECONNRESET');
      }
      if (n < 0) return false;
      if (m.sent === 0 && m.closeFdsAfterSend) closeFds(m.fds);
      m.sent += n;
      this.queuedBytes -= n;
      this.sentBytes += n;
      if (m.sent >= m.total) this.queue.shift();
    }
    return true;
  }

  clear(): void {
    for (const m of this.queue) if (m.sent === 0 && m.closeFdsAfterSend) closeFds(m.fds);
    this.queue = [];
    this.queuedBytes = 0;
  }
}

function remainingParts(m: QueuedMessage): Uint8Array[] {
  let skip = m.sent;
  const out: Uint8Array[] = [];
  for (const p of m.parts) {
    if (skip >= p.byteLength) {
      skip -= p.byteLength;
      continue;
    }
    out.push(skip > 0 ? p.subarray(skip) : p);
    skip = 0;
  }
  return out;
}
