/**
 * The DMA-safety suite (test/shared/dma-safety-suite.ts) against the TypeScript edu model over
 * vfio-user, served on a worker thread. The model takes 100 ms per DMA, as QEMU's edu does, so a
 * transfer is still running when its owner closes the device. The guest runs the same suite
 * against QEMU's edu through VFIO (test/guest/dma-safety.test.ts).
 */
import { before, after } from 'node:test';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openDevice } from '../../src/device/open';
import { startServerThread, type ServerThread } from '../../src/vfio-user/server/thread';
import { registerDmaSafetySuite } from '../shared/dma-safety-suite';

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
