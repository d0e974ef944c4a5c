/**
 * Child process for the DMA-safety guest tests (dma-safety.test.ts).
 *
 *   dma-child.js inflight ADDRESS     map a buffer (the first IOVA this owner gets), start a DMA
 *                                     into it, say "started", then block without yielding (to be
 *                                     killed with -9 mid-transfer)
 *   dma-child.js memlock ADDRESS KIB  the memlock scenario for that RLIMIT_MEMLOCK, run as a
 *                                     non-root user; prints one JSON line of outcomes
 */
import { openDevice } from '../../src/device/open';
import { EduDriver } from '../../src/drivers/edu/edu-driver';
import { DMA_BUFFER_USABLE, EDU_DEFAULT_DMA_MASK } from '../../src/drivers/edu/registers';

interface Outcome {
  ok: boolean;
  code?: string;
  errno?: number;
  message?: string;
}

function attempt(fn: () => unknown): Outcome {
  try {
    fn();
    return { ok: true };
  } catch (e) {
    const err = e as { code?: string; errno?: number; message?: string; name?: string };
    return { ok: false, code: err.code, errno: err.errno, message: `${err.name}: ${err.message}` };
  }
}

async function inflight(address: string): Promise<void> {
  const device = await openDevice(address, { dmaMask: EDU_DEFAULT_DMA_MASK });
  const edu = new EduDriver(device);
  const target = device.mapDma(new Uint8Array(4096), 'from-device');
  await edu.copyToDevice(new Uint8Array(DMA_BUFFER_USABLE).fill(0xd9), 0);
  edu.startDma('from-device', target.iova, 0, DMA_BUFFER_USABLE, false);
  process.stdout.write(`started 0x${target.iova.toString(16)}\n`);
  // Never yield again: the parent kills us while the transfer runs.
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
}

async function memlock(address: string, kib: number): Promise<void> {
  const device = await openDevice(address, { dmaMask: EDU_DEFAULT_DMA_MASK });
  const out: Record<string, Outcome | number> = { limit: kib * 1024 };
  if (kib === 0) {
    out.alloc4k = attempt(() => device.allocDma(4096));
    out.map4k = attempt(() => device.mapDma(new Uint8Array(4096).fill(1), 'to-device'));
  } else if (kib === 64) {
    out.alloc48k = attempt(() => device.allocDma(48 << 10));
    // Never written: a read-only pin of it would be the shared zero page, which is not charged.
    out.map1m = attempt(() => device.mapDma(new Uint8Array(1 << 20), 'to-device'));
    out.alloc16k = attempt(() => device.allocDma(16 << 10));
    out.map1b = attempt(() => device.mapDma(new Uint8Array(1), 'bidirectional'));
  } else {
    let whole: ReturnType<typeof device.allocDma> | undefined;
    out.alloc1m = attempt(() => (whole = device.allocDma(1 << 20)));
    out.map4k = attempt(() => device.mapDma(new Uint8Array(4096), 'from-device'));
    whole?.free();
    out.map512kAfterFree = attempt(() => device.mapDma(new Uint8Array(512 << 10), 'to-device'));
  }
  device.close();
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

const [mode, address, arg] = process.argv.slice(2);
const run = mode === 'inflight' ? inflight(address!) : memlock(address!, Number(arg));
run.catch((err) => {
  process.stderr.write(`${err.name} ${err.code ?? ''} ${err.message}\n`);
  process.exit(1);
});
