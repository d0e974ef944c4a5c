/**
 * A ublk queue thread's device for test/guest/ublk-threads.test.ts: a disk in memory every
 * queue thread shares (a SharedArrayBuffer), built on the thread by UblkThreadServer. Counts
 * requests and closes per queue in a second shared array; refuses to be built for `failQueue`.
 */
import type { UblkThreadDevice } from '../../src/exports/ublk/queue-thread';

export interface MemoryThreadData {
  disk: SharedArrayBuffer;
  /** Int32 per queue: [requests, closed] pairs. */
  counters: SharedArrayBuffer;
  failQueue?: number;
  /** This queue's device refuses its tag buffers: the start fails after the device was added. */
  failBuffersQueue?: number;
}

export function createUblkDevice(data: unknown, queue: { qid: number }): UblkThreadDevice {
  const d = data as MemoryThreadData;
  if (d.failQueue === queue.qid) throw Object.assign(new Error(`queue ${queue.qid} refuses to start`), { code: 'EIO' });
  const bytes = new Uint8Array(d.disk);
  const counters = new Int32Array(d.counters);
  const count = () => Atomics.add(counters, 2 * queue.qid, 1);
  return {
    allocIoBuffer(size: number) {
      if (d.failBuffersQueue === queue.qid) throw Object.assign(new Error(`queue ${queue.qid} has no buffers`), { code: 'ENOMEM' });
      return new Uint8Array(size);
    },
    size: bytes.length, blockSize: 512, maxRequest: 1 << 20, readOnly: false, canTrim: true, canWriteZeroes: true,
    async readInto(offset: number, target: Uint8Array) {
      count();
      target.set(bytes.subarray(offset, offset + target.length));
    },
    async read(offset: number, length: number) {
      count();
      return bytes.slice(offset, offset + length);
    },
    async write(offset: number, from: Uint8Array) {
      count();
      bytes.set(from, offset);
    },
    async flush() {
      count();
    },
    async trim(offset: number, length: number) {
      count();
      bytes.fill(0, offset, offset + length);
    },
    async writeZeroes(offset: number, length: number) {
      count();
      bytes.fill(0, offset, offset + length);
    },
    async close() {
      Atomics.store(counters, 2 * queue.qid + 1, 1);
    },
  };
}
