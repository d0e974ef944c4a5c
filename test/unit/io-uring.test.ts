import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';

import { IoUring } from '../../src/io-uring/io-uring';
import { constants as C, native } from '../../src/native';

// URING_CMD on a file whose driver has no uring_cmd completes with -EOPNOTSUPP, on a closed fd
// with -EBADF: real kernel completions without any device.
const EOPNOTSUPP = -95;
const EBADF = -9;

describe('io_uring (SQE128 URING_CMDs, completions on the event loop)', () => {
  it('delivers each completion once, with its user_data and result, through the eventfd watcher', async () => {
    const ring = new IoUring(8);
    const fd = native.open(__filename, C.O_RDONLY);
    try {
      const got = new Map<number, number>();
      const all = new Promise<void>((resolve) => ring.onCompletion((userData, res) => {
        assert.ok(!got.has(userData), `user_data ${userData} completed twice`);
        got.set(userData, res);
        if (got.size === 3) resolve();
      }));
      ring.prepUringCmd(fd, 0x1234, 0xfffffff0);
      ring.prepUringCmd(fd, 0x1234, 7);
      ring.prepUringCmd(100_000, 0, 8);
      assert.equal(ring.pending, 3);
      assert.equal(ring.submit(), 3);
      await all;
      assert.deepEqual([...got.entries()].sort((a, b) => a[0] - b[0]), [[7, EOPNOTSUPP], [8, EBADF], [0xfffffff0, EOPNOTSUPP]]);
    } finally {
      ring.close();
      native.close(fd);
    }
  });

  it('wraps around its rings: 1000 commands through 8 entries, every one completed', async () => {
    const ring = new IoUring(8);
    const fd = native.open(__filename, C.O_RDONLY);
    try {
      let next = 0;
      let done = 0;
      const seen = new Uint8Array(1000);
      await new Promise<void>((resolve) => {
        const refill = () => {
          while (next < 1000 && ring.sqSpace > 0 && next - done < 8) ring.prepUringCmd(fd, 1, next++);
          ring.submit();
        };
        ring.onCompletion((userData, res) => {
          assert.equal(res, EOPNOTSUPP);
          seen[userData]!++;
          if (++done === 1000) resolve();
          else if (next < 1000) queueMicrotask(refill);
        });
        refill();
      });
      assert.ok(seen.every((n) => n === 1), 'each command completed exactly once');
    } finally {
      ring.close();
      native.close(fd);
    }
  });

  it('refuses a full submission queue with EBUSY, and everything after close with EBADF', () => {
    const ring = new IoUring(4);
    for (let i = 0; i < ring.sqEntries; i++) ring.prepUringCmd(-1, 0, i);
    assert.throws(() => ring.prepUringCmd(-1, 0, 99), (e: any) => e.code === 'EBUSY');
    ring.close();
    ring.close();
    assert.throws(() => ring.prepUringCmd(-1, 0, 0), (e: any) => e.code === 'EBADF');
    assert.throws(() => ring.submit(), (e: any) => e.code === 'EBADF');
  });

  it('waits for completions synchronously when asked (minComplete), without a watcher', () => {
    const ring = new IoUring(2);
    try {
      ring.prepUringCmd(-1, 0, 5);
      ring.submit(1);
      const got: number[][] = [];
      assert.equal(ring.drain((u, res) => got.push([u, res])), 1);
      assert.deepEqual(got, [[5, EBADF]]);
    } finally {
      ring.close();
    }
  });

  it('brackets each drain that finds completions with the batch hooks, and takes in the same drain what a handler submits', async () => {
    const ring = new IoUring(8);
    const fd = native.open(__filename, C.O_RDONLY);
    try {
      const events: string[] = [];
      let resubmitted = false;
      let finished!: () => void;
      const all = new Promise<void>((resolve) => (finished = resolve));
      ring.onCompletion((userData) => {
        events.push(`cqe ${userData}`);
        if (!resubmitted) {
          // Completes inside io_uring_enter (EOPNOTSUPP at issue): in the CQ when submit returns.
          resubmitted = true;
          ring.prepUringCmd(fd, 1, 9);
          ring.submit();
        }
        if (userData === 9) finished();
      }, true, { begin: () => events.push('begin'), end: () => events.push('end') });
      assert.equal(ring.drain(), 0);
      assert.deepEqual(events, [], 'an empty drain calls neither hook');
      ring.prepUringCmd(fd, 1, 1);
      ring.prepUringCmd(fd, 1, 2);
      const enters = ring.enters;
      ring.submit();
      assert.equal(ring.enters, enters + 1);
      assert.equal(ring.ready, true, 'inline completions are in the CQ when submit returns');
      await all;
      assert.deepEqual(events, ['begin', 'cqe 1', 'cqe 2', 'cqe 9', 'end']);
      assert.equal(ring.ready, false);
    } finally {
      ring.close();
      native.close(fd);
    }
  });

  it('with deferTaskrun (SINGLE_ISSUER, DEFER_TASKRUN, TASKRUN_FLAG) still delivers every completion through the watcher and drain', async () => {
    const ring = new IoUring(8, { deferTaskrun: true });
    const fd = native.open(__filename, C.O_RDONLY);
    try {
      const got: number[] = [];
      let finished!: () => void;
      const all = new Promise<void>((resolve) => (finished = resolve));
      ring.onCompletion((userData, res) => {
        assert.equal(res, EOPNOTSUPP);
        got.push(userData);
        if (got.length === 4) finished();
      });
      for (let i = 0; i < 4; i++) ring.prepUringCmd(fd, 1, i);
      assert.equal(ring.submit(), 4);
      await all;
      assert.deepEqual(got, [0, 1, 2, 3]);
      assert.equal(ring.ready, false);
    } finally {
      ring.close();
      native.close(fd);
    }
  });
});
