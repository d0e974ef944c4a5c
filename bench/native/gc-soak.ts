/**
 * A long run of the NVMe driver's promise API under whatever GC configuration node was started
 * with: evidence for (or against) a young-generation collector before anyone recommends it.
 *
 *   node --minor-mc --single-threaded-gc dist/bench/native/gc-soak.js [SECONDS]   (default 600)
 *
 * In turns until the time is up: the bench's promise drive on the instant device (QD 1, 32 and
 * 256, every read awaited and counted), and a write/read-back workload on the test simulator
 * (src/drivers/nvme/workload.ts: patterned writes of 512 B..1 MiB read back and compared). Beside
 * them a table of long-lived objects is partly replaced each turn, so objects get promoted, old
 * objects point at young ones and the old generation is collected now and then, as in a server.
 * Every 30 s a line: I/Os, GCs by kind (perf_hooks), RSS, heap. A miscount, a mismatch, a
 * rejected read or a crash fails the run; at the end a heap snapshot walks every object.
 * Exit 0 and a last line `SOAK OK {...}` when all held. Not a benchmark: it times nothing.
 */
import * as v8 from 'node:v8';
import { PerformanceObserver } from 'node:perf_hooks';
import { NvmeController } from '../../src/drivers/nvme/controller';
import { planWrites, runWorkload } from '../../src/drivers/nvme/workload';
import { NvmeSimulator } from '../../test/support/nvme-simulator';
import { InstantNvme } from './instant-nvme';
import { promiseDriver, unitMaskOf } from './promise-drive';

const seconds = Number(process.argv[2] ?? 600);
if (!(seconds > 0)) throw new Error('usage: gc-soak.js [SECONDS]');

/** perf_hooks gc kinds (V8 GCType bits): 1 scavenge, 2 minor mark-compact, 4 mark-sweep-compact, 8 incremental marking, 16 weak callbacks. */
const gcs = new Map<number, number>();
/** Per kind: the longest pause and all pauses, ms (wall time: a preempted pause counts whole). */
const maxPause = new Map<number, number>();
const totalPause = new Map<number, number>();
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    const kind = (e as unknown as { detail?: { kind?: number } }).detail?.kind ?? 0;
    gcs.set(kind, (gcs.get(kind) ?? 0) + 1);
    maxPause.set(kind, Math.max(maxPause.get(kind) ?? 0, e.duration));
    totalPause.set(kind, (totalPause.get(kind) ?? 0) + e.duration);
  }
}).observe({ entryTypes: ['gc'] });
const ms = (m: Map<number, number>) => Object.fromEntries([...m].map(([k, v]) => [k, Math.round(v * 10) / 10]));

/** Long-lived state: a table whose entries are replaced at random (promotion, old-to-young pointers). */
const table: { id: number; payload: number[]; next: unknown }[] = [];
let tableSeed = 12345;
function churnTable(n: number): void {
  for (let i = 0; i < n; i++) {
    tableSeed = (tableSeed * 1103515245 + 12345) >>> 0;
    const at = tableSeed % 50_000;
    table[at] = { id: at, payload: [at, i, tableSeed], next: table[(at + 1) % 50_000] };
  }
}
function checkTable(): void {
  for (let i = 0; i < table.length; i++) {
    const e = table[i];
    if (e !== undefined && (e.id !== i || e.payload[0] !== i)) throw new Error(`table entry ${i} holds ${JSON.stringify(e.payload)} (id ${e.id})`);
  }
}

async function main(): Promise<void> {
  const start = Date.now();
  const until = start + seconds * 1000;
  // The instant device: three queue pairs at QD 1, 32, 256.
  const { device, nvme } = InstantNvme.open();
  const ctrl = await nvme.answering(() => NvmeController.open(device, { defaultQueue: false }));
  const ns = await nvme.answering(() => ctrl.namespace(1));
  const buf = ctrl.allocBuffer(4096 * 256);
  const queues = [];
  for (const qd of [1, 32, 256]) {
    const q = await nvme.answering(() => ctrl.createQueuePair({ depth: qd, pollSpinUs: 0, pollBurst: 0 }));
    queues.push({ qd, drive: promiseDriver(ns, q, nvme, buf.iova, qd, unitMaskOf(ns)) });
  }
  // The simulator: data that must read back as written.
  const simOpen = NvmeSimulator.open({ blocks: 1 << 16, mdts: 8 });
  const simCtrl = await NvmeController.open(simOpen.device, { defaultQueue: { depth: 32 } });
  const simNs = await simCtrl.namespace(1);

  let reads = 0;
  let verifiedBytes = 0;
  let writes = 0;
  let turn = 0;
  let nextReport = start + 30_000;
  const report = (what: string) => {
    const h = v8.getHeapStatistics();
    console.log(`${what} ${((Date.now() - start) / 1000).toFixed(0)} s: reads ${reads}, verified writes ${writes} (${(verifiedBytes / 2 ** 20).toFixed(0)} MiB), GCs by kind ${JSON.stringify(Object.fromEntries(gcs))}, longest pause ms ${JSON.stringify(ms(maxPause))}, RSS ${(process.memoryUsage.rss() / 2 ** 20).toFixed(0)} MiB, heap used ${(h.used_heap_size / 2 ** 20).toFixed(0)} MiB`);
  };
  try {
    while (Date.now() < until) {
      for (const { qd, drive } of queues) {
        const ios = qd === 1 ? 100_000 : 400_000;
        await drive(ios);
        reads += ios;
        churnTable(20_000);
      }
      const plan = planWrites({ seed: turn, blocks: simNs.blocks, blockSize: simNs.blockSize, count: 64, maxBytes: 1 << 20 });
      const r = await runWorkload(simNs, plan, { concurrency: 8 });
      if (r.mismatches.length > 0) throw new Error(`turn ${turn}: read-back mismatches ${JSON.stringify(r.mismatches.slice(0, 3))}`);
      writes += r.writes;
      verifiedBytes += r.bytesVerified;
      checkTable();
      turn++;
      if (Date.now() >= nextReport) {
        report('soak');
        nextReport += 30_000;
      }
    }
    // A heap snapshot visits every object in the heap.
    let snapshotBytes = 0;
    for await (const chunk of v8.getHeapSnapshot()) snapshotBytes += (chunk as Buffer).length;
    report('end');
    console.log(`SOAK OK ${JSON.stringify({ seconds: Math.round((Date.now() - start) / 1000), execArgv: process.execArgv, reads, writes, verifiedMiB: Math.round(verifiedBytes / 2 ** 20), gcs: Object.fromEntries(gcs), longestPauseMs: ms(maxPause), totalPauseMs: ms(totalPause), snapshotMiB: Math.round(snapshotBytes / 2 ** 20) })}`);
  } finally {
    buf.free();
    await nvme.answering(() => ctrl.close()).catch(() => undefined);
    if (!device.closed) device.close();
    await simCtrl.close().catch(() => undefined);
    simOpen.device.close();
  }
}

main().then(
  () => process.exit(0),
  (err: Error) => {
    console.error(`SOAK FAILED: ${err.stack ?? err.message}`);
    process.exit(1);
  },
);
