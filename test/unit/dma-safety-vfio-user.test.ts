/**
 * The DMA-safety suite (test/shared/dma-safety-suite.ts) against the TypeScript edu model over
 * vfio-user, served on a worker thread. The model takes 100 ms per DMA, as QEMU's edu does, so a
 * transfer is still running when its owner closes the device. The guest runs the same suite
 * against QEMU's edu through VFIO (test/guest/dma-safety.test.ts).
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openDevice } from '../../src/device/open';
import { startServerThread, type ServerThread } from '../../src/vfio-user/server/thread';
import { registerDmaSafetySuite } from '../shared/dma-safety-suite';
import { DMA_CMD_START, EDU_DEFAULT_DMA_MASK, REG_DMA_CMD } from '../../src/drivers/edu/registers';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'userpci-dma-safety-'));
const socket = path.join(dir, 'edu.sock');
let server: ServerThread;

before(async () => {
  server = await startServerThread({ model: 'edu', modelOptions: { dmaDelayMs: 100 }, socketPath: socket });
});

after(async () => {
  await server.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

registerDmaSafetySuite({
  label: 'vfio-user, edu model',
  open: (dmaMask) => openDevice(socket, dmaMask === undefined ? {} : { dmaMask }),
  target: socket,
  closeRounds: 6,
});

test('vfio-user, edu model: kill -9 during a DMA, then a new owner: mastering off until its driver enables it, nothing lands in its memory (3 rounds)', async () => {
  for (let round = 0; round < 3; round++) {
    const child = spawn(process.execPath, [path.join(__dirname, '..', 'guest', 'dma-child.js'), 'inflight', socket], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => { stderr += d; });
    const exited = new Promise<NodeJS.Signals | null>((r) => child.on('exit', (_c, signal) => r(signal)));
    await new Promise<void>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d) => {
        out += d;
        if (/started 0x/.test(out)) resolve();
      });
      child.on('exit', (code) => reject(new Error(`in-flight child exited ${code} before starting: ${stderr}`)));
    });
    const disconnected = server.nextDisconnect();
    child.kill('SIGKILL');
    assert.equal(await exited, 'SIGKILL');
    await disconnected;
    await using device = await openDevice(socket, { dmaMask: EDU_DEFAULT_DMA_MASK });
    assert.equal(device.busMaster, false, 'no bus mastering for the new owner yet');
    const victim = new Uint8Array(256 << 10);
    const m = device.mapDma(victim, 'bidirectional');
    const regs = device.bar(0);
    while (regs.read32(REG_DMA_CMD) & DMA_CMD_START) await new Promise((r) => setImmediate(r));
    assert.equal(victim.findIndex((b) => b !== 0), -1, `round ${round}: nothing of the killed owner's DMA in the new owner's memory`);
    m.unmap();
  }
});
