/**
 * What a ublk device serves: any BlockDevice (the NBD export's interface), plus optional
 * zero-copy hooks a device may offer.
 */
import type { BlockDevice } from '../nbd/block-device';

export type { BlockDevice };

/** The end of one request on the callback path: its error, or null (an NVMe CompletionCallback fits). */
export type UblkIoDone = (error: Error | null) => void;

export interface UblkBlockDevice extends BlockDevice {
  /**
   * Memory the device transfers to and from without a copy of its own (DMA buffers): each tag's
   * I/O buffer comes from here, so the kernel's copy of the request data is the only one.
   */
  allocIoBuffer?(size: number): Uint8Array;
  freeIoBuffer?(buffer: Uint8Array): void;
  /** Read into `target` (preferred over read(), which returns new memory). */
  readInto?(offset: number, target: Uint8Array): Promise<void>;
  /**
   * The callback path, no promise and no allocation per request: a number standing for one of
   * the buffers allocIoBuffer gave (asked once per tag, e.g. its IOVA)...
   */
  ioBufferHandle?(buffer: Uint8Array): number;
  /**
   * ...and a request on it: `op` is a UBLK_IO_OP_*, offset and length in bytes (whole logical
   * blocks, as the kernel sends them). Returns false to leave the request to the promise
   * methods (an op it does not take this way); otherwise `done` is called exactly once.
   */
  startIo?(op: number, offset: number, length: number, fua: boolean, handle: number, done: UblkIoDone): boolean;
  /**
   * Hold the device's doorbell: requests started until the matching unplug() go to the device
   * together (one NVMe SQ doorbell for all the requests of one io_uring drain). Nests.
   */
  plug?(): void;
  unplug?(): void;
  /** Writes are cached until flushed (announced to the kernel: flushes and FUA are sent). */
  readonly volatileCache?: boolean;
}
