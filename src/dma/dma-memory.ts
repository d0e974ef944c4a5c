/**
 * DMA-coherent memory: memfd-backed (so a vfio-user server can map the same pages), shared,
 * populated, and kept out of forked children (MADV_DONTFORK: a child's copy-on-write would
 * otherwise leave the device writing into pages the parent no longer sees).
 *
 * Locked-memory accounting follows the kernel's: VFIO pins every page it maps for DMA and charges
 * the pin to RLIMIT_MEMLOCK (mm->locked_vm, `VmLck` in /proc/self/status), and so does mlock. Memory
 * the backend pins is therefore not mlocked as well (the pin already keeps it resident); memory
 * nobody pins (vfio-user, where the server maps the memfd) is mlocked, and charged once that way.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { native, constants } from '../native/index';
import { InvalidArgumentError, UserpciError, wrapSystemError, isSystemError } from '../errors';
import { alignUp } from './iova-allocator';

export const HUGE_PAGE_SIZE = 2 * 1024 * 1024;

export type HugePagePolicy = 'auto' | 'always' | 'never';

export interface DmaMemory {
  buffer: ArrayBuffer;
  fd: number;
  size: number;
  pageSize: number;
}

export interface DmaMemoryOptions {
  hugePages?: HugePagePolicy;
  /** mlock the memory (default true). False when the backend pins it itself (VFIO). */
  lock?: boolean;
}

const CAP_IPC_LOCK = 14;
const LARGE_ALLOCATION = 16 * 1024 * 1024;
/** errno values carried on our errors are negative, like Node's. */
const ENOMEM_ERRNO = -os.constants.errno.ENOMEM;

function processStatus(): string {
  try {
    return fs.readFileSync('/proc/self/status', 'utf8');
  } catch {
    return '';
  }
}

function hasIpcLock(status = processStatus()): boolean {
  const line = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
  return line !== null && (BigInt(`0x${line[1]}`) & (1n << BigInt(CAP_IPC_LOCK))) !== 0n;
}

/** Bytes charged against RLIMIT_MEMLOCK now: mlocked and VFIO-pinned pages alike (VmLck). */
export function lockedBytes(status = processStatus()): number {
  const m = /^VmLck:\s*(\d+) kB$/m.exec(status);
  return m ? Number(m[1]) * 1024 : 0;
}

/**
 * Why `bytes` more of locked memory could not be had, with the three numbers that decide it:
 * what was asked, what this process has already charged, and the limit.
 */
export function memlockExplanation(bytes: number, how: 'pin' | 'lock'): string {
  const status = processStatus();
  const [soft] = native.getrlimit(constants.RLIMIT_MEMLOCK);
  const charged = lockedBytes(status);
  const asked = how === 'pin'
    ? `the IOMMU must pin ${bytes} bytes, and pinned memory counts against RLIMIT_MEMLOCK`
    : `locking ${bytes} bytes counts against RLIMIT_MEMLOCK`;
  if (soft < 0) return `${asked}, which is unlimited (${charged} bytes are already charged): the system is out of memory`;
  if (hasIpcLock(status)) return `${asked}, but CAP_IPC_LOCK lifts the limit (${charged} bytes are already charged): the system is out of memory`;
  return `${asked}: ${charged} bytes are already charged to this process (VFIO's pins and mlock count alike) and the limit is ${soft} bytes; raise it (ulimit -l) or grant CAP_IPC_LOCK`;
}

/** The ENOMEM for a failed lock or pin of `bytes`, errno and all consistent with the code. */
export function memlockError(doing: string, bytes: number, how: 'pin' | 'lock', cause: unknown): UserpciError {
  const syscall = isSystemError(cause) ? cause.syscall : undefined;
  const raw = isSystemError(cause) && cause.code !== 'ENOMEM' ? ` (${syscall} said ${cause.code})` : '';
  return new UserpciError('ENOMEM', `${doing}: ${memlockExplanation(bytes, how)}${raw}`, { cause, errno: ENOMEM_ERRNO, syscall });
}

/**
 * Refuse what cannot fit in memory before trying: populating more than the machine has would
 * end in the OOM killer, not in an error. Reading the free memory costs a /proc read, so only
 * sizes that could matter pay for it.
 */
export function checkDmaMemoryFits(size: number, lock: boolean): void {
  if (size < LARGE_ALLOCATION) return;
  const available = os.freemem();
  if (size > available) {
    const resident = memlockExplanation(size, lock ? 'lock' : 'pin');
    throw new UserpciError('ENOMEM', `cannot allocate ${size} bytes of DMA memory: only ${available} bytes of RAM are available, and DMA memory stays resident (${resident})`, { errno: ENOMEM_ERRNO });
  }
}

function tryAllocate(size: number, huge: boolean, lock: boolean): DmaMemory {
  const pageSize = huge ? HUGE_PAGE_SIZE : constants.PAGE_SIZE;
  const length = alignUp(size, pageSize);
  const fd = native.memfdCreate('userpci-dma', huge ? constants.MFD_HUGETLB : 0);
  let buffer: ArrayBuffer | undefined;
  try {
    native.ftruncate(fd, length);
    buffer = native.mmap(length, constants.PROT_READ | constants.PROT_WRITE, constants.MAP_SHARED | constants.MAP_POPULATE, fd, 0);
    native.madvise(buffer, constants.MADV_DONTFORK);
    if (lock) native.mlock(buffer);
    memfds.set(buffer, { fd, address: native.addressOf(new Uint8Array(buffer)), size: length, pageSize });
    return { buffer, fd, size: length, pageSize };
  } catch (err) {
    if (buffer) native.munmap(buffer);
    native.close(fd);
    throw err;
  }
}

export function checkHugePagePolicy(hugePages: unknown): HugePagePolicy {
  if (hugePages === undefined) return 'auto';
  if (hugePages !== 'auto' && hugePages !== 'always' && hugePages !== 'never') {
    throw new InvalidArgumentError(`hugePages must be 'auto', 'always' or 'never', got ${typeof hugePages === 'string' ? `'${hugePages}'` : String(hugePages)}`);
  }
  return hugePages;
}

export function allocateDmaMemory(size: number, hugePagesOrOptions: HugePagePolicy | DmaMemoryOptions = {}): DmaMemory {
  const options = typeof hugePagesOrOptions === 'string' ? { hugePages: hugePagesOrOptions } : hugePagesOrOptions;
  const hugePages = checkHugePagePolicy(options.hugePages);
  const lock = options.lock ?? true;
  checkDmaMemoryFits(size, lock);
  const wantHuge = hugePages === 'always' || (hugePages === 'auto' && size >= HUGE_PAGE_SIZE);
  try {
    if (wantHuge) {
      try {
        return tryAllocate(size, true, lock);
      } catch (err) {
        if (hugePages === 'always') {
          if (isSystemError(err) && err.syscall !== 'mlock') {
            throw new UserpciError('ENOMEM', `cannot allocate ${size} bytes on 2 MiB hugepages: ${err.code} (${err.syscall}); reserve some (/proc/sys/vm/nr_hugepages)`, { cause: err, errno: ENOMEM_ERRNO, syscall: err.syscall });
          }
          throw err;
        }
        // No free hugepages (or none configured): 4 KiB pages work, only the IOTLB pays.
      }
    }
    return tryAllocate(size, false, lock);
  } catch (err) {
    if (err instanceof UserpciError) throw err;
    if (isSystemError(err) && err.syscall === 'mlock' && (err.code === 'ENOMEM' || err.code === 'EAGAIN' || err.code === 'EPERM')) {
      throw memlockError(`cannot lock ${size} bytes of DMA memory`, alignUp(size, constants.PAGE_SIZE), 'lock', err);
    }
    if (isSystemError(err) && err.code === 'ENOMEM') {
      throw new UserpciError('ENOMEM', `cannot allocate ${size} bytes of DMA memory: ${err.code} (${err.syscall})`, { cause: err, errno: ENOMEM_ERRNO, syscall: err.syscall });
    }
    throw wrapSystemError(err, `allocating ${size} bytes of DMA memory`);
  }
}

/** A memfd mapping this library made: where it lies in the process, its fd and page size. */
export interface Memfd {
  fd: number;
  address: number;
  size: number;
  pageSize: number;
}

/**
 * Memory this library allocated, by its ArrayBuffer: a streaming map of (a view of) it can hand
 * the memfd on, so that a vfio-user server reaching memory only by fd (a proxy for a real device)
 * can map it too.
 */
const memfds = new WeakMap<ArrayBufferLike, Memfd>();

export function memfdOf(buffer: ArrayBufferLike): Memfd | undefined {
  return memfds.get(buffer);
}

/** `keepPages`: close only the fd; the pages go when the ArrayBuffer is collected (still mapped elsewhere). */
export function releaseDmaMemory(memory: DmaMemory, { keepPages = false } = {}): void {
  // Streaming maps remember the Memfd of memory they mapped (dma-space.ts): -1 says it is closed.
  const memfd = memfds.get(memory.buffer);
  if (memfd) memfd.fd = -1;
  memfds.delete(memory.buffer);
  if (!keepPages) native.munmap(memory.buffer);
  native.close(memory.fd);
}
