/**
 * Runs INSIDE a 6.12 guest (bench/blk/run.ts boots it): the kernel's block layer on one QEMU
 * nvme (null-co) three ways, read with the static C program bench:nvme uses (io_uring,
 * O_DIRECT, fixed queue depth):
 *   ublk   /dev/ublkb0, served by `userpci nvme ublk` (our NVMe driver, one queue)
 *   nbd    /dev/nbd0, nbd-client on `userpci nvme export --socket` (our NVMe driver)
 *   kernel /dev/nvme0n1, the kernel's own nvme driver
 * Each server is the CLI in its own process, started once per target and stopped with SIGTERM.
 *
 *   node dist/bench/blk/guest.js --baseline PATH [--seconds S] [--warmup S] [--rounds N] [--profile] [--targets a,b]
 *
 * --trace S: after the cases, S seconds of 4 KiB QD1 reads on each target under ftrace: per I/O,
 * CPU time by process (idle too), system calls, switches, wake-ups and interrupts (trace.ts).
 * --profile runs the ublk and NBD servers under node --cpu-prof and prints their self time by
 * function while the cases ran (start-up and exit left out). Prints a line per measurement and, last, `BENCH_JSON {...}` for the host runner.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { bindToVfio, boundDriver } from '../../src/pci/bind';
import { kernelDisk, summarizeProfile, type CpuProfile } from '../nvme/guest';
import { describeTrace, idleDriver, idleStates, startIoTrace, summarize, type IoTrace } from './trace';
import { stopTrace } from '../guest-trace';

export interface BlkCase {
  name: string;
  mode: 'randread' | 'seqread';
  bs: number;
  qd: number;
}

export const CASES: BlkCase[] = [
  { name: '4k-randread-qd1', mode: 'randread', bs: 4096, qd: 1 },
  { name: '4k-randread-qd32', mode: 'randread', bs: 4096, qd: 32 },
  { name: '128k-seqread-qd32', mode: 'seqread', bs: 128 * 1024, qd: 32 },
];

/**
 * ublk-irq: `userpci nvme ublk --interrupts` (NVMe completions by MSI-X, no polling); ublk-alt:
 * `userpci nvme ublk` from another build (--alt DIR, a package root under the checkout: A/B in
 * one boot); ublk-threads: `userpci nvme ublk --threads` (a queue per CPU, each on a thread
 * pinned to its CPUs with its own NVMe queue pair); only when asked for.
 */
export type Target = 'ublk' | 'nbd' | 'kernel' | 'ublk-irq' | 'ublk-alt' | 'ublk-threads';
export const TARGETS: Target[] = ['ublk', 'nbd', 'kernel'];

/** IOPS per case per target (the best of the rounds), the servers' CPU per I/O, their profiles. */
export interface BlkResults {
  node: string;
  cpus: number;
  kernel: string;
  clocksource: string;
  /** /sys/devices/system/cpu/vulnerabilities/meltdown: "Mitigation: PTI" means a page-table switch at every kernel entry and exit (under TCG each one empties the vCPU's TLB). */
  meltdown: string;
  targets: Target[];
  iops: Record<string, Partial<Record<Target, number>>>;
  rounds: Record<string, Partial<Record<Target, number[]>>>;
  /** Server process CPU time per I/O (user, system), µs, in the round with the best IOPS. */
  serverCpu: Record<string, Partial<Record<Target, { userUs: number; sysUs: number }>>>;
  profiles: Partial<Record<Target, string[]>>;
  /** --trace: per target, what one QD1 read cost the guest (ftrace, bench/blk/trace.ts). */
  traces: Partial<Record<Target, IoTrace>>;
}

interface Measured {
  iops: number;
  userUs?: number;
  sysUs?: number;
}

const SYS = '/sys/bus/pci/devices';
const CLI = path.resolve(__dirname, '../../src/cli/commands/nvme.js');
const SOCKET = '/tmp/userpci-bench-nbd.sock';
const PROFILE_DIR = '/tmp/userpci-bench-prof';
/** --trace: each target traced once (its first round), the summaries kept for BENCH_JSON. */
const traced = new Set<Target>();
const traces: Partial<Record<Target, IoTrace>> = {};

function arg(name: string, fallback?: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

/** The cases --cases names (comma-separated), or all. */
function wantedCases(): BlkCase[] {
  const names = arg('--cases')?.split(',');
  return CASES.filter((c) => !names || names.includes(c.name));
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function nvmeFunction(serial: string): string {
  for (const addr of fs.readdirSync(SYS).sort()) {
    try {
      const c = fs.readdirSync(path.join(SYS, addr, 'nvme'))[0]!;
      if (fs.readFileSync(path.join(SYS, addr, 'nvme', c, 'serial'), 'utf8').trim() === serial) return addr;
    } catch {
      // not an nvme function on the kernel driver
    }
  }
  throw new Error(`no NVMe function with serial ${serial}`);
}

interface Server {
  child: ChildProcess;
  out: () => string;
  exited: Promise<number | null>;
}

/** The monotonic clock in µs: the one V8's CPU profiles count in. */
function nowUs(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

/** utime and stime of a process, µs (/proc/PID/stat, clock ticks of 10 ms). */
function cpuTimes(pid: number): { user: number; sys: number } {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: Number(f[11]) * 10_000, sys: Number(f[12]) * 10_000 };
}

async function startServer(args: string[], ready: string, profile: boolean, cli = CLI, cpus?: string, nodeArgs: string[] = []): Promise<Server> {
  const node = [...nodeArgs, ...(profile ? ['--cpu-prof', `--cpu-prof-dir=${PROFILE_DIR}`, '--cpu-prof-interval=200'] : [])];
  const argv = [...node, cli, ...args];
  const child = cpus ? spawn('taskset', ['-c', cpus, process.execPath, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] }) : spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  for (let i = 0; !out.includes(ready); i++) {
    if (child.exitCode !== null) throw new Error(`server ${args.join(' ')} exited ${child.exitCode}: ${out}`);
    if (i > 6000) throw new Error(`server ${args.join(' ')} did not start: ${out}`);
    await sleep(20);
  }
  return { child, out: () => out, exited };
}

async function stopServer(s: Server): Promise<void> {
  s.child.kill('SIGTERM');
  const code = await s.exited;
  if (code !== 0) throw new Error(`server exited ${code}: ${s.out()}`);
  // Its summary (requests, io_uring_enter calls, doorbells...).
  const last = s.out().trim().split('\n').pop();
  if (last) console.log(`  server: ${last}`);
}

/** The C program on `disk`; with `serverPid`, that process's CPU time per I/O over the run. */
function runBaseline(baseline: string, disk: string, c: BlkCase, seconds: number, warmup: number, serverPid?: number, cpus?: string): Measured {
  const before = serverPid ? cpuTimes(serverPid) : null;
  const args = [disk, c.mode, String(c.bs), String(c.qd), String(seconds), String(warmup)];
  const out = cpus
    ? execFileSync('taskset', ['-c', cpus, baseline, ...args], { encoding: 'utf8', timeout: (seconds + warmup + 120) * 1000 })
    : execFileSync(baseline, args, { encoding: 'utf8', timeout: (seconds + warmup + 120) * 1000 });
  const j = JSON.parse(out.trim().split('\n').pop()!) as { iops: number; ios: number; seconds: number };
  if (!before) return { iops: j.iops };
  // The warm-up's I/Os count too: estimated at the measured rate.
  const ios = j.iops * (seconds + warmup);
  const after = cpuTimes(serverPid!);
  return { iops: j.iops, userUs: (after.user - before.user) / ios, sysUs: (after.sys - before.sys) / ios };
}

/** The newest profile the server left, as self-time lines, for the samples in `window` only. */
function readProfile(window: { fromUs: number; toUs: number }): string[] {
  const files = fs.readdirSync(PROFILE_DIR).filter((f) => f.endsWith('.cpuprofile')).map((f) => path.join(PROFILE_DIR, f));
  files.sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs);
  if (files.length === 0) return ['(no profile written)'];
  const lines = summarizeProfile(JSON.parse(fs.readFileSync(files[0]!, 'utf8')) as CpuProfile, 20, window);
  for (const f of files) fs.rmSync(f);
  return lines;
}

/** Serves the disk for `target` and runs every case on it; the server is stopped after. */
async function measureTarget(target: Target, addr: string, baseline: string, seconds: number, warmup: number, profile: boolean): Promise<{ cases: Record<string, Measured>; window: { fromUs: number; toUs: number } }> {
  const out: Record<string, Measured> = {};
  const window = { fromUs: 0, toUs: 0 };
  // --pin CPUS --pin-targets a,b:server: those targets' server and reader run on these CPUs only
  // (taskset); "NAME:server" pins the server alone.
  const pinAs = arg('--pin-targets')?.split(',').find((t) => t === target || t === `${target}:server`);
  const serverPin = pinAs ? arg('--pin') : undefined;
  const pin = pinAs === target ? serverPin : undefined;
  const each = (disk: string, pid?: number) => {
    window.fromUs = nowUs();
    for (const c of wantedCases()) {
      // Console markers: the host notes its CPUs and this guest's QEMU threads meanwhile (bench/host-load.ts).
      console.error(`bench:blk: phase-start ${target}/${c.name}`);
      const m = runBaseline(baseline, disk, c, seconds, warmup, pid, pin);
      console.error(`bench:blk: phase-end ${target}/${c.name} ios=${Math.round(m.iops * (seconds + warmup))}`);
      out[c.name] = m;
      const cpu = m.userUs === undefined ? '' : `; server CPU per I/O: user ${m.userUs.toFixed(0)} µs, system ${m.sysUs!.toFixed(0)} µs`;
      console.log(`${c.name} ${target}: ${Math.round(m.iops)} IOPS (${disk}${cpu})`);
    }
    window.toUs = nowUs();
    const traceS = Number(arg('--trace', '0'));
    if (traceS > 0 && !traced.has(target)) {
      traced.add(target);
      const idle0 = idleStates();
      startIoTrace();
      try {
        runBaseline(baseline, disk, CASES[0]!, traceS, 0, undefined, pin);
      } finally {
        const t = summarize(stopTrace());
        const idle1 = idleStates();
        t.idleDriver = idleDriver();
        t.idle = {};
        for (const [k, v] of Object.entries(idle1)) {
          const e = v.usage - (idle0[k]?.usage ?? 0);
          if (e > 0) t.idle[k] = { entries: +(e / Math.max(1, t.ios)).toFixed(2), us: Math.round((v.us - (idle0[k]?.us ?? 0)) / Math.max(1, t.ios)) };
        }
        traces[target] = t;
        console.log(describeTrace(target, t));
      }
    }
  };
  if (target === 'kernel') {
    each(await kernelDisk(addr));
    return { cases: out, window };
  }
  if (boundDriver(addr) !== 'vfio-pci') bindToVfio(addr);
  if (target === 'ublk' || target === 'ublk-irq' || target === 'ublk-alt' || target === 'ublk-threads') {
    const irq = target === 'ublk-irq' ? ['--interrupts'] : [];
    const queues = target === 'ublk-threads' ? ['--threads'] : ['--queues', '1'];
    const alt = arg('--alt');
    if (target === 'ublk-alt' && !alt) throw new Error('target ublk-alt needs --alt DIR');
    const cli = target === 'ublk-alt' ? path.resolve(__dirname, '../../..', alt!, 'dist/src/cli/commands/nvme.js') : CLI;
    const extra = arg('--ublk-args')?.split(' ').filter(Boolean) ?? [];
    // --alt-args: the ublk-alt server's own options (e.g. --alt . --alt-args "--threads" for an A/B of one mode).
    const altExtra = target === 'ublk-alt' ? arg('--alt-args')?.split(' ').filter(Boolean) ?? [] : [];
    const altThreads = altExtra.includes('--threads');
    const serverArgs = ['ublk', addr, '--id', '0', ...(altThreads ? [] : queues), '--depth', '64', ...irq, ...(target === 'ublk' ? extra : []), ...altExtra];
    // --node-args TARGET:"FLAGS": node options for that target's server (e.g. ublk-alt:--single-threaded).
    const nodeArgs = process.argv.flatMap((a, i) => (process.argv[i - 1] === '--node-args' && a.startsWith(`${target}:`) ? a.slice(target.length + 1).split(' ').filter(Boolean) : []));
    const s = await startServer(serverArgs, 'ublk: serving', profile, cli, serverPin, nodeArgs);
    try {
      each('/dev/ublkb0', s.child.pid);
    } finally {
      await stopServer(s);
    }
    return { cases: out, window };
  }
  fs.rmSync(SOCKET, { force: true });
  const s = await startServer(['export', addr, '--socket', SOCKET, '--name', 'disk'], 'nbd: serving', profile);
  try {
    execFileSync('nbd-client', ['-N', 'disk', '-u', SOCKET, '/dev/nbd0'], { stdio: 'ignore', timeout: 60_000 });
    for (let i = 0; Number(fs.readFileSync('/sys/block/nbd0/size', 'utf8')) === 0; i++) {
      if (i > 2000) throw new Error('/dev/nbd0 did not come up');
      await sleep(25);
    }
    try {
      each('/dev/nbd0', s.child.pid);
    } finally {
      execFileSync('nbd-client', ['-d', '/dev/nbd0'], { stdio: 'ignore', timeout: 60_000 });
    }
  } finally {
    await stopServer(s);
  }
  return { cases: out, window };
}

async function main(): Promise<void> {
  const baseline = arg('--baseline');
  if (!baseline || !fs.existsSync(baseline)) throw new Error(`--baseline PATH of the static kernel-baseline program is required (got ${baseline})`);
  const seconds = Number(arg('--seconds', '5'));
  const warmup = Number(arg('--warmup', '1'));
  const rounds = Number(arg('--rounds', '2'));
  const profile = process.argv.includes('--profile');
  if (profile) fs.mkdirSync(PROFILE_DIR, { recursive: true });
  const targets = (arg('--targets')?.split(',') ?? TARGETS) as Target[];
  const addr = nvmeFunction('bench-blk');
  const clocksource = fs.readFileSync('/sys/devices/system/clocksource/clocksource0/current_clocksource', 'utf8').trim();
  const meltdown = fs.readFileSync('/sys/devices/system/cpu/vulnerabilities/meltdown', 'utf8').trim();
  const results: BlkResults = { node: process.version, cpus: os.cpus().length, kernel: os.release(), clocksource, meltdown, targets, iops: {}, rounds: {}, serverCpu: {}, profiles: {}, traces };
  for (const c of wantedCases()) {
    results.rounds[c.name] = Object.fromEntries(targets.map((t) => [t, []]));
    results.iops[c.name] = Object.fromEntries(targets.map((t) => [t, 0]));
    results.serverCpu[c.name] = {};
  }
  // Rounds alternate the targets, so a busy host slows all three alike; the best round counts.
  for (let r = 0; r < rounds; r++) {
    for (const t of targets) {
      const prof = profile && r === 0 && t !== 'kernel';
      const got = await measureTarget(t, addr, baseline, seconds, warmup, prof);
      for (const c of wantedCases()) {
        const m = got.cases[c.name]!;
        results.rounds[c.name]![t]!.push(m.iops);
        if (m.iops >= results.iops[c.name]![t]!) {
          results.iops[c.name]![t] = m.iops;
          if (m.userUs !== undefined) results.serverCpu[c.name]![t] = { userUs: m.userUs, sysUs: m.sysUs! };
        }
      }
      if (prof) results.profiles[t] = readProfile(got.window);
    }
  }
  for (const [t, lines] of Object.entries(results.profiles)) {
    console.log(`profile of the ${t} server over all cases (self time):`);
    for (const l of lines) console.log(`  ${l}`);
  }
  console.log(`BENCH_JSON ${JSON.stringify(results)}`);
}

if (require.main === module) {
  main().catch((e: Error) => {
    console.error(e.stack ?? e.message);
    process.exitCode = 1;
  });
}
