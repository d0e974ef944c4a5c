/**
 * A virtio-net driver in user space: bring-up over the virtio 1.x PCI transport, receive and
 * transmit queue pairs over preallocated DMA slots, and two ways to move packets:
 *
 * - bursts (the fast path, like DPDK and ixy): rxBurst/txBurst move up to a batch of frames per
 *   call between the rings and a reusable PacketBatch, polling, with no allocation per packet;
 * - events (convenience): listen() raises 'frame' for each received frame (on an MSI-X
 *   interrupt per receive queue, or polling without MSI-X), send() waits for ring space.
 *
 *   const net = await VirtioNet.open('0000:00:05.0');
 *   console.log(net.macString, net.linkUp);
 *   const batch = new PacketBatch(32);
 *   batch.add(frame); net.txBurst(0, batch);
 *   const n = net.rxBurst(0, batch);
 *   await net.close();
 *
 * Events: 'frame' (frame: Buffer, queue: number) while listening, 'link' (up: boolean) on a
 * configuration change, 'removed' when the device was unplugged (every later call: ENODEV).
 */
import { EventEmitter } from 'node:events';
import { checkFunction, describeValue, optionsObject } from '../../arguments';
import { DeviceGoneError, InvalidArgumentError, UserpciError } from '../../errors';
import { openDevice } from '../../device/open';
import { PciDevice } from '../../device/device';
import type { DmaBuffer } from '../../dma/dma-space';
import type { InterruptVector } from '../../irq/interrupt-vector';
import { VirtioPciTransport } from '../virtio/transport';
import type { Virtqueue, VirtqueueState } from '../virtio/virtqueue';
import * as V from '../virtio/constants';
import * as N from './constants';
import { PacketBatch } from './packet-batch';
import { RxQueue, TxQueue, type QueueStats } from './queues';

export interface VirtioNetOptions {
  /**
   * Receive/transmit queue pairs to use: 1 (default) up to the device's max_virtqueue_pairs, or
   * 'max'. More than one needs MQ (ENOTSUP without it; EINVAL above what the device offers).
   */
  queuePairs?: number | 'max';
  /** Ring entries per queue, capped by the device; default 256. */
  queueSize?: number;
  /**
   * Bytes per receive buffer (a multiple of 16). Default 2048: a whole frame per buffer. Smaller
   * buffers (down to 64) need MRG_RXBUF; a frame then spans several.
   */
  rxBufferSize?: number;
  /** Negotiate MRG_RXBUF when offered; default true. */
  mergeableRxBuffers?: boolean;
  /**
   * Take packed virtqueues (RING_PACKED, virtio 1.1) when the device offers them; default true.
   * false keeps split rings.
   */
  packedRing?: boolean;
  /**
   * Take RING_EVENT_IDX when offered; default true: a doorbell only when the device's event index
   * says it waits for one, and, on the receive interrupt, one interrupt per batch rather than
   * per frame. false keeps the flags (NO_NOTIFY / NO_INTERRUPT, or ENABLE/DISABLE when packed).
   */
  eventIdx?: boolean;
  /** Negotiate CSUM/GUEST_CSUM when offered, so checksum flags pass through; default true. */
  checksumOffload?: boolean;
  /** 'msix' (default when the device has enough vectors): an interrupt per receive queue and one for configuration changes; 'poll': none. */
  interrupts?: 'msix' | 'poll';
  /** DMA mask when opening by address; virtio addresses are 64-bit. */
  dmaMask?: number | bigint;
}

export interface VirtioNetInfo {
  address: string;
  mac: string;
  linkUp: boolean;
  mtu: number;
  maxFrameSize: number;
  queuePairs: number;
  maxQueuePairs: number;
  /** CTRL_VQ negotiated (with MQ): the queue count was set with VQ_PAIRS_SET over the control queue. */
  controlQueue: boolean;
  queueSize: number;
  rxBufferSize: number;
  interrupts: 'msix' | 'poll';
  /** Virtqueue format in use: 'packed' when RING_PACKED was negotiated. */
  ring: 'split' | 'packed';
  /** RING_EVENT_IDX negotiated: doorbells and interrupts suppressed by event index. */
  eventIdx: boolean;
  offered: string[];
  negotiated: string[];
}

const DEFAULT_QUEUE_SIZE = 256;
const TX_SLOT = 2048;
const CTRL_TIMEOUT_MS = 5000;
/** Offset of the ack byte in the control queue's buffer; the command and its data go before it. */
const CTRL_ACK = 2048;

interface ControlQueue {
  vq: Virtqueue;
  mem: DmaBuffer;
  u8: Uint8Array;
  /** The last command sent: the next waits for it. */
  busy: Promise<void>;
  /** Set once a command went unanswered: the device still holds the queue's only descriptors. */
  stuck: string | undefined;
}

export class VirtioNet extends EventEmitter implements AsyncDisposable {
  readonly mac = new Uint8Array(6);
  mtu = N.DEFAULT_MTU;
  readonly offered: bigint;
  readonly features: bigint;
  readonly queuePairs: number;
  readonly maxQueuePairs: number;
  readonly interruptMode: 'msix' | 'poll';
  readonly rxBufferSize: number;
  /** CSUM negotiated: frames may ask the device to fill in their checksum (a boolean, not a bigint test per burst). */
  private readonly checksumOffload: boolean;
  private linkState = true;
  private readonly rx: RxQueue[] = [];
  private readonly tx: TxQueue[] = [];
  private readonly slotMemory: DmaBuffer[] = [];
  private vectors: readonly InterruptVector[] = [];
  private closedReason: string | undefined;
  private listening: { batch: PacketBatch; stop: () => void } | undefined;
  private ctrl: ControlQueue | undefined;
  private sendBatch = new PacketBatch(1, TX_SLOT);

  /** Opens the NIC at a PCI address (or takes an open device) and brings it up. */
  static async open(target: string | PciDevice, options: VirtioNetOptions = {}): Promise<VirtioNet> {
    options = optionsObject(options, 'VirtioNet.open options');
    if (typeof target !== 'string' && !(target instanceof PciDevice)) throw new InvalidArgumentError(`VirtioNet.open takes a PCI address or an open PciDevice, got ${describeValue(target)}`);
    const owns = typeof target === 'string';
    const device = owns ? await openDevice(target, { dmaMask: options.dmaMask }) : target;
    let net: VirtioNet | undefined;
    try {
      const transport = new VirtioPciTransport(device);
      if (transport.deviceType !== N.VIRTIO_NET_DEVICE_TYPE) {
        throw new UserpciError('ENODEV', `${device.name} is a virtio device of type ${transport.deviceType}, not a network card (type 1)`);
      }
      // Quiesce first: a previous owner (the kernel's driver, or a process killed mid-burst) may
      // have left queues running at addresses that mean nothing to us.
      await transport.reset();
      // Quiet now: it may master the bus (openDevice leaves that off). Virtio 1.x addresses are 64-bit.
      device.declareDmaWidth(64, 'virtio-net driver');
      device.enableBusMaster();
      net = new VirtioNet(transport, owns, options);
      await net.start();
      return net;
    } catch (err) {
      if (net) await net.abandon();
      else if (!device.closed) {
        try {
          await new VirtioPciTransport(device).shutdown();
        } catch {
          // Not virtio, or gone: nothing to stop.
        }
      }
      if (owns) device.close();
      throw err;
    }
  }

  private constructor(
    readonly transport: VirtioPciTransport,
    private readonly ownsDevice: boolean,
    private readonly options: VirtioNetOptions,
  ) {
    super();
    const t = transport;
    this.offered = t.deviceFeatures();
    const has = (bit: number) => V.hasFeature(this.offered, bit);
    // MQ comes with the control queue (the spec makes CTRL_VQ a condition of MQ): the pair count
    // is set over it. Taken whenever offered, so one pair goes through the same handshake.
    const mq = has(N.NET_F_MQ) && has(N.NET_F_CTRL_VQ);
    this.maxQueuePairs = mq ? Math.max(1, t.readDeviceConfig((c) => c.u16(N.CFG_MAX_VIRTQUEUE_PAIRS))) : 1;
    const pairs = options.queuePairs === 'max' ? this.maxQueuePairs : options.queuePairs ?? 1;
    if (!Number.isInteger(pairs) || pairs < 1 || pairs > this.maxQueuePairs) {
      throw new UserpciError(Number.isInteger(pairs) && pairs > 1 && !mq ? 'ENOTSUP' : 'EINVAL',
        `${t.name} offers ${this.maxQueuePairs} queue pair(s)${mq ? '' : ' (no MQ with a control queue)'}; asked for ${String(options.queuePairs)}`);
    }
    this.queuePairs = pairs;
    const mergeable = (options.mergeableRxBuffers ?? true) && has(N.NET_F_MRG_RXBUF);
    this.rxBufferSize = options.rxBufferSize ?? 2048;
    const minRx = mergeable ? 64 : 16 + N.ETH_HEADER + N.DEFAULT_MTU + 4;
    if (!Number.isInteger(this.rxBufferSize) || this.rxBufferSize % 16 !== 0 || this.rxBufferSize < minRx || this.rxBufferSize > 65536) {
      throw new InvalidArgumentError(`rxBufferSize must be a multiple of 16 from ${minRx} to 65536${mergeable ? '' : ' (no mergeable buffers negotiated)'}, got ${this.rxBufferSize}`);
    }
    let want = V.featureBit(N.NET_F_MAC) | V.featureBit(N.NET_F_STATUS) | V.featureBit(N.NET_F_MTU);
    if (mergeable) want |= V.featureBit(N.NET_F_MRG_RXBUF);
    if (options.packedRing ?? true) want |= V.featureBit(V.F_RING_PACKED);
    if (options.eventIdx ?? true) want |= V.featureBit(V.F_RING_EVENT_IDX);
    if (options.checksumOffload ?? true) want |= V.featureBit(N.NET_F_CSUM) | V.featureBit(N.NET_F_GUEST_CSUM);
    if (mq) want |= V.featureBit(N.NET_F_MQ) | V.featureBit(N.NET_F_CTRL_VQ);
    // VERSION_1 (the modern interface) and ACCESS_PLATFORM (DMA through the IOMMU, so our IOVAs
    // mean something to the device) are conditions, not wishes.
    const required = V.featureBit(V.F_VERSION_1) | V.featureBit(V.F_ACCESS_PLATFORM);
    this.features = t.negotiate(want, required, N.NET_FEATURE_NAMES);
    this.checksumOffload = this.has(N.NET_F_CSUM);
    const msix = t.device.interrupts.info('msix').count;
    const need = 1 + pairs;
    this.interruptMode = options.interrupts ?? (msix >= need ? 'msix' : 'poll');
    if (this.interruptMode === 'msix' && msix < need) {
      throw new UserpciError('ENOTSUP', `${t.name} offers ${msix} MSI-X vector(s); ${need} needed for ${pairs} queue pair(s) and configuration changes`);
    }
    t.device.on('removed', this.onRemoved);
  }

  private readonly onRemoved = (): void => {
    this.closedReason = `${this.transport.name} was removed`;
    this.stopListening();
    this.emit('removed');
  };

  private has(bit: number): boolean {
    return V.hasFeature(this.features, bit);
  }

  private async start(): Promise<void> {
    const t = this.transport;
    const device = t.device;
    if (this.interruptMode === 'msix') {
      this.vectors = device.enableInterrupts('msix', 1 + this.queuePairs);
      t.setConfigVector(0);
      this.vectors[0]!.on('interrupt', () => this.onConfigChange());
    }
    const size = this.options.queueSize ?? DEFAULT_QUEUE_SIZE;
    if (!Number.isInteger(size) || size < 2 || size > V.MAX_QUEUE_SIZE) throw new InvalidArgumentError(`queueSize must be 2..${V.MAX_QUEUE_SIZE}, got ${size}`);
    for (let p = 0; p < this.queuePairs; p++) {
      const rxVq = t.setupQueue(2 * p, { size, msixVector: this.interruptMode === 'msix' ? 1 + p : V.NO_VECTOR });
      this.rx.push(new RxQueue(rxVq, this.slots(rxVq, this.rxBufferSize), this.rxBufferSize, this.has(N.NET_F_MRG_RXBUF)));
      const txVq = t.setupQueue(2 * p + 1, { size, msixVector: V.NO_VECTOR });
      this.tx.push(new TxQueue(txVq, this.slots(txVq, TX_SLOT), TX_SLOT));
    }
    if (this.has(N.NET_F_CTRL_VQ)) {
      // The control queue follows the last possible pair (spec 5.1.2), polled: one command at a time.
      const vq = t.setupQueue(2 * this.maxQueuePairs, { size: 16, msixVector: V.NO_VECTOR });
      vq.setInterrupts(false);
      const mem = this.transport.device.allocDma(4096);
      this.slotMemory.push(mem);
      // Descriptor 0: class, command and data (device-readable); 1: the ack byte (device-writable).
      vq.setDescriptor(1, mem.iova + CTRL_ACK, 1, V.DESC_F_WRITE);
      this.ctrl = { vq, mem, u8: new Uint8Array(mem.buffer), busy: Promise.resolve(), stuck: undefined };
    }
    this.readConfig();
    t.driverOk();
    for (const q of this.rx) if (q.vq.kick()) q.stats.doorbells++;
    // With MQ, only the first pair runs until VQ_PAIRS_SET says how many (spec 5.1.6.5.5).
    if (this.has(N.NET_F_MQ)) {
      await this.control(N.CTRL_CLASS_MQ, N.CTRL_MQ_VQ_PAIRS_SET, Uint8Array.of(this.queuePairs & 0xff, this.queuePairs >> 8));
    }
  }

  private slots(vq: Virtqueue, slotSize: number): DmaBuffer {
    const m = this.transport.device.allocDma(vq.size * slotSize);
    this.slotMemory.push(m);
    return m;
  }

  private readConfig(): void {
    const t = this.transport;
    t.readDeviceConfig((c) => {
      if (this.has(N.NET_F_MAC)) for (let i = 0; i < 6; i++) this.mac[i] = c.u8(N.CFG_MAC + i);
      if (this.has(N.NET_F_STATUS)) this.linkState = (c.u16(N.CFG_STATUS) & N.STATUS_LINK_UP) !== 0;
      if (this.has(N.NET_F_MTU)) this.mtu = c.u16(N.CFG_MTU);
    });
    if (!this.has(N.NET_F_MAC)) {
      // No address from the device: a random locally administered unicast one, as Linux does.
      for (let i = 0; i < 6; i++) this.mac[i] = Math.floor(Math.random() * 256);
      this.mac[0] = (this.mac[0]! & 0xfe) | 0x02;
    }
  }

  /**
   * Sends a command over the control queue (CTRL_VQ): class, command and `data` (at most
   * 2000 bytes, little-endian fields as the spec lays them out), and resolves once the device
   * acknowledged it. ENOTSUP without a control queue; EINVAL for anything else malformed, before
   * the device sees it; EIO when the device answers VIRTIO_NET_ERR (say, VQ_PAIRS_SET above
   * max_virtqueue_pairs); ETIMEDOUT when it does not answer in 5 s, and EIO for every later
   * command until the NIC is opened again (the device still holds the queue's buffers, and a late
   * answer must not pass for another command's); ENODEV when the NIC is closed meanwhile.
   * Commands queue behind each other. The driver sends VQ_PAIRS_SET itself at open; a command
   * that changes what the driver relies on (the pair count, the MAC) is the caller's to undo.
   */
  async control(cls: number, command: number, data: Uint8Array = new Uint8Array(0)): Promise<void> {
    this.checkQueue(0);
    const ctrl = this.ctrl;
    if (!ctrl) throw new UserpciError('ENOTSUP', `${this.name} has no control queue (CTRL_VQ not offered)`);
    if (!(data instanceof Uint8Array) || data.length > CTRL_ACK - 2) throw new InvalidArgumentError(`control command data must be a Uint8Array of at most ${CTRL_ACK - 2} bytes`);
    if (!Number.isInteger(cls) || !Number.isInteger(command) || cls < 0 || cls > 255 || command < 0 || command > 255) {
      throw new InvalidArgumentError(`control class and command are bytes, got ${cls} and ${command}`);
    }
    const run = ctrl.busy.then(() => this.controlNow(ctrl, cls, command, data));
    ctrl.busy = run.catch(() => undefined);
    return run;
  }

  private async controlNow(ctrl: ControlQueue, cls: number, command: number, data: Uint8Array): Promise<void> {
    const { vq, mem, u8 } = ctrl;
    const what = `control command ${cls}.${command}`;
    this.checkQueue(0);
    if (ctrl.stuck) throw new UserpciError('EIO', `${this.name} cannot take ${what}: ${ctrl.stuck}; open it again`);
    u8[0] = cls;
    u8[1] = command;
    u8.set(data, 2);
    u8[CTRL_ACK] = 0xff;
    vq.setDescriptor(0, mem.iova, 2 + data.length, V.DESC_F_NEXT, 1);
    vq.push(0);
    vq.publish();
    vq.kick();
    const deadline = Date.now() + CTRL_TIMEOUT_MS;
    // QEMU answers inside the doorbell write; a device that takes longer is waited for on the event loop.
    for (let spins = 0; vq.usedCount() === 0; spins++) {
      if (Date.now() > deadline) {
        ctrl.stuck = `it did not answer ${what} in ${CTRL_TIMEOUT_MS} ms`;
        throw new UserpciError('ETIMEDOUT', `${this.name} did not answer ${what} in ${CTRL_TIMEOUT_MS} ms`);
      }
      await new Promise((r) => (spins < 100 ? setImmediate(r) : setTimeout(r, 1)));
      // A close meanwhile reset the device and freed the ring: do not look at it again.
      if (this.closedReason || this.transport.device.closed) throw new DeviceGoneError(`${this.closedReason ?? `${this.name} went away`} during ${what}`);
    }
    vq.consume(1);
    const ack = u8[CTRL_ACK]!;
    if (ack !== N.CTRL_OK) throw new UserpciError('EIO', `${this.name} refused ${what} (ack ${ack})`);
  }

  private onConfigChange(): void {
    if (this.closedReason) return;
    const before = this.linkState;
    try {
      this.readConfig();
    } catch {
      return;
    }
    if (this.linkState !== before) this.emit('link', this.linkState);
  }

  // ------------------------------------------------------------------ properties

  get name(): string {
    return this.transport.name;
  }

  get device(): PciDevice {
    return this.transport.device;
  }

  get macString(): string {
    return [...this.mac].map((b) => b.toString(16).padStart(2, '0')).join(':');
  }

  /** Link status as of the last configuration read (always up without the STATUS feature). */
  get linkUp(): boolean {
    return this.linkState;
  }

  /** Largest frame accepted for sending: the MTU plus the Ethernet header (no FCS). */
  get maxFrameSize(): number {
    return Math.min(this.mtu + N.ETH_HEADER, this.tx[0]!.maxFrame);
  }

  get closed(): boolean {
    return this.closedReason !== undefined;
  }

  info(): VirtioNetInfo {
    return {
      address: this.name, mac: this.macString, linkUp: this.linkUp, mtu: this.mtu, maxFrameSize: this.maxFrameSize,
      queuePairs: this.queuePairs, maxQueuePairs: this.maxQueuePairs, controlQueue: this.ctrl !== undefined, queueSize: this.rx[0]?.vq.size ?? 0,
      rxBufferSize: this.rxBufferSize, interrupts: this.interruptMode, ring: this.transport.ringFormat, eventIdx: this.transport.eventIdx,
      offered: V.featureNames(this.offered, N.NET_FEATURE_NAMES), negotiated: V.featureNames(this.features, N.NET_FEATURE_NAMES),
    };
  }

  stats(queue = 0): { rx: QueueStats; tx: QueueStats } {
    this.checkQueue(queue);
    return { rx: { ...this.rx[queue]!.stats }, tx: { ...this.tx[queue]!.stats } };
  }

  /**
   * Diagnostics (allocates; not for per-packet use): both rings of a queue pair as they stand,
   * ours and the device's indices and event words (Virtqueue.ringState).
   */
  ringState(queue = 0): { rx: VirtqueueState; tx: VirtqueueState } {
    this.checkQueue(queue);
    return { rx: this.rx[queue]!.vq.ringState(), tx: this.tx[queue]!.vq.ringState() };
  }

  // ------------------------------------------------------------------ bursts

  /** Receives up to batch.capacity frames into batch slots 0..n-1; returns n (0: nothing yet). */
  rxBurst(queue: number, batch: PacketBatch): number {
    this.checkQueue(queue);
    if (!(batch instanceof PacketBatch)) throw new InvalidArgumentError(`rxBurst takes a PacketBatch, got ${describeValue(batch)}`);
    if (this.listening) throw new UserpciError('EBUSY', `${this.name}: the receive queues are being read by listen()`);
    return this.rx[queue]!.burst(batch);
  }

  /**
   * Sends frames start..start+count-1 of the batch (default: all of it); returns how many the
   * ring took (fewer when it is full: call again). Every frame is checked before any is sent:
   * 14..maxFrameSize bytes (EMSGSIZE above, EINVAL below), checksum requests only with CSUM.
   */
  txBurst(queue: number, batch: PacketBatch, start = 0, count?: number): number {
    this.checkQueue(queue);
    if (!(batch instanceof PacketBatch)) throw new InvalidArgumentError(`txBurst takes a PacketBatch, got ${describeValue(batch)}`);
    if (!Number.isInteger(start)) throw new InvalidArgumentError(`txBurst start must be an integer, got ${describeValue(start)}`);
    count ??= batch.count - start;
    if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 0 || start + count > batch.count) {
      throw new InvalidArgumentError(typeof count === 'number' ? `packets ${start}..${start + count - 1} are not in the batch (count ${batch.count})` : `txBurst count must be an integer, got ${describeValue(count)}`);
    }
    if (count === 0) throw new InvalidArgumentError(`${this.name}: an empty batch was given to send`);
    const max = this.maxFrameSize;
    const csum = this.checksumOffload;
    for (let i = start; i < start + count; i++) {
      const len = batch.lengths[i]!;
      if (len > max || len > batch.slotSize) throw new UserpciError('EMSGSIZE', `${this.name}: packet ${i} is ${len} bytes; the largest frame is ${max}`);
      if (len < N.ETH_HEADER) throw new InvalidArgumentError(`${this.name}: packet ${i} is ${len} bytes, shorter than an Ethernet header`);
      const f = batch.flags[i]!;
      if (f !== 0 && (f !== N.HDR_F_NEEDS_CSUM || !csum || batch.csumStart[i]! + batch.csumOffset[i]! + 2 > len)) {
        throw new InvalidArgumentError(`${this.name}: packet ${i} asks for checksum flags 0x${f.toString(16)}${csum ? ' with a checksum position outside it' : ' but the device took no CSUM offload'}`);
      }
    }
    return this.tx[queue]!.burst(batch, start, count);
  }

  /** Free transmit slots on a queue (frames the device finished are taken back first). */
  txSpace(queue = 0): number {
    this.checkQueue(queue);
    return this.tx[queue]!.space;
  }

  // ------------------------------------------------------------------ events

  /** Sends one frame, waiting (without blocking the event loop) while the ring is full. */
  async send(frame: Uint8Array, queue = 0): Promise<void> {
    this.checkQueue(queue);
    if (!(frame instanceof Uint8Array)) throw new InvalidArgumentError('send() takes a Uint8Array (or Buffer)');
    if (frame.length > this.maxFrameSize) throw new UserpciError('EMSGSIZE', `${this.name}: a ${frame.length}-byte frame; the largest is ${this.maxFrameSize}`);
    const batch = this.sendBatch;
    batch.clear();
    batch.add(frame);
    while (this.txBurst(queue, batch) === 0) {
      await new Promise((r) => setImmediate(r));
      this.checkQueue(queue);
    }
  }

  /**
   * Calls `ready()` on the event loop whenever receive queue `queue` may hold frames, for a
   * caller that takes them itself with rxBurst (a bridge, a poll loop that sleeps when idle):
   * on the queue's MSI-X interrupt, or polling every millisecond without MSI-X. Frames already waiting
   * get one call soon after. Returns the function that stops the calls.
   * With EVENT_IDX the interrupt is asked for again after each call (one per batch): frames that
   * came back meanwhile, which raised none, get another call on the next event-loop turn.
   */
  onReceive(queue: number, ready: () => void): () => void {
    this.checkQueue(queue);
    checkFunction(ready, 'onReceive ready');
    const q = this.rx[queue]!;
    let stopped = false;
    const live = () => !stopped && !this.closedReason;
    let call: () => void;
    let stop: () => void;
    if (this.interruptMode === 'msix') {
      const vector = this.vectors[1 + queue]!;
      call = () => {
        if (!live()) return;
        ready();
        if (live() && !q.vq.armInterrupt()) setImmediate(call);
      };
      const onInterrupt = () => {
        q.stats.interrupts++;
        call();
      };
      vector.on('interrupt', onInterrupt);
      vector.ref();
      q.setInterrupts(true);
      stop = () => {
        if (!this.closedReason) q.setInterrupts(false);
        vector.off('interrupt', onInterrupt);
        vector.unref();
      };
    } else {
      call = () => {
        if (live()) ready();
      };
      // Again at once while frames remain (the caller took a batch's worth), else in a millisecond.
      let timer: NodeJS.Timeout | undefined;
      const poll = () => {
        call();
        // Not once closed: the ring q.ready reads is freed then.
        if (live()) timer = setTimeout(poll, q.ready > 0 ? 0 : 1);
      };
      timer = setTimeout(poll, 1);
      stop = () => clearTimeout(timer);
    }
    // Frames that arrived before raised no interrupt: look once now.
    setImmediate(call);
    return () => {
      if (stopped) return;
      stopped = true;
      stop();
    };
  }

  /**
   * Emit 'frame' (a Buffer of its own, and the queue) for every frame received on any receive
   * queue, until stopListening(). Wakes on each queue's MSI-X interrupt, or polls without MSI-X.
   */
  listen(): void {
    this.checkQueue(0);
    if (this.listening) return;
    // One batch for every queue: each drain runs to its end on the event loop before another starts.
    const batch = new PacketBatch(64, 65536 - 16);
    const stops = this.rx.map((q, queue) => this.onReceive(queue, () => {
      for (let n = q.burst(batch); n > 0; n = q.burst(batch)) {
        for (let i = 0; i < n; i++) this.emit('frame', Buffer.from(batch.data.subarray(batch.offset(i), batch.offset(i) + batch.lengths[i]!)), queue);
        if (!this.listening) break;
      }
    }));
    this.listening = { batch, stop: () => stops.forEach((stop) => stop()) };
  }

  stopListening(): void {
    const l = this.listening;
    this.listening = undefined;
    l?.stop();
  }

  // ------------------------------------------------------------------ teardown

  /** Stops the device (reset: it lets go of every buffer), then frees our memory and, if we opened it, the device. */
  async close(): Promise<void> {
    if (this.closedReason && this.transport.device.closed) return;
    this.closedReason ??= `${this.name} is closed`;
    this.stopListening();
    this.transport.device.off('removed', this.onRemoved);
    await this.transport.shutdown();
    this.freeSlots();
    if (this.ownsDevice) this.transport.device.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  private async abandon(): Promise<void> {
    this.closedReason ??= `${this.name} failed to start`;
    this.stopListening();
    this.transport.device.off('removed', this.onRemoved);
    this.transport.fail();
    await this.transport.shutdown();
    this.freeSlots();
  }

  private freeSlots(): void {
    if (this.interruptMode === 'msix' && !this.transport.device.closed) {
      try {
        this.transport.device.disableInterrupts();
      } catch {
        // Gone.
      }
    }
    for (const m of this.slotMemory.splice(0)) if (!m.freed) m.free();
  }

  private checkQueue(queue: number): void {
    if (this.closedReason) throw new DeviceGoneError(this.closedReason);
    if (this.transport.device.closed) throw new DeviceGoneError(`${this.name} is closed`);
    if (!(queue >= 0 && queue < this.queuePairs && Number.isInteger(queue))) {
      throw new InvalidArgumentError(`${this.name} has queue pairs 0..${this.queuePairs - 1}, not ${String(queue)}`);
    }
  }
}
