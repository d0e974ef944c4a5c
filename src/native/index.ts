/**
 * Typed access to the C addon (native/userpci.c). Syscalls only: every function maps to one
 * system call, and every failure throws an Error with `code`, `errno` and `syscall`.
 */
import * as path from 'node:path';
import { UserpciError } from '../errors';

export type Bytes = ArrayBufferView | ArrayBuffer;

export interface RecvResult {
  /** Bytes received; 0 at end of stream, -1 when the call would block. */
  bytes: number;
  /** File descriptors that arrived with the message (SCM_RIGHTS). */
  fds: number[];
  /** True when descriptors were dropped (over maxFds, or cut by the kernel): treat as malformed. */
  truncated: boolean;
}

/** Opaque handle of a libuv poll watcher. */
export type WatchHandle = { readonly __watchHandle: unique symbol };

export interface NativeConstants {
  O_RDONLY: number; O_WRONLY: number; O_RDWR: number; O_NONBLOCK: number; O_SYNC: number;
  PROT_NONE: number; PROT_READ: number; PROT_WRITE: number;
  MAP_SHARED: number; MAP_PRIVATE: number; MAP_ANONYMOUS: number; MAP_HUGETLB: number;
  MAP_POPULATE: number; MAP_LOCKED: number; MAP_NORESERVE: number;
  MADV_DONTFORK: number; MADV_DOFORK: number; MADV_HUGEPAGE: number; MADV_DONTDUMP: number;
  MFD_ALLOW_SEALING: number; MFD_HUGETLB: number;
  EFD_NONBLOCK: number; EFD_SEMAPHORE: number;
  RLIMIT_MEMLOCK: number; RLIMIT_NOFILE: number;
  POLLIN: number; POLLOUT: number; POLLERR: number; POLLHUP: number; POLLNVAL: number;
  SCHED_OTHER: number; SCHED_FIFO: number;
  PAGE_SIZE: number;
}

export interface NativeAddon {
  open(path: string, flags: number): number;
  close(fd: number): void;
  /** arg: a buffer (its address is passed), a number (by value) or a string (NUL-terminated). */
  ioctl(fd: number, request: number, arg?: Bytes | number | string): number;
  pread(fd: number, buffer: Bytes, offset: number): number;
  pwrite(fd: number, buffer: Bytes, offset: number): number;
  /** -1 when the fd is non-blocking and nothing is ready. */
  read(fd: number, buffer: Bytes, offset?: number, length?: number): number;
  /** offset/length (both or neither) pick bytes of the view, so a caller need not make a subarray per call. */
  write(fd: number, buffer: Bytes, offset?: number, length?: number): number;
  ftruncate(fd: number, size: number): void;
  memfdCreate(name: string, flags: number): number;
  /** An ArrayBuffer over the new mapping; release it with munmap (views detach first). */
  mmap(length: number, prot: number, flags: number, fd: number, offset: number): ArrayBuffer;
  munmap(buffer: ArrayBuffer): void;
  /** Live mapping records and the hash-chain links walked so far (lets tests count the table's work). */
  mappingStats(): { live: number; steps: number };
  madvise(buffer: Bytes, advice: number): void;
  mlock(buffer: Bytes): void;
  munlock(buffer: Bytes): void;
  /** Virtual address of the first byte of the view (below 2^47 on x86-64, so a safe number). */
  addressOf(buffer: Bytes): number;
  /** [soft, hard]; -1 means unlimited. */
  getrlimit(resource: number): [number, number];
  eventfd(initval: number, flags: number): number;
  /** The counter, 0 if nothing was signalled (fd must be non-blocking). */
  eventfdRead(fd: number): number;
  eventfdWrite(fd: number, value: number): void;
  /**
   * One read(2) of an eventfd, retried on EINTR: blocks this thread until it is signalled when the
   * fd is blocking (0 when a non-blocking one holds nothing). Returns the counter.
   */
  eventfdTake(fd: number): number;
  /** The calling thread runs only on these CPUs from now on (sched_setaffinity). */
  setThreadAffinity(cpus: Int32Array): void;
  /** The calling thread's scheduling policy and priority from now on (sched_setscheduler): SCHED_FIFO 1-99, SCHED_OTHER 0. */
  setThreadScheduler(policy: number, priority: number): void;
  /** A second fd for the same file (close-on-exec). */
  dup(fd: number): number;
  /**
   * Watch fd on the event loop. events: 1 readable, 2 writable. In eventfd mode the counter is
   * read in C and passed as `value`; otherwise `value` is the ready event mask.
   */
  watch(fd: number, events: number, eventfdMode: boolean, callback: (status: number, value: number) => void): WatchHandle;
  watchStop(handle: WatchHandle): void;
  watchRef(handle: WatchHandle, keepAlive: boolean): void;
  unixListen(path: string, backlog: number): number;
  /** -1 when no connection is pending. */
  unixAccept(fd: number): number;
  unixConnect(path: string): number;
  socketpair(): [number, number];
  /** -1 when the socket would block. */
  sendmsg(fd: number, buffers: Bytes[], fds: number[]): number;
  recvmsg(fd: number, buffer: Bytes, maxFds: number): RecvResult;
  setNonBlocking(fd: number, on: boolean): void;
  /** Block this thread until one of fds is ready or timeoutMs passes (-1: forever); revents per fd. */
  poll(fds: number[], events: number, timeoutMs: number): number[];
  fstat(fd: number): { size: number; mode: number };
  /** io_uring_setup(2): params is a 120-byte struct io_uring_params, filled in by the kernel. */
  ioUringSetup(entries: number, params: Bytes): number;
  /** io_uring_enter(2) without a signal mask: SQEs consumed. */
  ioUringEnter(fd: number, toSubmit: number, minComplete: number, flags: number): number;
  /** io_uring_register(2). */
  ioUringRegister(fd: number, opcode: number, arg: Bytes | null, nrArgs: number): number;
  constants: NativeConstants;
}

function load(): NativeAddon {
  // dist/src/native/index.js -> <package root>/build/Release/userpci_native.node
  const root = path.resolve(__dirname, '..', '..', '..');
  const file = path.join(root, 'build', 'Release', 'userpci_native.node');
  try {
    return require(file) as NativeAddon;
  } catch (err) {
    // One line (bin/userpci.js prints the first line of a failure): why it did not load, and what to run.
    const reason = (err as { code?: string }).code === 'MODULE_NOT_FOUND' ? 'it was not built' : String((err as Error).message).split('\n')[0];
    throw new UserpciError('ENOENT', `cannot load the native addon at ${file} (${reason}); run \`npm ci\` in the package folder to build it`, { cause: err });
  }
}

export const native: NativeAddon = load();
export const constants: NativeConstants = native.constants;
