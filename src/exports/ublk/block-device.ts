/**
 * What a ublk device serves: any BlockDevice (the NBD export's interface), plus optional
 * zero-copy hooks a device may offer.
 */
import type { BlockDevice } from '../nbd/block-device';

export type { BlockDevice };

export interface UblkBlockDevice extends BlockDevice {
  /**
   * Memory the device transfers to and from without a copy of its own (DMA buffers): each tag's
   * I/O buffer comes from here, so the kernel's copy of the request data is the only one.
   */
  allocIoBuffer?(size: number): Uint8Array;
  freeIoBuffer?(buffer: Uint8Array): void;
  /** Read into `target` (preferred over read(), which returns new memory). */
  readInto?(offset: number, target: Uint8Array): Promise<void>;
  /** Writes are cached until flushed (announced to the kernel: flushes and FUA are sent). */
  readonly volatileCache?: boolean;
}
