/**
 * One device's view of DMA: coherent buffers it allocates and streaming maps of memory the
 * caller already has, each at an IOVA the device can reach, each mapped in the IOMMU with the
 * direction asked for. It owns every mapping so that close() can take them all down.
 */
import { randomInt } from 'node:crypto';
import { inspect } from 'node:util';
import { markAsUntransferable } from 'node:worker_threads';
import { native, constants } from '../native/index';
import { describeValue } from '../arguments';
import { DeviceGoneError, InvalidArgumentError, UserpciError, isSystemError, wrapSystemError } from '../errors';
import type { Backend } from '../device/backend';
import { IovaAllocator } from './iova-allocator';
import { allocateDmaMemory, checkDmaMemoryFits, memfdOf, checkHugePagePolicy, memlockError, releaseDmaMemory, type DmaMemory, type HugePagePolicy, type Memfd } from './dma-memory';

/** linux/mman.h (asm-generic, so x86-64 and arm64 alike); Linux 5.14 and later. */
const MADV_POPULATE_WRITE = 23;

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
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > this.size) throw new InvalidArgumentError(`offset ${offset} is outside the ${this.size}-byte DMA buffer`);
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
  /** @internal Its index in its space's list of live mappings; -1 once unmapped. */
  slot = -1;
  private segmentList: readonly DmaSegment[] | undefined;
  /** Made by `device.mapDma()`. */
  constructor(
    private readonly space: DmaSpace,
    /** Holding the view keeps its memory from being collected while the device may use it. */
    readonly view: Uint8Array,
    readonly direction: DmaDirection,
    /** IOVA of the view's first byte. */
    readonly iova: number,
    private readonly length: number,
    /** The IOMMU mapping: whole pages around `segments`. */
    readonly pageIova: number,
    readonly pageSize: number,
  ) {}

  /** One segment (the bytes are contiguous in IOVA space), made on first use: a map on a hot path needs only `iova`. */
  get segments(): readonly DmaSegment[] {
    return (this.segmentList ??= Object.freeze([{ iova: this.iova, length: this.length }]));
  }

  get mapped(): boolean {
    return this.slot >= 0;
  }

  unmap(): void {
    this.space.unmap(this);
  }

  /** `using map = device.mapDma(...)`: unmapped at the end of the scope unless already unmapped. */
  [Symbol.dispose](): void {
    if (this.slot >= 0) this.unmap();
  }

  [inspect.custom](): string {
    const segments = this.segments.map((s) => `{ iova: 0x${s.iova.toString(16)}, length: ${s.length} }`).join(', ');
    return `DmaMapping { direction: '${this.direction}', segments: [ ${segments} ], mapped: ${this.mapped} }`;
  }
}

/** What memory a streaming map accepts: see "Which JS memory can be mapped" in docs/ARCHITECTURE.md. */
export type DmaMappable = ArrayBuffer | SharedArrayBuffer | ArrayBufferView;

/**
 * The bytes of memory the caller wants mapped, refusing memory whose backing can change under a
 * mapping: a resizable ArrayBuffer or growable SharedArrayBuffer (shrinking releases the pages
 * the device would keep using; growing may move nothing but leaves the map short) and a
 * detached buffer (its memory belongs to someone else now, who may free it).
 */
function toBytes(memory: DmaMappable): Uint8Array {
  let buffer: ArrayBufferLike;
  let offset = 0;
  let length: number | undefined;
  if (memory instanceof ArrayBuffer || memory instanceof SharedArrayBuffer) buffer = memory;
  else if (ArrayBuffer.isView(memory)) {
    buffer = memory.buffer;
    offset = memory.byteOffset;
    length = memory.byteLength;
  } else {
    throw new InvalidArgumentError(`DMA memory must be an ArrayBuffer, a SharedArrayBuffer or a typed array/DataView, got ${describeValue(memory)}`);
  }
  const b = buffer as ArrayBufferLike & { resizable?: boolean; growable?: boolean };
  if (b.resizable === true || b.growable === true) {
    throw new InvalidArgumentError(`cannot map a ${b.resizable ? 'resizable ArrayBuffer' : 'growable SharedArrayBuffer'} for DMA: resizing it would leave the device with pages the process no longer sees; use a fixed-size buffer`);
  }
  try {
    return length === undefined ? new Uint8Array(buffer) : new Uint8Array(buffer, offset, length);
  } catch (err) {
    // The only way constructing a view over a valid buffer fails: it was detached (transferred).
    throw new InvalidArgumentError('cannot map a detached ArrayBuffer for DMA: its memory was transferred away', { cause: err });
  }
}

/**
 * Fault every page of the view in writable before a read-only pin. A read-only pin of untouched
 * anonymous memory pins the kernel's shared zero page (and of a page shared copy-on-write, the
 * shared copy): the process's later writes would go to fresh pages the device never sees.
 * MADV_POPULATE_WRITE does exactly a write fault per page, touching no data. A pin for device
 * writes needs none: VFIO pins those pages with FOLL_WRITE, which is that same write fault.
 */
function faultInWritable(view: Uint8Array): void {
  try {
    native.madvise(view, MADV_POPULATE_WRITE);
  } catch (err) {
    const code = isSystemError(err) ? err.code : String(err);
    throw new InvalidArgumentError(`cannot map this memory for DMA: faulting it in writable (madvise MADV_POPULATE_WRITE, Linux 5.14+) failed with ${code}; only ordinary writable memory can be mapped`, { cause: err });
  }
}

/**
 * What map() learnt about memory it mapped before: the address of its first byte, and the memfd
 * behind it when this library allocated it. Only fixed-size buffers get here (toBytes refused the
 * rest), and V8 never moves a backing store once it is off the heap (which addressOf saw to): the
 * address stays true for the buffer's life. A detached buffer (and every view of it) reads as
 * length 0 and takes the checked path again.
 */
interface KnownMemory {
  address: number;
  memfd: Memfd | undefined;
}

/** Buffers mapped before, by the buffer (`address`: its byte 0). */
const knownBuffers = new WeakMap<ArrayBufferLike, KnownMemory>();

/**
 * Uint8Arrays mapped before, by the view itself (`address`: the view's first byte). A view mapped
 * again (the per-I/O case) then costs one lookup: in V8 11.3 a typed array's `buffer`,
 * `byteOffset` and `byteLength` are builtin calls (10-15 ns each), `length` is a plain load.
 * Only a Uint8Array that first maps its buffer is kept: recording every new subarray would cost
 * a WeakMap insertion (and GC work) per map.
 */
const knownViews = new WeakMap<Uint8Array, KnownMemory>();

function remember(view: Uint8Array, address: number, memfd: Memfd | undefined, caller: DmaMappable): void {
  const buffer = view.buffer;
  // Transferring the buffer to a worker (postMessage, structuredClone) would hand its memory to
  // an owner that may free it while the device still writes there: copy it instead.
  if (!(buffer instanceof SharedArrayBuffer)) markAsUntransferable(buffer);
  knownBuffers.set(buffer, { address: address - view.byteOffset, memfd });
  if (caller instanceof Uint8Array) knownViews.set(caller, { address, memfd }); // toBytes made `view` over the same bytes
}

/** One allocator per IOMMU domain (VFIO container or vfio-user connection). */
const allocators = new WeakMap<object, IovaAllocator>();

/**
 * Every open DmaSpace of the process, weakly: freeing a buffer asks each whether one of its live
 * streaming mappings covers the buffer's memory (a device may map another device's buffer). The
 * scan costs a free, never a map or an unmap.
 */
const openSpaces = new Set<WeakRef<DmaSpace>>();

/** How many live streaming mappings of all open devices cover `buffer`'s memory. */
function mappingsOf(buffer: ArrayBufferLike): number {
  let n = 0;
  for (const ref of openSpaces) {
    const space = ref.deref();
    if (space === undefined) openSpaces.delete(ref);
    else n += space.mappingsOf(buffer);
  }
  return n;
}

export class DmaSpace {
  private readonly buffers = new Set<DmaBuffer>();
  /** Live mappings, each at its `slot` (a Set would hash on every map and unmap). */
  private readonly mappings: DmaMapping[] = [];
  private readonly allocator: IovaAllocator;
  private closed: string | undefined;
  private readonly ref = new WeakRef(this);
  /** The backend pins mapped pages itself (VFIO): no memfd is handed on, read-only pins are faulted in first. */
  private readonly pins: boolean;
  /** Highest IOVA the device can reach (its DMA mask), inclusive. */
  private highest: number;

  constructor(
    private readonly backend: Backend,
    limit: number,
  ) {
    this.highest = limit;
    this.pins = backend.pinsDmaMemory === true;
    const aperture = backend.iommuAperture();
    let allocator = allocators.get(aperture.domain);
    if (!allocator) {
      // A random first cursor per IOMMU domain (so per open of a device that is alone in its
      // process): a new owner does not get the IOVAs its predecessor used, so a stale DMA of the
      // predecessor's cannot hit the new owner's first buffers even on a device that ignored
      // bus mastering. The cursor then rotates (next fit), so freed IOVAs are not reused at once.
      allocator = new IovaAllocator(aperture.ranges, Math.max(aperture.pageSize, constants.PAGE_SIZE), { cursor: randomInt(2 ** 47) });
      allocators.set(aperture.domain, allocator);
    }
    this.allocator = allocator;
    openSpaces.add(this.ref);
  }

  /** Highest IOVA the device can reach (its DMA mask), inclusive. */
  get limit(): number {
    return this.highest;
  }

  /** Lower the limit (a driver declaring what its device can address); only while nothing is mapped. */
  narrowLimit(limit: number): void {
    if (limit >= this.highest) return;
    if (this.buffers.size > 0 || this.mappings.length > 0) {
      throw new UserpciError('EBUSY', `cannot narrow the DMA limit to 0x${limit.toString(16)}: ${this.buffers.size} buffers and ${this.mappings.length} mappings already exist (declare the DMA width before mapping memory)`);
    }
    this.highest = limit;
  }

  /** Bytes of IOVA space free in this device's IOMMU domain (shared with every device in it). */
  get domainIovaFree(): number {
    return this.allocator.available;
  }

  get liveBuffers(): number {
    return this.buffers.size;
  }

  get liveMappings(): number {
    return this.mappings.length;
  }

  /** Whether this space allocated the buffer (and has not freed it). */
  owns(buffer: DmaBuffer): boolean {
    return this.buffers.has(buffer);
  }

  allocate(size: number, options: DmaAllocOptions = {}): DmaBuffer {
    this.checkOpen();
    if (!Number.isSafeInteger(size) || size <= 0) throw new InvalidArgumentError(`DMA buffer size must be a positive integer, got ${size}`);
    if (options === null || typeof options !== 'object') throw new InvalidArgumentError(`allocDma options must be an object, got ${describeValue(options)}`);
    const hugePages = checkHugePagePolicy(options.hugePages);
    const pins = this.pins;
    checkDmaMemoryFits(size, !pins);
    this.allocator.check(size, constants.PAGE_SIZE, this.limit); // before populating memory for nothing
    const memory = allocateDmaMemory(size, { hugePages, lock: !pins });
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
      throw this.mapError(err, `mapping a ${memory.size}-byte DMA buffer`, memory.size);
    }
    const buffer = new DmaBuffer(this, memory, iova, memory.size);
    this.buffers.add(buffer);
    return buffer;
  }

  /** @internal How many of this space's live streaming mappings lie in `buffer`. */
  mappingsOf(buffer: ArrayBufferLike): number {
    let n = 0;
    for (const m of this.mappings) if (m.view.buffer === buffer) n++;
    return n;
  }

  /**
   * @internal via DmaBuffer.free. A buffer that a live streaming mapping covers (of this device
   * or another) is refused with EBUSY and stays as it was: the device may still be writing into
   * it, and freeing would leave those writes in pages the process no longer sees (or, through a
   * vfio-user server holding the memfd, in memory nobody accounts for). Unmap first.
   */
  freeBuffer(buffer: DmaBuffer): void {
    if (!this.buffers.has(buffer)) throw new InvalidArgumentError('this DMA buffer belongs to another device');
    const live = mappingsOf(buffer.buffer);
    if (live > 0) {
      throw new UserpciError('EBUSY', `cannot free the DMA buffer at IOVA 0x${buffer.iova.toString(16)}: ${live} streaming mapping${live === 1 ? '' : 's'} of its memory ${live === 1 ? 'is' : 'are'} still live (the device may still be using ${live === 1 ? 'it' : 'them'}); unmap ${live === 1 ? 'it' : 'them'} first`);
    }
    this.buffers.delete(buffer);
    const memory = buffer.takeMemory();
    try {
      this.backend.dmaUnmap(buffer.iova, buffer.size);
      // Only a range out of the IOMMU goes back: one still mapped is never handed out again.
      this.allocator.release(buffer.iova);
    } finally {
      releaseDmaMemory(memory);
    }
  }

  map(memory: DmaMappable, direction: DmaDirection): DmaMapping {
    this.checkOpen();
    if (direction !== 'to-device' && direction !== 'from-device' && direction !== 'bidirectional') {
      throw new InvalidArgumentError(`DMA direction must be 'to-device', 'from-device' or 'bidirectional', got ${String(direction)}`);
    }
    // A Uint8Array mapped before, or over a buffer mapped before, needs no checks, no new view
    // and no call into the addon; anything else takes the checked path once per buffer.
    let view: Uint8Array;
    let address: number;
    let memfd: Memfd | undefined;
    let checked = false;
    const typed = memory instanceof Uint8Array && memory.length > 0;
    const seen = typed ? knownViews.get(memory) : undefined;
    if (seen !== undefined) {
      view = memory as Uint8Array;
      address = seen.address;
      memfd = seen.memfd;
    } else {
      const known = typed ? knownBuffers.get((memory as Uint8Array).buffer) : undefined;
      if (known !== undefined) {
        view = memory as Uint8Array;
        address = known.address + view.byteOffset;
        memfd = known.memfd;
      } else {
        view = toBytes(memory);
        if (view.length === 0) throw new InvalidArgumentError('cannot map an empty buffer for DMA');
        address = native.addressOf(view);
        memfd = memfdOf(view.buffer);
        checked = true;
      }
    }
    const length = view.length;
    const vaddr = this.allocator.roundDown(address);
    const size = this.allocator.roundUp(address + length) - vaddr;
    const pageIova = this.allocator.takePages(size, this.highest);
    const firstByteIova = pageIova + (address - vaddr);
    // A backend that pins pages needs no fd. For one that may reach memory only by fd (a proxy
    // for a real device), memory this library allocated hands its memfd on (while it is open),
    // any 4 KiB pages of it (of a hugetlb memfd, which maps only at 2 MiB offsets, our server
    // maps the hugepages around them: src/vfio-user/server/dma.ts).
    const handOn = this.pins || memfd === undefined || memfd.fd < 0 ? undefined : memfd;
    const fdOffset = handOn === undefined ? 0 : vaddr - handOn.address;
    const byFd = handOn !== undefined && fdOffset + size <= handOn.size;
    try {
      if (direction === 'to-device' && this.pins) faultInWritable(view);
      this.backend.dmaMap({
        iova: pageIova, size, vaddr, memory: view, memoryIova: firstByteIova, fd: byFd ? handOn.fd : undefined, fdOffset,
        deviceReads: direction !== 'from-device', deviceWrites: direction !== 'to-device',
      });
    } catch (err) {
      this.allocator.giveBack(pageIova, size);
      throw this.mapError(err, `mapping ${length} bytes for DMA`, size);
    }
    if (checked) remember(view, address, memfd, memory);
    const mapping = new DmaMapping(this, view, direction, firstByteIova, length, pageIova, size);
    mapping.slot = this.mappings.length;
    this.mappings.push(mapping);
    return mapping;
  }

  unmap(mapping: DmaMapping): void {
    if (!(mapping instanceof DmaMapping)) throw new InvalidArgumentError('not a DMA mapping');
    const slot = mapping.slot;
    if (slot < 0) throw new InvalidArgumentError(`DMA mapping at IOVA 0x${mapping.iova.toString(16)} was already unmapped`);
    if (this.mappings[slot] !== mapping) throw new InvalidArgumentError('this DMA mapping belongs to another device');
    const last = this.mappings.pop()!;
    if (last !== mapping) {
      this.mappings[slot] = last;
      last.slot = slot;
    }
    mapping.slot = -1;
    this.backend.dmaUnmap(mapping.pageIova, mapping.pageSize);
    this.allocator.giveBack(mapping.pageIova, mapping.pageSize); // not when the unmap failed: see freeBuffer
  }

  /**
   * Take every mapping down (the device must already be stopped from mastering the bus). A
   * buffer that another open device still maps keeps its memory: only its fd is closed, and the
   * other mapping's view holds the pages until that mapping is dropped and collected (the addon
   * unmaps an ArrayBuffer collected without munmap).
   *
   * Each range the IOMMU unmapped goes back to the domain's allocator, which other devices in the
   * domain (a VFIO container) go on using: once the unmap returned, no device reaches that IOVA
   * (type1 flushes the IOTLB before it returns). A range whose unmap failed may still be mapped:
   * it stays taken for the domain's life. The handles the user still holds are marked gone here,
   * so they cannot give a range back a second time.
   */
  releaseAll(reason: string): void {
    openSpaces.delete(this.ref);
    this.closed = reason;
    for (const m of this.mappings.splice(0)) {
      m.slot = -1;
      if (this.tearDown(m.pageIova, m.pageSize)) this.allocator.giveBack(m.pageIova, m.pageSize);
    }
    for (const b of [...this.buffers]) {
      this.buffers.delete(b);
      const memory = b.takeMemory();
      if (this.tearDown(b.iova, b.size)) this.allocator.release(b.iova);
      if (mappingsOf(memory.buffer) > 0) releaseDmaMemory(memory, { keepPages: true });
      else releaseDmaMemory(memory);
    }
  }

  /** Unmap a range in the IOMMU during teardown: whether it is out of the IOMMU now. */
  private tearDown(iova: number, size: number): boolean {
    try {
      this.backend.dmaUnmap(iova, size);
      return true;
    } catch {
      // Teardown goes on; the kernel drops whatever is left when the container closes.
      return false;
    }
  }

  private checkOpen(): void {
    if (this.closed) throw new DeviceGoneError(this.closed);
  }

  private mapError(err: unknown, doing: string, pinned: number): UserpciError {
    if (err instanceof UserpciError) return err;
    // VFIO_IOMMU_MAP_DMA fails with ENOMEM when pinning would go over RLIMIT_MEMLOCK.
    if (isSystemError(err) && err.code === 'ENOMEM') return memlockError(doing, pinned, 'pin', err);
    return wrapSystemError(err, doing);
  }
}
