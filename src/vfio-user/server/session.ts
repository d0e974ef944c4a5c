/**
 * One client connection to the server: version negotiation, then each command decoded,
 * checked and answered. Anything malformed gets an error reply with an errno; anything that
 * breaks framing closes the connection. Never a throw out of here, never an unbounded allocation
 * (message sizes are capped by the reader before the body is allocated).
 */
import { native } from '../../native/index';
import {
  Command,
  DEFAULT_CAPABILITIES,
  DEVICE_INFO_SIZE,
  DMA_UNMAP_SIZE,
  DmaUnmapFlags,
  Errno,
  IRQ_INFO_SIZE,
  PROTOCOL_MAJOR,
  PROTOCOL_MINOR,
  ProtocolError,
  Vfio,
  decodeDeviceInfo,
  decodeDmaAccess,
  decodeDmaMap,
  decodeDmaUnmap,
  decodeIrqInfo,
  decodeRegionAccess,
  decodeRegionInfoRequest,
  decodeSetIrqs,
  decodeVersion,
  decodeWriteMulti,
  encodeDeviceInfo,
  encodeDmaAccess,
  encodeIrqInfo,
  encodeRegionAccess,
  encodeRegionInfoReply,
  encodeVersion,
  encodeWriteMultiReply,
  type Capabilities,
  type SetIrqsMessage,
} from '../protocol/codec';
import { Channel, type ReplyData } from '../protocol/channel';
import { ConnectionClosedError, closeFds, type IncomingMessage } from '../protocol/transport';
import type { RemoteDma } from './dma';
import type { RegionDescription } from './device-host';
import type { IrqInfoResult } from './interrupts';

/**
 * What a session serves: a device model (DeviceHost) or a real device (the proxy). Errors are
 * errno return values or thrown ProtocolErrors carrying one.
 */
export interface SessionHost {
  deviceInfo(): { flags: number; numRegions: number; numIrqs: number };
  clientAttached(remote: RemoteDma): void;
  /** The client is gone: its maps and eventfds go (the spec); a real device stops its DMA first. */
  clientDetached(): void;
  /** `fd` (if any) is consumed either way. Returns 0 or an errno. */
  dmaMap(iova: number, size: number, flags: number, fd: number | undefined, offset: number): number;
  dmaUnmap(iova: number, size: number): number;
  dmaUnmapAll(): void;
  regionInfo(index: number): RegionDescription | undefined;
  /** A region's size, 0 when there is no such region; asked on every access, so nothing is built. */
  regionSize(index: number): number;
  /** Accesses come bounds-checked against regionSize. */
  regionRead(index: number, offset: number, into: Uint8Array): void;
  regionWrite(index: number, offset: number, from: Uint8Array): void;
  irqInfo(index: number): IrqInfoResult | undefined;
  /** On success the eventfds are the host's; on failure still the caller's. Returns 0 or an errno. */
  setIrqs(m: SetIrqsMessage, fds: number[]): number;
  reset(): void;
}

export interface SessionOptions {
  /** Largest data count we accept in one READ/WRITE (advertised as max_data_xfer_size). */
  maxDataXferSize: number;
  /** Fds we accept in one message (advertised as max_msg_fds). */
  maxMsgFds: number;
  /** Offer twin-socket mode to clients that support it. */
  twinSocket: boolean;
  log: (message: string) => void;
  /** Drop a client stuck halfway through a message, or not reading our replies, for this long. */
  stallTimeoutMs: number;
}

/** Most fds the native layer passes in one message. */
const NATIVE_MAX_FDS = 32;

export class Session {
  private readonly channel: Channel;
  private twin: Channel | undefined;
  private peer: Capabilities | undefined;
  private ended = false;

  constructor(
    private readonly host: SessionHost,
    fd: number,
    private readonly options: SessionOptions,
    private readonly onEnd: (reason: Error) => void,
  ) {
    this.channel = new Channel({
      fd,
      limits: { maxMessageSize: readerLimit(options.maxDataXferSize), maxFds: options.maxMsgFds },
      onCommand: (m) => this.handle(m),
      onClose: (reason) => this.end(reason),
      keepAlive: true,
      label: 'vfio-user client',
      // Replies a client does not read stop us reading its requests: memory stays bounded.
      maxQueuedBytes: 2 * readerLimit(options.maxDataXferSize),
      stallTimeoutMs: options.stallTimeoutMs,
    });
    this.channel.watch();
  }

  close(): void {
    this.channel.close(new ConnectionClosedError('server closed the connection', 'ENODEV'));
  }

  /** Reply bytes the client has not read yet (bounded by backpressure). */
  get queuedBytes(): number {
    return this.channel.queuedBytes;
  }

  private end(reason: Error): void {
    if (this.ended) return;
    this.ended = true;
    this.twin?.close(reason);
    this.host.clientDetached();
    this.onEnd(reason);
  }

  // ---- server -> client DMA ------------------------------------------------------------------

  private readonly remote: RemoteDma = {
    read: async (iova, length) => {
      const out = new Uint8Array(length);
      const max = this.peer?.maxDataXferSize ?? DEFAULT_CAPABILITIES.maxDataXferSize;
      for (let done = 0; done < length; ) {
        const count = Math.min(max, length - done);
        const reply = await this.commandChannel().request(Command.DMA_READ, [encodeDmaAccess({ address: iova + done, count })]);
        closeFds(reply.fds);
        const m = decodeDmaAccess(reply.payload, true);
        if (m.address !== iova + done || m.count !== count) throw new ProtocolError('DMA_READ reply does not match its request');
        out.set(m.data!, done);
        done += count;
      }
      return out;
    },
    write: async (iova, data) => {
      const max = this.peer?.maxDataXferSize ?? DEFAULT_CAPABILITIES.maxDataXferSize;
      for (let done = 0; done < data.length; ) {
        const count = Math.min(max, data.length - done);
        const reply = await this.commandChannel().request(Command.DMA_WRITE, [
          encodeDmaAccess({ address: iova + done, count }),
          data.subarray(done, done + count),
        ]);
        closeFds(reply.fds);
        const m = decodeDmaAccess(reply.payload, false, true);
        if (m.address !== iova + done || m.count !== count) throw new ProtocolError('DMA_WRITE reply does not match its request');
        done += count;
      }
    },
  };

  private commandChannel(): Channel {
    return this.twin ?? this.channel;
  }

  // ---- client -> server commands -------------------------------------------------------------

  private handle(message: IncomingMessage): ReplyData {
    const { header, payload, fds } = message;
    if (header.command !== Command.VERSION && !this.peer) {
      throw new ProtocolError('the first command must be VERSION', Errno.EINVAL);
    }
    const noFds = () => {
      if (fds.length) throw new ProtocolError(`${fds.length} unexpected file descriptors`, Errno.EINVAL);
    };
    switch (header.command) {
      case Command.VERSION:
        return this.negotiate(payload, fds);
      case Command.DMA_MAP: {
        if (fds.length > 1) throw new ProtocolError('DMA_MAP takes at most one fd', Errno.EINVAL);
        const m = decodeDmaMap(payload);
        const error = this.host.dmaMap(m.address, m.size, m.flags, fds[0], m.offset);
        return error ? { error } : {};
      }
      case Command.DMA_UNMAP: {
        noFds();
        const m = decodeDmaUnmap(payload);
        let error: number;
        if (m.flags === DmaUnmapFlags.ALL) {
          if (m.address !== 0 || m.size !== 0) return { error: Errno.EINVAL };
          this.host.dmaUnmapAll();
          error = 0;
        } else if (m.flags === 0) {
          error = this.host.dmaUnmap(m.address, m.size);
        } else {
          return { error: m.flags === DmaUnmapFlags.GET_DIRTY_BITMAP ? Errno.ENOTSUP : Errno.EINVAL }; // no migration support
        }
        // The reply is the entry as the client sent it (argsz was checked to leave room for it).
        return error ? { error } : { payload: [payload.subarray(0, DMA_UNMAP_SIZE)] };
      }
      case Command.DEVICE_GET_INFO: {
        noFds();
        decodeDeviceInfo(payload); // argsz is checked there, as for every struct
        return { payload: [encodeDeviceInfo({ argsz: DEVICE_INFO_SIZE, ...this.host.deviceInfo() })] };
      }
      case Command.DEVICE_GET_REGION_INFO: {
        noFds();
        const m = decodeRegionInfoRequest(payload);
        let info = this.host.regionInfo(m.index);
        if (!info) return { error: Errno.EINVAL };
        if (info.fd !== undefined && this.peer!.maxMsgFds < 1) {
          // A client that takes no fds cannot map anything: offer the region by messages only.
          info = { ...info, fd: undefined, sparseAreas: undefined, flags: info.flags & ~Vfio.REGION_INFO_FLAG_MMAP };
        }
        const { bytes, complete } = encodeRegionInfoReply(
          { flags: info.flags, index: info.index, size: info.size, offset: info.offset, sparseAreas: info.sparseAreas },
          m.argsz,
        );
        // The fd comes only with the complete reply, as libvfio-user does.
        return { payload: [bytes], fds: complete && info.fd !== undefined ? [info.fd] : [] };
      }
      case Command.DEVICE_GET_IRQ_INFO: {
        noFds();
        const m = decodeIrqInfo(payload);
        const info = this.host.irqInfo(m.index);
        if (!info) return { error: Errno.EINVAL };
        return { payload: [encodeIrqInfo({ argsz: IRQ_INFO_SIZE, flags: info.flags, index: m.index, count: info.count })] };
      }
      case Command.DEVICE_SET_IRQS: {
        const m = decodeSetIrqs(payload);
        const error = this.host.setIrqs(m, fds);
        if (error) closeFds(fds);
        return error ? { error } : {};
      }
      case Command.REGION_READ: {
        noFds();
        const m = decodeRegionAccess(payload, false);
        if (m.count > this.options.maxDataXferSize) return { error: Errno.E2BIG };
        this.checkAccess(m.region, m.offset, m.count);
        const data = new Uint8Array(m.count);
        this.host.regionRead(m.region, m.offset, data);
        return { payload: [encodeRegionAccess(m), data] };
      }
      case Command.REGION_WRITE: {
        noFds();
        const m = decodeRegionAccess(payload, true);
        this.checkAccess(m.region, m.offset, m.count);
        this.host.regionWrite(m.region, m.offset, m.data!);
        return { payload: [encodeRegionAccess(m)] };
      }
      case Command.DEVICE_RESET:
        noFds();
        this.host.reset();
        return {};
      case Command.DMA_READ:
      case Command.DMA_WRITE:
        throw new ProtocolError('DMA_READ/DMA_WRITE go from server to client', Errno.EINVAL);
      case Command.REGION_WRITE_MULTI: {
        noFds();
        const writes = decodeWriteMulti(payload);
        // Checked as a whole first, so a bad entry leaves the device untouched.
        for (const w of writes) this.checkAccess(w.region, w.offset, w.count);
        for (const w of writes) this.host.regionWrite(w.region, w.offset, w.data);
        return { payload: [encodeWriteMultiReply(writes.length)] };
      }
      case Command.DEVICE_GET_REGION_IO_FDS:
      case Command.DEVICE_FEATURE:
      case Command.MIG_DATA_READ:
      case Command.MIG_DATA_WRITE:
        throw new ProtocolError('not supported by this server', Errno.ENOTSUP);
      default:
        throw new ProtocolError(`unknown command ${header.command}`, Errno.ENOSYS);
    }
  }

  /** Bounds-check a region access for any host. Throws ProtocolError(EINVAL). */
  private checkAccess(index: number, offset: number, length: number): void {
    const size = this.host.regionSize(index);
    if (size === 0) throw new ProtocolError(`region ${index} does not exist`, Errno.EINVAL);
    if (offset > size || length > size - offset) {
      throw new ProtocolError(`region ${index} access [0x${offset.toString(16)}, +${length}) is outside its ${size} bytes`, Errno.EINVAL);
    }
  }

  private negotiate(payload: Uint8Array, fds: number[]): ReplyData {
    if (this.peer) throw new ProtocolError('VERSION was already negotiated', Errno.EINVAL);
    if (fds.length) throw new ProtocolError('VERSION carries no fds', Errno.EINVAL);
    const proposal = decodeVersion(payload);
    if (proposal.major !== PROTOCOL_MAJOR) {
      // The spec: a server that cannot speak the proposed major closes the connection.
      throw new ProtocolError(`client speaks major version ${proposal.major}; this server speaks ${PROTOCOL_MAJOR}`, Errno.ENOTSUP, true);
    }
    this.peer = {
      ...proposal.capabilities,
      maxMsgFds: Math.min(proposal.capabilities.maxMsgFds, NATIVE_MAX_FDS),
    };
    const replyFds: number[] = [];
    let twinSocket: { supported: boolean; fdIndex?: number } | undefined;
    if (proposal.capabilities.twinSocket?.supported) {
      twinSocket = { supported: false };
      if (this.options.twinSocket && this.peer.maxMsgFds >= 1) {
        const [serverEnd, clientEnd] = native.socketpair();
        this.twin = new Channel({
          fd: serverEnd,
          limits: { maxMessageSize: readerLimit(this.options.maxDataXferSize), maxFds: 0 },
          onCommand: () => {
            throw new ProtocolError('the twin socket carries only server commands and their replies', Errno.EINVAL);
          },
          onClose: (reason) => this.channel.close(reason),
          keepAlive: true,
          label: 'vfio-user client (twin socket)',
          stallTimeoutMs: this.options.stallTimeoutMs,
        });
        this.twin.watch();
        replyFds.push(clientEnd);
        twinSocket = { supported: true, fdIndex: 0 };
      }
    }
    // The reply names only capabilities the client proposed (the spec: a subset). A limit of ours
    // the client did not ask about must then be no stricter than the spec's default for it.
    const named = proposal.named;
    if (!named.has('maxDataXferSize') && this.options.maxDataXferSize < DEFAULT_CAPABILITIES.maxDataXferSize) {
      throw new ProtocolError(`this server takes at most ${this.options.maxDataXferSize} bytes per transfer and the client did not negotiate max_data_xfer_size`, Errno.ENOTSUP, true);
    }
    const mine: Partial<Capabilities> = {
      maxMsgFds: this.options.maxMsgFds,
      maxDataXferSize: this.options.maxDataXferSize,
      maxDmaMaps: 65535,
      pgsizes: 4096,
      twinSocket,
      writeMultiple: proposal.capabilities.writeMultiple,
    };
    const capabilities: Partial<Capabilities> = {};
    for (const key of named) (capabilities as Record<string, unknown>)[key] = mine[key];
    this.host.clientAttached(this.remote);
    const reply = encodeVersion({ major: PROTOCOL_MAJOR, minor: Math.min(proposal.minor, PROTOCOL_MINOR), capabilities });
    this.options.log(`client negotiated 0.${Math.min(proposal.minor, PROTOCOL_MINOR)}${this.twin ? ' with twin socket' : ''}`);
    return { payload: [reply], fds: replyFds, closeFdsAfterSend: true };
  }
}

/** Largest message we read: a full data transfer plus its headers (and room for VERSION JSON). */
export function readerLimit(maxDataXferSize: number): number {
  return Math.max(maxDataXferSize, 64 * 1024) + 64;
}
