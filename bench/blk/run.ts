/**
 * `npm run bench:blk`: the kernel's block layer on our NVMe driver, one 6.12 guest, one QEMU
 * nvme on a null-co backend. 4 KiB random reads at QD1 and QD32 and 128 KiB sequential reads at
 * QD32, io_uring O_DIRECT (bench:nvme's static C program), on /dev/ublkb0 (`userpci nvme ublk`),
 * /dev/nbd0 (`userpci nvme export` + nbd-client) and /dev/nvme0n1 (the kernel's nvme driver).
 *
 * Last line:
 *   RESULT {"bench": "blk", "cases": [
 *     {"name": "ublk-vs-kernel/<case>", "ours", "baseline", "unit": "IOPS", "ratio": ours/baseline},
 *     {"name": "ublk-vs-nbd/<case>", "ours", "baseline", "unit": "IOPS", "ratio": ublk/nbd, "target": 3}]}
 *
 * Options: --seconds S (per measurement, default 5), --warmup S (default 1), --rounds N (each
 * target N times, alternating; the best counts; default 2), --profile (the servers under
 * node --cpu-prof: self time by function), --targets ublk,nbd,kernel[,ublk-irq] (ublk-irq: the
 * ublk server with MSI-X NVMe completions instead of polling; ublk-threads: `nvme ublk --threads`, a pinned thread per
 * queue and a queue per CPU; ublk-alt: the ublk server of
 * another build, --alt DIR, a package root inside the checkout with dist/ and build/, for an A/B
 * in one boot), --kernel-args "..." (appended to the guest kernel's command line), --pin CPUS
 * --pin-targets a,b:server (those targets' server and reader, or with ":server" the server alone,
 * under taskset -c CPUS), --trace S (after the cases, S seconds of QD1 reads per target under the guest's ftrace:
 * per I/O, CPU time by process, system calls, switches, wake-ups, interrupts), --cases a,b (some of the cases only), --ublk-args "..." (extra options for the ublk target's server), --alt-args "..." (the ublk-alt server's options, e.g. --threads), --node-args TARGET:"FLAGS" (node options for that target's server; repeatable), --verbose (guest console).
 */
import { arg, benchMain, buildStatic, runGuestBench } from '../guest-bench';
import { childQemu, describeLoad, hostLoad, snapshot, type HostSnapshot } from '../host-load';
import { CASES, type BlkResults } from './guest';
import { describeTrace } from './trace';

const NULL_SIZE = 8 * 1024 * 1024 * 1024;

export const BLK_DEVICES = [
  // Thread names ("CPU 0/TCG"; the main loop keeps "qemu-system-x86") for the host-load lines.
  '-name', 'debug-threads=on',
  '-blockdev', `driver=null-co,node-name=nullblk,size=${NULL_SIZE},read-zeroes=on`,
  '-device', 'nvme,drive=nullblk,serial=bench-blk',
];

async function main(): Promise<number> {
  const seconds = Number(arg('--seconds') ?? 5);
  const warmup = Number(arg('--warmup') ?? 1);
  const rounds = Number(arg('--rounds') ?? 2);
  const baseline = buildStatic('bench/nvme/kernel-baseline.c');
  const guestArgs = ['--baseline', baseline, '--seconds', String(seconds), '--warmup', String(warmup), '--rounds', String(rounds)];
  if (process.argv.includes('--profile')) guestArgs.push('--profile');
  const trace = arg('--trace');
  if (trace) guestArgs.push('--trace', trace);
  const targets = arg('--targets');
  if (targets) guestArgs.push('--targets', targets);
  const only = arg('--cases');
  if (only) guestArgs.push('--cases', only);
  const alt = arg('--alt');
  if (alt) guestArgs.push('--alt', alt);
  const pin = arg('--pin');
  if (pin) guestArgs.push('--pin', pin, '--pin-targets', arg('--pin-targets') ?? 'ublk');
  const ublkArgs = arg('--ublk-args');
  if (ublkArgs) guestArgs.push('--ublk-args', `'${ublkArgs}'`);
  const altArgs = arg('--alt-args');
  if (altArgs) guestArgs.push('--alt-args', `'${altArgs}'`);
  process.argv.forEach((a, i) => {
    if (process.argv[i - 1] === '--node-args') guestArgs.push('--node-args', `'${a}'`);
  });
  const t0 = Date.now();
  // Per measurement, what the host's CPUs and this guest's QEMU threads did (run, and runnable
  // without a host CPU), per I/O: under TCG a vCPU waiting for the host is guest time lost.
  const started = new Map<string, HostSnapshot>();
  let qemu: number | undefined;
  const verbose = process.argv.includes('--verbose');
  const data = await runGuestBench<BlkResults>('blk', {
    onConsole: (line) => {
      if (verbose) process.stderr.write(`${line}\n`);
      const m = /bench:blk: phase-(start|end) (\S+)(?: ios=(\d+))?/.exec(line);
      if (!m) return;
      qemu ??= childQemu();
      if (qemu === undefined) return;
      if (m[1] === 'start') started.set(m[2]!, snapshot(qemu));
      else if (started.has(m[2]!)) process.stderr.write(`bench:blk: ${m[2]}: ${describeLoad(hostLoad(started.get(m[2]!)!, snapshot(qemu)), Number(m[3] ?? 0))}\n`);
    },
    kernel: '6.12',
    kernelArgs: arg('--kernel-args')?.split(' ').filter(Boolean),
    devices: BLK_DEVICES,
    command: `modprobe ublk_drv; echo 64 > /proc/sys/vm/nr_hugepages; node dist/bench/blk/guest.js ${guestArgs.join(' ')}`,
    timeoutMs: 30 * 60_000,
    memoryMiB: 1536,
  });
  if (!data) return 1;
  console.log('');
  console.log(`Block layer reads (io_uring, O_DIRECT), QEMU nvme on null-co, Linux ${data.kernel}, ${data.cpus} vCPUs (TCG, clocksource ${data.clocksource}), node ${data.node}, Meltdown: ${data.meltdown ?? '?'}; ${seconds} s per measurement, best of ${rounds} round(s); ${Math.round((Date.now() - t0) / 1000)} s in all`);
  const shown = data.targets;
  const ran = CASES.filter((c) => data.iops[c.name] !== undefined);
  console.log(`${'case'.padEnd(20)} ${shown.map((t) => `${t} IOPS`.padStart(14)).join(' ')} ${'ublk/kernel'.padStart(12)} ${'ublk/nbd'.padStart(9)}   server CPU per I/O, user+sys µs`);
  const cases: object[] = [];
  const cpu = (x: { userUs: number; sysUs: number } | undefined) => (x ? `${x.userUs.toFixed(0)}+${x.sysUs.toFixed(0)}` : '-');
  const n = (x: number | undefined) => x ?? NaN;
  for (const c of ran) {
    const r = data.iops[c.name]!;
    const sc = data.serverCpu[c.name]!;
    console.log(`${c.name.padEnd(20)} ${shown.map((t) => String(Math.round(n(r[t]))).padStart(14)).join(' ')} ${(n(r.ublk) / n(r.kernel)).toFixed(2).padStart(12)} ${(n(r.ublk) / n(r.nbd)).toFixed(2).padStart(9)}   ${shown.filter((t) => t !== 'kernel').map((t) => `${t} ${cpu(sc[t])}`).join(', ')}`);
  }
  for (const c of ran) console.log(`  rounds ${c.name}: ${shown.map((t) => `${t} ${data.rounds[c.name]![t]!.map(Math.round).join('/')}`).join('; ')}`);
  for (const [t, tr] of Object.entries(data.traces ?? {})) console.log(describeTrace(t, tr));
  for (const c of ran) {
    const r = data.iops[c.name]!;
    if (r.ublk === undefined || r.kernel === undefined) continue;
    if (r['ublk-threads'] !== undefined) {
      cases.push({ name: `ublk-threads-vs-kernel/${c.name}`, ours: Math.round(r['ublk-threads']), baseline: Math.round(r.kernel), unit: 'IOPS', ratio: Number((r['ublk-threads'] / r.kernel).toFixed(3)) });
      cases.push({ name: `ublk-threads-vs-ublk/${c.name}`, ours: Math.round(r['ublk-threads']), baseline: Math.round(r.ublk), unit: 'IOPS', ratio: Number((r['ublk-threads'] / r.ublk).toFixed(3)) });
    }
    cases.push({ name: `ublk-vs-kernel/${c.name}`, ours: Math.round(r.ublk), baseline: Math.round(r.kernel), unit: 'IOPS', ratio: Number((r.ublk / r.kernel).toFixed(3)) });
  }
  for (const c of ran) {
    const r = data.iops[c.name]!;
    if (r.ublk === undefined || r.nbd === undefined) continue;
    cases.push({ name: `ublk-vs-nbd/${c.name}`, ours: Math.round(r.ublk), baseline: Math.round(r.nbd), unit: 'IOPS', ratio: Number((r.ublk / r.nbd).toFixed(3)), target: 3 });
  }
  console.log('ours = /dev/ublkb0 on our NVMe driver; baseline = the kernel nvme driver (ublk-vs-kernel) or /dev/nbd0 on our NVMe driver (ublk-vs-nbd).');
  console.log(`RESULT ${JSON.stringify({ bench: 'blk', cases })}`);
  return 0;
}

benchMain(main);
