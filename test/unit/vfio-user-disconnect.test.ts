/**
 * A vfio-user server that dies under a device: every pending interrupt wait rejects with ENODEV,
 * `removed` fires, and every later call fails with ENODEV, however the socket reported the loss
 * (end of stream when the server had read everything, ECONNRESET when it died with our request
 * unread in its socket).
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { openDevice } from '../../src/device/open';
import type { PciDevice } from '../../src/device/device';
import type { VfioUserClient } from '../../src/vfio-user/client/client';

const CLI = path.resolve(__dirname, '../../../bin/userpci.js');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'userpci-disconnect-'));

async function spawnServe(socket: string): Promise<ChildProcess> {
  const proc = spawn(process.execPath, [CLI, 'serve', 'edu', '--socket', socket], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  await new Promise<void>((resolve, reject) => {
    proc.stderr!.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      if (stderr.includes('listening')) resolve();
    });
    proc.on('exit', (code) => reject(new Error(`userpci serve exited (${code}) before listening: ${stderr}`)));
  });
  return proc;
}

/** Only a guard against hanging forever (the bug this file catches); nothing here is timed. */
const HANG_GUARD = { timeout: 30_000 };

const isEnodev = (e: any) => e?.code === 'ENODEV';

async function killedUnder(device: PciDevice, server: ChildProcess, inFlight?: () => Promise<unknown>): Promise<void> {
  const removed = once(device, 'removed');
  const vectors = device.enableInterrupts('msi', 1);
  const waits = [vectors[0]!.wait(), vectors[0]!.wait()];
  for (const w of waits) w.catch(() => {});
  let pending: Promise<unknown> | undefined;
  if (inFlight) {
    // Stop the server first so our request stays unread in its socket: its death then resets the connection.
    server.kill('SIGSTOP');
    pending = inFlight();
    pending.catch(() => {});
  }
  const exited = once(server, 'exit');
  server.kill('SIGKILL');
  await exited;
  for (const w of waits) await assert.rejects(w, isEnodev);
  await removed;
  assert.equal(device.wasRemoved, true);
  if (pending) await assert.rejects(pending, isEnodev);
  assert.throws(() => device.bar(0), isEnodev);
  assert.throws(() => device.config.read16(0), isEnodev);
  await assert.rejects(vectors[0]!.wait(), isEnodev);
}

test('server killed while idle: waits reject with ENODEV and removed fires', HANG_GUARD, async () => {
  const socket = path.join(dir, 'idle.sock');
  const server = await spawnServe(socket);
  const device = await openDevice(socket);
  try {
    assert.equal(device.bar(0).read32(0), 0x010000ed);
    await killedUnder(device, server);
  } finally {
    device.close();
  }
});

test('server killed with a request of ours unread (connection reset): the same ENODEV everywhere', HANG_GUARD, async () => {
  const socket = path.join(dir, 'reset.sock');
  const server = await spawnServe(socket);
  const device = await openDevice(socket);
  try {
    const client = device.backend as VfioUserClient;
    await killedUnder(device, server, () => client.regionReadAsync(7, 0, new Uint8Array(64)));
  } finally {
    device.close();
  }
});

test('a synchronous call after the server died fails with ENODEV, and the device is released', HANG_GUARD, async () => {
  const socket = path.join(dir, 'sync.sock');
  const server = await spawnServe(socket);
  const device = await openDevice(socket);
  try {
    const removed = once(device, 'removed');
    const exited = once(server, 'exit');
    server.kill('SIGKILL');
    await exited;
    // The loss may be seen first by this call (the event loop has not run the socket watcher yet).
    assert.throws(() => device.backend.regionRead(7, 0, new Uint8Array(4)), isEnodev);
    await removed;
    assert.throws(() => device.config.read16(0), isEnodev);
  } finally {
    device.close();
  }
});
