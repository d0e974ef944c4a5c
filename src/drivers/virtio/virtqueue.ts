/**
 * What a virtio driver does with a virtqueue, whichever ring format carries it: split
 * (`split-queue.ts`, spec 2.7) or packed (`packed-queue.ts`, spec 2.8). Descriptors are named by
 * a driver-chosen id below the queue size; a chain is offered by its head id and comes back with
 * it. Nothing here allocates: drivers call these per packet.
 */
export interface Virtqueue {
  readonly index: number;
  /** Entries in the ring: at most this many descriptors are with the device at once. */
  readonly size: number;
  /** Ring format, for information. */
  readonly format: 'split' | 'packed';

  /** Describe descriptor `id` (DESC_F_WRITE, DESC_F_NEXT with `next`); the device sees it only once offered. */
  setDescriptor(id: number, iova: number, length: number, flags: number, next?: number): void;
  /** Change only the length of descriptor `id`. */
  setLength(id: number, length: number): void;
  /** Offer the chain starting at descriptor `head`; the device sees it after publish(). */
  push(head: number): void;
  /** Make everything pushed since the last publish visible to the device at once. */
  publish(): void;
  /** Ring the doorbell unless the device said it needs none; true if rung. */
  kick(): boolean;

  /** Chains the device has returned that we have not consumed. */
  usedCount(): number;
  /** Head id of the k-th unconsumed returned chain (k < usedCount()). */
  usedId(k: number): number;
  /** Bytes the device wrote into the k-th unconsumed chain's buffers. */
  usedLength(k: number): number;
  /** Done with the first n returned chains. */
  consume(n: number): void;
  /** Chains offered and not yet returned. */
  readonly outstanding: number;

  /** Ask the device for an interrupt when it returns chains (or not: polling). */
  setInterrupts(on: boolean): void;
  /**
   * With interrupts on, after taking what came back: ask for one interrupt for the next returned
   * chain. With EVENT_IDX the device raises one and then none until the next arm (one per batch);
   * false means chains came back meanwhile that raised none: take them, then arm again.
   * Without EVENT_IDX every returned chain may interrupt: always true.
   */
  armInterrupt(): boolean;
  /** RING_EVENT_IDX negotiated: doorbells and interrupts follow event indices (offsets for packed rings). */
  readonly eventIdx: boolean;
  /**
   * Diagnostics, not for hot paths (it allocates): where each side stands right now, so a stalled
   * exchange shows whether the device holds entries we were not told of or we published without
   * a doorbell. Split: indices modulo 2^16; packed: ring positions with the wrap counter in bit 15.
   */
  ringState(): VirtqueueState;
}

export interface VirtqueueState {
  format: 'split' | 'packed';
  /** Published to the device (split avail.idx; packed: next position and wrap bit). */
  published: number;
  /** Split: avail.idx at the last kick(); packed: positions published since it. */
  kicked: number;
  /** Split: the device's used.idx; packed: used chains the device has written that we have not read yet (read now). */
  deviceUsed: number;
  /** Split: used entries consumed; packed: next used position we read, with our wrap bit. */
  consumed: number;
  /** The device's event word: split avail_event, packed desc | flags << 16. */
  deviceEvent: number;
  /** Ours: split used_event | avail.flags << 16; packed desc | flags << 16. */
  driverEvent: number;
  /** Split: used.flags (NO_NOTIFY); packed: 0. */
  deviceFlags: number;
  /** Chains offered and not yet returned. */
  outstanding: number;
}
