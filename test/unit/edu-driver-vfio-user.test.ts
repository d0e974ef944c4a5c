/**
 * The edu driver's shared suite (test/shared/edu-driver-suite.ts) against the TypeScript edu
 * model over vfio-user, two ways: served on a worker thread of this process, and served by
 * `userpci serve edu` in a child process. The guest runs the same suite against QEMU's edu
 * through VFIO (test/guest/vfio-edu.test.ts).
 *
 * Also here: `serve --fd N` on an inherited socket, transfers larger than a socket buffer, and a
 * synchronous wait that sleeps instead of spinning while the server does not answer.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { openDevice } from '../../src/device/open';
import { PciDevice } from '../../src/device/device';
import { native } from '../../src/native/index';
import { connectVfioUser, connectVfioUserFd } from '../../src/vfio-user/client/client';
import { startServerThread, type ServerThread } from '../../src/vfio-user/server/thread';
import { EduDriver } from '../../src/drivers/edu/edu-driver';
import { EDU_DEFAULT_DMA_MASK } from '../../src/drivers/edu/registers';
import { registerEduDriverSuite, pattern, EDU_ID } from '../shared/edu-driver-suite';

const CLI = path.resolve(__dirname, '../../../bin/userpci.js');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'userpci-edu-driver-'));
const threadSocket = path.join(dir, 'thread.sock');
const childSocket = path.join(dir, 'child.sock');

let thread: ServerThread;
let child: ChildProcess;
let childExit: Promise<number | null>;

/** `userpci serve edu ...` in a child process; resolves once it listens (or has started, with --fd). */
function spawnServe(args: string[], extraStdio: (number | 'ignore')[] = []): { child: ChildProcess; exited: Promise<number | null>; ready: Promise<void> } {
  const proc = spawn(process.execPath, [CLI, 'serve', 'edu', ...args], { stdio: ['ignore', 'ignore', 'pipe', ...extraStdio] });
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  let stderr = '';
  const ready = new Promise<void>((resolve, reject) => {
    proc.stderr!.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      if (stderr.includes('listening')) resolve();
    });
    proc.on('exit', (code) => reject(new Error(`userpci serve exited (${code}) before listening: ${stderr}`)));
  });
  ready.catch(() => {}); // with --fd nobody waits for it
  return { child: proc, exited, ready };
}

before(async () => {
  thread = await startServerThread({ model: 'edu', socketPath: threadSocket });
  const served = spawnServe(['--socket', childSocket]);
  child = served.child;
  childExit = served.exited;
  await served.ready;
});

after(async () => {
  await thread.stop();
  child.kill('SIGTERM');
  assert.equal(await childExit, 0, 'userpci serve exits 0 on SIGTERM');
  fs.rmSync(dir, { recursive: true, force: true });
});

registerEduDriverSuite({
  label: 'vfio-user, server on a worker thread',
  open: () => openDevice(threadSocket, { dmaMask: EDU_DEFAULT_DMA_MASK }),
  fullIommu: false,
  mapsAnyMemory: true,
});

registerEduDriverSuite({
  label: 'vfio-user, `userpci serve edu` in a child process',
  open: () => openDevice(childSocket, { dmaMask: EDU_DEFAULT_DMA_MASK }),
  fullIommu: false,
  mapsAnyMemory: true,
});

test('`userpci serve edu --fd 3`: an inherited blocking socket is served, and the server exits when its client leaves', async () => {
  const [ours, theirs] = native.socketpair();
  native.setNonBlocking(theirs, false); // as a parent that knows nothing of O_NONBLOCK would hand it over
  const served = spawnServe(['--fd', '3'], [theirs]);
  native.close(theirs);
  const device = new PciDevice(connectVfioUserFd(ours, { name: 'serve --fd 3' }), { dmaMask: EDU_DEFAULT_DMA_MASK });
  try {
    device.enable();
    const edu = new EduDriver(device);
    assert.equal(edu.identify().id, EDU_ID);
    assert.equal(await edu.factorial(10), 3628800);
    const data = pattern(2000, 1);
    await edu.copyToDevice(data, 0);
    assert.deepEqual(await edu.copyFromDevice(0, 2000), data);
  } finally {
    device.close();
  }
  assert.equal(await served.exited, 0);
});

test('`userpci serve --fd` refuses what is not an open socket', async () => {
  for (const [fd, code, message] of [['0', 2, /not a socket/], ['77', 1, /EBADF/]] as const) {
    const proc = spawn(process.execPath, [CLI, 'serve', 'edu', '--fd', fd], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exit = await new Promise<number | null>((resolve) => proc.on('exit', (c) => resolve(c)));
    assert.equal(exit, code, stderr);
    assert.match(stderr, message);
  }
});

test('region transfers larger than a socket buffer, synchronous and several in flight', async () => {
  const c = connectVfioUser(threadSocket);
  try {
    const big = new Uint8Array(1 << 20);
    for (let i = 0; i < 4; i++) {
      assert.equal(c.regionWrite(0, 0, big), big.length);
      assert.equal(c.regionRead(0, 0, big), big.length);
    }
    const inFlight: Promise<number>[] = [];
    for (let i = 0; i < 4; i++) inFlight.push(c.regionWriteAsync(0, 0, new Uint8Array(1 << 20)), c.regionReadAsync(0, 0, new Uint8Array(1 << 20)));
    assert.deepEqual(await Promise.all(inFlight), new Array(8).fill(1 << 20));
    // edu answers wide accesses with all ones: the data made it back through the whole path.
    assert.ok(big.every((b) => b === 0xff));
  } finally {
    c.close();
  }
});

test('a synchronous request sleeps while the server does not answer, and times out on time', async () => {
  const sock = path.join(dir, 'stopped.sock');
  const served = spawnServe(['--socket', sock]);
  await served.ready;
  const c = connectVfioUser(sock, { timeoutMs: 1000 });
  process.kill(served.child.pid!, 'SIGSTOP');
  try {
    const cpu = process.cpuUsage();
    assert.throws(() => c.regionRead(0, 0, new Uint8Array(4)), (e: any) => e.code === 'ETIMEDOUT');
    const used = process.cpuUsage(cpu);
    const cpuMs = (used.user + used.system) / 1000;
    // Spinning would burn the whole 1 s timeout in CPU time; poll(2) sleeps. (CPU time, not
    // elapsed time: other load on the machine does not add to it.)
    assert.ok(cpuMs < 300, `${cpuMs.toFixed(1)} ms of CPU over a 1000 ms timeout`);
  } finally {
    process.kill(served.child.pid!, 'SIGCONT');
    c.close();
    served.child.kill('SIGTERM');
  }
  assert.equal(await served.exited, 0);
});
