/**
 * The contract between a device model written in TypeScript and the vfio-user server that
 * serves it. A model describes its config space and BARs and reacts to register accesses; the
 * server gives it a DeviceContext to raise interrupts and reach the client's memory.
 */
import type { ConfigSpace } from './config-space';

/** Trapped register access. `data.length` is the access width the client used (1, 2, 4, 8, ...). */
export interface BarHandlers {
  /** Fill `data` with what the device returns at `offset`. */
  read(offset: number, data: Uint8Array): void;
  write(offset: number, data: Uint8Array): void;
}

export interface SharedArea {
  offset: number;
  size: number;
}

/** BAR memory the client may map directly (memfd-backed); the rest of the BAR stays trapped. */
export interface SharedBarMemory {
  /** The memfd (or other mappable file) holding the BAR's memory; the model keeps it open. */
  fd: number;
  /** Offset of BAR offset 0 in the fd. */
  fdOffset?: number;
  /** The server's own mapping of the same memory, BAR-sized, for accesses that arrive as messages. */
  memory: ArrayBuffer;
  /** Parts the client may mmap (page-aligned); the whole BAR when omitted. */
  areas?: SharedArea[];
}

export interface BarDefinition {
  handlers?: BarHandlers;
  shared?: SharedBarMemory;
}

export interface DeviceIrq {
  /** The client enabled MSI (the enable bit in the MSI capability). */
  readonly msiEnabled: boolean;
  readonly msixEnabled: boolean;
  /** Signal MSI or MSI-X vector `vector` (whichever is enabled); masked vectors become pending. */
  notify(vector: number): void;
  /** Drive the INTx line (level-triggered). */
  setIntx(asserted: boolean): void;
  readonly intxAsserted: boolean;
}

export interface DeviceDma {
  /** Read client memory at a bus address. Rejects with EFAULT outside the client's DMA maps. */
  read(iova: number, length: number): Promise<Uint8Array>;
  write(iova: number, data: Uint8Array): Promise<void>;
}

export interface DeviceContext {
  readonly irq: DeviceIrq;
  readonly dma: DeviceDma;
  /** A client is connected (DMA and interrupts reach nobody otherwise). */
  readonly clientConnected: boolean;
  log(message: string): void;
}

export interface DeviceModel {
  readonly name: string;
  readonly config: ConfigSpace;
  /** BAR index -> its behaviour; the layout (size, type) is declared in config.setBar. */
  readonly bars: ReadonlyMap<number, BarDefinition>;
  /** Called once by the server before any client is served. */
  attach(context: DeviceContext): void;
  /** VFIO_USER_DEVICE_RESET (config space is reset by the server). */
  reset(): void;
  /** The server is shutting down for good: stop timers, release memory. */
  dispose?(): void;
}
