/**
 * The vfio-user client backend: a device served by another process (or thread) over an AF_UNIX
 * socket, behind the same Backend interface as kernel VFIO.
 *
 * - DMA memory with an fd (memfd) is shared with DMA_MAP so the server reads and writes it
 *   directly; memory without fd is announced without one and the server reaches it with
 *   DMA_READ/DMA_WRITE, which this client answers (inline while it waits for a reply, and on
 *   the event loop otherwise).
 * - Regions the server offers as mappable are mmapped with the fd from the region info reply;
 *   everything else goes through REGION_READ/REGION_WRITE, split to the server's
 *   max_data_xfer_size.
 * - Interrupts: SET_IRQS with eventfds, so they arrive on eventfds exactly as with VFIO.
 *
 * Backend methods are synchronous, so each is a blocking request/reply (see Channel.requestSync).
 * The server must therefore not run on this thread: use a worker thread or another process.
 */
import { native, constants } from '../../native/index';
import { DeviceGoneError, InvalidArgumentError, RangeAccessError, UserpciError, wrapSystemError } from '../../errors';
import type {
  Backend,
  BackendDeviceInfo,
  BackendDmaMapRequest,
  BackendIrqInfo,
  BackendRegionInfo,
  IommuAperture,
} from '../../device/backend';
import {
  Command,
  DEFAULT_CAPABILITIES,
  DEVICE_INFO_SIZE,
  DmaFlags,
  Errno,
  IRQ_INFO_SIZE,
  PROTOCOL_MAJOR,
  PROTOCOL_MINOR,
  ProtocolError,
  REGION_ACCESS_SIZE,
  REGION_INFO_SIZE,
  Vfio,
  decodeDeviceInfo,
  decodeDmaAccess,
  decodeIrqInfo,
  decodeRegionAccess,
  decodeRegionInfoReply,
  decodeVersion,
  encodeDeviceInfo,
  encodeDmaAccess,
  encodeDmaMap,
  encodeDmaUnmap,
  encodeIrqInfo,
  encodeRegionAccess,
  encodeRegionInfoRequest,
  encodeSetIrqs,
  encodeVersion,
  regionInfoFullSize,
  smallestPageSize,
  type Capabilities,
  type RegionInfoMessage,
} from '../protocol/codec';
import { Channel, type ReplyData } from '../protocol/channel';
import { ConnectionClosedError, closeFds, type IncomingMessage } from '../protocol/transport';

export interface VfioUserClientOptions {
  /** Per-request timeout in ms (default 30 s: a device reset may take long). */
  timeoutMs?: number;
  /** How long the version handshake may take, in ms (default 10 s): a silent peer is no server. */
  connectTimeoutMs?: number;
  /** max_data_xfer_size we accept from the server (default 1 MiB). */
  maxDataXferSize?: number;
  /** Ask for twin-socket mode (default true; used only if the server agrees). */
  twinSocket?: boolean;
  /** Name shown in messages (default: the socket path). */
  name?: string;
  /** Called once when the connection to the server ends for any reason other than close(). */
  onDisconnect?: (reason: Error) => void;
}

const OUR_MAX_FDS = 16;
/** More sparse areas than fit in this many bytes is not a device we want to map. */
const MAX_REGION_INFO_ARGSZ = 64 * 1024;

interface ClientDmaMapping {
  iova: number;
  size: number;
  /** The caller's bytes inside the map (a streaming map's page padding is not theirs to serve). */
  bytes: Uint8Array;
  bytesIova: number;
  deviceReads: boolean;
  deviceWrites: boolean;
}

interface CachedRegion {
  info: BackendRegionInfo;
  fd: number | undefined;
  /** mmap offset of region offset 0 in fd. */
  mmapOffset: number;
}

/**
 * IOVAs any IOMMU a vfio-user server's device may sit behind can map: below 2^39 (VT-d's
 * narrowest address width, and QEMU's intel-iommu default) and outside the x86 MSI window, as
 * the kernel reserves it. 512 GiB of IOVA space.
 */
const PORTABLE_IOVA_RANGES: { start: number; end: number }[] = [
  { start: 0, end: 0xfedfffff },
  { start: 0xfef00000, end: 2 ** 39 - 1 },
];

export class VfioUserClient implements Backend {
  readonly kind = 'vfio-user' as const;
  readonly name: string;
  private readonly channel: Channel;
  private twin: Channel | undefined;
  private server: Capabilities = { ...DEFAULT_CAPABILITIES };
  private readonly timeoutMs: number;
  private readonly maxDataXferSize: number;
  private info: BackendDeviceInfo | undefined;
  private readonly regions = new Map<number, CachedRegion>();
  private readonly mappedRegions = new Set<ArrayBuffer>();
  private dmaMaps: ClientDmaMapping[] = [];
  /** What the server answered a map without fd (mapsAnyMemory), once asked. */
  private anyMemory: boolean | undefined;
  private closed = false;
  /** Why the server is gone, once it is (not set by our own close()). */
  private lostReason: DeviceGoneError | undefined;
  private lostListener: ((reason: Error) => void) | undefined;

  /** @internal use connectVfioUser / connectVfioUserFd */
  constructor(fd: number, name: string, options: VfioUserClientOptions) {
    this.name = name;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.maxDataXferSize = options.maxDataXferSize ?? 1 << 20;
    this.channel = new Channel({
      fd,
      limits: { maxMessageSize: messageLimit(this.maxDataXferSize), maxFds: OUR_MAX_FDS },
      onCommand: (m) => this.serveServerCommand(m),
      onClose: (reason) => {
        if (this.closed) return;
        this.lostReason = lostError(name, reason);
        options.onDisconnect?.(reason);
        this.notifyLost();
      },
      label: `vfio-user ${name}`,
    });
  }

  /** @internal */
  handshake(twinSocket: boolean, timeoutMs = this.timeoutMs): void {
    const reply = this.channel.requestSync(
      Command.VERSION,
      [
        encodeVersion({
          major: PROTOCOL_MAJOR,
          minor: PROTOCOL_MINOR,
          capabilities: {
            maxMsgFds: OUR_MAX_FDS,
            maxDataXferSize: this.maxDataXferSize,
            pgsizes: 4096,
            ...(twinSocket ? { twinSocket: { supported: true } } : {}),
          },
        }),
      ],
      [],
      timeoutMs,
    );
    let twinFd: number | undefined;
    try {
      const version = decodeVersion(reply.payload);
      if (version.major !== PROTOCOL_MAJOR || version.minor > PROTOCOL_MINOR) {
        throw new ProtocolError(`server answered version ${version.major}.${version.minor}; we proposed ${PROTOCOL_MAJOR}.${PROTOCOL_MINOR}`, Errno.ENOTSUP);
      }
      this.server = version.capabilities;
      smallestPageSize(this.server.pgsizes); // refuse a server with no page size now, not at first map
      const twin = version.capabilities.twinSocket;
      if (twinSocket && twin?.supported) {
        // The spec: supported without a valid fd index is inconsistent, and the client must abort.
        if (twin.fdIndex === undefined || twin.fdIndex >= reply.fds.length) throw new ProtocolError('server enabled twin-socket mode without passing a socket');
        twinFd = reply.fds[twin.fdIndex];
      }
    } catch (err) {
      closeFds(reply.fds);
      this.channel.close(err as Error);
      throw err;
    }
    closeFds(reply.fds.filter((fd) => fd !== twinFd));
    if (twinFd !== undefined) {
      this.twin = new Channel({
        fd: twinFd,
        limits: { maxMessageSize: messageLimit(this.maxDataXferSize), maxFds: 0 },
        onCommand: (m) => this.serveServerCommand(m),
        onClose: (reason) => this.channel.close(reason),
        label: `vfio-user ${this.name} (twin socket)`,
      });
      this.channel.companions.push(this.twin);
      this.twin.watch();
    }
    // Serve the server's DMA requests when no call of ours is waiting, without keeping the process alive.
    this.channel.watch();
  }

  /** Largest count in one REGION/DMA message that the server accepts. */
  get serverMaxDataXferSize(): number {
    return this.server.maxDataXferSize;
  }

  get twinSocket(): boolean {
    return this.twin !== undefined;
  }

  // ---- Backend -------------------------------------------------------------------------------

  deviceInfo(): BackendDeviceInfo {
    if (this.info) return this.info;
    const reply = this.call(Command.DEVICE_GET_INFO, [encodeDeviceInfo({ argsz: DEVICE_INFO_SIZE, flags: 0, numRegions: 0, numIrqs: 0 })]);
    const m = this.decode(() => decodeDeviceInfo(reply.payload));
    this.info = { numRegions: m.numRegions, numIrqs: m.numIrqs, flags: m.flags, canReset: (m.flags & Vfio.DEVICE_FLAGS_RESET) !== 0 };
    return this.info;
  }

  regionInfo(index: number): BackendRegionInfo {
    checkIndex(index, 'region');
    const cached = this.regions.get(index);
    if (cached) return cached.info;
    let argsz = regionInfoFullSize([{ offset: 0, size: 0 }, { offset: 0, size: 0 }, { offset: 0, size: 0 }, { offset: 0, size: 0 }]);
    let message: RegionInfoMessage | undefined;
    let fds: number[] = [];
    // Two steps at most: a reply naming a larger argsz is asked again with that size.
    for (let attempt = 0; attempt < 3; attempt++) {
      const reply = this.call(Command.DEVICE_GET_REGION_INFO, [encodeRegionInfoRequest(index, argsz)]);
      let m: RegionInfoMessage;
      try {
        m = decodeRegionInfoReply(reply.payload);
        if (m.index !== index) throw new ProtocolError(`region info reply is for region ${m.index}, asked ${index}`);
      } catch (err) {
        closeFds(reply.fds);
        throw this.protocolFailure(err);
      }
      // The spec: a reply argsz above ours means "allocate more and ask again", whatever the flags
      // say (a server may leave CAPS out when the chain did not fit).
      if (m.argsz > argsz) {
        closeFds(reply.fds);
        if (m.argsz > MAX_REGION_INFO_ARGSZ) throw this.protocolFailure(new ProtocolError(`region ${index} info needs ${m.argsz} bytes`, Errno.E2BIG));
        argsz = m.argsz;
        continue;
      }
      message = m;
      fds = reply.fds;
      break;
    }
    if (!message) throw this.protocolFailure(new ProtocolError(`region ${index} info: the server keeps asking for more room`));
    const mappable = (message.flags & Vfio.REGION_INFO_FLAG_MMAP) !== 0 && fds.length > 0;
    if (fds.length > 1) closeFds(fds.slice(1));
    const info: BackendRegionInfo = {
      index,
      size: message.size,
      readable: (message.flags & Vfio.REGION_INFO_FLAG_READ) !== 0,
      writable: (message.flags & Vfio.REGION_INFO_FLAG_WRITE) !== 0,
      mappable,
      sparseAreas: mappable ? message.sparseAreas?.filter((a) => a.size > 0 && a.offset + a.size <= message!.size) : undefined,
    };
    if (!mappable) closeFds(fds.slice(0, 1));
    this.regions.set(index, { info, fd: mappable ? fds[0] : undefined, mmapOffset: message.offset });
    return info;
  }

  mapRegion(index: number, offset: number, size: number): ArrayBuffer {
    this.ensureOpen();
    const region = this.regions.get(index) ?? (this.regionInfo(index), this.regions.get(index)!);
    if (!region.info.mappable || region.fd === undefined) throw new UserpciError('EINVAL', `${this.name}: region ${index} cannot be mapped`);
    const areas = region.info.sparseAreas ?? [{ offset: 0, size: region.info.size }];
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(size) || size <= 0 || !areas.some((a) => offset >= a.offset && offset + size <= a.offset + a.size)) {
      throw new RangeAccessError(`${this.name}: [${offset}, +${size}) of region ${index} is not inside a mappable area`);
    }
    const prot = (region.info.readable ? constants.PROT_READ : 0) | (region.info.writable ? constants.PROT_WRITE : 0);
    try {
      const buffer = native.mmap(size, prot, constants.MAP_SHARED, region.fd, region.mmapOffset + offset);
      this.mappedRegions.add(buffer);
      return buffer;
    } catch (err) {
      throw wrapSystemError(err, `${this.name}: mapping region ${index}`);
    }
  }

  unmapRegion(buffer: ArrayBuffer): void {
    if (!this.mappedRegions.delete(buffer)) throw new InvalidArgumentError(`${this.name}: that buffer is not a mapped region`);
    native.munmap(buffer);
  }

  regionRead(index: number, offset: number, into: Uint8Array): number {
    checkAccess(index, offset, into.length);
    const max = this.server.maxDataXferSize;
    for (let done = 0; done < into.length; ) {
      const count = Math.min(max, into.length - done);
      const reply = this.call(Command.REGION_READ, [encodeRegionAccess({ offset: offset + done, region: index, count })]);
      const m = this.decode(() => decodeRegionAccess(reply.payload, true));
      if (m.region !== index || m.offset !== offset + done || m.count !== count) {
        throw this.protocolFailure(new ProtocolError('REGION_READ reply does not match its request'));
      }
      into.set(m.data!, done);
      done += count;
    }
    return into.length;
  }

  regionWrite(index: number, offset: number, from: Uint8Array): number {
    checkAccess(index, offset, from.length);
    const max = this.server.maxDataXferSize;
    for (let done = 0; done < from.length; ) {
      const count = Math.min(max, from.length - done);
      const reply = this.call(Command.REGION_WRITE, [encodeRegionAccess({ offset: offset + done, region: index, count }), from.subarray(done, done + count)]);
      const m = this.decode(() => decodeRegionAccess(reply.payload, false));
      if (m.region !== index || m.offset !== offset + done || m.count !== count) {
        throw this.protocolFailure(new ProtocolError('REGION_WRITE reply does not match its request'));
      }
      done += count;
    }
    return from.length;
  }

  /** Async variants: several may be in flight; replies are matched by message id. */
  async regionReadAsync(index: number, offset: number, into: Uint8Array): Promise<number> {
    checkAccess(index, offset, into.length);
    const max = this.server.maxDataXferSize;
    const parts: Promise<void>[] = [];
    for (let done = 0; done < into.length; done += max) {
      const at = done;
      const count = Math.min(max, into.length - at);
      parts.push(
        this.channel.request(Command.REGION_READ, [encodeRegionAccess({ offset: offset + at, region: index, count })]).then((reply) => {
          closeFds(reply.fds);
          const m = decodeRegionAccess(reply.payload, true);
          if (m.region !== index || m.offset !== offset + at || m.count !== count) throw new ProtocolError('REGION_READ reply does not match its request');
          into.set(m.data!, at);
        }),
      );
    }
    await Promise.all(parts).catch((err) => {
      throw this.asLost(err);
    });
    return into.length;
  }

  async regionWriteAsync(index: number, offset: number, from: Uint8Array): Promise<number> {
    checkAccess(index, offset, from.length);
    const max = this.server.maxDataXferSize;
    const parts: Promise<unknown>[] = [];
    for (let done = 0; done < from.length; done += max) {
      const count = Math.min(max, from.length - done);
      parts.push(this.channel.request(Command.REGION_WRITE, [encodeRegionAccess({ offset: offset + done, region: index, count }), from.subarray(done, done + count)]));
    }
    await Promise.all(parts).catch((err) => {
      throw this.asLost(err);
    });
    return from.length;
  }

  iommuAperture(): IommuAperture {
    // Each connection is its own IOVA space: the server sees only this client's maps. The
    // protocol names no usable ranges, and a server's device may sit behind a real IOMMU (`userpci
    // proxy` maps each IOVA into it as it came), so keep to what every x86-64 IOMMU translates.
    return { domain: this, ranges: PORTABLE_IOVA_RANGES, pageSize: smallestPageSize(this.server.pgsizes) };
  }

  dmaMap(request: BackendDmaMapRequest): void {
    const { iova, size } = request;
    if (!Number.isSafeInteger(iova) || !Number.isSafeInteger(size) || iova < 0 || size <= 0 || iova + size > Number.MAX_SAFE_INTEGER) {
      throw new InvalidArgumentError(`${this.name}: DMA map [${iova}, +${size}) is not a valid range`);
    }
    const bytes = request.memory;
    const bytesIova = request.memoryIova;
    if (!(bytes instanceof Uint8Array) || !Number.isSafeInteger(bytesIova) || bytesIova < iova || bytesIova + bytes.byteLength > iova + size) {
      throw new InvalidArgumentError(`${this.name}: DMA map memory must lie inside [0x${iova.toString(16)}, +${size})`);
    }
    if (this.dmaMaps.some((m) => iova < m.iova + m.size && m.iova < iova + size)) {
      throw new UserpciError('EEXIST', `${this.name}: DMA map [0x${iova.toString(16)}, +${size}) overlaps an existing map`);
    }
    const flags = (request.deviceReads ? DmaFlags.READ : 0) | (request.deviceWrites ? DmaFlags.WRITE : 0);
    // A server that takes no fds gets the map without one and uses DMA_READ/DMA_WRITE.
    const withFd = request.fd !== undefined && request.fd >= 0 && this.server.maxMsgFds >= 1;
    try {
      this.call(Command.DMA_MAP, [encodeDmaMap({ flags, offset: withFd ? request.fdOffset ?? 0 : 0, address: iova, size })], withFd ? [request.fd!] : []);
    } catch (err) {
      if (!withFd && (err as { code?: string }).code === 'ENOTSUP') {
        // A proxy for a real device: its IOMMU reaches memory only through a mapping of it.
        throw new UserpciError('ENOTSUP', `${this.name}: the server cannot reach memory without an fd (a proxy for a real device); use memory it can map, such as allocDma buffers`);
      }
      if ((err as { code?: string }).code === 'EBUSY') {
        // `userpci proxy` after an IOMMU unmap failed for an earlier client: the device may still reach that range.
        throw new UserpciError('EBUSY', `${this.name}: the server refused DMA map [0x${iova.toString(16)}, +${size}): the range is busy in its IOMMU (behind userpci proxy: an earlier client's unmap failed there); the next map takes another IOVA`, { cause: err });
      }
      throw err;
    }
    this.dmaMaps.push({ iova, size, bytes, bytesIova, deviceReads: request.deviceReads, deviceWrites: request.deviceWrites });
  }

  /**
   * The protocol has no word for it, so the server is asked the one way it can answer: a page
   * mapped without fd (device reads only, at an IOVA no map of ours uses) and unmapped at once.
   * A server that serves DMA_READ/DMA_WRITE takes it; one whose device is real refuses ENOTSUP.
   */
  mapsAnyMemory(): boolean {
    if (this.anyMemory !== undefined) return this.anyMemory;
    const page = smallestPageSize(this.server.pgsizes);
    let iova = 0;
    for (const m of [...this.dmaMaps].sort((a, b) => a.iova - b.iova)) {
      if (iova + page <= m.iova) break;
      iova = Math.max(iova, Math.ceil((m.iova + m.size) / page) * page);
    }
    try {
      this.call(Command.DMA_MAP, [encodeDmaMap({ flags: DmaFlags.READ, offset: 0, address: iova, size: page })]);
    } catch (err) {
      if ((err as { code?: string }).code !== 'ENOTSUP') throw err;
      return (this.anyMemory = false);
    }
    this.call(Command.DMA_UNMAP, [encodeDmaUnmap({ address: iova, size: page })]);
    return (this.anyMemory = true);
  }

  dmaUnmap(iova: number, size: number): void {
    const i = this.dmaMaps.findIndex((m) => m.iova === iova && m.size === size);
    if (i < 0) throw new InvalidArgumentError(`${this.name}: no DMA map is exactly [0x${iova.toString(16)}, +${size})`);
    this.call(Command.DMA_UNMAP, [encodeDmaUnmap({ address: iova, size })]);
    this.dmaMaps.splice(i, 1);
  }

  irqInfo(index: number): BackendIrqInfo {
    checkIndex(index, 'irq');
    const reply = this.call(Command.DEVICE_GET_IRQ_INFO, [encodeIrqInfo({ argsz: IRQ_INFO_SIZE, flags: 0, index, count: 0 })]);
    const m = this.decode(() => decodeIrqInfo(reply.payload));
    if (m.index !== index) throw this.protocolFailure(new ProtocolError(`irq info reply is for index ${m.index}, asked ${index}`));
    return { index, count: m.count, flags: m.flags };
  }

  setIrqEventfds(index: number, start: number, fds: number[]): void {
    checkIndex(index, 'irq');
    if (!Number.isInteger(start) || start < 0) throw new InvalidArgumentError(`irq start ${start} is invalid`);
    if (fds.length === 0) {
      this.disableIrqs(index);
      return;
    }
    const flags = Vfio.IRQ_SET_DATA_EVENTFD | Vfio.IRQ_SET_ACTION_TRIGGER;
    const maxFds = Math.max(1, Math.min(this.server.maxMsgFds, OUR_MAX_FDS));
    if (fds.every((fd) => fd >= 0) && fds.length <= maxFds) {
      this.call(Command.DEVICE_SET_IRQS, [encodeSetIrqs({ flags, index, start, count: fds.length })], fds);
      return;
    }
    // More than one message is needed. First the whole block as eventfd data without fds (the
    // spec's de-assign), which sizes the block at once as one VFIO ioctl would (NORESIZE);
    // then each run of real fds, at most max_msg_fds per message.
    this.call(Command.DEVICE_SET_IRQS, [encodeSetIrqs({ flags, index, start, count: fds.length })]);
    for (let i = 0; i < fds.length; ) {
      if (fds[i]! < 0) {
        i++;
        continue;
      }
      let j = i;
      while (j < fds.length && fds[j]! >= 0 && j - i < maxFds) j++;
      this.call(Command.DEVICE_SET_IRQS, [encodeSetIrqs({ flags, index, start: start + i, count: j - i })], fds.slice(i, j));
      i = j;
    }
  }

  disableIrqs(index: number): void {
    checkIndex(index, 'irq');
    this.call(Command.DEVICE_SET_IRQS, [encodeSetIrqs({ flags: Vfio.IRQ_SET_DATA_NONE | Vfio.IRQ_SET_ACTION_TRIGGER, index, start: 0, count: 0 })]);
  }

  unmaskIrq(index: number, vector: number): void {
    checkIndex(index, 'irq');
    this.call(Command.DEVICE_SET_IRQS, [encodeSetIrqs({ flags: Vfio.IRQ_SET_DATA_NONE | Vfio.IRQ_SET_ACTION_UNMASK, index, start: vector, count: 1 })]);
  }

  reset(): void {
    this.call(Command.DEVICE_RESET);
  }

  onLost(listener: (reason: Error) => void): void {
    this.lostListener = listener;
    if (this.lostReason) this.notifyLost();
  }

  /**
   * Tell the listener on a later tick: the loss may be noticed inside a call of ours (a pump in
   * requestSync), and the listener tears the device down through this backend.
   */
  private notifyLost(): void {
    const listener = this.lostListener;
    const reason = this.lostReason;
    if (!listener || !reason) return;
    this.lostListener = undefined;
    process.nextTick(() => {
      if (!this.closed) listener(reason);
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const buffer of this.mappedRegions) {
      try {
        native.munmap(buffer);
      } catch {
        // already unmapped
      }
    }
    this.mappedRegions.clear();
    for (const r of this.regions.values()) if (r.fd !== undefined) closeFds([r.fd]);
    this.regions.clear();
    this.dmaMaps = [];
    const reason = new DeviceGoneError(`${this.name}: backend closed`);
    this.twin?.close(reason);
    this.channel.close(reason);
  }

  // ---- the server's commands: DMA_READ / DMA_WRITE ------------------------------------------

  private serveServerCommand(message: IncomingMessage): ReplyData {
    const { header, payload, fds } = message;
    if (fds.length) throw new ProtocolError('server commands carry no fds', Errno.EINVAL);
    if (header.command === Command.DMA_READ) {
      const m = decodeDmaAccess(payload, false);
      if (m.count > this.maxDataXferSize) return { error: Errno.E2BIG };
      const data = new Uint8Array(m.count);
      const error = this.copyDma(m.address, data, 'read');
      return error ? { error } : { payload: [encodeDmaAccess({ address: m.address, count: m.count }), data] };
    }
    if (header.command === Command.DMA_WRITE) {
      const m = decodeDmaAccess(payload, true);
      const error = this.copyDma(m.address, m.data!, 'write');
      // The reply's count is u64 as libvfio-user sends it; a spec reader taking u32 sees the same value.
      return error ? { error } : { payload: [encodeDmaAccess({ address: m.address, count: m.count })] };
    }
    throw new ProtocolError(`the server may not send ${header.command} to a client`, Errno.EINVAL);
  }

  /** Copy between client memory and `data` for the server; 0 or an errno. */
  private copyDma(address: number, data: Uint8Array, direction: 'read' | 'write'): number {
    let at = address;
    let done = 0;
    while (done < data.length) {
      const m = this.dmaMaps.find((x) => x.iova <= at && at < x.iova + x.size);
      if (!m) return Errno.EFAULT;
      if (direction === 'read' ? !m.deviceReads : !m.deviceWrites) return Errno.EPERM;
      // Only the caller's own bytes are served; the rest of the map's pages are not ours to expose.
      const inMap = at - m.bytesIova;
      if (inMap < 0 || inMap >= m.bytes.length) return Errno.EFAULT;
      const n = Math.min(data.length - done, m.bytes.length - inMap);
      if (direction === 'read') data.set(m.bytes.subarray(inMap, inMap + n), done);
      else m.bytes.set(data.subarray(done, done + n), inMap);
      done += n;
      at += n;
    }
    return 0;
  }

  // ---- plumbing ------------------------------------------------------------------------------

  private ensureOpen(): void {
    if (this.closed) throw new DeviceGoneError(`${this.name}: backend is closed`);
    const reason = this.channel.closeReason;
    if (reason) throw this.lostReason ?? lostError(this.name, reason);
  }

  private call(command: number, payload: Uint8Array[] = [], fds: number[] = []): IncomingMessage {
    this.ensureOpen();
    let reply: IncomingMessage;
    try {
      reply = this.channel.requestSync(command, payload, fds, this.timeoutMs);
    } catch (err) {
      throw this.asLost(err);
    }
    if (command !== Command.DEVICE_GET_REGION_INFO) closeFds(reply.fds);
    return reply;
  }

  /** However the loss showed (end of stream, reset, a failed write), the caller sees ENODEV. */
  private asLost(err: unknown): unknown {
    if (err instanceof ConnectionClosedError) return this.lostReason ?? lostError(this.name, err);
    return err;
  }

  private decode<T>(fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      throw this.protocolFailure(err);
    }
  }

  /** A reply we cannot trust: the connection is done for, and the caller hears why. */
  private protocolFailure(err: unknown): Error {
    const error = err instanceof UserpciError ? err : new ProtocolError(String(err));
    this.channel.close(error);
    return error;
  }
}

/** The one error a lost server becomes, whatever the socket said (EOF, ECONNRESET, EPIPE). */
function lostError(name: string, reason: Error): DeviceGoneError {
  if (reason instanceof DeviceGoneError) return reason;
  return new DeviceGoneError(`${name}: vfio-user server connection lost (${reason.message})`);
}

function checkIndex(index: number, what: string): void {
  if (!Number.isInteger(index) || index < 0 || index > 0xffff_ffff) throw new InvalidArgumentError(`${what} index ${index} is invalid`);
}

function checkAccess(index: number, offset: number, length: number): void {
  checkIndex(index, 'region');
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > Number.MAX_SAFE_INTEGER) {
    throw new RangeAccessError(`region offset ${offset} is invalid`);
  }
}

function messageLimit(maxDataXferSize: number): number {
  return Math.max(maxDataXferSize, 64 * 1024) + REGION_ACCESS_SIZE + 64;
}

/** Connect to a vfio-user server listening at `socketPath` and negotiate. */
export function connectVfioUser(socketPath: string, options: VfioUserClientOptions = {}): VfioUserClient {
  let fd: number;
  try {
    fd = native.unixConnect(socketPath);
  } catch (err) {
    throw wrapSystemError(err, `connecting to vfio-user server ${socketPath}`, {
      ENOENT: 'no socket there (is the server running?)',
      ECONNREFUSED: 'nobody is listening (stale socket file?)',
    });
  }
  return connectVfioUserFd(fd, { name: socketPath, ...options });
}

/** Use an already-connected socket (one end of a socketpair, an inherited fd). Takes ownership. */
export function connectVfioUserFd(fd: number, options: VfioUserClientOptions = {}): VfioUserClient {
  const client = new VfioUserClient(fd, options.name ?? `fd ${fd}`, options);
  try {
    client.handshake(options.twinSocket ?? true, options.connectTimeoutMs ?? 10_000);
  } catch (err) {
    client.close();
    if (err instanceof ConnectionClosedError) throw new DeviceGoneError(`${client.name}: server closed the connection during negotiation`);
    // Bytes that do not frame as vfio-user (an HTTP server, a shell, another protocol's socket).
    if (err instanceof ProtocolError && err.fatal) throw new ProtocolError(`${client.name} is not a vfio-user server (${err.message})`, Errno.EPROTO, true);
    if (err instanceof UserpciError && err.code === 'ETIMEDOUT') {
      throw new UserpciError('ETIMEDOUT', `${client.name} is not a vfio-user server (no answer to the version handshake within ${options.connectTimeoutMs ?? 10_000} ms)`, { cause: err });
    }
    throw err;
  }
  return client;
}
