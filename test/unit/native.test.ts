import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { native, constants } from '../../src/native/index';

const RW = constants.PROT_READ | constants.PROT_WRITE;
const ANON = constants.MAP_SHARED | constants.MAP_ANONYMOUS;

test('mmap gives memory that Atomics can use, munmap detaches every view', () => {
  const ab = native.mmap(2 * constants.PAGE_SIZE, RW, ANON, -1, 0);
  const words = new Uint32Array(ab);
  Atomics.store(words, 3, 0xdeadbeef);
  assert.equal(Atomics.load(words, 3), 0xdeadbeef);
  assert.equal(native.addressOf(ab) % constants.PAGE_SIZE, 0);
  native.munmap(ab);
  assert.equal(words.length, 0, 'views are detached, so no access can touch unmapped memory');
  assert.equal(words[3], undefined);
  assert.throws(() => native.munmap(ab), (e: any) => e.code === 'EINVAL' && e.syscall === 'munmap');
});

test('failures carry code, errno and syscall like Node fs errors', () => {
  assert.throws(() => native.open('/nonexistent/userpci', constants.O_RDONLY),
    (e: any) => e.code === 'ENOENT' && e.errno === -2 && e.syscall === 'open' && e instanceof Error);
  assert.throws(() => native.ioctl(-1, 0x3b64), (e: any) => e.code === 'EBADF' && e.syscall === 'ioctl');
  assert.throws(() => native.mmap(0, RW, ANON, -1, 0), TypeError);
  assert.throws(() => native.pread(0, new Uint8Array(1), -1), TypeError);
});

test('memfd, ftruncate, pwrite/pread and a shared mapping see the same bytes', () => {
  const fd = native.memfdCreate('userpci-test', 0);
  try {
    native.ftruncate(fd, constants.PAGE_SIZE);
    native.pwrite(fd, Buffer.from('hello'), 100);
    const ab = native.mmap(constants.PAGE_SIZE, RW, constants.MAP_SHARED, fd, 0);
    assert.equal(Buffer.from(ab, 100, 5).toString(), 'hello');
    new Uint8Array(ab)[200] = 42;
    const back = new Uint8Array(1);
    native.pread(fd, back, 200);
    assert.equal(back[0], 42);
    native.madvise(ab, constants.MADV_DONTFORK);
    native.mlock(ab);
    native.munlock(ab);
    native.munmap(ab);
  } finally {
    native.close(fd);
  }
});

test('an eventfd watcher calls back on the event loop with the counter', async () => {
  const fd = native.eventfd(0, constants.EFD_NONBLOCK);
  const seen: number[] = [];
  await new Promise<void>((resolve) => {
    const handle = native.watch(fd, 1, true, (status, value) => {
      assert.equal(status, 0);
      seen.push(value);
      native.watchStop(handle);
      resolve();
    });
    native.eventfdWrite(fd, 3);
  });
  assert.deepEqual(seen, [3]);
  assert.equal(native.eventfdRead(fd), 0, 'the watcher consumed the counter');
  native.close(fd);
});

test('an unref-ed watcher does not keep the process alive', async () => {
  const { spawnSync } = await import('node:child_process');
  const script = `const {native}=require(${JSON.stringify(require.resolve('../../src/native/index'))});
    const fd=native.eventfd(0,0); const h=native.watch(fd,1,true,()=>{}); native.watchRef(h,false);`;
  const r = spawnSync(process.execPath, ['-e', script], { timeout: 10_000 });
  assert.equal(r.status, 0, `exited on its own: ${r.stderr}`);
});

test('sendmsg/recvmsg carry file descriptors that refer to the same file', () => {
  const [a, b] = native.socketpair();
  const memfd = native.memfdCreate('userpci-fd', 0);
  native.pwrite(memfd, Buffer.from('shared'), 0);
  assert.equal(native.sendmsg(a, [Buffer.from('hdr'), Buffer.from('body')], [memfd]), 7);
  const buf = Buffer.alloc(64);
  const r = native.recvmsg(b, buf, 4);
  assert.equal(r.bytes, 7);
  assert.equal(buf.subarray(0, 7).toString(), 'hdrbody');
  assert.equal(r.fds.length, 1);
  assert.notEqual(r.fds[0], memfd);
  const got = Buffer.alloc(6);
  native.pread(r.fds[0]!, got, 0);
  assert.equal(got.toString(), 'shared');
  assert.equal(native.recvmsg(b, buf, 4).bytes, -1, 'would block');
  // More fds than allowed: the extra ones are closed and the message flagged.
  native.sendmsg(a, [Buffer.from('x')], [memfd, memfd, memfd]);
  const r2 = native.recvmsg(b, buf, 1);
  assert.equal(r2.fds.length, 1);
  assert.equal(r2.truncated, true);
  for (const fd of [a, b, memfd, r.fds[0]!, r2.fds[0]!]) native.close(fd);
});

test('UNIX listen/connect/accept', () => {
  const os = require('node:os') as typeof import('node:os');
  const path = `${os.tmpdir()}/userpci-native-${process.pid}.sock`;
  const fs = require('node:fs') as typeof import('node:fs');
  fs.rmSync(path, { force: true });
  const l = native.unixListen(path, 4);
  assert.equal(native.unixAccept(l), -1);
  const c = native.unixConnect(path);
  const s = native.unixAccept(l);
  assert.ok(s >= 0);
  native.write(c, Buffer.from('ping'));
  const buf = Buffer.alloc(4);
  assert.equal(native.read(s, buf), 4);
  assert.equal(buf.toString(), 'ping');
  native.close(c);
  assert.equal(native.read(s, buf), 0, 'end of stream');
  for (const fd of [s, l]) native.close(fd);
  fs.rmSync(path);
  assert.throws(() => native.unixConnect(path), (e: any) => e.code === 'ENOENT');
});

test('ioctl passes a numeric third argument by value', () => {
  // FIONREAD on a socket with 3 bytes queued writes 3 through the pointer we pass.
  const [a, b] = native.socketpair();
  native.write(a, Buffer.from('abc'));
  const count = new Int32Array(1);
  native.ioctl(b, 0x541b, count);
  assert.equal(count[0], 3);
  // A number is passed as the argument itself: FIONBIO takes a pointer, so a small integer
  // there makes the kernel fault on the address: EFAULT proves the value reached it.
  assert.throws(() => native.ioctl(b, 0x5421, 16), (e: any) => e.code === 'EFAULT');
  native.close(a);
  native.close(b);
});

test('poll waits for readiness with a timeout; setNonBlocking and fstat', () => {
  const [a, b] = native.socketpair();
  assert.deepEqual(native.poll([b], constants.POLLIN, 50), [0], 'nothing ready: the timeout ends the wait');
  native.write(a, Buffer.from('x'));
  assert.deepEqual(native.poll([a, b], constants.POLLIN, 1000), [0, constants.POLLIN]);
  native.setNonBlocking(b, false);
  const buf = Buffer.alloc(1);
  assert.equal(native.read(b, buf), 1, 'blocking read returns the byte');
  native.setNonBlocking(b, true);
  assert.equal(native.read(b, buf), -1, 'non-blocking again');
  const memfd = native.memfdCreate('stat', 0);
  native.ftruncate(memfd, 12345);
  assert.equal(native.fstat(memfd).size, 12345);
  assert.throws(() => native.poll([], constants.POLLIN, 0), (e: any) => e.code === 'EINVAL');
  for (const fd of [a, b, memfd]) native.close(fd);
});

test('read/write take an optional offset and length inside the view, and refuse one outside it', () => {
  const [a, b] = native.socketpair();
  try {
    native.setNonBlocking(b, true);
    const out = Uint8Array.from([9, 8, 7, 6, 5, 4]);
    assert.equal(native.write(a, out, 2, 3), 3);
    const into = new Uint8Array(8);
    assert.equal(native.read(b, into, 4, 4), 3);
    assert.deepEqual([...into], [0, 0, 0, 0, 7, 6, 5, 0]);
    assert.equal(native.read(b, into, 0, 8), -1, 'nothing more: would block');
    assert.throws(() => native.write(a, out, 4, 3), /outside the buffer/);
    assert.throws(() => native.read(b, into, 9, 0), /outside the buffer/);
    assert.throws(() => native.write(a, out, 1), /offset and length/);
  } finally {
    native.close(a);
    native.close(b);
  }
});
