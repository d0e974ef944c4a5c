/**
 * The NVMe promise API driven at a queue depth on the instant device (instant-nvme.ts): `qd`
 * workers each await one 4 KiB read after another at random LBAs, while one poll pass after
 * another (a `then()` on a settled promise, as the driver schedules its own) runs the device and
 * polls the queue. bench:native measures it; gc-soak.ts runs it for minutes.
 */
import type { NvmeQueue } from '../../src/drivers/nvme/queue';
import type { NvmeNamespace } from '../../src/drivers/nvme/namespace';
import type { InstantNvme } from './instant-nvme';

/** xorshift32 state in a typed array: an int32 kept in a variable is a heap number whenever it leaves the Smi range. */
const lbaState = new Int32Array([0x2545f491]);

/** A random 4 KiB unit below mask + 1. */
export function nextUnit(mask: number): number {
  let x = lbaState[0]!;
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  lbaState[0] = x;
  return x & mask;
}

/**
 * LBAs in 4 KiB units below a power of two, as C's `% (1u << 21)` (a mask): `%` by a variable on a
 * uint32 above 2^31 (a double) is an fprem loop, which cost every JS case several ns.
 */
export function unitMaskOf(ns: NvmeNamespace): number {
  return 2 ** Math.floor(Math.log2(ns.blocks / 8)) - 1;
}

/**
 * `drive(ios)` resolves once `ios` reads completed; a failed read, or a throw from the device or
 * the poll, rejects it.
 */
export function promiseDriver(ns: NvmeNamespace, q: NvmeQueue, nvme: InstantNvme, iova: number, qd: number, unitMask: number): (ios: number) => Promise<void> {
  const settled = Promise.resolve();
  return async (ios: number) => {
    let issued = 0;
    let done = 0;
    let failure: Error | null = null;
    const worker = async (slot: number) => {
      const slotIova = iova + slot * 4096; // computed once, as for the callback API
      while (issued < ios) {
        issued++;
        await ns.readIova(nextUnit(unitMask) * 8, slotIova, 4096, q);
        done++;
      }
    };
    const workers: Promise<void>[] = [];
    for (let i = 0; i < Math.min(qd, ios); i++) workers.push(worker(i).catch((err: Error) => void (failure ??= err)));
    await new Promise<void>((resolve, reject) => {
      const pass = (): void => {
        try {
          nvme.run();
          q.poll();
        } catch (err) {
          reject(err as Error);
          return;
        }
        if (failure !== null) reject(failure);
        else if (done < ios) void settled.then(pass);
        else resolve();
      };
      void settled.then(pass);
    });
    await Promise.all(workers);
  };
}
