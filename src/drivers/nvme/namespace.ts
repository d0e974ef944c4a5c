/**
 * A namespace: the block device. Every call validates before it touches a queue:
 * - ERANGE: the request reaches past the namespace's last block;
 * - EINVAL: an LBA that is not a non-negative integer, a length that is not a positive multiple
 *   of the block size, or a DMA address that is not dword aligned (PRP entries must be);
 * - NVMe completion errors come back as NvmeStatusError, with the status decoded.
 *
 * Data goes either zero copy (DMA buffers, views over buffers from `ctrl.allocBuffer`, raw
 * IOVAs) or through the queue's preallocated bounce memory (any other Uint8Array).
 * Larger requests are split into commands of at most the controller's transfer size; the
 * promise settles when all of them have.
 */
import { InvalidArgumentError, RangeAccessError, UserpciError } from '../../errors';
import type { DmaBuffer } from '../../dma/dma-space';
import type { NamespaceIdentity, LbaFormat } from './identify';
import type { NvmeController } from './controller';
import { NvmeQueue, type CompletionCallback } from './queue';
import { describeValue } from '../../arguments';
import { NVM_FLUSH, NVM_READ, NVM_WRITE, RW_FUA } from './registers';

export interface WriteOptions {
  /** Force Unit Access: complete only once the data is on non-volatile media. */
  fua?: boolean;
}

export class NvmeNamespace {
  readonly nsid: number;
  /** Logical block size in bytes (512, 4096, ...). */
  readonly blockSize: number;
  /** Namespace size in blocks. */
  readonly blocks: number;
  readonly lbaFormats: readonly LbaFormat[];

  constructor(
    readonly controller: NvmeController,
    readonly identity: NamespaceIdentity,
  ) {
    this.nsid = identity.nsid;
    this.blockSize = identity.blockSize;
    this.blocks = identity.blocks;
    this.lbaFormats = identity.lbaFormats;
  }

  /** Namespace size in bytes. */
  get size(): number {
    return this.blocks * this.blockSize;
  }

  /** Largest data transfer of one command, bytes (requests above it are split). */
  get maxTransfer(): number {
    return this.controller.maxTransfer - (this.controller.maxTransfer % this.blockSize);
  }

  get supportsTrim(): boolean {
    return this.controller.identity.supportsDatasetManagement;
  }

  // ---------------------------------------------------------------- promise API

  /**
   * Read into `target`: a Uint8Array (a view over a buffer from ctrl.allocBuffer goes zero copy;
   * any other is filled from bounce memory) or a whole DmaBuffer.
   */
  read(lba: number, target: Uint8Array | DmaBuffer, queue?: NvmeQueue): Promise<void> {
    return this.transfer(NVM_READ, lba, target, 0, queue);
  }

  /** Write from `source` (as for read). */
  write(lba: number, source: Uint8Array | DmaBuffer, queue?: NvmeQueue, options?: WriteOptions): Promise<void> {
    return this.transfer(NVM_WRITE, lba, source, options?.fua ? RW_FUA : 0, queue);
  }

  /** Zero copy: `length` bytes at `offset` in a DMA buffer. */
  readDma(lba: number, buffer: DmaBuffer, offset: number, length: number, queue?: NvmeQueue): Promise<void> {
    const err = this.checkDma(buffer, offset, length);
    if (err) return Promise.reject(err);
    return this.readIova(lba, buffer.iova + offset, length, queue);
  }

  writeDma(lba: number, buffer: DmaBuffer, offset: number, length: number, queue?: NvmeQueue, options?: WriteOptions): Promise<void> {
    const err = this.checkDma(buffer, offset, length);
    if (err) return Promise.reject(err);
    return this.writeIova(lba, buffer.iova + offset, length, queue, options);
  }

  /** Zero copy by IOVA (a DmaBuffer's iovaAt(), a DmaMapping's iova). */
  readIova(lba: number, iova: number, length: number, queue?: NvmeQueue): Promise<void> {
    return this.submitIova(NVM_READ, lba, iova, length, 0, queue, null) as Promise<void>;
  }

  writeIova(lba: number, iova: number, length: number, queue?: NvmeQueue, options?: WriteOptions): Promise<void> {
    return this.submitIova(NVM_WRITE, lba, iova, length, options?.fua ? RW_FUA : 0, queue, null) as Promise<void>;
  }

  /** Make every write completed so far durable (a no-op for controllers without a volatile cache, but always sent). */
  flush(queue?: NvmeQueue): Promise<void> {
    const q = this.queueFor(queue);
    if (q === undefined) return Promise.reject(this.queueError(queue));
    return q.command(NVM_FLUSH, this.nsid, 0, 0, 0, 0, 0, 0, 0, 0) as Promise<unknown> as Promise<void>;
  }

  /** Deallocate (trim) `blocks` blocks at `lba` with Dataset Management; ENOTSUP without it. */
  trim(lba: number, blocks: number, queue?: NvmeQueue): Promise<void> {
    if (!this.supportsTrim) return Promise.reject(new UserpciError('ENOTSUP', `${this.controller.name}: the controller does not support Dataset Management (trim)`));
    const err = this.checkBlocks(lba, blocks);
    if (err) return Promise.reject(err);
    const q = this.queueFor(queue);
    if (q === undefined) return Promise.reject(this.queueError(queue));
    return q.deallocate(this.nsid, lba, blocks, null) as Promise<unknown> as Promise<void>;
  }

  /** Write Zeroes over `blocks` blocks at `lba`; ENOTSUP without it. */
  writeZeroes(lba: number, blocks: number, queue?: NvmeQueue): Promise<void> {
    if (!this.controller.identity.supportsWriteZeroes) return Promise.reject(new UserpciError('ENOTSUP', `${this.controller.name}: the controller does not support Write Zeroes`));
    const err = this.checkBlocks(lba, blocks);
    if (err) return Promise.reject(err);
    const q = this.queueFor(queue);
    if (q === undefined) return Promise.reject(this.queueError(queue));
    return q.writeZeroes(this.nsid, this.blockSize, lba, blocks, null) as Promise<unknown> as Promise<void>;
  }

  // ---------------------------------------------------------------- callback API (no promise at all)

  /**
   * Submit a zero-copy read or write and get `callback(error)` on completion: no allocation at
   * all per I/O. Validation errors are thrown synchronously.
   */
  submit(write: boolean, lba: number, iova: number, length: number, queue: NvmeQueue, callback: CompletionCallback): void {
    // The check that passes is inlined with this call into the caller, the error is built out of
    // line: an IOVA above 2^30 then reaches the queue's request without being boxed on the way.
    if (!this.validIo(lba, iova, length) || queue?.host !== this.controller || typeof callback !== 'function') throw this.checkSubmit(lba, iova, length, queue, callback);
    queue.rw(write ? NVM_WRITE : NVM_READ, this.nsid, this.blockSize, lba, iova, null, length, 0, callback);
  }

  // ---------------------------------------------------------------- internals

  private transfer(opcode: number, lba: number, data: Uint8Array | DmaBuffer, flags: number, queue: NvmeQueue | undefined): Promise<void> {
    if (!(data instanceof Uint8Array)) {
      if (data && typeof (data as DmaBuffer).iova === 'number' && typeof (data as DmaBuffer).size === 'number') {
        return this.submitIova(opcode, lba, (data as DmaBuffer).iova, (data as DmaBuffer).size, flags, queue, null) as Promise<void>;
      }
      return Promise.reject(new InvalidArgumentError('data must be a Uint8Array (or Buffer) or a DmaBuffer'));
    }
    const q = this.queueFor(queue);
    if (q === undefined) return Promise.reject(this.queueError(queue));
    const length = data.byteLength;
    const dma = this.controller.registeredBuffer(data.buffer);
    if (dma !== undefined && !dma.freed) {
      const iova = dma.iova + data.byteOffset;
      if (iova % 4 === 0) return this.submitIova(opcode, lba, iova, length, flags, q, null) as Promise<void>;
    }
    const err = this.checkRange(lba, length);
    if (err) return Promise.reject(err);
    return q.rw(opcode, this.nsid, this.blockSize, lba, -1, data, length, flags, null) as Promise<unknown> as Promise<void>;
  }

  private submitIova(opcode: number, lba: number, iova: number, length: number, flags: number, queue: NvmeQueue | undefined, callback: CompletionCallback | null): Promise<unknown> | undefined {
    const q = this.queueFor(queue);
    if (q === undefined) return Promise.reject(this.queueError(queue));
    if (!this.validIo(lba, iova, length)) return Promise.reject(this.checkIova(lba, iova, length)!);
    return q.rw(opcode, this.nsid, this.blockSize, lba, iova, null, length, flags, callback);
  }

  /** What checkIova accepts, as one expression (no error built): the hot path's check. */
  private validIo(lba: number, iova: number, length: number): boolean {
    const bs = this.blockSize;
    return Number.isSafeInteger(iova) && iova >= 0 && (iova & 3) === 0 && Number.isSafeInteger(length) && length > 0 && length % bs === 0 &&
      Number.isSafeInteger(lba) && lba >= 0 && lba + length / bs <= this.blocks;
  }

  /** The queue an I/O goes to (`queue`, else the default one) when it is this controller's; undefined otherwise (queueError says why). */
  private queueFor(queue: NvmeQueue | undefined): NvmeQueue | undefined {
    const q = queue ?? this.controller.defaultQueue;
    return q !== undefined && q.host === this.controller ? q : undefined;
  }

  private queueError(queue: NvmeQueue | undefined): Error {
    const q = queue ?? this.controller.defaultQueue;
    return q ? this.foreignQueue(q) : noQueue(this);
  }

  /** Why submit() refused (built out of line: the passing check stays one expression). */
  private checkSubmit(lba: number, iova: number, length: number, queue: NvmeQueue, callback: unknown): Error {
    if (queue?.host !== this.controller) return this.foreignQueue(queue);
    if (typeof callback !== 'function') return new InvalidArgumentError(`${this.controller.name} namespace ${this.nsid}: submit's callback must be a function, got ${describeValue(callback)}`);
    return this.checkIova(lba, iova, length)!;
  }

  /** A queue of another controller would take this namespace's I/O to another device. */
  private foreignQueue(queue: unknown): Error {
    if (!(queue instanceof NvmeQueue)) return new InvalidArgumentError(`${this.controller.name} namespace ${this.nsid}: queue must be an NvmeQueue of this controller, got ${describeValue(queue)}`);
    return new InvalidArgumentError(`${this.controller.name} namespace ${this.nsid}: queue ${queue.qid} belongs to ${queue.host.name}, not to this controller`);
  }

  private checkIova(lba: number, iova: number, length: number): Error | null {
    if (!Number.isSafeInteger(iova) || iova < 0) return new InvalidArgumentError(`IOVA must be a non-negative integer, got ${iova}`);
    // `& 3`, not `% 4`: an IOVA above 2^31 is a double, and `%` on doubles costs a loop of fprem.
    if ((iova & 3) !== 0) {
      return new InvalidArgumentError(`${this.controller.name}: data buffer at IOVA 0x${iova.toString(16)} is not 4-byte aligned (NVMe PRP entries must be dword aligned)`);
    }
    return this.checkRange(lba, length);
  }

  private checkRange(lba: number, length: number): Error | null {
    if (!Number.isSafeInteger(length) || length <= 0 || length % this.blockSize !== 0) {
      return new InvalidArgumentError(`${this.controller.name} namespace ${this.nsid}: length ${length} is not a positive multiple of the ${this.blockSize}-byte block size`);
    }
    return this.checkBlocks(lba, length / this.blockSize);
  }

  private checkBlocks(lba: number, blocks: number): Error | null {
    if (!Number.isSafeInteger(lba) || lba < 0) return new InvalidArgumentError(`${this.controller.name} namespace ${this.nsid}: LBA must be a non-negative integer, got ${lba}`);
    if (!Number.isSafeInteger(blocks) || blocks <= 0) return new InvalidArgumentError(`${this.controller.name} namespace ${this.nsid}: block count must be a positive integer, got ${blocks}`);
    if (lba + blocks > this.blocks) {
      return new RangeAccessError(`${this.controller.name} namespace ${this.nsid}: blocks ${lba}..${lba + blocks - 1} reach beyond the end of the namespace (${this.blocks} blocks of ${this.blockSize} bytes)`);
    }
    return null;
  }

  private checkDma(buffer: DmaBuffer, offset: number, length: number): Error | null {
    if (!buffer || typeof buffer.iova !== 'number') return new InvalidArgumentError('buffer must be a DmaBuffer');
    // A device that went away frees its buffers: say so rather than blame the caller.
    if (buffer.freed) return this.controller.closeReason ?? new InvalidArgumentError('the DMA buffer was freed');
    if (!Number.isSafeInteger(offset) || offset < 0) return new InvalidArgumentError(`offset must be a non-negative integer, got ${offset}`);
    if (!Number.isSafeInteger(length) || offset + length > buffer.size) {
      return new RangeAccessError(`${length} bytes at offset ${offset} do not fit the ${buffer.size}-byte DMA buffer`);
    }
    return null;
  }
}

function noQueue(ns: NvmeNamespace): Error {
  const closed = ns.controller.closeReason;
  if (closed) return closed;
  return new UserpciError('ENXIO', `${ns.controller.name}: no I/O queue given and the controller has no default queue`);
}
