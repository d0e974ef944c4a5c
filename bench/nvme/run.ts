/**
 * `npm run bench:nvme`: this NVMe driver against the kernel's, side by side in one guest, on
 * QEMU's nvme over a null block backend (reads cost the device nothing but its emulation).
 *
 * Host side: compiles bench/nvme/kernel-baseline.c statically (cc -static -O2) into .cache,
 * boots one guest with two nvme devices (512- and 4096-byte LBA formats) and runs
 * bench/nvme/guest.ts there. Prints IOPS for both, the ratio per case, the JS heap before and
 * after, and last the RESULT line:
 *   RESULT {"bench": "nvme", "cases": [{"name", "ours", "baseline", "unit": "IOPS", "ratio"}], "qd1SchedulingShare": {callback, promise}}
 * Each case appears three times: the promise API (its plain name), `<name> callback` and
 * `<name> batch` (the caller polls). qd1SchedulingShare: the share of the polled driver's cost
 * per I/O at QD1 that is scheduling, 1 - IOPS / IOPS of the callback API with the caller polling.
 * `proxy`: the same driver with the device held by `userpci proxy` in another process, against a
 * direct VFIO run opened afresh right after it (ratio = proxy / vfio; issue 13 asks >= 0.9).
 *
 * Options: --seconds S (per measurement, default 5), --warmup S (default 1), --profile (CPU
 * profile of ours on the QD32 cases, self time by function), --cases a,b, --memory MIB, --no-proxy.
 */
import { arg, benchMain, buildStatic, runGuestBench } from '../guest-bench';
import type { CaseResult } from './guest';

const NULL_SIZE = 8 * 1024 * 1024 * 1024;

const BENCH_DEVICES = [
  '-blockdev', `driver=null-co,node-name=null512,size=${NULL_SIZE},read-zeroes=on`,
  '-device', 'nvme,drive=null512,serial=bench-512',
  '-blockdev', `driver=null-co,node-name=null4k,size=${NULL_SIZE},read-zeroes=on`,
  '-device', 'nvme,drive=null4k,serial=bench-4k,logical_block_size=4096,physical_block_size=4096',
];

async function main(): Promise<number> {
  const seconds = Number(arg('--seconds') ?? 5);
  const warmup = Number(arg('--warmup') ?? 1);
  const guestArgs = ['--baseline', buildStatic('bench/nvme/kernel-baseline.c'), '--seconds', String(seconds), '--warmup', String(warmup)];
  if (process.argv.includes('--profile')) guestArgs.push('--profile');
  const cases = arg('--cases');
  if (cases) guestArgs.push('--cases', cases);
  if (process.argv.includes('--no-proxy')) guestArgs.push('--no-proxy');
  const t0 = Date.now();
  const data = await runGuestBench<{ node: string; cpus: number; results: CaseResult[] }>('nvme', {
    devices: BENCH_DEVICES,
    // 2 MiB pages for the DMA buffers (the kernel's O_DIRECT buffer is ordinary memory).
    command: `echo 64 > /proc/sys/vm/nr_hugepages; node --expose-gc dist/bench/nvme/guest.js ${guestArgs.join(' ')}`,
    timeoutMs: 20 * 60_000,
    memoryMiB: Number(arg('--memory') ?? 1536),
  });
  if (!data) return 1;
  console.log('');
  console.log(`NVMe 4 KiB/128 KiB reads, QEMU nvme on null-co, guest with ${data.cpus} vCPUs (TCG), node ${data.node}; ${seconds} s per measurement; ${Math.round((Date.now() - t0) / 1000)} s in all`);
  console.log(`${'case'.padEnd(26)} ${'kernel IOPS'.padStart(12)} ${'promise'.padStart(9)} ${'ratio'.padStart(6)} ${'callback'.padStart(9)} ${'ratio'.padStart(6)} ${'batch'.padStart(9)} ${'ratio'.padStart(6)}  ${'waiting'.padStart(7)}   JS heap before -> after (promise run)`);
  for (const r of data.results) {
    const col = (m: { iops: number }) => `${Math.round(m.iops).toString().padStart(9)} ${(m.iops / r.baseline.iops).toFixed(2).padStart(6)}`;
    console.log(`${r.name.padEnd(26)} ${Math.round(r.baseline.iops).toString().padStart(12)} ${col(r.ours)} ${col(r.oursCallbacks)} ${col(r.oursBatch)}  ${`${(100 * r.spinShare).toFixed(0)}%`.padStart(7)}   ${(r.heapBefore / 1048576).toFixed(2)} -> ${(r.heapAfter / 1048576).toFixed(2)} MiB`);
  }
  const proxied = data.results.filter((r) => r.viaProxy && r.vfioBeside);
  if (proxied.length) {
    console.log('');
    console.log(`${'case'.padEnd(26)} ${'vfio IOPS'.padStart(10)} ${'proxy IOPS'.padStart(12)} ${'ratio'.padStart(7)}`);
    for (const r of proxied) console.log(`${r.name.padEnd(26)} ${Math.round(r.vfioBeside!.iops).toString().padStart(10)} ${Math.round(r.viaProxy!.iops).toString().padStart(12)} ${(r.viaProxy!.iops / r.vfioBeside!.iops).toFixed(2).padStart(7)}`);
    console.log('proxy = the promise API with the device held by `userpci proxy` in another process, no --trace;');
    console.log('vfio = the same run on vfio-pci directly, opened afresh right after the proxy run.');
  }
  console.log('promise = the promise API, callback = the callback API (the driver polls on its own in both);');
  console.log('batch = the batch API with the caller polling in a loop (q.poll(), resubmissions of a pass in one q.batch);');
  console.log('waiting = share of the promise run spent polling an empty completion queue (the device, not us, was the limit).');
  const qd1 = data.results.find((r) => r.schedulingShare !== undefined);
  if (qd1?.schedulingShare && qd1.oursCallerPolls) {
    console.log(`${qd1.name}: scheduling is ${(100 * qd1.schedulingShare.callback).toFixed(0)}% of the polled driver's cost per I/O with the callback API, ${(100 * qd1.schedulingShare.promise).toFixed(0)}% with the promise API`);
    console.log(`  (1 - IOPS / ${Math.round(qd1.oursCallerPolls.iops)}, the IOPS of the callback API when the caller polls in a loop: same driver and device, no microtasks or event-loop turns)`);
  }
  const result = {
    bench: 'nvme',
    cases: data.results.flatMap((r) => [
      { name: r.name, ours: Math.round(r.ours.iops), baseline: Math.round(r.baseline.iops), unit: 'IOPS', ratio: Number(r.ratio.toFixed(3)) },
      { name: `${r.name} callback`, ours: Math.round(r.oursCallbacks.iops), baseline: Math.round(r.baseline.iops), unit: 'IOPS', ratio: Number((r.oursCallbacks.iops / r.baseline.iops).toFixed(3)) },
      { name: `${r.name} batch`, ours: Math.round(r.oursBatch.iops), baseline: Math.round(r.baseline.iops), unit: 'IOPS', ratio: Number((r.oursBatch.iops / r.baseline.iops).toFixed(3)) },
    ]),
    ...(qd1?.schedulingShare ? { qd1SchedulingShare: { callback: Number(qd1.schedulingShare.callback.toFixed(3)), promise: Number(qd1.schedulingShare.promise.toFixed(3)) } } : {}),
    ...(proxied.length ? { proxy: proxied.map((r) => ({ name: r.name, proxy: Math.round(r.viaProxy!.iops), vfio: Math.round(r.vfioBeside!.iops), unit: 'IOPS', ratio: Number((r.viaProxy!.iops / r.vfioBeside!.iops).toFixed(3)) })) } : {}),
  };
  console.log(`RESULT ${JSON.stringify(result)}`);
  return 0;
}

benchMain(main);
