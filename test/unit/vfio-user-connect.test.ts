/**
 * openDevice on a socket that is not a vfio-user server: one that answers in another protocol is
 * named as such (not "message of N bytes exceeds ..."), and a silent one fails after the
 * connect timeout the caller chose. The peers run in a child process: the client blocks its
 * thread while it waits for the handshake.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openDevice } from '../../src/device/open.js';

const directory = mkdtempSync(join(tmpdir(), 'userpci-not-vfio-user-'));
const httpSocket = join(directory, 'http.sock');
const silentSocket = join(directory, 'silent.sock');
let peers: ChildProcess;

before(async () => {
  const script = `
    const net = require('node:net');
    let ready = 0;
    const up = () => { if (++ready === 2) process.stdout.write('ready\\n'); };
    net.createServer((s) => { s.on('error', () => {}); s.end('HTTP/1.1 400 Bad Request\\r\\nContent-Length: 0\\r\\n\\r\\n'); }).listen(process.argv[1], up);
    net.createServer((s) => { s.on('error', () => {}); }).listen(process.argv[2], up);`;
  peers = spawn(process.execPath, ['-e', script, httpSocket, silentSocket], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    peers.stdout!.on('data', (chunk: Buffer) => chunk.toString().includes('ready') && resolve());
    peers.once('exit', (code) => reject(new Error(`peer process exited ${code}`)));
  });
});

after(() => {
  peers.kill();
  rmSync(directory, { recursive: true, force: true });
});

describe('openDevice on a socket that is not a vfio-user server', () => {
  it('names a peer speaking another protocol', async () => {
    await assert.rejects(openDevice(httpSocket), (error: Error & { code?: string }) => {
      assert.equal(error.code, 'EPROTO');
      assert.ok(error.message.startsWith(`${httpSocket} is not a vfio-user server (`), error.message);
      return true;
    });
  });

  it('gives up on a silent peer after connectTimeoutMs', { timeout: 60_000 }, async () => {
    await assert.rejects(openDevice(silentSocket, { connectTimeoutMs: 200 }), {
      code: 'ETIMEDOUT',
      message: `${silentSocket} is not a vfio-user server (no answer to the version handshake within 200 ms)`,
    });
  });

  it('rejects a connect timeout that is not a positive number', async () => {
    await assert.rejects(openDevice(silentSocket, { connectTimeoutMs: -1 }), { code: 'EINVAL', message: /connectTimeoutMs must be a positive number/ });
  });
});
