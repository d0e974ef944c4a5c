/**
 * `npm run bench:native`: the hot paths measured on this machine (no guest, no emulator), each
 * beside C doing the same work in the same run (bench/native/baseline.c, built here with cc -O2).
 * Loops are timed in CPU time of the process on both sides (interrupt latency in wall time).
 * Last line:
 *   RESULT {"bench": "native", "cases": [{name, ours, c, unit, target, ratio}]}
 * `target` is what issue 12 asks of ours; ratio = target / ours (1.0 or more: target met).
 * NVMe cases also carry bytes allocated per I/O and the share of wall time in GC.
 *
 * Cases: Region read/write 32/64 against C on the same memfd mapping; DMA streaming map+unmap
 * (a backend whose map/unmap do nothing: the JS work only) against the same bookkeeping in C;
 * interrupt latency from a C process writing an eventfd to our handler (event loop, dedicated
 * thread, polled) against a C process blocked in read(2) on an eventfd, both placed alike on the
 * CPUs (see benchIrq); the NVMe driver on an in-process instant device (bench/native/instant-nvme.ts) at QD1/32/256 with the callback, batch and
 * promise APIs, against the same protocol in C, in rounds alternating C and ours pinned alike on each
 * CPU (see measure: this host's vCPUs run at two speeds, C's and ours alike).
 *
 * The promise API is measured twice: with V8's defaults, and with the application's opt-in to
 * serial scavenges (useSerialScavenge, case names "serial scavenge"; API promise-serial).
 *
 * `node dist/bench/native/run.js [regs,dma,irq,nvme]` runs some groups only; NVME_QD=1,32 and
 * NVME_API=callback,batch,promise,promise-serial narrow the NVMe cases (while iterating); NVME_ROUNDS
 * sets the rounds per CPU (default 5).
 *
 * Young-generation configurations (an application's node flags) are measured on request, each in
 * a child process started with them: NVME_SEMI_SPACE=16,32,64,128 (MiB: --min/--max-semi-space-size),
 * NVME_NODE_FLAGS='--single-threaded-gc;--minor-mc --single-threaded-gc' (flag sets separated by
 * `;`, `none` for no flags: V8's defaults in a child), NVME_PAGES_TOGETHER=1 (each configuration
 * again with V8's heap pages placed together, bench/native/heap-together.c), NVME_CONFIG_ROUNDS
 * (default 2), NVME_GC_TRACE=1 (V8's per-GC phase times); see benchYoungConfigs. Every NVMe
 * case's `config` in RESULT says which configuration it ran, flags spelled out.
 *
 * GC fields of NVMe cases: `gcShare` (wall time in GC pauses / wall time), `gcShareByMedianPause`
 * (young-generation GCs each at the round's median pause), `scavenges`, `scavengePauseMs` and
 * `iosPerScavenge` count young-generation GCs whatever the collector: scavenges, or V8's minor
 * mark-compacts under --minor-mc (perf_hooks `gc` kind 2, kGCTypeMinorMarkCompact); `youngGc`
 * names the collector seen ('scavenge', 'minor-mc', both joined by '+', or 'none'). Pauses are
 * the main thread's: GC work on V8's helper threads (parallel or concurrent tasks) is in `ours`
 * (process CPU time) but not in the shares. `rssMiB`: the process's resident set after the
 * case's measured rounds, MiB.
 */
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { PerformanceObserver, constants as perfConstants } from 'node:perf_hooks';
import { native, constants } from '../../src/native/index';
import { Region } from '../../src/device/region';
import { DmaSpace } from '../../src/dma/dma-space';
import type { Backend } from '../../src/device/backend';
import { InterruptVector } from '../../src/irq/interrupt-vector';
import { parseCpuList } from '../../src/irq/irq-affinity';
import { NvmeController } from '../../src/drivers/nvme/controller';
import type { NvmeQueue } from '../../src/drivers/nvme/queue';
import type { NvmeNamespace } from '../../src/drivers/nvme/namespace';
import { useSerialScavenge } from '../../src/gc-tuning';
import { InstantNvme } from './instant-nvme';
import { nextUnit, promiseDriver, unitMaskOf } from './promise-drive';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

const REPO = path.resolve(__dirname, '../../..');
/** SPDK's published per-I/O CPU cost on one core (the issue's fixed reference), ns. */
const SPDK_NS = 72;

interface Case {
  name: string;
  ours: number;
  c: number | null;
  unit: string;
  target: number | null;
  ratio: number | null;
  bytesPerIo?: number;
  gcShare?: number;
  /** See NvmeRound.gcShareByMedianPause. */
  gcShareByMedianPause?: number;
  /** V8's new space (young generation) while measured, MiB; see warmUp. */
  newSpaceMiB?: number;
  /** The process's resident set after the measured rounds, MiB. */
  rssMiB?: number;
  /** Young-generation collector seen: 'scavenge', 'minor-mc' (both: joined by '+'), 'none'. */
  youngGc?: string;
  /** NVMe rounds (see measure): how many ran, how many counted (host at full speed), the median of all. */
  rounds?: number;
  counted?: number;
  hostSlow?: boolean;
  oursAllRounds?: number;
  /** NVMe cases: the process's GC configuration (V8's defaults, or what was set, and how). */
  config?: string;
  /** Scavenges per measured round, their mean pause (ms) and the I/Os between two of them (medians of the rounds used). */
  scavenges?: number;
  scavengePauseMs?: number;
  iosPerScavenge?: number;
  /** Young-generation configurations: each configuration round's GC share (the case carries their median). */
  gcShareRounds?: number[];
  /** With NVME_GC_TRACE: per-scavenge means of V8's --trace-gc-nvp fields over the measured rounds. */
  nvp?: Record<string, number>;
}

const cases: Case[] = [];
/** Cases that could not run, and why (printed, and in the RESULT line). */
const failures: string[] = [];
function add(name: string, ours: number, c: number | null, unit: string, target: number | null, extra: Partial<Case> = {}): void {
  cases.push({ name, ours, c, unit, target, ratio: target === null ? null : target / ours, ...extra });
}

function buildBaseline(): string {
  const src = path.join(REPO, 'bench/native/baseline.c');
  const out = path.join(REPO, '.cache/bench/native/baseline');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  if (!fs.existsSync(out) || fs.statSync(out).mtimeMs < fs.statSync(src).mtimeMs) {
    execFileSync('cc', ['-O2', '-Wall', '-pthread', '-o', out, src], { stdio: 'inherit' });
  }
  return out;
}

function runC(bin: string, args: string[], fds: number[] = []): Record<string, number> {
  const out = execFileSync(bin, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit', ...fds] });
  return JSON.parse(out.trim().split('\n').pop()!) as Record<string, number>;
}

/**
 * CPU time of this process, ms. Loops are timed in CPU time, not wall time, on both sides: on a
 * busy machine wall time mostly measures how long the scheduler kept the process waiting.
 */
function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** Best (lowest) CPU ns per iteration of `fn(n)` over a few rounds, after a warm-up. */
function nsPer(fn: (n: number) => unknown, n: number, rounds = 5): number {
  fn(Math.ceil(n / 10));
  let best = Infinity;
  for (let r = 0; r < rounds; r++) {
    const t0 = cpuMs();
    fn(n);
    best = Math.min(best, ((cpuMs() - t0) * 1e6) / n);
  }
  return best;
}

// ------------------------------------------------------------------ registers

function benchRegions(bin: string): void {
  const memfd = native.memfdCreate('bench-bar', 0);
  native.ftruncate(memfd, 0x4000);
  const backend = {
    mapRegion: (_i: number, o: number, s: number) => native.mmap(s, constants.PROT_READ | constants.PROT_WRITE, constants.MAP_SHARED, memfd, o),
    unmapRegion: (b: ArrayBuffer) => native.munmap(b),
  } as unknown as Backend;
  const r = new Region(backend, { index: 0, size: 0x4000, readable: true, writable: true, mappable: true, sparseAreas: undefined }, 'bench BAR');
  const N = 20_000_000;
  const read32 = nsPer((n) => {
    let s = 0;
    for (let i = 0; i < n; i++) s = (s + r.read32(0x1c)) | 0;
    return s;
  }, N);
  const write32 = nsPer((n) => {
    for (let i = 0; i < n; i++) r.write32(0x1000, i);
  }, N);
  const read64 = nsPer((n) => {
    let s = 0n;
    for (let i = 0; i < n; i++) s += r.read64(0x28);
    return s;
  }, N / 20);
  const write64 = nsPer((n) => {
    for (let i = 0; i < n; i++) r.write64(0x28, i * 4096);
  }, N);
  const c = runC(bin, ['regs', String(N)], [memfd]);
  native.close(memfd);
  add('Region.read32 (memfd mapping)', read32, c.read32Ns!, 'ns', 3);
  add('Region.write32 (memfd mapping)', write32, c.write32Ns!, 'ns', 2);
  add('Region.read64 (bigint)', read64, c.read64Ns!, 'ns', null);
  add('Region.write64 (number)', write64, c.write64Ns!, 'ns', null);
}

// ------------------------------------------------------------------ DMA

function benchDma(bin: string): void {
  const backend = {
    name: 'bench',
    iommuAperture: () => ({ domain: {}, ranges: [{ start: 0x100000, end: 2 ** 39 - 1 }], pageSize: 4096 }),
    dmaMap: () => undefined,
    dmaUnmap: () => undefined,
  } as unknown as Backend;
  const space = new DmaSpace(backend, 2 ** 39 - 1);
  const buffer = new Uint8Array(10_000);
  const ns = nsPer((n) => {
    for (let i = 0; i < n; i++) space.map(buffer, 'to-device').unmap();
  }, 1_000_000);
  const c = runC(bin, ['dma', '1000000']);
  add('DMA streaming map+unmap, JS work (no ioctl)', ns / 1000, c.mapUnmapNs! / 1000, 'us', 0.1);
}

// ------------------------------------------------------------------ interrupts

/*
 * Interrupt latency, like for like: where the scheduler puts the woken thread (on the raiser's
 * CPU, or on another one it must first wake with an IPI; this host may itself be a VM) moves the
 * figure more than anything the receiver does, so every case fixes it the same way for C and for
 * ours: the C raiser (another process) pinned to the first CPU we may use, the receiver (C
 * process, our handler's thread) to the same ("same CPU") or the next one ("other CPU"),
 * optionally SCHED_FIFO on both sides. Rounds alternate C and ours; each case reports the median of the rounds' percentiles.
 */
const IRQ_N = 1000;
const IRQ_ROUNDS = Number(process.env.IRQ_ROUNDS ?? 7);
/** SCHED_FIFO priority of the realtime cases (the kernel's threaded IRQ handlers run at 50). */
const IRQ_RT_PRIORITY = 50;

/** Latency percentiles (ns) of `lat` after dropping the first 5% (warm-up). */
function percentiles(lat: Float64Array): { p50: number; p99: number } {
  const s = Float64Array.from(lat.subarray(Math.floor(lat.length / 20))).sort();
  return { p50: s[Math.floor(s.length / 2)]!, p99: s[Math.floor((s.length * 99) / 100)]! };
}

/** The CPUs this thread may use (a taskset may have narrowed them). */
function allowedCpus(): number[] {
  return parseCpuList(/^Cpus_allowed_list:\s*(\S+)$/m.exec(fs.readFileSync('/proc/thread-self/status', 'utf8'))?.[1] ?? '') ?? [0];
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

function waitExit(p: ReturnType<typeof spawn>): Promise<number> {
  return new Promise<number>((resolve) => p.once('exit', (code) => resolve(code ?? 1)));
}

/** One round of C: the C raiser on `raiserCpu`, a C process blocked in read(2) on `cpu` (SCHED_FIFO at `priority` if > 0). */
async function cRound(bin: string, n: number, raiserCpu: number, cpu: number, priority: number): Promise<{ p50: number; p99: number }> {
  const efd = native.eventfd(0, constants.EFD_NONBLOCK);
  const memfd = native.memfdCreate('bench-irq-c', 0);
  native.ftruncate(memfd, constants.PAGE_SIZE);
  try {
    const receiver = spawn(bin, ['receive', String(n), String(cpu), String(priority)], { stdio: ['ignore', 'pipe', 'inherit', efd, memfd] });
    let out = '';
    receiver.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const raiser = spawn(bin, ['raise', String(n), String(raiserCpu)], { stdio: ['ignore', 'ignore', 'inherit', efd, memfd] });
    const codes = await Promise.all([waitExit(receiver), waitExit(raiser)]);
    if (codes.some((code) => code !== 0)) throw new Error('the C receiver or raiser failed');
    const r = JSON.parse(out.trim()) as Record<string, number>;
    return { p50: r.p50Ns!, p99: r.p99Ns! };
  } finally {
    native.close(efd);
    native.close(memfd);
  }
}

/** The page the C raiser and our receiver share: f64 raise time at 0, i32 count of interrupts taken at 8. */
interface IrqPage {
  memfd: number;
  raisedAt: Float64Array;
  ack: Int32Array;
  /** Latencies of the current round, ns (shared with a handler thread). */
  lat: Float64Array;
  release(): void;
}

function irqPage(n: number): IrqPage {
  const memfd = native.memfdCreate('bench-irq', 0);
  native.ftruncate(memfd, constants.PAGE_SIZE);
  const page = native.mmap(constants.PAGE_SIZE, constants.PROT_READ | constants.PROT_WRITE, constants.MAP_SHARED, memfd, 0);
  return {
    memfd,
    raisedAt: new Float64Array(page, 0, 1),
    ack: new Int32Array(page, 8, 2),
    lat: new Float64Array(new SharedArrayBuffer(8 * n)),
    release: () => {
      native.munmap(page);
      native.close(memfd);
    },
  };
}

type IrqMode = 'event loop' | 'thread' | 'polled';

/** One round of ours: the C raiser on `raiserCpu` signals `v`, delivered as `mode` (already set up). */
async function oursRound(bin: string, v: InterruptVector, mode: IrqMode, page: IrqPage, n: number, raiserCpu: number): Promise<{ p50: number; p99: number }> {
  Atomics.store(page.ack, 0, 0);
  const raiser = spawn(bin, ['raise', String(n), String(raiserCpu)], { stdio: ['ignore', 'ignore', 'inherit', v.fd, page.memfd] });
  const exited = waitExit(raiser);
  if (mode === 'polled') {
    // The main thread does nothing but poll (as a latency-bound driver would).
    const deadline = performance.now() + 120_000; // hang guard only
    while (Atomics.load(page.ack, 0) < n && performance.now() < deadline) v.poll();
  }
  if ((await exited) !== 0) throw new Error(`the C raiser failed (${mode})`);
  return percentiles(page.lat);
}

/** Our receiver of `mode` on `cpu` (the handler's thread, or the main thread for the other modes). */
async function oursReceiver(v: InterruptVector, mode: IrqMode, page: IrqPage, cpu: number, priority: number): Promise<void> {
  if (mode === 'thread') {
    await v.deliverOnThread({
      module: path.join(__dirname, 'irq-handler.js'),
      data: { memfd: page.memfd, latencies: page.lat.buffer },
      cpus: [cpu],
      ...(priority > 0 ? { realtimePriority: priority } : {}),
    });
    return;
  }
  native.setThreadAffinity(Int32Array.from([cpu]));
  const { raisedAt, ack, lat } = page;
  v.on('interrupt', () => {
    const t = process.hrtime();
    const k = ack[0]!;
    lat[k] = t[0] * 1e9 + t[1] - raisedAt[0]!;
    Atomics.store(ack, 0, k + 1);
  });
  if (mode === 'polled') v.deliverPolled();
}

async function benchIrq(bin: string): Promise<void> {
  // C as two threads of one process, unpinned (for reference: no second process, no placement).
  const cThread = runC(bin, ['irq', String(2000)]);
  add('interrupt latency p50, C raiser thread -> C read(2) thread (same process, unpinned)', cThread.p50Ns! / 1000, cThread.p50Ns! / 1000, 'us', null);
  // The CPUs this process may use (a taskset may have narrowed them): the raiser goes on the
  // first, the receiver on the first or the second; the main thread gets all of them back after.
  const allowed = allowedCpus();
  const allCpus = Int32Array.from(allowed);
  const raiserCpu = allowed[0]!;
  const placements = [{ name: 'same CPU', cpu: raiserCpu }, ...(allowed.length > 1 ? [{ name: 'other CPU', cpu: allowed[1]! }] : [])];
  const configs: { mode: IrqMode; placement: { name: string; cpu: number }; priority: number }[] = [];
  for (const placement of placements) {
    configs.push({ mode: 'thread', placement, priority: 0 }, { mode: 'thread', placement, priority: IRQ_RT_PRIORITY }, { mode: 'event loop', placement, priority: 0 });
    // Polling on the raiser's CPU would only take the CPU from it.
    if (placement.cpu !== raiserCpu) configs.push({ mode: 'polled', placement, priority: 0 });
  }
  for (const { mode, placement, priority } of configs) {
    const page = irqPage(IRQ_N);
    const v = new InterruptVector('msi', 0);
    try {
      await oursReceiver(v, mode, page, placement.cpu, priority);
    } catch (err) {
      failures.push(`interrupts, ${mode} on the ${placement.name}${priority > 0 ? `, SCHED_FIFO ${priority}` : ''}: ${(err as Error).message}`);
      v.close();
      page.release();
      continue;
    }
    const c: { p50: number; p99: number }[] = [];
    const ours: { p50: number; p99: number }[] = [];
    try {
      // Warm-up: the JIT optimizes the handler and the loop.
      for (let i = 0; i < 2; i++) await oursRound(bin, v, mode, page, IRQ_N, raiserCpu);
      for (let round = 0; round < IRQ_ROUNDS; round++) {
        c.push(await cRound(bin, IRQ_N, raiserCpu, placement.cpu, priority));
        ours.push(await oursRound(bin, v, mode, page, IRQ_N, raiserCpu));
      }
    } finally {
      if (mode === 'thread') await v.deliverOnEventLoop();
      else native.setThreadAffinity(allCpus);
      v.close();
      page.release();
    }
    const name = `${mode === 'thread' ? 'dedicated thread' : mode}, receiver on the ${placement.name}${priority > 0 ? `, SCHED_FIFO ${priority}` : ''}`;
    const us = (v: number) => (v / 1000).toFixed(1);
    console.log(`${name}: p50 per round (us) ours ${ours.map((r) => us(r.p50)).join(' ')} / C ${c.map((r) => us(r.p50)).join(' ')}`);
    const cP50 = median(c.map((r) => r.p50));
    // The issue: natively within 1.3x of C (C: the same raiser, a C process blocked in read(2), placed alike).
    add(`interrupt latency p50, ${name} (C alike, median of ${IRQ_ROUNDS} rounds)`, median(ours.map((r) => r.p50)) / 1000, cP50 / 1000, 'us', (1.3 * cP50) / 1000);
    add(`interrupt latency p99, ${name} (C alike, median of ${IRQ_ROUNDS} rounds)`, median(ours.map((r) => r.p99)) / 1000, median(c.map((r) => r.p99)) / 1000, 'us', null);
  }
}

// ------------------------------------------------------------------ NVMe

interface GcProfile {
  statistics: { gcType: string; cost: number; beforeGC: { heapStatistics: { usedHeapSize: number } }; afterGC: { heapStatistics: { usedHeapSize: number } } }[];
}

const GCProfiler = (v8 as unknown as { GCProfiler: new () => { start(): void; stop(): GcProfile } }).GCProfiler;

/**
 * perf_hooks `gc` entry kinds (V8's GCType bits) of young-generation collections: the scavenger's
 * (kGCTypeScavenge, Node's NODE_PERFORMANCE_GC_MINOR) and minor mark-compact's (--minor-mc:
 * kGCTypeMinorMarkCompact, 2 in V8 11.3, for which Node 20 has no constant).
 */
const GC_KIND_SCAVENGE = perfConstants.NODE_PERFORMANCE_GC_MINOR;
const GC_KIND_MINOR_MC = 2;
function gcKind(e: unknown): number | undefined {
  return (e as { detail?: { kind?: number } }).detail?.kind;
}
function isYoungGc(kind: number | undefined): boolean {
  return kind === GC_KIND_SCAVENGE || kind === GC_KIND_MINOR_MC;
}

/** Bytes V8's young generation (new space, both semi-spaces) occupies now. */
function newSpaceSize(): number {
  return v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')!.space_size;
}

/**
 * The size V8's new space grows to at most in a node process like this one (same binary, flags
 * and machine), found in a child process so this one's heap is left as it is: the child keeps
 * a few MiB of arrays alive across scavenges (V8 grows new space once the bytes surviving
 * scavenges since its last growth exceed its capacity) until four times its size went by
 * without growth.
 */
function newSpaceCeiling(): number {
  const probe = `
    const v8 = require('node:v8');
    const size = () => v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size;
    const ring = new Array(32768).fill(null);
    let at = 0, last = size(), since = 0;
    while (since < 4 * last) {
      for (let i = 0; i < 4096; i++) { ring[at] = [at, i, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]; at = (at + 1) & 32767; }
      since += 4096 * 144;
      const s = size();
      if (s > last) { last = s; since = 0; }
    }
    console.log('new space ceiling ' + last);`;
  // Flags such as --trace-gc-nvp print more.
  const out = execFileSync(process.execPath, [...process.execArgv, '-e', probe], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const size = Number(/^new space ceiling (\d+)$/m.exec(out)?.[1]);
  if (!(size > 0)) throw new Error('the new-space probe printed no size');
  return size;
}

let ceiling = 0;

/**
 * The performance timeline hands `gc` entries over from the event loop, a setImmediate or two
 * after the GC; a timer alone may fire first (it starts from the loop's cached time, from
 * before the drive). (v8.GCProfiler answers synchronously but leaks ~35 KB of native memory per
 * GC in Node 20: fine for one round, not for a warm-up.)
 */
async function gcEntriesDelivered(): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 5));
  for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
}

/**
 * Warm-up: the JIT first, then, for a workload that allocates, until V8's new space has grown to
 * its ceiling (newSpaceCeiling). V8 starts the young generation small and doubles it only as
 * bytes surviving scavenges accumulate; at a few hundred bytes per promise I/O and ~10 KB
 *  surviving each scavenge, the promise API at QD32 took ~19M I/Os (seconds) from 4 to 32 MiB,
 * and its GC share meanwhile falls from ~12% to ~5% (more scavenges, each pausing about as long
 * whatever the size). A long-running driver lives at the ceiling: measuring after the usual
 * short warm-up would report the start-up transient. A workload that does not fill the young
 * generation once per `ios` I/Os (the callback and batch APIs: 0 B/IO) cannot grow it in any
 * time that matters: its warm-up ends there. Returns the new space's size afterwards.
 */
async function warmUp(drive: (ios: number) => Promise<void> | void, ios: number): Promise<number> {
  // JIT: each call runs one long loop, entered through on-stack replacement; the function's own
  // optimized code comes only after a few calls (else the first measured rounds ran before it).
  for (let i = 0; i < 5; i++) await drive(Math.ceil(ios / 5));
  if (ceiling === 0) ceiling = newSpaceCeiling();
  let scavenges = 0;
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) if (isYoungGc(gcKind(e))) scavenges++;
  });
  observer.observe({ entryTypes: ['gc'] });
  try {
    // Hang guard only (the ceiling is reached within a few hundred rounds at 450 B/IO).
    for (let round = 0; newSpaceSize() < ceiling && round < 1000; round++) {
      scavenges = 0;
      await drive(ios);
      await gcEntriesDelivered();
      if (scavenges === 0) break;
    }
  } finally {
    observer.disconnect();
  }
  return newSpaceSize();
}

/** Rounds of each NVMe case that must find the host at full speed (see measure), and the most rounds per CPU. */
const NVME_ROUNDS = Number(process.env.NVME_ROUNDS ?? 5);
const NVME_MAX_ROUNDS = 4 * NVME_ROUNDS;
/** A round counts as run at full speed when both its C rounds took at most this much longer than C's fastest. */
const HOST_SLACK = 1.2;
/** C's fastest round per queue depth in this run: this host at full speed. */
const fastestC = new Map<number, number>();

/** One round of an NVMe case: ours between two C rounds, all on `cpu`; ns per I/O. */
interface NvmeRound {
  cpu: number;
  ours: number;
  cBefore: number;
  cAfter: number;
  gcShare: number;
  /**
   * The same with every scavenge counted at the round's median scavenge pause: on a busy host a
   * pause the scheduler preempted (the process waits for a CPU inside it) counts in gcShare at
   * its full wall time; this figure shows what the scavenges themselves cost.
   */
  gcShareByMedianPause: number;
  scavenges: number;
  /** Mean scavenge pause, ms. */
  scavengePauseMs: number;
}

/**
 * Run `ios` I/Os through `drive` after warmUp, like for like with C. This host is a VM whose vCPUs
 * run at two speeds, each on its own, for seconds to minutes at a time: a loop bound by load/store
 * throughput (this one, and C's) takes 1.3-1.6x as long in the slow state, a dependency chain ~5%
 * longer, as on a core shared with another busy thread (docs/ARCHITECTURE.md, bench:native). C
 * and ours slow down together (ours/C stays ~10 at QD32), so each round runs ours between two C
 * rounds (`cRound(cpu)`: the same protocol in C) with this thread pinned to the same CPU, on each
 * CPU this process may use in turn. A round counts when both its C rounds ran within HOST_SLACK
 * of C's fastest round at this depth (judged by C alone); rounds go on until NVME_ROUNDS counted
 * (at most NVME_MAX_ROUNDS per CPU), and the case reports the medians of the counted rounds, or of
 * all of them with `hostSlow` when none counted. Every round is printed. Per round: CPU ns per
 * I/O and the share of wall time in GC pauses; then bytes allocated per I/O in a round of its own.
 * GC pauses come from the performance timeline's `gc` entries; v8.GCProfiler (which the bytes
 * need: heap used before and after each GC) gathers heap statistics inside every pause, which
 * about doubled the pauses and the CPU time it was meant to measure.
 */
async function measure(drive: (ios: number) => Promise<void> | void, ios: number, qd: number, cRound: (cpu: number) => number): Promise<Measured> {
  await warmUp(drive, ios);
  const newSpace = newSpaceSize();
  const allowed = allowedCpus();
  const rounds: NvmeRound[] = [];
  const counts = (r: NvmeRound) => Math.max(r.cBefore, r.cAfter) <= HOST_SLACK * fastestC.get(qd)!;
  const c = (cpu: number) => {
    const ns = cRound(cpu);
    fastestC.set(qd, Math.min(ns, fastestC.get(qd) ?? Infinity));
    return ns;
  };
  const pauses: { start: number; end: number; minor: boolean }[] = [];
  const youngKinds = new Set<number>();
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = gcKind(e);
      const minor = isYoungGc(kind);
      if (minor) youngKinds.add(kind!);
      pauses.push({ start: e.startTime, end: e.startTime + e.duration, minor });
    }
  });
  observer.observe({ entryTypes: ['gc'] });
  try {
    for (let round = 0; round < NVME_MAX_ROUNDS && (round < NVME_ROUNDS || rounds.filter(counts).length < NVME_ROUNDS); round++) {
      for (const cpu of round % 2 === 0 ? allowed : [...allowed].reverse()) {
        native.setThreadAffinity(Int32Array.from([cpu]));
        const cBefore = c(cpu);
        gc();
        // NVME_GC_TRACE (a child run with --trace-gc-nvp): V8's per-scavenge lines between these
        // marks belong to the measured rounds (see nvpMeans).
        if (GC_MARKS) process.stdout.write('@@nvp begin\n');
        const w0 = performance.now();
        const t0 = cpuMs();
        await drive(ios);
        const t1 = cpuMs();
        const w1 = performance.now();
        if (GC_MARKS) process.stdout.write('@@nvp end\n');
        const cAfter = c(cpu);
        await gcEntriesDelivered();
        let gcMs = 0;
        let majorMs = 0;
        const minor: number[] = [];
        for (const p of pauses) {
          if (p.start < w0 || p.end > w1) continue;
          gcMs += p.end - p.start;
          if (p.minor) minor.push(p.end - p.start);
          else majorMs += p.end - p.start;
        }
        pauses.length = 0;
        const typical = minor.length > 0 ? median(minor) : 0;
        rounds.push({
          cpu, ours: ((t1 - t0) * 1e6) / ios, cBefore, cAfter, gcShare: gcMs / (w1 - w0),
          gcShareByMedianPause: (typical * minor.length + majorMs) / (w1 - w0), scavenges: minor.length,
          scavengePauseMs: minor.length > 0 ? minor.reduce((a, b) => a + b, 0) / minor.length : 0,
        });
      }
    }
  } finally {
    observer.disconnect();
    native.setThreadAffinity(Int32Array.from(allowed));
  }
  const counted = rounds.filter(counts);
  const used = counted.length > 0 ? counted : rounds;
  const rss = process.memoryUsage.rss();
  gc();
  const profiler = new GCProfiler();
  profiler.start();
  const used0 = v8.getHeapStatistics().used_heap_size;
  await drive(ios);
  const used1 = v8.getHeapStatistics().used_heap_size;
  let freed = 0;
  for (const s of profiler.stop().statistics) freed += s.beforeGC.heapStatistics.usedHeapSize - s.afterGC.heapStatistics.usedHeapSize;
  // getHeapStatistics() itself allocates its result object (a few hundred bytes per window).
  return {
    ns: median(used.map((r) => r.ours)),
    c: median(used.flatMap((r) => [r.cBefore, r.cAfter])),
    gcShare: median(used.map((r) => r.gcShare)),
    gcShareByMedianPause: median(used.map((r) => r.gcShareByMedianPause)),
    scavenges: median(used.map((r) => r.scavenges)),
    scavengePauseMs: median(used.map((r) => r.scavengePauseMs)),
    bytes: Math.max(0, (used1 - used0 + freed) / ios),
    newSpace: Math.min(newSpace, newSpaceSize()),
    rss,
    youngGc: youngKinds.size === 0 ? 'none' : [...youngKinds].sort().map((k) => (k === GC_KIND_MINOR_MC ? 'minor-mc' : 'scavenge')).join('+'),
    rounds,
    counted,
    hostSlow: counted.length === 0,
  };
}

interface Measured {
  /** Medians of the rounds used (see measure). */
  ns: number;
  c: number;
  gcShare: number;
  gcShareByMedianPause: number;
  scavenges: number;
  scavengePauseMs: number;
  bytes: number;
  newSpace: number;
  /** The process's resident set after the measured rounds, bytes. */
  rss: number;
  /** The young-generation collector(s) seen in the measured rounds. */
  youngGc: string;
  rounds: NvmeRound[];
  counted: NvmeRound[];
  hostSlow: boolean;
}

/** Set in the children of benchYoungConfigs() that run with --trace-gc-nvp. */
const GC_MARKS = process.env.NVME_GC_MARKS === '1';
/** The GC configuration this process runs with (a child of benchYoungConfigs() is told its own). */
const CONFIG = process.env.NVME_CONFIG ?? 'V8 defaults';
/** V8 11.3's new-space ceiling on a 64-bit host at its defaults (2 x 16 MiB semi-spaces), bytes. */
const DEFAULT_NEW_SPACE = 32 << 20;

/** NVMe cases: promise-serial is the promise API with the application's useSerialScavenge() opt-in. */
type Api = 'callback' | 'batch' | 'promise' | 'promise-serial';

async function benchNvme(bin: string): Promise<void> {
  for (const qd of process.env.NVME_QD ? process.env.NVME_QD.split(',').map(Number) : [1, 32, 256]) {
    // A fresh device and controller per depth, so a failure at one depth leaves the others alone.
    const { device, nvme } = InstantNvme.open();
    // Bring-up and close: the driver polls on its own; the device answers on the event loop meanwhile.
    const ctrl = await nvme.answering(() => NvmeController.open(device, { defaultQueue: false }));
    try {
      const ns = await nvme.answering(() => ctrl.namespace(1));
      // The measured loops drive polling themselves (q.poll(), the public polled API), the device
      // right before each poll: the driver's own poll scheduling stays off the measured path.
      let q: NvmeQueue;
      try {
        q = await nvme.answering(() => ctrl.createQueuePair({ depth: qd, pollSpinUs: 0, pollBurst: 0 }));
      } catch (err) {
        failures.push(`NVMe QD${qd}: the driver could not create the queue: ${(err as Error).message}`);
        continue;
      }
      const buf = ctrl.allocBuffer(Math.max(2 << 20, 4096 * qd));
      const unitMask = unitMaskOf(ns);
      const cRound = (cpu: number) => runC(bin, ['nvme', String(qd), '2000000', String(cpu)]).nsPerIo!;
      // A young generation above V8's default collects less often: a round then spans about as
      // many young-generation GCs as at the default (a child of benchYoungConfigs started with
      // larger semi-spaces; minor MC's paged new space collects at its whole size, the
      // scavenger at half, so minor MC rounds span about half as many).
      if (ceiling === 0) ceiling = newSpaceCeiling();
      const ios = (qd === 1 ? 300_000 : 1_000_000) * Math.max(1, Math.round(ceiling / DEFAULT_NEW_SPACE));
      for (const api of (process.env.NVME_API ? process.env.NVME_API.split(',') : ['callback', 'batch', 'promise', 'promise-serial']) as Api[]) {
        const promise = api === 'promise' || api === 'promise-serial';
        const drive = promise ? promiseDriver(ns, q, nvme, buf.iova, qd, unitMask) : callbackDriver(ns, q, nvme, buf.iova, qd, unitMask, api === 'batch');
        // The application's opt-in (src/gc-tuning.ts), for this case only: V8's default otherwise.
        if (api === 'promise-serial') useSerialScavenge(true);
        if (GC_MARKS) process.stdout.write(`@@case QD${qd} ${api}\n`);
        let m: Measured;
        try {
          m = await measure(drive, ios, qd, cRound);
        } finally {
          if (api === 'promise-serial') useSerialScavenge(false);
        }
        const target = qd === 32 ? (promise ? 150 : 90) : qd === 1 ? (promise ? 571 / 2 : 429 / 2) : null;
        const what = api === 'promise-serial' ? 'promise API, serial scavenge' : `${api} API`;
        const name = `NVMe 4K read QD${qd}, ${what} (driver + instant device)`;
        const f = (r: NvmeRound) => `${r.ours.toFixed(1)} (C ${r.cBefore.toFixed(1)}/${r.cAfter.toFixed(1)})${m.counted.includes(r) ? '' : '*'}`;
        console.log(`${name}: ns/IO per round, * = host slow (C over ${HOST_SLACK}x its fastest, ${fastestC.get(qd)!.toFixed(2)}): ${allowedCpus().map((cpu) => `CPU ${cpu}: ${m.rounds.filter((r) => r.cpu === cpu).map(f).join(' ')}`).join('; ')}`);
        add(name, m.ns, m.c, 'ns/IO', target, {
          bytesPerIo: m.bytes, gcShare: m.gcShare, gcShareByMedianPause: m.gcShareByMedianPause, newSpaceMiB: m.newSpace / 2 ** 20,
          rssMiB: m.rss / 2 ** 20, youngGc: m.youngGc,
          config: `${CONFIG}${api === 'promise-serial' ? ', useSerialScavenge()' : ''}`,
          scavenges: m.scavenges, scavengePauseMs: m.scavengePauseMs, iosPerScavenge: m.scavenges > 0 ? ios / m.scavenges : ios,
          rounds: m.rounds.length, counted: m.counted.length, hostSlow: m.hostSlow, oursAllRounds: median(m.rounds.map((r) => r.ours)),
        });
      }
      buf.free();
    } finally {
      await nvme.answering(() => ctrl.close()).catch(() => undefined);
      if (!device.closed) device.close();
    }
  }
}

/** A young-generation configuration benchYoungConfigs runs in a child node process. */
interface YoungConfig {
  /** Node flags the child starts with (after this process's own execArgv). */
  flags: string[];
  /** The child's NVME_API. */
  apis: string;
  /** With the LD_PRELOAD shim of NVME_PAGES_TOGETHER. */
  together: boolean;
  /** In case names. */
  short: string;
  /** The cases' `config`: the flags spelled out. */
  label: string;
}

/** The configurations asked for by NVME_SEMI_SPACE, NVME_NODE_FLAGS and NVME_PAGES_TOGETHER. */
function youngConfigs(): YoungConfig[] {
  const sizes = (process.env.NVME_SEMI_SPACE ?? '').split(',').filter((v) => v !== '').map(Number);
  if (sizes.some((n) => !Number.isInteger(n) || n < 1)) throw new Error(`NVME_SEMI_SPACE: semi-space sizes in MiB, e.g. 16,64 (got ${process.env.NVME_SEMI_SPACE})`);
  const sets = (process.env.NVME_NODE_FLAGS ?? '').split(';').map((v) => v.trim()).filter((v) => v !== '');
  const base: Omit<YoungConfig, 'together'>[] = sizes.map((n) => {
    const flags = [`--min-semi-space-size=${n}`, `--max-semi-space-size=${n}`];
    // Both the scavenger's ways (V8's parallel default and useSerialScavenge()) at this size.
    return { flags, apis: 'promise,promise-serial', short: `semi-space ${n} MiB`, label: `semi-space ${n} MiB (node ${flags.join(' ')})` };
  });
  for (const set of sets) {
    const flags = set === 'none' ? [] : set.split(/\s+/);
    if (flags.some((f) => !f.startsWith('--'))) throw new Error(`NVME_NODE_FLAGS: node flag sets separated by ';', 'none' for none, e.g. '--single-threaded-gc;--minor-mc --single-threaded-gc' (got ${process.env.NVME_NODE_FLAGS})`);
    // The flags are the whole configuration: the promise API alone (no useSerialScavenge() on top).
    const short = flags.length === 0 ? 'node without flags' : `node ${flags.join(' ')}`;
    base.push({ flags, apis: 'promise', short, label: short });
  }
  const together = process.env.NVME_PAGES_TOGETHER === '1';
  return base.flatMap((c) => [
    { ...c, together: false },
    ...(together ? [{ ...c, together: true, short: `${c.short}, V8 pages placed together`, label: `${c.label}, V8 pages placed together (LD_PRELOAD bench shim heap-together.c)` }] : []),
  ]);
}

/**
 * Young-generation configurations, for the promise API: NVME_SEMI_SPACE=16,32,64,128 (semi-space
 * sizes in MiB, each run as `--min-semi-space-size=N --max-semi-space-size=N` with V8's parallel
 * scavenges and with useSerialScavenge()), NVME_NODE_FLAGS (node flag sets separated by `;`, e.g.
 * `--minor-mc --single-threaded-gc`: the promise API under exactly those flags), and
 * NVME_PAGES_TOGETHER=1 (each again with V8's heap pages placed together, see heap-together.c).
 * V8 sets up its heap (semi-space sizes, which young-generation collector, helper threads) when
 * the isolate is created, so each runs in a child node process (this script, NVMe promise cases
 * only) started as an application would start it; its ceiling probe and warm-up run with the
 * same flags. NVME_CONFIG_ROUNDS rounds (default 2) run the configurations in alternating order;
 * a case reports its median round by GC share (of two, the higher) and every round's share.
 * NVME_GC_TRACE=1 runs the children with --trace-gc-nvp and adds, per case, the per-GC means of
 * V8's phase times over the measured rounds.
 */
async function benchYoungConfigs(): Promise<void> {
  const configs = youngConfigs();
  if (configs.length === 0) return;
  const shim = configs.some((c) => c.together) ? buildShim() : null;
  const trace = process.env.NVME_GC_TRACE === '1';
  const rounds = Number(process.env.NVME_CONFIG_ROUNDS ?? 2);
  const seen = new Map<string, { short: string; runs: Case[] }>();
  for (let round = 0; round < rounds; round++) {
    for (const { flags, apis, together, short, label } of round % 2 === 0 ? configs : [...configs].reverse()) {
      const env: NodeJS.ProcessEnv = { ...process.env, NVME_API: apis, NVME_CONFIG: label, NVME_SEMI_SPACE: '', NVME_NODE_FLAGS: '', NVME_PAGES_TOGETHER: '', NVME_GC_MARKS: trace ? '1' : '' };
      if (together) env.LD_PRELOAD = shim!;
      const started = Date.now();
      let out: string;
      try {
        out = execFileSync(process.execPath, [...process.execArgv, ...flags, ...(trace ? ['--trace-gc-nvp'] : []), __filename, 'nvme'], { env, encoding: 'utf8', maxBuffer: 256 << 20, stdio: ['ignore', 'pipe', 'inherit'] });
      } catch (err) {
        failures.push(`NVMe promise cases, ${label}, round ${round + 1}: ${(err as Error).message.split('\n')[0]}`);
        continue;
      }
      const result = JSON.parse(/^RESULT (.*)$/m.exec(out)?.[1] ?? '{"cases":[],"failures":["no RESULT line"]}') as { cases: Case[]; failures: string[] };
      for (const f of result.failures) failures.push(`${label}: ${f}`);
      const nvp = trace ? nvpMeans(out) : new Map<string, Record<string, number>>();
      for (const c of result.cases) {
        const key = `${c.name} ${c.config}`;
        const qd = /QD(\d+)/.exec(c.name)?.[1];
        const api = c.name.includes('serial scavenge') ? 'promise-serial' : 'promise';
        const entry = seen.get(key) ?? { short, runs: [] };
        entry.runs.push({ ...c, nvp: nvp.get(`QD${qd} ${api}`) });
        seen.set(key, entry);
      }
      console.log(`young generation round ${round + 1}, ${label}: ${((Date.now() - started) / 1000).toFixed(0)} s, GC share ${result.cases.map((c) => `${/QD\d+/.exec(c.name)?.[0]}${c.name.includes('serial') ? ' serial' : ''} ${(100 * (c.gcShare ?? 0)).toFixed(1)}% (${(100 * (c.gcShareByMedianPause ?? 0)).toFixed(1)}%)`).join(', ')}`);
    }
  }
  for (const { short, runs } of seen.values()) {
    const sorted = [...runs].sort((a, b) => (a.gcShare ?? 0) - (b.gcShare ?? 0));
    const mid = sorted[Math.floor(sorted.length / 2)]!;
    const name = mid.name.replace(' (driver + instant device)', `, ${short} (driver + instant device, child process)`);
    cases.push({ ...mid, name, ratio: mid.target === null ? null : mid.target / mid.ours, gcShareRounds: runs.map((r) => r.gcShare ?? 0) });
  }
}

/** The LD_PRELOAD shim of NVME_PAGES_TOGETHER, built here like the C baseline. */
function buildShim(): string {
  const src = path.join(REPO, 'bench/native/heap-together.c');
  const out = path.join(REPO, '.cache/bench/native/heap-together.so');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  if (!fs.existsSync(out) || fs.statSync(out).mtimeMs < fs.statSync(src).mtimeMs) {
    execFileSync('cc', ['-O2', '-Wall', '-shared', '-fPIC', '-o', out, src], { stdio: 'inherit' });
  }
  return out;
}

/**
 * Per-GC means of --trace-gc-nvp's fields for young-generation GCs between a child's `@@nvp
 * begin`/`end` marks, per `@@case` (V8 prints with printf and flushes each line; our marks are
 * synchronous writes to the same pipe, so the order holds). Scavenges (`gc=s`) get two
 * remainders: `scavenge.unscoped` (the scavenge phase outside its named sub-phases: the
 * semi-space flip, clearing each to-space page's mark bits, collecting the old-generation pages
 * that hold remembered sets) and `pause.outside_scavenge` (the rest of the pause: the tracer's
 * start, which walks the new-space pages allocated since the last GC to count bytes, prologue and
 * epilogue). Minor mark-compacts (`gc=mmc`, --minor-mc) get `minor_mc.unscoped` (outside mark,
 * clear, sweep, finish) and `pause.outside_minor_mc`.
 */
function nvpMeans(out: string): Map<string, Record<string, number>> {
  const sums = new Map<string, { n: number; collector: 's' | 'mmc'; f: Record<string, number> }>();
  let current = '';
  let inside = false;
  for (const line of out.split('\n')) {
    if (line.startsWith('@@case ')) current = line.slice(7);
    else if (line === '@@nvp begin') inside = true;
    else if (line === '@@nvp end') inside = false;
    else if (inside && (line.includes(' gc=s ') || line.includes(' gc=mmc '))) {
      const collector = line.includes(' gc=s ') ? 's' : 'mmc';
      const f: Record<string, number> = {};
      for (const m of line.matchAll(/([\w.]+)=([\d.]+)/g)) f[m[1]!] = Number(m[2]);
      if (collector === 's') {
        f['scavenge.unscoped'] = (f.scavenge ?? 0) - NVP_SCAVENGE_PHASES.reduce((a, k) => a + (f[k] ?? 0), 0);
        f['pause.outside_scavenge'] = (f.pause ?? 0) - (f.scavenge ?? 0);
      } else {
        f['minor_mc.unscoped'] = (f.minor_mc ?? 0) - NVP_MINOR_MC_PHASES.reduce((a, k) => a + (f[k] ?? 0), 0);
        f['pause.outside_minor_mc'] = (f.pause ?? 0) - (f.minor_mc ?? 0);
      }
      const s = sums.get(current) ?? { n: 0, collector, f: {} };
      s.n++;
      for (const [k, v] of Object.entries(f)) s.f[k] = (s.f[k] ?? 0) + v;
      sums.set(current, s);
    }
  }
  const keep = {
    s: ['pause', 'mutator', 'time_to_safepoint', 'heap.external.prologue', 'heap.external.epilogue', 'scavenge', 'scavenge.roots', 'scavenge.parallel', 'scavenge.weak_global_handles.identify', 'scavenge.weak_global_handles.process', 'scavenge.update_refs', 'scavenge.sweep_array_buffers', 'scavenge.free_remembered_set', 'scavenge.unscoped', 'pause.outside_scavenge', 'new_space_survived', 'promoted'],
    mmc: ['pause', 'mutator', 'time_to_safepoint', 'minor_mc', 'mark', 'mark.seed', 'mark.closure_parallel', 'mark.closure', 'clear', 'sweep', 'sweep.new', 'sweep.start_jobs', 'sweep.array_buffers', 'finish', 'finish.ensure_capacity', 'background.mark', 'background.sweep', 'minor_mc.unscoped', 'pause.outside_minor_mc', 'new_space_survived', 'promoted'],
  };
  const means = new Map<string, Record<string, number>>();
  for (const [k, { n, collector, f }] of sums) {
    means.set(k, Object.fromEntries([[collector === 's' ? 'scavenges' : 'minorMarkCompacts', n], ...keep[collector].map((key) => [key, Math.round(((f[key] ?? 0) / n) * 1000) / 1000])]));
  }
  return means;
}

/** --trace-gc-nvp's named sub-phases of a scavenge. */
const NVP_SCAVENGE_PHASES = ['scavenge.roots', 'scavenge.parallel', 'scavenge.weak', 'scavenge.weak_global_handles.identify', 'scavenge.weak_global_handles.process', 'scavenge.update_refs', 'scavenge.sweep_array_buffers', 'scavenge.free_remembered_set'];
/** --trace-gc-nvp's top-level phases of a minor mark-compact (V8 11.3). */
const NVP_MINOR_MC_PHASES = ['mark', 'clear', 'sweep', 'finish'];

/** Callback API: each completion submits the next read of its slot (batch: resubmissions of one poll in one q.batch). */
function callbackDriver(ns: NvmeNamespace, q: NvmeQueue, nvme: InstantNvme, iova: number, qd: number, unitMask: number, batched: boolean): (ios: number) => void {
  let done = 0;
  let target = 0;
  let failure: Error | null = null;
  // Slots to resubmit after the poll (batch): a stack in a typed array (an array popped empty may give its storage back).
  const again = new Int32Array(qd);
  let pending = 0;
  // Each slot's IOVA is computed once and passed along as that same number: an IOVA computed at
  // the call (a double above 2^30) is boxed whenever V8 does not inline the call.
  const submits = Array.from({ length: qd }, (_, slot) => {
    const slotIova = iova + slot * 4096;
    const callback = (err: Error | null) => {
      if (err) failure ??= err;
      done++;
      if (done + q.outstanding >= target) return;
      if (batched) again[pending++] = slot;
      else submit();
    };
    const submit = () => ns.submit(false, nextUnit(unitMask) * 8, slotIova, 4096, q, callback);
    return submit;
  });
  const resubmitAll = () => {
    while (pending > 0) submits[again[--pending]!]!();
  };
  return (ios: number) => {
    done = 0;
    target = ios;
    q.batch(() => {
      for (let i = 0; i < Math.min(qd, ios); i++) submits[i]!();
    });
    while (done < ios) {
      nvme.run();
      q.poll();
      if (batched && pending > 0) q.batch(resubmitAll);
      if (failure) throw failure;
    }
  };
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  youngConfigs(); // malformed NVME_SEMI_SPACE / NVME_NODE_FLAGS: fail before the long part
  const bin = buildBaseline();
  const only = process.argv[2]?.split(',');
  const want = (k: string) => !only || only.includes(k);
  if (want('regs')) benchRegions(bin);
  if (want('dma')) benchDma(bin);
  if (want('irq')) await benchIrq(bin);
  if (want('nvme')) await benchNvme(bin);
  if (want('nvme')) await benchYoungConfigs();
  console.log(`\nbench:native on this host (${process.version}), load average ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}; C = the same work in C (cc -O2) in the same run`);
  console.log(`${'case'.padEnd(80)} ${'ours'.padStart(10)} ${'C'.padStart(10)}  unit     target   ratio  B/IO  GC (median)    new space, RSS  rounds counted (NVMe: host at full speed)  young GCs: collector, mean pause, I/Os between`);
  for (const c of cases) {
    const f = (v: number | null | undefined) => (v === null || v === undefined || Number.isNaN(v) ? '-' : v >= 100 ? v.toFixed(0) : v.toFixed(2));
    console.log(`${c.name.padEnd(80)} ${f(c.ours).padStart(10)} ${f(c.c).padStart(10)}  ${c.unit.padEnd(7)} ${f(c.target).padStart(7)} ${(c.ratio === null ? '-' : c.ratio.toFixed(2)).padStart(7)}  ${c.bytesPerIo === undefined ? '' : c.bytesPerIo.toFixed(0).padStart(4)}  ${c.gcShare === undefined ? '' : `${(100 * c.gcShare).toFixed(1)}%`.padStart(5)}${c.gcShareByMedianPause === undefined ? '' : ` (${(100 * c.gcShareByMedianPause).toFixed(1)}%)`.padStart(8)}${c.newSpaceMiB === undefined ? '' : `  ${c.newSpaceMiB.toFixed(0)} MiB, ${c.rssMiB === undefined ? '-' : c.rssMiB.toFixed(0)} MiB`}${c.rounds === undefined ? '' : `  ${c.counted}/${c.rounds} rounds${c.hostSlow ? ' (host slow in all: medians of all)' : ''}`}${c.youngGc === undefined ? '' : `  ${c.youngGc}`}${c.scavengePauseMs ? ` ${c.scavengePauseMs.toFixed(3)} ms, ${c.iosPerScavenge!.toFixed(0)}` : ''}`);
  }
  for (const f of failures) console.log(`NOT MEASURED: ${f}`);
  console.log(`ratio = target / ours (1.0 or more: the issue's target is met); NVMe targets are the issue's (QD32 callback/batch ${90} ns = 1.25x SPDK's ${SPDK_NS} ns, promise 150 ns; QD1 half of the issue's first figures).`);
  for (const c of cases) {
    if (c.nvp) console.log(`${c.name}: per young-generation GC (ms, bytes; --trace-gc-nvp) ${Object.entries(c.nvp).map(([k, v]) => `${k}=${v}`).join(' ')}`);
  }
  const r = (v: number | null | undefined) => (v === null || v === undefined || Number.isNaN(v) ? null : Math.round(v * 1000) / 1000);
  console.log(`RESULT ${JSON.stringify({
    bench: 'native', failures, load: os.loadavg().map((v) => Math.round(v * 100) / 100),
    cases: cases.map((c) => ({
      name: c.name, ours: r(c.ours), c: r(c.c), unit: c.unit, target: r(c.target), ratio: r(c.ratio),
      ...(c.bytesPerIo !== undefined ? {
        bytesPerIo: r(c.bytesPerIo), gcShare: r(c.gcShare), gcShareByMedianPause: r(c.gcShareByMedianPause), newSpaceMiB: r(c.newSpaceMiB), config: c.config,
        scavenges: c.scavenges, scavengePauseMs: r(c.scavengePauseMs), iosPerScavenge: r(c.iosPerScavenge),
        rssMiB: r(c.rssMiB), youngGc: c.youngGc,
      } : {}),
      ...(c.rounds !== undefined ? { rounds: c.rounds, counted: c.counted, hostSlow: c.hostSlow, oursAllRounds: r(c.oursAllRounds) } : {}),
      ...(c.gcShareRounds ? { gcShareRounds: c.gcShareRounds.map(r) } : {}),
      ...(c.nvp ? { nvp: c.nvp } : {}),
    })),
  })}`);
}

main().then(
  () => process.exit(0),
  (err: Error) => {
    console.error(err.stack ?? err.message);
    process.exit(1);
  },
);
