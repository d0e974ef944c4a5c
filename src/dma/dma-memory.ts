/**
 * DMA-coherent memory: memfd-backed (so a vfio-user server can map the same pages), shared,
 * populated, locked, and kept out of forked children (MADV_DONTFORK: a child's copy-on-write
 * would otherwise leave the device writing into pages the parent no longer sees).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { native, constants } from '../native/index';
import { UserpciError, wrapSystemError, isSystemError } from '../errors';
import { alignUp } from './iova-allocator';

export const HUGE_PAGE_SIZE = 2 * 1024 * 1024;

export type HugePagePolicy = 'auto' | 'always' | 'never';

export interface DmaMemory {
  buffer: ArrayBuffer;
  fd: number;
  size: number;
  pageSize: number;
}

const CAP_IPC_LOCK = 14;
const LARGE_ALLOCATION = 16 * 1024 * 1024;

function hasIpcLock(): boolean {
  try {
    const line = /^CapEff:\s*([0-9a-f]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    return line !== null && (BigInt(`0x${line[1]}`) & (1n << BigInt(CAP_IPC_LOCK))) !== 0n;
  } catch {
    return false;
  }
}

function memlockHint(): string {
  const [soft] = native.getrlimit(constants.RLIMIT_MEMLOCK);
  if (soft < 0) return 'RLIMIT_MEMLOCK is unlimited, so the system is out of memory';
  if (hasIpcLock()) return `RLIMIT_MEMLOCK is ${soft} bytes but CAP_IPC_LOCK lifts it, so the system is out of memory`;
  return `RLIMIT_MEMLOCK is ${soft} bytes; raise it (ulimit -l) or run with CAP_IPC_LOCK`;
}

/**
 * Refuse what cannot fit in memory before trying: populating and locking more than the machine
 * has would end in the OOM killer, not in an error. (Going over RLIMIT_MEMLOCK needs no check of
 * its own: mlock fails, and that failure is reported below with the limit named.) Reading the
 * free memory costs a /proc read, so only sizes that could matter pay for it.
 */
function checkFits(size: number): void {
  if (size < LARGE_ALLOCATION) return;
  const available = os.freemem();
  if (size > available) {
    throw new UserpciError('ENOMEM', `cannot allocate ${size} bytes of locked DMA memory: only ${available} bytes are available (${memlockHint()})`);
  }
}

function tryAllocate(size: number, huge: boolean): DmaMemory {
  const pageSize = huge ? HUGE_PAGE_SIZE : constants.PAGE_SIZE;
  const length = alignUp(size, pageSize);
  const fd = native.memfdCreate('userpci-dma', huge ? constants.MFD_HUGETLB : 0);
  let buffer: ArrayBuffer | undefined;
  try {
    native.ftruncate(fd, length);
    buffer = native.mmap(length, constants.PROT_READ | constants.PROT_WRITE, constants.MAP_SHARED | constants.MAP_POPULATE, fd, 0);
    native.madvise(buffer, constants.MADV_DONTFORK);
    native.mlock(buffer);
    return { buffer, fd, size: length, pageSize };
  } catch (err) {
    if (buffer) native.munmap(buffer);
    native.close(fd);
    throw err;
  }
}

export function allocateDmaMemory(size: number, hugePages: HugePagePolicy = 'auto'): DmaMemory {
  checkFits(size);
  const wantHuge = hugePages === 'always' || (hugePages === 'auto' && size >= HUGE_PAGE_SIZE);
  try {
    if (wantHuge) {
      try {
        return tryAllocate(size, true);
      } catch (err) {
        if (hugePages === 'always') throw err;
        // No free hugepages (or none configured): 4 KiB pages work, only the IOTLB pays.
      }
    }
    return tryAllocate(size, false);
  } catch (err) {
    if (isSystemError(err) && (err.code === 'ENOMEM' || err.code === 'EAGAIN' || err.code === 'EPERM')) {
      throw new UserpciError('ENOMEM', `cannot allocate ${size} bytes of locked DMA memory: ${memlockHint()}`, { cause: err, errno: err.errno, syscall: err.syscall });
    }
    throw wrapSystemError(err, `allocating ${size} bytes of DMA memory`);
  }
}

export function releaseDmaMemory(memory: DmaMemory): void {
  native.munmap(memory.buffer);
  native.close(memory.fd);
}

export { memlockHint };
