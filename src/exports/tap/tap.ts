/**
 * A user-level network device: a kernel TAP interface whose frames go out through our virtio-net
 * driver, and whose received frames are what our NIC receives, so the kernel's own network stack
 * (ARP, IP, TCP, ping, routing, namespaces) sends and receives through the user-space driver.
 * What the NBD export is for the disk.
 *
 *   const net = await VirtioNet.open('0000:00:05.0');
 *   const tap = NetTap.attach(net, { name: 'utap0' });   // then: ip addr add ... dev utap0; ip link set utap0 up
 *   ...
 *   tap.close(); await net.close();
 *
 * The interface takes the NIC's MAC (the device filters nothing when nobody asked it to, but the
 * peer learns one address for us), and its carrier follows the NIC's link. Kernel to NIC: the
 * TAP file is watched on the event loop; frames are read into a batch and sent with one doorbell
 * per batch. NIC to kernel: on the receive queue's interrupt (or polling without MSI-X) frames
 * are taken with rxBurst and written to the TAP file one by one (one write per frame is TAP's
 * interface). Nothing is allocated per frame.
 *
 * Events: 'closed' (reason: string) once the bridge stopped by itself (the NIC was removed or
 * failed); the interface disappears with it.
 */
import { EventEmitter } from 'node:events';
import { native, constants, type WatchHandle } from '../../native/index';
import { checkString, describeValue, optionsObject } from '../../arguments';
import { InvalidArgumentError, UserpciError, wrapSystemError } from '../../errors';
import { VirtioNet } from '../../drivers/virtio-net/net-device';
import { PacketBatch } from '../../drivers/virtio-net/packet-batch';
import { ETH_HEADER } from '../../drivers/virtio-net/constants';
import * as T from '../../uapi/tun';

export interface NetTapOptions {
  /** Interface name (at most 15 bytes); default utap%d (the kernel picks the number). */
  name?: string;
  /** Frames moved per burst each way; default 32. */
  burst?: number;
  /** The NIC's queue pair to use; default 0. */
  queue?: number;
}

export interface NetTapStats {
  /** Frames the kernel sent that went out through the NIC. */
  toWire: number;
  /** Frames the NIC received that were handed to the kernel. */
  toKernel: number;
  /** Frames the kernel sent that no NIC could take (too short, too long). */
  droppedToWire: number;
  /** Frames the kernel would not take (its queue full). */
  droppedToKernel: number;
}

export class NetTap extends EventEmitter {
  readonly name: string;
  readonly stats: NetTapStats = { toWire: 0, toKernel: 0, droppedToWire: 0, droppedToKernel: 0 };
  private fd: number;
  private watch: WatchHandle | undefined;
  private stopReceive: (() => void) | undefined;
  private readonly out: PacketBatch;
  private readonly in: PacketBatch;
  /** Frames of `out` read from the kernel but not yet taken by the NIC (its ring was full). */
  private pendingFrom = 0;
  private retry: NodeJS.Immediate | undefined;
  private closedReason: string | undefined;

  /** Creates the TAP interface and starts moving frames between it and `net`'s queue pair. */
  static attach(net: VirtioNet, options: NetTapOptions = {}): NetTap {
    if (!(net instanceof VirtioNet)) throw new InvalidArgumentError(`NetTap.attach takes an open VirtioNet, got ${describeValue(net)}`);
    options = optionsObject(options, 'NetTap.attach options');
    if (options.name !== undefined) checkString(options.name, 'the interface name');
    return new NetTap(net, options);
  }

  private constructor(
    readonly net: VirtioNet,
    options: NetTapOptions,
  ) {
    super();
    const name = options.name ?? 'utap%d';
    if (Buffer.byteLength(name) >= T.IFNAMSIZ || name.length === 0 || /[\s/]/.test(name)) {
      throw new InvalidArgumentError(`an interface name is 1..${T.IFNAMSIZ - 1} bytes without spaces or '/', got ${JSON.stringify(name)}`);
    }
    const burst = options.burst ?? 32;
    if (!Number.isInteger(burst) || burst < 1 || burst > 256) throw new InvalidArgumentError(`burst must be 1..256, got ${burst}`);
    this.queue = options.queue ?? 0;
    if (net.closed) throw new UserpciError('ENODEV', `${net.name} is closed`);
    if (!(Number.isInteger(this.queue) && this.queue >= 0 && this.queue < net.queuePairs)) {
      throw new InvalidArgumentError(`${net.name} has queue pairs 0..${net.queuePairs - 1}, not ${this.queue}`);
    }
    this.out = new PacketBatch(burst);
    this.in = new PacketBatch(burst);
    let fd: number;
    try {
      fd = native.open(T.TUN_DEVICE, constants.O_RDWR | constants.O_NONBLOCK);
    } catch (err) {
      throw wrapSystemError(err, `opening ${T.TUN_DEVICE}`, { ENOENT: 'no TUN/TAP support (modprobe tun)', EACCES: 'needs CAP_NET_ADMIN' });
    }
    this.fd = fd;
    try {
      const req = T.ifreq(name);
      new DataView(req.buffer).setUint16(T.IFREQ.ifr_flags, T.IFF_TAP | T.IFF_NO_PI, true);
      try {
        native.ioctl(fd, T.TUNSETIFF, req);
      } catch (err) {
        throw wrapSystemError(err, `creating TAP interface ${name}`, { EBUSY: 'the name is taken by an interface in use', EPERM: 'needs CAP_NET_ADMIN', EINVAL: 'the name belongs to an interface that is not a TAP' });
      }
      this.name = T.ifreqName(req);
      const hw = T.ifreq(this.name);
      new DataView(hw.buffer).setUint16(T.IFREQ.ifr_hwaddr + T.SOCKADDR.sa_family, T.ARPHRD_ETHER, true);
      hw.set(net.mac, T.IFREQ.ifr_hwaddr + T.SOCKADDR.sa_data);
      try {
        native.ioctl(fd, T.SIOCSIFHWADDR, hw);
      } catch (err) {
        throw wrapSystemError(err, `giving ${this.name} the MAC ${net.macString}`, { EBUSY: 'the interface is up: bring it down first' });
      }
      this.setCarrier(net.linkUp);
      this.watch = native.watch(fd, 1, false, this.onKernelFrames);
      this.stopReceive = net.onReceive(this.queue, this.onWireFrames);
    } catch (err) {
      this.release();
      throw err;
    }
    net.on('link', this.onLink);
    net.on('removed', this.onRemoved);
  }

  private readonly queue: number;

  get closed(): boolean {
    return this.closedReason !== undefined;
  }

  private setCarrier(up: boolean): void {
    try {
      native.ioctl(this.fd, T.TUNSETCARRIER, Int32Array.of(up ? 1 : 0));
    } catch (err) {
      throw wrapSystemError(err, `setting ${this.name}'s carrier`);
    }
  }

  private readonly onLink = (up: boolean): void => {
    if (!this.closedReason) this.setCarrier(up);
  };

  private readonly onRemoved = (): void => {
    this.stop(`${this.net.name} was removed`);
  };

  /** The TAP file is readable: frames the kernel sends, out through the NIC. */
  private readonly onKernelFrames = (status: number): void => {
    if (this.closedReason || this.pendingFrom < this.out.count) return; // still sending the last batch
    if (status < 0) {
      this.stop(`${this.name}: polling the TAP file failed (${status})`);
      return;
    }
    const b = this.out;
    const max = this.net.maxFrameSize;
    try {
      for (;;) {
        b.count = 0;
        while (b.count < b.capacity) {
          const n = native.read(this.fd, b.data, b.count * b.slotSize, b.slotSize);
          if (n < 0) break;
          if (n < ETH_HEADER || n > max) {
            this.stats.droppedToWire++;
            continue;
          }
          b.lengths[b.count] = n;
          b.flags[b.count] = 0;
          b.count++;
        }
        if (b.count === 0) return;
        this.pendingFrom = 0;
        if (!this.sendPending()) return;
        if (b.count < b.capacity) return;
      }
    } catch (err) {
      this.fail(err, 'moving frames from the kernel to the NIC');
    }
  };

  /** Sends what is left of `out`; true when all of it went, else retries on the next turn. */
  private sendPending(): boolean {
    const b = this.out;
    const sent = this.net.txBurst(this.queue, b, this.pendingFrom, b.count - this.pendingFrom);
    this.pendingFrom += sent;
    this.stats.toWire += sent;
    if (this.pendingFrom === b.count) return true;
    this.retry ??= setImmediate(() => {
      this.retry = undefined;
      if (this.closedReason) return;
      try {
        if (this.sendPending()) this.onKernelFrames(0);
      } catch (err) {
        this.fail(err, 'moving frames from the kernel to the NIC');
      }
    });
    return false;
  }

  /** The NIC may have frames: into the kernel. */
  private readonly onWireFrames = (): void => {
    if (this.closedReason) return;
    const b = this.in;
    try {
      for (let n = this.net.rxBurst(this.queue, b); n > 0; n = this.net.rxBurst(this.queue, b)) {
        for (let i = 0; i < n; i++) {
          if (native.write(this.fd, b.data, i * b.slotSize, b.lengths[i]!) < 0) this.stats.droppedToKernel++;
          else this.stats.toKernel++;
        }
        if (n < b.capacity) break;
      }
    } catch (err) {
      this.fail(err, 'moving frames from the NIC to the kernel');
    }
  };

  private fail(err: unknown, doing: string): void {
    const e = err instanceof UserpciError ? err : wrapSystemError(err, `${this.name}: ${doing}`);
    this.stop(e.code === 'ENODEV' ? `${this.net.name} is gone (${e.message})` : e.message);
  }

  private stop(reason: string): void {
    if (this.closedReason) return;
    this.closedReason = reason;
    this.release();
    this.emit('closed', reason);
  }

  private release(): void {
    this.net.off('link', this.onLink);
    this.net.off('removed', this.onRemoved);
    if (this.retry) clearImmediate(this.retry);
    this.retry = undefined;
    this.stopReceive?.();
    this.stopReceive = undefined;
    if (this.watch) native.watchStop(this.watch);
    this.watch = undefined;
    if (this.fd >= 0) native.close(this.fd); // the interface goes with its last file
    this.fd = -1;
  }

  /** Removes the interface and stops moving frames (the NIC stays open: close it yourself). */
  close(): void {
    if (this.closedReason) return;
    this.closedReason = `${this.name} is closed`;
    this.release();
  }
}
