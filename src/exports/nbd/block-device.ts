/**
 * What the NBD server exports: a block device with byte offsets. Requests reach it already
 * checked against its size; alignment is its own business (see NvmeBlockDevice, which does
 * read-modify-write for unaligned writes).
 */
import { checkInteger } from '../../arguments';
import { InvalidArgumentError, UserpciError } from '../../errors';

export interface BlockDevice {
  /** Bytes. */
  readonly size: number;
  /** The natural I/O unit (advertised as NBD's preferred block size). */
  readonly blockSize: number;
  readonly readOnly: boolean;
  readonly canTrim: boolean;
  readonly canWriteZeroes: boolean;
  /** Largest request accepted (advertised as NBD's maximum payload). */
  readonly maxRequest: number;
  read(offset: number, length: number): Promise<Uint8Array>;
  write(offset: number, data: Uint8Array, fua: boolean): Promise<void>;
  flush(): Promise<void>;
  trim(offset: number, length: number): Promise<void>;
  writeZeroes(offset: number, length: number, fua: boolean): Promise<void>;
  /** Release what the device holds (the server calls it when it stops). */
  close?(): Promise<void>;
  /**
   * Resolves once the device is gone for good (unplugged, reset under it): the server then
   * answers what is outstanding, tells its clients to go away, and refuses new ones.
   */
  whenLost?(): Promise<Error>;
}

/** A block device in memory: for tests, demos and as the simplest example of the interface. */
export class MemoryBlockDevice implements BlockDevice {
  readonly data: Uint8Array;
  readonly canTrim = true;
  readonly canWriteZeroes = true;
  readonly maxRequest = 32 << 20;
  flushes = 0;
  /** Make the next operations fail (tests): each entry is thrown by one call. */
  readonly failures: Error[] = [];

  constructor(
    readonly size: number,
    readonly blockSize = 512,
    readonly readOnly = false,
  ) {
    checkInteger(size, 0, Number.MAX_SAFE_INTEGER, 'MemoryBlockDevice size');
    if (!Number.isInteger(blockSize) || blockSize < 1 || (blockSize & (blockSize - 1)) !== 0 || blockSize > 65536) throw new InvalidArgumentError(`block size must be a power of two up to 65536, got ${String(blockSize)}`);
    try {
      this.data = new Uint8Array(size);
    } catch (err) {
      throw new UserpciError('ENOMEM', `cannot hold a ${size}-byte block device in memory: ${(err as Error).message}`, { cause: err });
    }
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    this.maybeFail();
    return this.data.slice(offset, offset + length);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.maybeFail();
    this.data.set(data, offset);
  }

  async flush(): Promise<void> {
    this.maybeFail();
    this.flushes++;
  }

  async trim(offset: number, length: number): Promise<void> {
    this.maybeFail();
    this.data.fill(0, offset, offset + length);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.maybeFail();
    this.data.fill(0, offset, offset + length);
  }

  private maybeFail(): void {
    const e = this.failures.shift();
    if (e) throw e;
  }
}
