/**
 * The client's DMA maps as the server sees them. Memory the client shared by fd is mmapped here
 * and accessed directly; memory without fd is reached with DMA_READ/DMA_WRITE messages (the
 * `remote` callbacks). Every access is checked against the map's permissions first, because
 * touching a read-only mapping would kill the server with SIGSEGV.
 */
import { native, constants } from '../../native/index';
import { UserpciError, type UserpciErrorCode } from '../../errors';
import { DmaFlags, Errno } from '../protocol/codec';
import { closeFds } from '../protocol/transport';
import { errnoOf } from '../protocol/channel';

export interface DmaMapping {
  iova: number;
  size: number;
  readable: boolean;
  writable: boolean;
  /** The server's mapping of the client's fd; undefined for message-based access. */
  memory: Uint8Array | undefined;
  buffer: ArrayBuffer | undefined;
}

export interface RemoteDma {
  read(iova: number, length: number): Promise<Uint8Array>;
  write(iova: number, data: Uint8Array): Promise<void>;
}

/**
 * Real hardware behind the maps (the proxy's VFIO container): every map must be mapped here, and
 * each one is handed to it after mapping and taken back before unmapping.
 */
export interface DmaIommu {
  /** Throws (an error with an errno code) to refuse the map. */
  map(mapping: DmaMapping & { memory: Uint8Array }): void;
  /** Must not throw. False: the unmap failed, so the IOMMU may still map the range. */
  unmap(mapping: DmaMapping): boolean;
}

export class DmaSpace {
  /** Sorted by iova; never overlapping. */
  private maps: DmaMapping[] = [];
  /**
   * Maps whose IOMMU unmap failed: the device may still reach them, so their memory stays mapped
   * here (pinned, never freed under the device) and their IOVAs are refused (EBUSY) to every
   * later map of this space's life (for the proxy, every later client).
   */
  private readonly stuck: DmaMapping[] = [];

  constructor(
    private readonly maxMaps = 65535,
    private readonly iommu?: DmaIommu,
  ) {}

  get count(): number {
    return this.maps.length;
  }

  /**
   * Add a map. Returns 0 or an errno. `fd` (if any) is consumed either way: mmapped and closed,
   * since the mapping keeps the memory alive and the spec wants passed fds released. Behind an
   * IOMMU a map without fd, or one whose fd cannot be mapped, is refused: a real device reaches
   * memory only through the IOMMU, never by messages.
   */
  map(iova: number, size: number, flags: number, fd: number | undefined, offset: number): number {
    try {
      if (fd === undefined && this.iommu) return Errno.ENOTSUP;
      if (size <= 0 || iova + size > Number.MAX_SAFE_INTEGER || (flags & ~(DmaFlags.READ | DmaFlags.WRITE)) !== 0) return Errno.EINVAL;
      if (this.maps.length >= this.maxMaps) return Errno.ENOSPC;
      if (this.maps.some((m) => iova < m.iova + m.size && m.iova < iova + size)) return Errno.EEXIST;
      if (this.stuck.some((m) => iova < m.iova + m.size && m.iova < iova + size)) return Errno.EBUSY;
      const mapping: DmaMapping = {
        iova,
        size,
        readable: (flags & DmaFlags.READ) !== 0,
        writable: (flags & DmaFlags.WRITE) !== 0,
        memory: undefined,
        buffer: undefined,
      };
      if (fd !== undefined) {
        if (!this.fdCovers(fd, offset, size)) return Errno.EINVAL;
        const prot = (mapping.readable ? constants.PROT_READ : 0) | (mapping.writable ? constants.PROT_WRITE : 0);
        try {
          [mapping.buffer, mapping.memory] = mapFd(fd, offset, size, prot || constants.PROT_READ);
        } catch (err) {
          // Not mappable (a socket, a read-only fd, odd offset): messages reach it, but no IOMMU does.
          if (this.iommu) return errnoOf(err);
          mapping.buffer = undefined;
        }
        if (this.iommu) {
          try {
            this.iommu.map(mapping as DmaMapping & { memory: Uint8Array });
          } catch (err) {
            native.munmap(mapping.buffer!);
            return errnoOf(err);
          }
        }
      }
      this.maps.push(mapping);
      this.maps.sort((a, b) => a.iova - b.iova);
      return 0;
    } finally {
      if (fd !== undefined) closeFds([fd]);
    }
  }

  /**
   * A file shorter than the map would raise SIGBUS on access past its end: refuse such a map.
   * (A client that shrinks the file later can still do that; trust ends there, as in the spec.)
   */
  private fdCovers(fd: number, offset: number, size: number): boolean {
    let st: { size: number; mode: number };
    try {
      st = native.fstat(fd);
    } catch {
      return true; // cannot tell: mmap decides (and failing, the map falls back to messages)
    }
    if ((st.mode & S_IFMT) !== S_IFREG) return true; // not a regular file (memfds are): mmap decides
    return Number.isSafeInteger(offset) && offset >= 0 && offset + size <= st.size;
  }

  /** Remove the map that matches exactly. Returns 0 or an errno (EIO: the IOMMU unmap failed; the range is stuck). */
  unmap(iova: number, size: number): number {
    const i = this.maps.findIndex((m) => m.iova === iova && m.size === size);
    if (i < 0) return Errno.ENOENT;
    const released = this.release(this.maps[i]!);
    this.maps.splice(i, 1);
    return released ? 0 : Errno.EIO;
  }

  clear(): void {
    for (const m of this.maps) this.release(m);
    this.maps = [];
  }

  /** Take a map down; false when the IOMMU may still map it (it is then kept as stuck). */
  private release(m: DmaMapping): boolean {
    if (m.buffer && this.iommu && !this.iommu.unmap(m)) {
      this.stuck.push(m);
      return false;
    }
    if (m.buffer) native.munmap(m.buffer);
    m.buffer = undefined;
    m.memory = undefined;
    return true;
  }

  /** The maps covering [iova, iova+length) in order, or undefined if any byte is unmapped. */
  private cover(iova: number, length: number): { mapping: DmaMapping; start: number; length: number }[] | undefined {
    if (!Number.isSafeInteger(iova) || !Number.isSafeInteger(length) || iova < 0 || length < 0) return undefined;
    const out = [];
    let at = iova;
    const end = iova + length;
    while (at < end) {
      const m = this.maps.find((x) => x.iova <= at && at < x.iova + x.size);
      if (!m) return undefined;
      const n = Math.min(end, m.iova + m.size) - at;
      out.push({ mapping: m, start: at, length: n });
      at += n;
    }
    return out;
  }

  async read(iova: number, length: number, remote: RemoteDma): Promise<Uint8Array> {
    const parts = this.cover(iova, length);
    if (!parts) throw fault(`DMA read of ${length} bytes at 0x${iova.toString(16)} is outside the client's maps`);
    const out = new Uint8Array(length);
    let filled = 0;
    for (const p of parts) {
      if (!p.mapping.readable) throw fault(`DMA read at 0x${p.start.toString(16)}: the client did not allow the device to read there`, 'EPERM');
      const data = p.mapping.memory
        ? p.mapping.memory.subarray(p.start - p.mapping.iova, p.start - p.mapping.iova + p.length)
        : await remote.read(p.start, p.length);
      out.set(data, filled);
      filled += p.length;
    }
    return out;
  }

  async write(iova: number, data: Uint8Array, remote: RemoteDma): Promise<void> {
    const parts = this.cover(iova, data.length);
    if (!parts) throw fault(`DMA write of ${data.length} bytes at 0x${iova.toString(16)} is outside the client's maps`);
    for (const p of parts) {
      if (!p.mapping.writable) throw fault(`DMA write at 0x${p.start.toString(16)}: the client did not allow the device to write there`, 'EPERM');
    }
    let taken = 0;
    for (const p of parts) {
      const chunk = data.subarray(taken, taken + p.length);
      if (p.mapping.memory) p.mapping.memory.set(chunk, p.start - p.mapping.iova);
      else await remote.write(p.start, chunk);
      taken += p.length;
    }
  }
}

/**
 * The fd's bytes [offset, offset+size) in this process. A hugetlb file (an `allocDma` buffer on
 * 2 MiB pages) maps only at hugepage-aligned offsets and lengths (mmap says EINVAL): such a map
 * of part of a hugepage maps the whole hugepages around it and views the part asked for, so the
 * IOMMU (which pins at 4 KiB granularity) still gets exactly the map's pages.
 */
function mapFd(fd: number, offset: number, size: number, prot: number): [ArrayBuffer, Uint8Array] {
  try {
    const buffer = native.mmap(size, prot, constants.MAP_SHARED, fd, offset);
    return [buffer, new Uint8Array(buffer)];
  } catch (err) {
    const start = Math.floor(offset / HUGE_PAGE) * HUGE_PAGE;
    const end = Math.ceil((offset + size) / HUGE_PAGE) * HUGE_PAGE;
    if (errnoOf(err) !== Errno.EINVAL || (start === offset && end === offset + size)) throw err;
    const buffer = native.mmap(end - start, prot, constants.MAP_SHARED, fd, start);
    return [buffer, new Uint8Array(buffer, offset - start, size)];
  }
}

const HUGE_PAGE = 2 * 1024 * 1024;
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;

function fault(message: string, code: UserpciErrorCode = 'EFAULT'): UserpciError {
  return new UserpciError(code, message);
}
