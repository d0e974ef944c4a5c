/**
 * One device's view of DMA: coherent buffers it allocates and streaming maps of memory the
 * caller already has, each at an IOVA the device can reach, each mapped in the IOMMU with the
 * direction asked for. It owns every mapping so that close() can take them all down.
 */
import { inspect } from 'node:util';
import { native, constants } from '../native/index';
import { DeviceGoneError, InvalidArgumentError, UserpciError, wrapSystemError } from '../errors';
import type { Backend } from '../device/backend';
import { IovaAllocator, alignUp } from './iova-allocator';
import { allocateDmaMemory, releaseDmaMemory, memlockHint, type DmaMemory, type HugePagePolicy } from './dma-memory';

export type DmaDirection = 'to-device' | 'from-device' | 'bidirectional';

export interface DmaSegment {
  iova: number;
  length: number;
}

export interface DmaAllocOptions {
  /** 'auto' (default): 2 MiB hugepages for sizes from 2 MiB when the system has free ones. */
  hugePages?: HugePagePolicy;
}

/** Coherent DMA memory: the process sees it in `buffer`, the device at `iova`. */
export class DmaBuffer implements Disposable {
  /** Made by `device.allocDma()`. */
  constructor(
    private readonly space: DmaSpace,
    private memory: DmaMemory | undefined,
    readonly iova: number,
    readonly size: number,
  ) {}

  /** The memory; views over it detach when the buffer is freed. */
  get buffer(): ArrayBuffer {
    if (!this.memory) throw new DeviceGoneError('DMA buffer was freed', 'EBADF');
    return this.memory.buffer;
  }

  /** The memfd behind the memory (to share it with another process). */
  get fd(): number {
    if (!this.memory) throw new DeviceGoneError('DMA buffer was freed', 'EBADF');
    return this.memory.fd;
  }

  get freed(): boolean {
    return this.memory === undefined;
  }

  /** IOVA of a byte offset inside the buffer. */
  iovaAt(offset: number): number {
    if (offset < 0 || offset > this.size) throw new InvalidArgumentError(`offset ${offset} is outside the ${this.size}-byte DMA buffer`);
    return this.iova + offset;
  }

  free(): void {
    if (!this.memory) throw new InvalidArgumentError(`DMA buffer at IOVA 0x${this.iova.toString(16)} was already freed`);
    this.space.freeBuffer(this);
  }

  /** `using buf = device.allocDma(n)`: freed at the end of the scope unless already freed. */
  [Symbol.dispose](): void {
    if (this.memory) this.free();
  }

  /** What a user needs to see: where the device sees it, how big, whether it is still there. */
  [inspect.custom](): string {
    return `DmaBuffer { iova: 0x${this.iova.toString(16)}, size: ${this.size}, freed: ${this.freed} }`;
  }

  /** @internal */
  takeMemory(): DmaMemory {
    const m = this.memory!;
    this.memory = undefined;
    return m;
  }
}

/** A streaming map of memory the caller already has, with its scatter list (`segments`). */
export class DmaMapping implements Disposable {
  private active = true;
  /** Made by `device.mapDma()`. */
  constructor(
    private readonly space: DmaSpace,
    /** Holding the view keeps its memory from being collected while the device may use it. */
    readonly view: Uint8Array,
    readonly direction: DmaDirection,
    readonly segments: readonly DmaSegment[],
    /** The IOMMU mapping: whole pages around `segments`. */
    readonly pageIova: number,
    readonly pageSize: number,
  ) {}

  get mapped(): boolean {
    return this.active;
  }

  get iova(): number {
    return this.segments[0]!.iova;
  }

  unmap(): void {
    this.space.unmap(this);
  }

  /** `using map = device.mapDma(...)`: unmapped at the end of the scope unless already unmapped. */
  [Symbol.dispose](): void {
    if (this.active) this.unmap();
  }

  [inspect.custom](): string {
    const segments = this.segments.map((s) => `{ iova: 0x${s.iova.toString(16)}, length: ${s.length} }`).join(', ');
    return `DmaMapping { direction: '${this.direction}', segments: [ ${segments} ], mapped: ${this.active} }`;
  }

  /** @internal */
  markUnmapped(): boolean {
    const was = this.active;
    this.active = false;
    return was;
  }
}

function toBytes(memory: ArrayBuffer | ArrayBufferView): Uint8Array {
  if (memory instanceof ArrayBuffer) return new Uint8Array(memory);
  if (ArrayBuffer.isView(memory)) return new Uint8Array(memory.buffer, memory.byteOffset, memory.byteLength);
  throw new InvalidArgumentError('DMA memory must be an ArrayBuffer or a typed array/DataView');
}

/** One allocator per IOMMU domain (VFIO container or vfio-user connection). */
const allocators = new WeakMap<object, IovaAllocator>();

export class DmaSpace {
  private readonly buffers = new Set<DmaBuffer>();
  private readonly mappings = new Set<DmaMapping>();
  private readonly allocator: IovaAllocator;
  private closed: string | undefined;

  constructor(
    private readonly backend: Backend,
    /** Highest IOVA the device can reach (its DMA mask), inclusive. */
    readonly limit: number,
  ) {
    const aperture = backend.iommuAperture();
    let allocator = allocators.get(aperture.domain);
    if (!allocator) {
      allocator = new IovaAllocator(aperture.ranges, Math.max(aperture.pageSize, constants.PAGE_SIZE));
      allocators.set(aperture.domain, allocator);
    }
    this.allocator = allocator;
  }

  get liveBuffers(): number {
    return this.buffers.size;
  }

  get liveMappings(): number {
    return this.mappings.size;
  }

  allocate(size: number, options: DmaAllocOptions = {}): DmaBuffer {
    this.checkOpen();
    if (!Number.isSafeInteger(size) || size <= 0) throw new InvalidArgumentError(`DMA buffer size must be a positive integer, got ${size}`);
    if (size > this.limit + 1) throw new UserpciError('ENOMEM', `a ${size}-byte DMA buffer cannot fit below the DMA limit 0x${this.limit.toString(16)}`);
    const memory = allocateDmaMemory(size, options.hugePages);
    let iova: number;
    try {
      iova = this.allocator.allocate(memory.size, memory.pageSize, this.limit);
    } catch (err) {
      releaseDmaMemory(memory);
      throw err;
    }
    try {
      this.backend.dmaMap({
        iova, size: memory.size, vaddr: native.addressOf(memory.buffer), memory: new Uint8Array(memory.buffer), memoryIova: iova,
        fd: memory.fd, fdOffset: 0, deviceReads: true, deviceWrites: true,
      });
    } catch (err) {
      this.allocator.release(iova);
      releaseDmaMemory(memory);
      throw this.mapError(err, memory.size);
    }
    const buffer = new DmaBuffer(this, memory, iova, memory.size);
    this.buffers.add(buffer);
    return buffer;
  }

  /** @internal via DmaBuffer.free */
  freeBuffer(buffer: DmaBuffer): void {
    if (!this.buffers.delete(buffer)) throw new InvalidArgumentError('this DMA buffer belongs to another device');
    const memory = buffer.takeMemory();
    try {
      this.backend.dmaUnmap(buffer.iova, buffer.size);
    } finally {
      this.allocator.release(buffer.iova);
      releaseDmaMemory(memory);
    }
  }

  map(memory: ArrayBuffer | ArrayBufferView, direction: DmaDirection): DmaMapping {
    this.checkOpen();
    if (direction !== 'to-device' && direction !== 'from-device' && direction !== 'bidirectional') {
      throw new InvalidArgumentError(`DMA direction must be 'to-device', 'from-device' or 'bidirectional', got ${String(direction)}`);
    }
    const view = toBytes(memory);
    if (view.byteLength === 0) throw new InvalidArgumentError('cannot map an empty buffer for DMA');
    const page = this.allocator.granule;
    const address = native.addressOf(view);
    const vaddr = Math.floor(address / page) * page;
    const size = alignUp(address + view.byteLength, page) - vaddr;
    const pageIova = this.allocator.allocate(size, page, this.limit);
    const firstByteIova = pageIova + (address - vaddr);
    try {
      this.backend.dmaMap({
        iova: pageIova, size, vaddr, memory: view, memoryIova: firstByteIova,
        deviceReads: direction !== 'from-device', deviceWrites: direction !== 'to-device',
      });
    } catch (err) {
      this.allocator.release(pageIova);
      throw this.mapError(err, size);
    }
    const mapping = new DmaMapping(this, view, direction, Object.freeze([{ iova: firstByteIova, length: view.byteLength }]), pageIova, size);
    this.mappings.add(mapping);
    return mapping;
  }

  unmap(mapping: DmaMapping): void {
    if (!(mapping instanceof DmaMapping)) throw new InvalidArgumentError('not a DMA mapping');
    if (!this.mappings.has(mapping)) {
      if (!mapping.mapped) throw new InvalidArgumentError(`DMA mapping at IOVA 0x${mapping.iova.toString(16)} was already unmapped`);
      throw new InvalidArgumentError('this DMA mapping belongs to another device');
    }
    this.mappings.delete(mapping);
    mapping.markUnmapped();
    try {
      this.backend.dmaUnmap(mapping.pageIova, mapping.pageSize);
    } finally {
      this.allocator.release(mapping.pageIova);
    }
  }

  /** Take every mapping down (the device must already be stopped from mastering the bus). */
  releaseAll(reason: string, unmapInIommu = true): void {
    for (const m of [...this.mappings]) {
      this.mappings.delete(m);
      m.markUnmapped();
      if (unmapInIommu) ignore(() => this.backend.dmaUnmap(m.pageIova, m.pageSize));
    }
    for (const b of [...this.buffers]) {
      this.buffers.delete(b);
      const memory = b.takeMemory();
      if (unmapInIommu) ignore(() => this.backend.dmaUnmap(b.iova, b.size));
      releaseDmaMemory(memory);
    }
    this.closed = reason;
  }

  private checkOpen(): void {
    if (this.closed) throw new DeviceGoneError(this.closed);
  }

  private mapError(err: unknown, size: number): UserpciError {
    const e = wrapSystemError(err, `mapping ${size} bytes for DMA`);
    if (e.code === 'ENOMEM') return new UserpciError('ENOMEM', `${e.message}: ${memlockHint()}`, { cause: err });
    return e;
  }
}

function ignore(fn: () => void): void {
  try {
    fn();
  } catch {
    // Teardown goes on: the kernel drops whatever is left when the container closes.
  }
}
