/**
 * The device's half of virtqueue notifications as QEMU 7.2 does them (hw/virtio/virtio.c,
 * hw/net/virtio-net.c), split or packed, with or without EVENT_IDX, for tests that interleave it
 * with our driver at every point: each access to ring memory is a step of its own (the
 * generators yield after each), and a scheduler runs the driver between any two.
 *
 *   ring      pop/push/empty, set_notification (avail_event, or NO_NOTIFY, or the packed device
 *             event structure), should_notify (used_event, NO_INTERRUPT, or the packed driver
 *             event structure), each as QEMU words them, signalled_used bookkeeping included;
 *   TxDevice  virtio-net's transmit bottom half: a doorbell disables notifications and schedules
 *             it; it flushes (up to a burst), re-enables notifications and flushes again, and
 *             reschedules itself if it found more;
 *   RxDevice  frames arriving: has_buffers (re-enable and look again when the ring is empty, else
 *             disable), pop, push, interrupt; a frame finding no buffer is queued, and every
 *             frame after it (receive_disabled), until the driver's next receive doorbell.
 *
 * The device model takes QEMU's big lock for each task: a doorbell (the driver's MMIO write)
 * waits for the task running to finish. Its memory accesses are sequentially consistent (QEMU
 * puts smp_mb where the protocol needs one); the driver's are whatever the test makes them.
 */
import { needEvent, splitQueueLayout } from '../../src/drivers/virtio/split-queue';
import { packedQueueLayout } from '../../src/drivers/virtio/packed-queue';
import {
  AVAIL_F_NO_INTERRUPT, PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED, RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_ENABLE, USED_F_NO_NOTIFY,
} from '../../src/drivers/virtio/constants';

type Steps<T> = Generator<void, T, void>;

export interface RingDevice {
  /** Nothing available (QEMU's virtio_queue_empty: the shadow index first, then memory). */
  empty(): Steps<boolean>;
  /** The next available buffer id, or -1 when none. */
  pop(): Steps<number>;
  /** Return a buffer with `len` bytes written. */
  push(id: number, len: number): Steps<void>;
  setNotification(enable: boolean): Steps<void>;
  shouldNotify(): Steps<boolean>;
  /** Buffers taken so far (monotonic). */
  readonly taken: number;
}

export class SplitRingDevice implements RingDevice {
  private readonly dv: DataView;
  private readonly avail: number;
  private readonly used: number;
  private lastAvail = 0;
  private shadowAvail = 0;
  private usedIdx = 0;
  private signalledUsed = 0;
  private signalledValid = false;
  private notification = true;
  taken = 0;

  constructor(memory: ArrayBuffer, private readonly size: number, private readonly eventIdx: boolean) {
    const l = splitQueueLayout(size);
    this.dv = new DataView(memory);
    this.avail = l.availOffset;
    this.used = l.usedOffset;
  }

  private *availIdx(): Steps<number> {
    const v = this.dv.getUint16(this.avail + 2, true);
    this.shadowAvail = v;
    yield;
    return v;
  }

  *empty(): Steps<boolean> {
    if (this.shadowAvail !== this.lastAvail) return false;
    return (yield* this.availIdx()) === this.lastAvail;
  }

  private *setAvailEvent(v: number): Steps<void> {
    if (!this.notification) return;
    this.dv.setUint16(this.used + 4 + 8 * this.size, v, true);
    yield;
  }

  *setNotification(enable: boolean): Steps<void> {
    this.notification = enable;
    if (this.eventIdx) {
      yield* this.setAvailEvent(yield* this.availIdx());
    } else {
      const f = this.dv.getUint16(this.used, true);
      yield;
      this.dv.setUint16(this.used, enable ? f & ~USED_F_NO_NOTIFY : f | USED_F_NO_NOTIFY, true);
      yield;
    }
  }

  *pop(): Steps<number> {
    if (yield* this.empty()) return -1;
    const head = this.dv.getUint16(this.avail + 4 + 2 * (this.lastAvail % this.size), true);
    yield;
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    this.taken++;
    if (this.eventIdx) yield* this.setAvailEvent(this.lastAvail);
    return head;
  }

  *push(id: number, len: number): Steps<void> {
    const o = this.used + 4 + 8 * (this.usedIdx % this.size);
    this.dv.setUint32(o, id, true);
    this.dv.setUint32(o + 4, len, true);
    yield;
    const old = this.usedIdx;
    this.usedIdx = (old + 1) & 0xffff;
    this.dv.setUint16(this.used + 2, this.usedIdx, true);
    yield;
    // virtqueue_split_flush: an event index this flush jumped over cannot be trusted.
    if (((this.usedIdx - this.signalledUsed) << 16 >> 16) < ((this.usedIdx - old) & 0xffff)) this.signalledValid = false;
  }

  *shouldNotify(): Steps<boolean> {
    if (!this.eventIdx) {
      const f = this.dv.getUint16(this.avail, true);
      yield;
      return (f & AVAIL_F_NO_INTERRUPT) === 0;
    }
    const usedEvent = this.dv.getUint16(this.avail + 4 + 2 * this.size, true);
    yield;
    const v = this.signalledValid;
    this.signalledValid = true;
    const old = this.signalledUsed;
    this.signalledUsed = this.usedIdx;
    return !v || needEvent(usedEvent, this.usedIdx, old);
  }
}

const BOTH = PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED;

export class PackedRingDevice implements RingDevice {
  private readonly dv: DataView;
  private readonly driverArea: number;
  private readonly deviceArea: number;
  private lastAvail = 0;
  private lastWrap = 1;
  private shadowAvail = 0;
  private shadowWrap = 1;
  private usedIdx = 0;
  private usedWrap = 1;
  private signalledUsed = 0;
  private signalledValid = false;
  taken = 0;

  constructor(memory: ArrayBuffer, private readonly size: number, private readonly eventIdx: boolean) {
    const l = packedQueueLayout(size);
    this.dv = new DataView(memory);
    this.driverArea = l.driverOffset;
    this.deviceArea = l.deviceOffset;
  }

  *empty(): Steps<boolean> {
    const f = this.dv.getUint16(16 * this.lastAvail + 14, true);
    yield;
    const avail = (f & PACKED_DESC_F_AVAIL) !== 0;
    const used = (f & PACKED_DESC_F_USED) !== 0;
    return !(avail !== used && avail === (this.lastWrap === 1));
  }

  *pop(): Steps<number> {
    if (yield* this.empty()) return -1;
    const id = this.dv.getUint16(16 * this.lastAvail + 12, true);
    yield;
    if (++this.lastAvail === this.size) {
      this.lastAvail = 0;
      this.lastWrap ^= 1;
    }
    this.shadowAvail = this.lastAvail;
    this.shadowWrap = this.lastWrap;
    this.taken++;
    return id;
  }

  *push(id: number, len: number): Steps<void> {
    const o = 16 * this.usedIdx;
    this.dv.setUint16(o + 12, id, true);
    this.dv.setUint32(o + 8, len, true);
    yield;
    this.dv.setUint16(o + 14, this.usedWrap ? BOTH : 0, true);
    yield;
    if (++this.usedIdx === this.size) {
      this.usedIdx = 0;
      this.usedWrap ^= 1;
    }
  }

  *setNotification(enable: boolean): Steps<void> {
    if (!enable) {
      this.dv.setUint16(this.deviceArea + 2, RING_EVENT_FLAGS_DISABLE, true);
    } else if (this.eventIdx) {
      this.dv.setUint16(this.deviceArea, this.shadowAvail | (this.shadowWrap << 15), true);
      yield;
      this.dv.setUint16(this.deviceArea + 2, RING_EVENT_FLAGS_DESC, true);
    } else {
      this.dv.setUint16(this.deviceArea + 2, RING_EVENT_FLAGS_ENABLE, true);
    }
    yield;
  }

  *shouldNotify(): Steps<boolean> {
    const flags = this.dv.getUint16(this.driverArea + 2, true);
    yield;
    const offWrap = this.dv.getUint16(this.driverArea, true);
    yield;
    const old = this.signalledUsed;
    const now = (this.signalledUsed = this.usedIdx);
    const v = this.signalledValid;
    this.signalledValid = true;
    if (flags === RING_EVENT_FLAGS_DISABLE) return false;
    if (flags === RING_EVENT_FLAGS_ENABLE) return true;
    let off = offWrap & 0x7fff;
    if (this.usedWrap !== offWrap >> 15) off -= this.size;
    return !v || needEvent(off & 0xffff, now, old);
  }
}

/** One task at a time under the big lock; step() runs one memory access of it. */
abstract class Device {
  private current: Steps<unknown> | undefined;
  constructor(readonly ring: RingDevice) {}
  /** The next task to start, if any. */
  protected abstract next(): Steps<unknown> | undefined;
  /** One step; false when there was nothing to do. */
  step(): boolean {
    this.current ??= this.next();
    if (!this.current) return false;
    if (this.current.next().done) this.current = undefined;
    return true;
  }
  /** The running task to its end (a doorbell waits for the big lock). */
  protected finish(): void {
    while (this.current && !this.current.next().done);
    this.current = undefined;
  }
  /** Run a task start to end now (inside a doorbell, under the big lock). */
  protected runNow(task: Steps<unknown>): void {
    while (!task.next().done);
  }
  /** Everything to its end, no new work: what a driver waiting for nothing leaves behind. */
  settle(): void {
    while (this.step());
  }
}

export class TxDevice extends Device {
  private txWaiting = false;
  private bhScheduled = false;
  interrupts = 0;
  doorbells = 0;
  constructor(ring: RingDevice, private readonly burst = 3) {
    super(ring);
  }
  /** virtio_net_handle_tx_bh, from the driver's doorbell. */
  doorbell(): void {
    this.doorbells++;
    this.finish();
    if (this.txWaiting) return;
    this.txWaiting = true;
    this.runNow(this.ring.setNotification(false));
    this.bhScheduled = true;
  }
  protected next(): Steps<unknown> | undefined {
    if (!this.bhScheduled) return undefined;
    this.bhScheduled = false;
    return this.bh();
  }
  private *flush(): Steps<number> {
    let n = 0;
    while (n < this.burst) {
      const id = yield* this.ring.pop();
      if (id < 0) break;
      yield* this.ring.push(id, 0);
      if (yield* this.ring.shouldNotify()) this.interrupts++;
      n++;
    }
    return n;
  }
  /** virtio_net_tx_bh */
  private *bh(): Steps<void> {
    this.txWaiting = false;
    if ((yield* this.flush()) >= this.burst) {
      this.txWaiting = true;
      this.bhScheduled = true;
      return;
    }
    yield* this.ring.setNotification(true);
    if ((yield* this.flush()) > 0) {
      yield* this.ring.setNotification(false);
      this.txWaiting = true;
      this.bhScheduled = true;
    }
  }
}

export class RxDevice extends Device {
  /** Frames still to arrive (a test sets it), frames waiting for buffers, frames written. */
  arrivals = 0;
  queued = 0;
  delivered = 0;
  /** Interrupts raised and not yet taken by the driver (MSI-X: each one an eventfd count). */
  interrupts = 0;
  doorbells = 0;
  constructor(ring: RingDevice, private readonly frameLength = 72) {
    super(ring);
  }
  /** virtio_net_handle_rx: the driver posted buffers; frames waiting for them go now. */
  doorbell(): void {
    this.doorbells++;
    this.finish();
    for (let n = this.queued; n > 0 && this.queued > 0; n--) {
      this.queued--;
      this.runNow(this.receive());
    }
  }
  protected next(): Steps<unknown> | undefined {
    // receive_disabled: once a frame waits, the ones behind it queue without asking the ring.
    if (this.queued > 0) {
      this.queued += this.arrivals;
      this.arrivals = 0;
    }
    if (this.arrivals === 0) return undefined;
    this.arrivals--;
    return this.receive();
  }
  private *hasBuffers(): Steps<boolean> {
    if (yield* this.ring.empty()) {
      yield* this.ring.setNotification(true);
      if (yield* this.ring.empty()) return false;
    }
    yield* this.ring.setNotification(false);
    return true;
  }
  private *receive(): Steps<void> {
    if (!(yield* this.hasBuffers())) {
      this.queued++;
      return;
    }
    const id = yield* this.ring.pop();
    if (id < 0) throw new Error('has_buffers said yes, pop found none');
    yield* this.ring.push(id, this.frameLength);
    this.delivered++;
    if (yield* this.ring.shouldNotify()) this.interrupts++;
  }
}
