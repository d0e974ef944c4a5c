/**
 * `npm run bench:nvme`: this NVMe driver against the kernel's, side by side in one guest, on
 * QEMU's nvme over a null block backend (reads cost the device nothing but its emulation).
 *
 * Host side: compiles bench/nvme/kernel-baseline.c statically (cc -static -O2) into .cache,
 * boots one guest with two nvme devices (512- and 4096-byte LBA formats) and runs
 * bench/nvme/guest.ts there. Prints IOPS for both, the ratio per case, the JS heap before and
 * after, and last the RESULT line:
 *   RESULT {"bench": "nvme", "cases": [{"name", "ours", "baseline", "unit": "IOPS", "ratio"}]}
 *
 * Options: --seconds S (per measurement, default 5), --warmup S (default 1), --profile (CPU
 * profile of ours on the QD32 cases, self time by function), --cases a,b, --memory MIB.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runInGuest, GuestRunError } from '../../scripts/guest/index';
import { installSignalHandlers } from '../../scripts/guest/suites';
import type { CaseResult } from './guest';

const REPO = path.resolve(__dirname, '../../..');
const NULL_SIZE = 8 * 1024 * 1024 * 1024;

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

/** The static baseline binary, rebuilt when the source is newer. */
export function buildBaseline(): string {
  const src = path.join(REPO, 'bench/nvme/kernel-baseline.c');
  const out = path.join(REPO, '.cache/bench/nvme/kernel-baseline');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  const stale = !fs.existsSync(out) || fs.statSync(out).mtimeMs < fs.statSync(src).mtimeMs;
  if (stale) execFileSync('cc', ['-static', '-O2', '-Wall', '-o', out, src], { stdio: 'inherit' });
  return path.relative(REPO, out);
}

export const BENCH_DEVICES = [
  '-blockdev', `driver=null-co,node-name=null512,size=${NULL_SIZE},read-zeroes=on`,
  '-device', 'nvme,drive=null512,serial=bench-512',
  '-blockdev', `driver=null-co,node-name=null4k,size=${NULL_SIZE},read-zeroes=on`,
  '-device', 'nvme,drive=null4k,serial=bench-4k,logical_block_size=4096,physical_block_size=4096',
];

async function main(): Promise<number> {
  const seconds = Number(arg('--seconds') ?? 5);
  const warmup = Number(arg('--warmup') ?? 1);
  const baseline = buildBaseline();
  const guestArgs = ['--baseline', baseline, '--seconds', String(seconds), '--warmup', String(warmup)];
  if (process.argv.includes('--profile')) guestArgs.push('--profile');
  const cases = arg('--cases');
  if (cases) guestArgs.push('--cases', cases);
  const t0 = Date.now();
  let stdout: string;
  try {
    const r = await runInGuest({
      devices: BENCH_DEVICES,
      // 2 MiB pages for the DMA buffers (the kernel's O_DIRECT buffer is ordinary memory).
      command: `echo 64 > /proc/sys/vm/nr_hugepages; node --expose-gc dist/bench/nvme/guest.js ${guestArgs.join(' ')}`,
      timeoutMs: 20 * 60_000,
      memoryMiB: Number(arg('--memory') ?? 1536),
      onConsole: (l) => {
        if (process.argv.includes('--verbose')) process.stderr.write(`${l}\n`);
      },
    });
    stdout = r.stdout;
    if (r.exitCode !== 0) {
      process.stderr.write(`${stdout}\nbench:nvme: the guest side failed (exit ${r.exitCode}):\n${r.consoleTail.join('\n')}\n`);
      return 1;
    }
  } catch (e) {
    if (e instanceof GuestRunError) {
      process.stderr.write(`${e.message}\n`);
      return 1;
    }
    throw e;
  }
  const jsonLine = stdout.split('\n').find((l) => l.startsWith('BENCH_JSON '));
  if (!jsonLine) {
    process.stderr.write(`${stdout}\nbench:nvme: no BENCH_JSON line from the guest\n`);
    return 1;
  }
  for (const l of stdout.split('\n')) if (l && !l.startsWith('BENCH_JSON ')) console.log(l);
  const data = JSON.parse(jsonLine.slice('BENCH_JSON '.length)) as { node: string; cpus: number; results: CaseResult[] };
  console.log('');
  console.log(`NVMe 4 KiB/128 KiB reads, QEMU nvme on null-co, guest with ${data.cpus} vCPUs (TCG), node ${data.node}; ${seconds} s per measurement; ${Math.round((Date.now() - t0) / 1000)} s in all`);
  console.log(`${'case'.padEnd(26)} ${'ours IOPS'.padStart(10)} ${'kernel IOPS'.padStart(12)} ${'ratio'.padStart(7)}   ${'callbacks'.padStart(9)} ${'ratio'.padStart(6)}  ${'waiting'.padStart(7)}   JS heap before -> after (promise run)`);
  for (const r of data.results) {
    console.log(`${r.name.padEnd(26)} ${Math.round(r.ours.iops).toString().padStart(10)} ${Math.round(r.baseline.iops).toString().padStart(12)} ${r.ratio.toFixed(2).padStart(7)}   ${Math.round(r.oursCallbacks.iops).toString().padStart(9)} ${(r.oursCallbacks.iops / r.baseline.iops).toFixed(2).padStart(6)}  ${`${(100 * r.spinShare).toFixed(0)}%`.padStart(7)}   ${(r.heapBefore / 1048576).toFixed(2)} -> ${(r.heapAfter / 1048576).toFixed(2)} MiB`);
  }
  console.log('ours = the promise API (RESULT); callbacks = the same driver through its callback API;');
  console.log('waiting = share of the promise run spent polling an empty completion queue (the device, not us, was the limit).');
  const result = {
    bench: 'nvme',
    cases: data.results.map((r) => ({ name: r.name, ours: Math.round(r.ours.iops), baseline: Math.round(r.baseline.iops), unit: 'IOPS', ratio: Number(r.ratio.toFixed(3)) })),
  };
  console.log(`RESULT ${JSON.stringify(result)}`);
  return 0;
}

if (require.main === module) {
  installSignalHandlers();
  main().then(
    (code) => (process.exitCode = code),
    (e: Error) => {
      console.error(e.stack ?? e.message);
      process.exitCode = 1;
    },
  );
}
