/**
 * Runs INSIDE the guest (bench/nvme/run.ts boots it): for each case, this driver (polled, one
 * thread, zero-copy DMA buffers; the promise API, the callback API, and the batch API with the
 * caller polling) against the kernel's nvme driver (io_uring, O_DIRECT, the static C program),
 * alternating on the same device, which is handed from vfio-pci to the kernel driver and back
 * between the two. At QD1 also the callback API with the caller polling: the driver-polled
 * runs' cost per I/O beyond it (1 - IOPS / its IOPS) is the share that is scheduling.
 *
 *   node --expose-gc dist/bench/nvme/guest.js --baseline PATH [--seconds S] [--warmup S] [--profile] [--cases a,b]
 *
 * Each case also runs this driver with the device held by `userpci proxy` in another process
 * (skip with --no-proxy), followed by a fresh direct run to compare it with (same API, same
 * warm-up, adjacent in time on a machine whose load varies).
 *
 * Prints a line per measurement and, last, `BENCH_JSON {...}` for the host runner.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as inspector from 'node:inspector';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { bindToVfio, boundDriver, unbindFromVfio } from '../../src/pci/bind';
import { NvmeController } from '../../src/drivers/nvme/controller';
import type { NvmeNamespace } from '../../src/drivers/nvme/namespace';
import type { NvmeQueue } from '../../src/drivers/nvme/queue';

export interface BenchCase {
  name: string;
  /** QEMU serial of the device it runs on. */
  serial: string;
  mode: 'randread' | 'seqread';
  bs: number;
  qd: number;
}

export const CASES: BenchCase[] = [
  { name: '4k-randread-qd1', serial: 'bench-512', mode: 'randread', bs: 4096, qd: 1 },
  { name: '4k-randread-qd32', serial: 'bench-512', mode: 'randread', bs: 4096, qd: 32 },
  { name: '4k-randread-qd128', serial: 'bench-512', mode: 'randread', bs: 4096, qd: 128 },
  { name: '128k-seqread-qd32', serial: 'bench-512', mode: 'seqread', bs: 128 * 1024, qd: 32 },
  { name: '4k-randread-qd32-lba4096', serial: 'bench-4k', mode: 'randread', bs: 4096, qd: 32 },
];

export interface Measurement {
  ios: number;
  seconds: number;
  iops: number;
}

export interface CaseResult {
  name: string;
  /** Promise API, the driver polls on its own (microtask passes, event-loop turns). */
  ours: Measurement;
  /** Callback API, the driver polls on its own. */
  /** The promise API with the device held by `userpci proxy` in another process (no --trace). */
  viaProxy?: Measurement;
  /** The promise API on vfio-pci again, opened afresh right after the proxy run: what viaProxy is compared with. */
  vfioBeside?: Measurement;
  oursCallbacks: Measurement;
  /** Batch API: the caller polls in a loop (q.poll()) and resubmits each pass's completions in one q.batch. */
  oursBatch: Measurement;
  /**
   * QD1 only: the callback API with the caller polling in a loop (no scheduling at all), and the
   * share of the driver-polled runs' cost per I/O that is scheduling: 1 - IOPS / this IOPS.
   */
  oursCallerPolls?: Measurement;
  schedulingShare?: { callback: number; promise: number };
  baseline: Measurement;
  ratio: number;
  heapBefore: number;
  heapAfter: number;
  doorbellsPerIo: number;
  emptyPolls: number;
  spinShare: number;
}

const SYS = '/sys/bus/pci/devices';
const CLI = path.resolve(__dirname, '../../../bin/userpci.js');

/** `userpci proxy ADDRESS --socket PATH`, once it listens. */
async function startProxy(addr: string, socket: string): Promise<ChildProcess> {
  const proc = spawn(process.execPath, [CLI, 'proxy', addr, '--socket', socket], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  await new Promise<void>((resolve, reject) => {
    proc.stderr!.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      if (stderr.includes('listening')) resolve();
    });
    proc.on('exit', (code) => reject(new Error(`userpci proxy ${addr} exited (${code}): ${stderr}`)));
  });
  return proc;
}

async function stopProxy(proc: ChildProcess): Promise<void> {
  const exited = once(proc, 'exit');
  proc.kill('SIGTERM');
  await exited;
}

/** The promise-API run on vfio-pci directly, opened afresh as the proxy run is. */
async function runDirect(addr: string, c: BenchCase, seconds: number, warmup: number): Promise<Measurement> {
  const ctrl = await NvmeController.open(addr, { defaultQueue: { depth: c.qd } });
  try {
    const ns = await ctrl.namespace(1);
    await runOurs(ns, ctrl.defaultQueue!, { ...c }, 0.3, 0.2);
    return await runOurs(ns, ctrl.defaultQueue!, c, seconds, warmup);
  } finally {
    await ctrl.close();
  }
}

/** The promise-API run with the driver here and the device held by a proxy in another process. */
async function runThroughProxy(addr: string, c: BenchCase, seconds: number, warmup: number): Promise<Measurement> {
  const socket = path.join(fs.mkdtempSync('/tmp/userpci-bench-'), 'proxy.sock');
  const proxy = await startProxy(addr, socket);
  try {
    const ctrl = await NvmeController.open(socket, { defaultQueue: { depth: c.qd } });
    try {
      const ns = await ctrl.namespace(1);
      await runOurs(ns, ctrl.defaultQueue!, { ...c }, 0.3, 0.2); // JIT and connection warm-up
      return await runOurs(ns, ctrl.defaultQueue!, c, seconds, warmup);
    } finally {
      await ctrl.close();
    }
  } finally {
    await stopProxy(proxy);
  }
}

function arg(name: string, fallback?: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

/** NVMe functions by QEMU serial, read while the kernel driver holds them. */
function devicesBySerial(): Map<string, string> {
  const m = new Map<string, string>();
  for (const addr of fs.readdirSync(SYS).sort()) {
    try {
      const c = fs.readdirSync(path.join(SYS, addr, 'nvme'))[0]!;
      m.set(fs.readFileSync(path.join(SYS, addr, 'nvme', c, 'serial'), 'utf8').trim(), addr);
    } catch {
      // not an nvme function on the kernel driver
    }
  }
  return m;
}

/** The function back on the kernel's nvme driver, and its first namespace's block device once it shows. */
export async function kernelDisk(addr: string): Promise<string> {
  if (boundDriver(addr) === 'vfio-pci') unbindFromVfio(addr);
  for (let i = 0; i < 400; i++) {
    const dir = path.join(SYS, addr, 'nvme');
    const c = fs.existsSync(dir) ? fs.readdirSync(dir)[0] : undefined;
    if (c && fs.existsSync(`/dev/${c}n1`)) return `/dev/${c}n1`;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`${addr}: the kernel nvme driver did not attach a namespace`);
}

/** Which unit to read next: xorshift32 for random reads (no allocation), in order otherwise. */
function unitSequence(random: boolean, units: number): () => number {
  let x = 0x2545f491;
  let seq = 0;
  return random
    ? () => {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        return (x >>> 0) % units;
      }
    : () => seq++ % units;
}

function gc(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

/** Keep `qd` reads in flight for warmup + seconds; count the ones that completed in the measured window. */
async function runOurs(ns: NvmeNamespace, q: NvmeQueue, c: BenchCase, seconds: number, warmup: number): Promise<Measurement> {
  // At least 2 MiB, so it is one hugepage when the guest has them (as SPDK does): QEMU's IOMMU
  // then translates once per 2 MiB instead of once per 4 KiB page.
  const buf = ns.controller.allocBuffer(Math.max(2 << 20, c.bs * c.qd), 'auto');
  const units = Math.floor(ns.size / c.bs);
  const blocksPerUnit = c.bs / ns.blockSize;
  const nextUnit = unitSequence(c.mode === 'randread', units);
  let ios = 0;
  let stop = false;
  const worker = async (slot: number): Promise<void> => {
    const iova = buf.iova + slot * c.bs;
    while (!stop) {
      await ns.readIova(nextUnit() * blocksPerUnit, iova, c.bs, q);
      ios++;
    }
  };
  const workers = Array.from({ length: c.qd }, (_, i) => worker(i));
  await new Promise((r) => setTimeout(r, warmup * 1000));
  const start = performance.now();
  const startIos = ios;
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const elapsed = (performance.now() - start) / 1000;
  const n = ios - startIos;
  stop = true;
  await Promise.all(workers);
  buf.free();
  return { ios: n, seconds: elapsed, iops: n / elapsed };
}

/** The same with the callback API: no promise, no allocation at all per I/O. */
function runOursCallbacks(ns: NvmeNamespace, q: NvmeQueue, c: BenchCase, seconds: number, warmup: number): Promise<Measurement> {
  const buf = ns.controller.allocBuffer(Math.max(2 << 20, c.bs * c.qd), 'auto');
  const units = Math.floor(ns.size / c.bs);
  const blocksPerUnit = c.bs / ns.blockSize;
  const nextUnit = unitSequence(c.mode === 'randread', units);
  let ios = 0;
  let inflight = 0;
  let stop = false;
  let failure: Error | null = null;
  const submit = (slot: number) => {
    const unit = nextUnit();
    inflight++;
    ns.submit(false, unit * blocksPerUnit, buf.iova + slot * c.bs, c.bs, q, callbacks[slot]!);
  };
  const callbacks = Array.from({ length: c.qd }, (_, slot) => (err: Error | null) => {
    inflight--;
    if (err) failure ??= err;
    ios++;
    if (!stop && !failure) submit(slot);
  });
  q.batch(() => {
    for (let i = 0; i < c.qd; i++) submit(i);
  });
  return new Promise((resolve, reject) => {
    setTimeout(() => {
      const start = performance.now();
      const startIos = ios;
      setTimeout(() => {
        const elapsed = (performance.now() - start) / 1000;
        const n = ios - startIos;
        stop = true;
        const drain = () => {
          if (inflight > 0) return void setTimeout(drain, 1);
          buf.free();
          if (failure) reject(failure);
          else resolve({ ios: n, seconds: elapsed, iops: n / elapsed });
        };
        drain();
      }, seconds * 1000);
    }, warmup * 1000);
  });
}

/**
 * The caller polls: a synchronous loop of q.poll() for warmup + seconds (the event loop waits).
 * Callback mode resubmits from each completion's callback; batch mode collects the slots and
 * resubmits them after the pass, in one q.batch (one doorbell).
 */
function runOursCallerPolls(ns: NvmeNamespace, q: NvmeQueue, c: BenchCase, seconds: number, warmup: number, batched: boolean): Measurement {
  const buf = ns.controller.allocBuffer(Math.max(2 << 20, c.bs * c.qd), 'auto');
  const units = Math.floor(ns.size / c.bs);
  const blocksPerUnit = c.bs / ns.blockSize;
  const nextUnit = unitSequence(c.mode === 'randread', units);
  const iova = buf.iova;
  let ios = 0;
  let stop = false;
  let failure: Error | null = null;
  const again = new Int32Array(c.qd);
  let pending = 0;
  const submit = (slot: number) => ns.submit(false, nextUnit() * blocksPerUnit, iova + slot * c.bs, c.bs, q, callbacks[slot]!);
  const callbacks = Array.from({ length: c.qd }, (_, slot) => (err: Error | null) => {
    if (err) failure ??= err;
    ios++;
    if (stop || failure) return;
    if (batched) again[pending++] = slot;
    else submit(slot);
  });
  const resubmit = () => {
    while (pending > 0) submit(again[--pending]!);
  };
  q.batch(() => {
    for (let i = 0; i < c.qd; i++) submit(i);
  });
  const t0 = performance.now();
  const measureFrom = t0 + warmup * 1000;
  const end = measureFrom + seconds * 1000;
  let start = 0;
  let startIos = 0;
  for (let i = 0; ; i++) {
    q.poll();
    if (pending > 0) q.batch(resubmit);
    if (failure) break;
    if ((i & 63) !== 0) continue;
    const now = performance.now();
    if (start === 0 && now >= measureFrom) {
      start = now;
      startIos = ios;
    } else if (now >= end) break;
  }
  const elapsed = (performance.now() - start) / 1000;
  const n = ios - startIos;
  stop = true;
  const hangGuard = performance.now() + 60_000;
  while (q.outstanding > 0 && performance.now() < hangGuard) q.poll();
  buf.free();
  if (failure) throw failure;
  return { ios: n, seconds: elapsed, iops: n / elapsed };
}

function runKernel(baseline: string, disk: string, c: BenchCase, seconds: number, warmup: number): Measurement {
  const out = execFileSync(baseline, [disk, c.mode, String(c.bs), String(c.qd), String(seconds), String(warmup)], { encoding: 'utf8', timeout: (seconds + warmup + 60) * 1000 });
  const j = JSON.parse(out.trim().split('\n').pop()!) as Measurement;
  return { ios: j.ios, seconds: j.seconds, iops: j.iops };
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

export interface CpuProfile {
  /** µs on the monotonic clock (process.hrtime's). */
  startTime?: number;
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** Self time by function from a V8 CPU profile, top entries, as text lines. */
export function summarizeProfile(profile: CpuProfile, top = 18, window?: { fromUs: number; toUs: number }): string[] {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let total = 0;
  let at = profile.startTime ?? 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const n = byId.get(profile.samples[i]!)!;
    const dt = profile.timeDeltas[i] ?? 0;
    // Only samples inside the window (monotonic µs, e.g. the measurement without start-up and exit).
    at += dt;
    if (window && (at < window.fromUs || at > window.toUs)) continue;
    total += dt;
    const f = n.callFrame;
    const where = f.url ? `${path.basename(f.url)}:${f.lineNumber + 1}` : '';
    const key = `${f.functionName || '(anonymous)'} ${where}`.trim();
    self.set(key, (self.get(key) ?? 0) + dt);
  }
  return [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, top).map(([k, v]) => `${((100 * v) / total).toFixed(1).padStart(5)}%  ${k}`);
}

async function profiled<T>(fn: () => Promise<T>): Promise<{ value: T; lines: string[] }> {
  const session = new inspector.Session();
  session.connect();
  const post = (method: string, params?: object) => new Promise<unknown>((resolve, reject) => session.post(method, params ?? {}, (err, res) => (err ? reject(err) : resolve(res))));
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: 200 });
  await post('Profiler.start');
  const value = await fn();
  const { profile } = (await post('Profiler.stop')) as { profile: { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[] } };
  session.disconnect();
  return { value, lines: summarizeProfile(profile) };
}

async function main(): Promise<void> {
  const baseline = arg('--baseline');
  if (!baseline || !fs.existsSync(baseline)) throw new Error(`--baseline PATH of the static kernel-baseline program is required (got ${baseline})`);
  const seconds = Number(arg('--seconds', '5'));
  const warmup = Number(arg('--warmup', '1'));
  const wanted = arg('--cases')?.split(',');
  const profile = process.argv.includes('--profile');
  const proxy = !process.argv.includes('--no-proxy');
  const cases = CASES.filter((c) => !wanted || wanted.includes(c.name));
  const devices = devicesBySerial();
  const results: CaseResult[] = [];
  const profiles: Record<string, string[]> = {};
  for (const c of cases) {
    const addr = devices.get(c.serial);
    if (!addr) throw new Error(`no NVMe device with serial ${c.serial} (have ${[...devices.keys()].join(', ')})`);
    // Ours.
    bindToVfio(addr);
    const ctrl = await NvmeController.open(addr, { defaultQueue: { depth: c.qd } });
    const ns = await ctrl.namespace(1);
    const q = ctrl.defaultQueue!;
    await runOurs(ns, q, { ...c }, 0.3, 0.2); // JIT warm-up before the heap baseline
    gc();
    const heapBefore = process.memoryUsage().heapUsed;
    const doorbells0 = q.doorbells;
    const completed0 = q.completed;
    const empty0 = q.emptyPolls;
    const spin0 = q.spinMs;
    let ours: Measurement;
    if (profile && c.qd > 1 && !profiles[c.name]) {
      const p = await profiled(() => runOurs(ns, q, c, seconds, warmup));
      ours = p.value;
      profiles[c.name] = p.lines;
    } else {
      ours = await runOurs(ns, q, c, seconds, warmup);
    }
    const doorbellsPerIo = (q.doorbells - doorbells0) / Math.max(1, q.completed - completed0);
    const emptyPolls = q.emptyPolls - empty0;
    // Waiting for the device: time spent spinning on an empty completion queue, over the run.
    const spinShare = (q.spinMs - spin0) / ((seconds + warmup) * 1000);
    gc();
    const heapAfter = process.memoryUsage().heapUsed;
    const callbacks = await runOursCallbacks(ns, q, c, seconds, warmup);
    const batch = runOursCallerPolls(ns, q, c, seconds, warmup, true);
    let callerPolls: Measurement | undefined;
    let schedulingShare: CaseResult['schedulingShare'];
    if (c.qd === 1) {
      callerPolls = runOursCallerPolls(ns, q, c, seconds, warmup, false);
      schedulingShare = { callback: 1 - callbacks.iops / callerPolls.iops, promise: 1 - ours.iops / callerPolls.iops };
    }
    await ctrl.close();
    // The same run through `userpci proxy` (BARs mapped by this process, DMA memory by memfd),
    // then direct again, opened the same way and as warm, so that the two sit side by side.
    const viaProxy = proxy ? await runThroughProxy(addr, c, seconds, warmup) : undefined;
    const vfioBeside = proxy ? await runDirect(addr, c, seconds, warmup) : undefined;
    if (viaProxy && vfioBeside) console.log(`${c.name}: through userpci proxy ${Math.round(viaProxy.iops)} IOPS, direct VFIO beside it ${Math.round(vfioBeside.iops)} IOPS (${(viaProxy.iops / vfioBeside.iops).toFixed(3)})`);
    console.log(`${c.name}: ours ${Math.round(ours.iops)} IOPS (promise API; ${ours.ios} I/Os in ${ours.seconds.toFixed(2)} s; ${doorbellsPerIo.toFixed(2)} SQ doorbells per I/O; ${(100 * spinShare).toFixed(0)}% of the time waiting for the device; heap ${(heapBefore / 1048576).toFixed(2)} -> ${(heapAfter / 1048576).toFixed(2)} MiB)`);
    console.log(`${c.name}: ours ${Math.round(callbacks.iops)} IOPS (callback API, the driver polls)`);
    console.log(`${c.name}: ours ${Math.round(batch.iops)} IOPS (batch API, the caller polls in a loop)`);
    if (callerPolls && schedulingShare) {
      console.log(`${c.name}: ours ${Math.round(callerPolls.iops)} IOPS (callback API, the caller polls in a loop); scheduling is ${(100 * schedulingShare.callback).toFixed(0)}% of the driver-polled callback run's cost per I/O, ${(100 * schedulingShare.promise).toFixed(0)}% of the promise run's`);
    }
    // The kernel's driver on the same device.
    const disk = await kernelDisk(addr);
    const base = runKernel(baseline, disk, c, seconds, warmup);
    console.log(`${c.name}: kernel ${Math.round(base.iops)} IOPS (${base.ios} I/Os in ${base.seconds.toFixed(2)} s, ${disk})`);
    results.push({ name: c.name, ours, viaProxy, vfioBeside, oursCallbacks: callbacks, oursBatch: batch, oursCallerPolls: callerPolls, schedulingShare, baseline: base, ratio: ours.iops / base.iops, heapBefore, heapAfter, doorbellsPerIo, emptyPolls, spinShare });
  }
  for (const [name, lines] of Object.entries(profiles)) {
    console.log(`profile of ours, ${name} (self time):`);
    for (const l of lines) console.log(`  ${l}`);
  }
  console.log(`BENCH_JSON ${JSON.stringify({ node: process.version, cpus: (await import('node:os')).cpus().length, results, profiles })}`);
}

if (require.main === module) {
  main().catch((e: Error) => {
    console.error(e.stack ?? e.message);
    process.exitCode = 1;
  });
}
