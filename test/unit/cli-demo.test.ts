/**
 * `userpci demo` through the real entry point (node bin/userpci.js): the whole run against a
 * server it starts itself, the JSON form, an already-running server (--socket), and failures:
 * no server, a device that is not an edu, and a server that dies in the middle of a DMA.
 */
import { test, after } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const REPO = path.resolve(__dirname, '..', '..', '..');
const ENTRY = path.join(REPO, 'bin', 'userpci.js');
const tempDirs: string[] = [];
after(() => {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

const STEPS = ['server', 'open', 'identify', 'liveness', 'factorial', 'dma-alloc', 'dma-to-device', 'dma-from-device', 'intx', 'msi', 'shutdown'];

function demo(args: string[] = []) {
  return spawnSync(process.execPath, [ENTRY, 'demo', ...args], { encoding: 'utf8', timeout: 60_000 });
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** `userpci serve MODEL --socket PATH ...` started by the test; resolves once it listens. */
async function serve(model: string, extra: string[] = []): Promise<{ socket: string; child: ChildProcess; exited: Promise<number | null> }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'userpci-demo-test-'));
  tempDirs.push(dir);
  const socket = path.join(dir, `${model}.sock`);
  const child = spawn(process.execPath, [ENTRY, 'serve', model, '--socket', socket, ...extra], { stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    let text = '';
    child.stderr!.on('data', (d: Buffer) => {
      text += d.toString();
      if (text.includes('listening')) resolve();
    });
    child.on('exit', () => reject(new Error(`serve ${model} exited early: ${text}`)));
  });
  return { socket, child, exited };
}

test('userpci demo: starts its own server, drives every step, shuts down, exit 0', () => {
  const r = demo();
  assert.equal(r.status, 0, `stdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  assert.equal(r.stderr, '');
  const lines = r.stdout.trimEnd().split('\n');
  assert.match(lines[0]!, /^userpci demo: the edu driver against the edu model served by a child process/);
  // One line per step, in order, each with a timing.
  const stepLines = lines.slice(1, -1);
  assert.deepEqual(stepLines.map((l) => l.trim().split(/\s+/)[0]), STEPS);
  for (const l of stepLines) assert.match(l, /\d+(\.\d+)? (µs|ms|s)  /, l);
  const text = r.stdout;
  assert.match(text, /server .*userpci serve edu \(pid (\d+)\) listening on (\S+)/);
  assert.match(text, /identify .*PCI 1234:11e8, ID register 0x010000ed: edu version 1\.0/);
  assert.match(text, /liveness .*wrote 0x5a5aa5a5, read back 0xa5a55a5a \(inverted\)/);
  assert.match(text, /factorial .*10! = 3628800, polled/);
  assert.match(text, /dma-alloc .*coherent DMA buffer, 8 KiB at IOVA 0x[0-9a-f]+/);
  assert.match(text, /dma-to-device .*4095 bytes from IOVA 0x[0-9a-f]+ into the device's buffer/);
  assert.match(text, /dma-from-device .*4095 bytes from the device's buffer to IOVA 0x[0-9a-f]+, verified identical/);
  assert.match(text, /intx .*INTx: 10! = 3628800 in .*, 4095-byte DMA round trip in .*, verified; \d+ interrupts/);
  assert.match(text, /msi .*MSI: 10! = 3628800 in .*, 4095-byte DMA round trip in .*, verified; ([3-9]|\d\d+) interrupts/);
  assert.match(text, /shutdown .*DMA memory freed, device closed, server exited 0/);
  assert.match(lines.at(-1)!, /^ok: 11 steps passed in /);
  // Nothing is left behind: the server is gone, its socket and directory too.
  const [, pid, socket] = /userpci serve edu \(pid (\d+)\) listening on (\S+)/.exec(text)!;
  assert.equal(isAlive(Number(pid)), false, 'the server process exited');
  assert.equal(fs.existsSync(path.dirname(socket!)), false, 'the temporary socket directory is removed');
});

test('userpci demo --json: one object with every step, its timing and results', () => {
  const r = demo(['--json']);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.equal(out.ok, true);
  assert.equal(typeof out.totalMs, 'number');
  assert.deepEqual(out.steps.map((s: any) => s.name), STEPS);
  for (const s of out.steps) {
    assert.equal(s.ok, true, s.name);
    assert.ok(typeof s.ms === 'number' && s.ms >= 0, s.name);
  }
  const step = (name: string) => out.steps.find((s: any) => s.name === name).details;
  assert.deepEqual(step('identify'), { pciId: '1234:11e8', id: '0x010000ed', version: '1.0' });
  assert.equal(step('open').backend, 'vfio-user');
  assert.equal(step('factorial').result, 3628800);
  assert.equal(step('dma-from-device').verified, true);
  assert.equal(step('dma-from-device').bytes, 4095);
  assert.match(step('dma-alloc').iova, /^0x[0-9a-f]+$/);
  assert.ok(step('intx').interrupts >= 1);
  assert.ok(step('msi').interrupts >= 3, 'one MSI per completion');
  assert.equal(step('shutdown').serverExit, 0);
});

test('userpci demo --socket PATH drives a server that is already running and leaves it running', async () => {
  const server = await serve('edu');
  try {
    const r = demo(['--socket', server.socket]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`against the server at ${server.socket.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    assert.ok(!/^\s+server /m.test(r.stdout), 'no server step when one is given');
    assert.match(r.stdout, /shutdown .*device closed \(the server keeps running\)/);
    assert.match(r.stdout, /^ok: 10 steps passed/m);
    const again = demo(['--socket', server.socket, '--json']);
    assert.equal(again.status, 0, again.stderr);
    assert.equal(JSON.parse(again.stdout).ok, true, 'and serves the next client');
  } finally {
    server.child.kill('SIGTERM');
    assert.equal(await server.exited, 0);
  }
});

test('userpci demo fails clearly: no server, not an edu, bad usage', async () => {
  const none = demo(['--socket', path.join(os.tmpdir(), `no-such-${process.pid}.sock`)]);
  assert.equal(none.status, 1);
  assert.match(none.stderr, /^userpci demo: FAILED at step "open": .*no socket there \(is the server running\?\)\n$/);
  assert.match(none.stdout, /open\s+FAILED\s+after/);

  const noneJson = demo(['--json', '--socket', path.join(os.tmpdir(), `no-such-${process.pid}.sock`)]);
  assert.equal(noneJson.status, 1);
  const out = JSON.parse(noneJson.stdout);
  assert.equal(out.ok, false);
  assert.equal(out.failedStep, 'open');
  assert.equal(out.error.code, 'ENOENT');

  const testdev = await serve('testdev');
  try {
    const r = demo(['--socket', testdev.socket]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /FAILED at step "open": .*is not an edu device/);
  } finally {
    testdev.child.kill('SIGTERM');
    await testdev.exited;
  }

  const usage = demo(['extra']);
  assert.equal(usage.status, 2);
  assert.match(usage.stderr, /unexpected argument "extra"\nusage: userpci demo/);
});

test('userpci demo fails clearly when the server dies in the middle of a DMA', async () => {
  // A DMA on this server takes 3 s: long enough to kill it mid-transfer.
  const server = await serve('edu', ['--dma-delay-ms', '3000']);
  const child = spawn(process.execPath, [ENTRY, 'demo', '--socket', server.socket], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  await new Promise<void>((resolve) => {
    child.stdout!.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (stdout.includes('dma-alloc')) resolve();
    });
  });
  await new Promise((r) => setTimeout(r, 300)); // the DMA is running now
  server.child.kill('SIGKILL');
  assert.equal(await exited, 1, stdout); // a hang would meet the test's own timeout instead
  assert.match(stderr, /^userpci demo: FAILED at step "dma-to-device": .*(closed|gone|lost)/);
  await server.exited;
});

test('userpci serve --json: a "listening" line when ready, "stopped" with the count of clients at the end, failures as JSON', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'userpci-serve-json-'));
  tempDirs.push(dir);
  const socket = path.join(dir, 'edu.sock');
  const child = spawn(process.execPath, [ENTRY, 'serve', 'edu', '--socket', socket, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (stdout.includes('\n')) resolve();
    });
    child.on('exit', () => reject(new Error(`serve exited early: ${stderr}`)));
  });
  assert.deepEqual(JSON.parse(stdout.split('\n')[0]!), { event: 'listening', model: 'edu', socket, pid: child.pid });
  const r = demo(['--socket', socket, '--json']);
  assert.equal(r.status, 0, r.stderr);
  child.kill('SIGTERM');
  assert.equal(await exited, 0, stderr);
  assert.deepEqual(stdout.trimEnd().split('\n').map((line) => JSON.parse(line)), [
    { event: 'listening', model: 'edu', socket, pid: child.pid },
    { event: 'stopped', clientsServed: 1 },
  ]);
  assert.equal(stderr, '', 'nothing on stderr under --json');

  const bad = spawnSync(process.execPath, [ENTRY, 'serve', 'nosuchmodel', '--socket', socket, '--json'], { encoding: 'utf8' });
  assert.notEqual(bad.status, 0);
  assert.equal(JSON.parse(bad.stdout).error.code.length > 0, true);
  assert.equal(bad.stderr, '');
  const usage = spawnSync(process.execPath, [ENTRY, 'serve', 'edu', '--json'], { encoding: 'utf8' });
  assert.equal(usage.status, 2);
  assert.deepEqual(JSON.parse(usage.stdout), { error: { code: 'EINVAL', message: 'give exactly one of --socket PATH and --fd N' } });
});

test('userpci trace FILE --json: the events as one array; a file that is not a trace fails as JSON', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'userpci-trace-json-'));
  tempDirs.push(dir);
  const events = [{ t: 1000, ev: 'reset' }, { t: 2000, ev: 'irq', index: 2, vector: 0, count: 1 }];
  fs.writeFileSync(path.join(dir, 'trace'), events.map((event) => JSON.stringify(event)).join('\n') + '\n');
  const r = spawnSync(process.execPath, [ENTRY, 'trace', path.join(dir, 'trace'), '--json'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), events);
  fs.writeFileSync(path.join(dir, 'text'), 'hello\n');
  const bad = spawnSync(process.execPath, [ENTRY, 'trace', path.join(dir, 'text'), '--json'], { encoding: 'utf8' });
  assert.equal(bad.status, 1);
  assert.deepEqual(JSON.parse(bad.stdout), { error: { code: 'EINVAL', message: `${path.join(dir, 'text')} line 1 is not JSON: not a proxy trace` } });
});
