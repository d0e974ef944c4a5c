/**
 * bench:net inside the guest: two virtio-net NICs on one QEMU hub, measured in one boot,
 * alternating, one vCPU per side (sender/pinger on CPU 0, receiver/echoer on CPU 1):
 *   pps-64, pps-1514  frames delivered per second, counted at the receiver, for 60- and 1514-byte
 *                     frames (64 and 1518 on the wire with the FCS). Ours: our driver on both NICs
 *                     (bench/net/worker.ts tx -> rx). Kernel: pktgen on one virtio_net into the
 *                     other virtio_net, counted by its rx_packets.
 *   rtt-64            round trips of a 60-byte frame through an echoing peer, p50/p99. Ours: our
 *                     driver both sides, spinning on rxBurst. Kernel: AF_PACKET sockets on both
 *                     virtio_net NICs (blocking in recv, woken by virtio_net's interrupt).
 *   rtt-64-irq        the same with ours sleeping on the receive queue's MSI-X interrupt.
 * Prints BENCH_JSON {...} for the host side.
 *
 *   node dist/bench/net/guest.js --pingpong PATH [--seconds S] [--warmup S] [--rounds N] [--rtts N] [--trace N]
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { bindToVfio, unbindFromVfio, boundDriver } from '../../src/pci/bind';
import { describeTrace, startRttTrace, summarize, type TraceSummary } from './trace';
import { stopTrace } from '../guest-trace';
import { describeProfile, summarizeProfile } from './profile-summary';
import { describeSlow, summarizeSlow, type EchoLog, type SlowNote } from './slow';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1]! : def;
}

const SECONDS = Number(arg('--seconds', '3'));
const WARMUP = Number(arg('--warmup', '1'));
const ROUNDS = Number(arg('--rounds', '2'));
const RTTS = Number(arg('--rtts', '1000'));
const PINGPONG = arg('--pingpong', '');
/** --trace N: after the rounds, N more round trips of each ping-pong under ftrace, cut into legs. */
const TRACE = Number(arg('--trace', '0'));
/** --profile N: after the rounds, N round trips of each of our ping-pongs with both workers under node --cpu-prof. */
const PROFILE = Number(arg('--profile', '0'));
const WORKER = path.join(__dirname, 'worker.js');
/** --ab-event-idx: each of our cases twice per round, with RING_EVENT_IDX and declined ("-noevidx" cases), against the same kernel run. */
const AB_EVENT_IDX = process.argv.includes('--ab-event-idx');
/** --watch: the echo notes per frame when it took it and when its reply left (a clock read each), so slow round trips are cut into legs. */
const WATCH = process.argv.includes('--watch');
if (WATCH) process.env.NET_BENCH_WATCH = '1';
/** --no-pps: the ping-pongs only (each round still binds, runs and unbinds both drivers). */
const PPS = !process.argv.includes('--no-pps');
/** --no-kernel: our cases only (the kernel's virtio_net on packed rings stalled its transmit queue under pktgen here: NETDEV WATCHDOG). */
const KERNEL = !process.argv.includes('--no-kernel');
/** Slow round trips per case over all rounds (bench/net/slow.ts). */
const slowTotals = new Map<string, { rounds: number; count: number; lost: number; pingUnrungStuck: number; echoUnrungLate: number; legs: Record<string, number> }>();

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Console markers around each measurement: the host notes its own load and QEMU's threads meanwhile (bench/host-load.ts). */
function phase(edge: 'start' | 'end', name: string): void {
  console.error(`bench:net: phase-${edge} ${name}`);
}

/** Receiver counts every half second of the window: a stall (a run of zeros) shows as one. */
const INTERVAL_MS = 500;

function nics(): string[] {
  const root = '/sys/bus/pci/devices';
  return fs.readdirSync(root).sort().filter((d) => {
    const r = (f: string) => fs.readFileSync(path.join(root, d, f), 'utf8').trim();
    return r('vendor') === '0x1af4' && r('device') === '0x1041';
  });
}

function ifaceOf(address: string): string {
  const dir = `/sys/bus/pci/devices/${address}`;
  for (const v of fs.readdirSync(dir).filter((d) => d.startsWith('virtio'))) {
    const netDir = path.join(dir, v, 'net');
    if (fs.existsSync(netDir)) return fs.readdirSync(netDir)[0]!;
  }
  throw new Error(`${address} has no kernel network interface`);
}

function virtioIndex(address: string): string {
  return fs.readdirSync(`/sys/bus/pci/devices/${address}`).find((d) => /^virtio\d+$/.test(d))!;
}

/** A child printing JSON lines; `next()` resolves with the next one. */
class Child {
  private lines: unknown[] = [];
  private waiters: ((v: unknown) => void)[] = [];
  readonly exited: Promise<number | null>;
  constructor(readonly proc: ChildProcess) {
    readline.createInterface({ input: proc.stdout! }).on('line', (l) => {
      let v: unknown;
      try {
        v = JSON.parse(l);
      } catch {
        return;
      }
      const w = this.waiters.shift();
      if (w) w(v);
      else this.lines.push(v);
    });
    this.exited = new Promise((r) => proc.on('exit', (code) => r(code)));
  }
  /** Waits for the exit; a worker that does not go within 20 s is killed (and says so). */
  async finish(): Promise<void> {
    const t = setTimeout(() => {
      console.error(`bench:net: pid ${this.proc.pid} did not exit: SIGKILL`);
      this.proc.kill('SIGKILL');
    }, 20_000);
    await this.exited;
    clearTimeout(t);
  }
  next<T>(timeoutMs = 120_000): Promise<T> {
    if (this.lines.length > 0) return Promise.resolve(this.lines.shift() as T);
    return new Promise<T>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('a bench worker stopped answering')), timeoutMs);
      this.waiters.push((v) => {
        clearTimeout(t);
        resolve(v as T);
      });
    });
  }
  send(line: string): void {
    this.proc.stdin!.write(`${line}\n`);
  }
}

function pinned(cpu: number, cmd: string, args: string[]): Child {
  return new Child(spawn('taskset', ['-c', String(cpu), cmd, ...args], { stdio: ['pipe', 'pipe', 'inherit'] }));
}

async function oursPps(tx: string, rx: string, size: number, name: string): Promise<{ pps: number; intervals: number[] }> {
  console.error(`bench:net: ours, ${size}-byte frames`);
  const r = pinned(1, process.execPath, [WORKER, 'rx', rx]);
  await r.next();
  const t = pinned(0, process.execPath, [WORKER, 'tx', tx, String(size)]);
  await t.next();
  console.error('bench:net: both workers ready');
  await sleep(WARMUP * 1000);
  phase('start', name);
  r.send('mark');
  const a = await r.next<{ count: number; t: number }>();
  const marks = [a];
  for (let left = SECONDS * 1000; left > 0; left -= INTERVAL_MS) {
    await sleep(Math.min(INTERVAL_MS, left));
    r.send('mark');
    marks.push(await r.next<{ count: number; t: number }>());
  }
  phase('end', name);
  const b = marks[marks.length - 1]!;
  console.error(`bench:net: counted ${b.count - a.count}`);
  t.send('stop');
  await t.next();
  r.send('stop');
  await Promise.all([r.finish(), t.finish()]);
  return { pps: ((b.count - a.count) * 1000) / (b.t - a.t), intervals: rates(marks.map((m) => m.count), marks.map((m) => m.t)) };
}

/** Frames per second in each interval between successive (count, time in ms) marks. */
function rates(counts: number[], times: number[]): number[] {
  const out: number[] = [];
  for (let i = 1; i < counts.length; i++) out.push(Math.round(((counts[i]! - counts[i - 1]!) * 1000) / (times[i]! - times[i - 1]!)));
  return out;
}

function rxPackets(iface: string): number {
  return Number(fs.readFileSync(`/sys/class/net/${iface}/statistics/rx_packets`, 'utf8'));
}

function pg(file: string, cmd: string): void {
  fs.writeFileSync(`/proc/net/pktgen/${file}`, `${cmd}\n`);
}

async function kernelPps(txIf: string, rxIf: string, rxMac: string, size: number, name: string): Promise<{ pps: number; intervals: number[] }> {
  pg('kpktgend_0', 'rem_device_all');
  pg('kpktgend_0', `add_device ${txIf}`);
  pg(txIf, 'count 0');
  pg(txIf, `pkt_size ${size + 4}`); // pktgen's size counts the 4-byte FCS
  pg(txIf, 'delay 0');
  pg(txIf, 'clone_skb 0');
  pg(txIf, 'dst 10.99.0.2'); // an address nobody has: the receiver's stack drops it early
  pg(txIf, `dst_mac ${rxMac}`);
  // pgctrl's start blocks until the run stops: in a shell of its own.
  const gen = spawn('sh', ['-c', 'echo start > /proc/net/pktgen/pgctrl'], { stdio: 'ignore' });
  const exited = new Promise((r) => gen.on('exit', r));
  await sleep(WARMUP * 1000);
  phase('start', name);
  const counts = [rxPackets(rxIf)];
  const times = [performance.now()];
  for (let left = SECONDS * 1000; left > 0; left -= INTERVAL_MS) {
    await sleep(Math.min(INTERVAL_MS, left));
    counts.push(rxPackets(rxIf));
    times.push(performance.now());
  }
  phase('end', name);
  const a = counts[0]!;
  const b = counts[counts.length - 1]!;
  const ta = times[0]!;
  const tb = times[times.length - 1]!;
  fs.writeFileSync('/proc/net/pktgen/pgctrl', 'stop\n');
  await exited;
  // pktgen holds the interface until removed: unbinding virtio_net would wait for it forever.
  pg('kpktgend_0', 'rem_device_all');
  return { pps: ((b - a) * 1000) / (tb - ta), intervals: rates(counts, times) };
}

/**
 * Our NIC's MSI-X interrupts (vfio-pci's, named after the function) to the vCPU its worker runs on,
 * as the kernel side gets for its receiver: an interrupt taken on the other vCPU would wake the
 * worker with one more cross-vCPU hop (an IPI, which under TCG is a host thread wake-up).
 */
function pinVfioIrqs(address: string, cpu: number): void {
  for (const line of fs.readFileSync('/proc/interrupts', 'utf8').split('\n')) {
    const m = /^\s*(\d+):/.exec(line);
    if (m && line.includes('vfio-msix') && line.includes(address)) {
      try {
        fs.writeFileSync(`/proc/irq/${m[1]}/smp_affinity`, (1 << cpu).toString(16));
      } catch {
        // not movable
      }
    }
  }
}

async function pingPong(name: string, pingCmd: [string, string[]], echoCmd: [string, string[]], ours?: { ping: string; echo: string }): Promise<number[]> {
  const e = pinned(1, echoCmd[0], echoCmd[1]);
  await e.next();
  if (ours) pinVfioIrqs(ours.echo, 1);
  const p = pinned(0, pingCmd[0], pingCmd[1]);
  let result: { rttUs: number[]; slow?: SlowNote[]; slowCount?: number };
  if (ours) {
    await p.next(); // ours says ready first; its 100 warm-up round trips come before any measured
    pinVfioIrqs(ours.ping, 0);
  }
  phase('start', name);
  const c0 = cpuTimes();
  const p0 = procTimes(p.proc.pid);
  const e0 = procTimes(e.proc.pid);
  result = await p.next<{ rttUs: number[]; slow?: SlowNote[]; slowCount?: number }>(600_000);
  const [c1, p1, e1] = [cpuTimes(), procTimes(p.proc.pid), procTimes(e.proc.pid)];
  phase('end', name);
  console.error(`bench:net: ${name}: ${guestView(c0, c1, p0, p1, e0, e1, result.rttUs.length + 100)}`);
  await p.finish();
  let echoLog: EchoLog | undefined;
  if (ours) {
    e.send('stop');
    if (WATCH) echoLog = (await e.next<{ echoLog: EchoLog }>()).echoLog;
  } else e.proc.kill('SIGTERM');
  await e.finish();
  if (ours && result.slow) {
    const irq = pingCmd[1].includes('ping-irq');
    const s = summarizeSlow(name, result.slowCount ?? result.slow.length, result.slow, echoLog, irq);
    console.log(describeSlow(name, s, result.rttUs.length));
    for (const l of s.lines) console.log(l);
    const key = name.replace(/^r\d+-/, '');
    const t = slowTotals.get(key) ?? { rounds: 0, count: 0, lost: 0, pingUnrungStuck: 0, echoUnrungLate: 0, legs: {} };
    t.rounds++;
    t.count += s.count;
    t.lost += s.lost;
    t.pingUnrungStuck += s.pingUnrungStuck;
    t.echoUnrungLate += s.echoUnrungLate;
    for (const [k, v] of Object.entries(s.legs)) t.legs[k] = (t.legs[k] ?? 0) + v;
    slowTotals.set(key, t);
  }
  return result.rttUs;
}

/** The guest's own view of a phase: per CPU, jiffies (10 ms at USER_HZ 100) by kind; per process, user and system time. */
function cpuTimes(): number[][] {
  return fs.readFileSync('/proc/stat', 'utf8').split('\n').filter((l) => /^cpu\d/.test(l)).map((l) => l.split(/\s+/).slice(1, 8).map(Number));
}
function procTimes(pid: number | undefined): [number, number] {
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    return [Number(f[11]), Number(f[12])];
  } catch {
    return [NaN, NaN];
  }
}
/** "guest: cpu0 user 12% sys 30% irq 1% softirq 0% idle 57% | ... ; ping user 3.1 ms sys 2.0 ms per round trip, echo ..." */
function guestView(c0: number[][], c1: number[][], p0: [number, number], p1: [number, number], e0: [number, number], e1: [number, number], n: number): string {
  const cpus = c0.map((a, i) => {
    const d = c1[i]!.map((x, k) => x - a[k]!);
    const tot = d.reduce((x, y) => x + y, 0) || 1;
    const p = (k: number) => Math.round((100 * d[k]!) / tot);
    return `cpu${i} user ${p(0) + p(1)}% sys ${p(2)}% irq ${p(5)}% softirq ${p(6)}% idle ${p(3) + p(4)}%`;
  });
  const per = (a: [number, number], b: [number, number]) => `user ${((10 * (b[0] - a[0])) / n).toFixed(2)} ms sys ${((10 * (b[1] - a[1])) / n).toFixed(2)} ms`;
  return `guest: ${cpus.join(' | ')}; per round trip: ping ${per(p0, p1)}, echo ${per(e0, e1)}`;
}

const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;

async function main(): Promise<void> {
  const [a, b] = nics();
  if (!a || !b) throw new Error('bench:net needs two virtio-net functions');
  execFileSync('modprobe', ['pktgen']);
  // Every clock read in a worker (libuv reads one at each event-loop turn) goes through it.
  console.log(`guest clocksource: ${fs.readFileSync('/sys/devices/system/clocksource/clocksource0/current_clocksource', 'utf8').trim()}`);
  const results: Record<string, { ours: number[]; kernel: number[] }> = {};
  const add = (k: string, side: 'ours' | 'kernel', v: number) => {
    results[k] ??= { ours: [], kernel: [] };
    results[k]![side].push(v);
  };
  const latency: { ours: number[]; oursIrq: number[]; kernel: number[] } = { ours: [], oursIrq: [], kernel: [] };
  const declined = { ours: [] as number[], oursIrq: [] as number[] };
  const latencyOf = (v: string) => (v ? declined : latency);
  // Kernel on both NICs: pktgen rates and the AF_PACKET ping-pong.
  const kernelRound = async (round: number) => {
    for (const n of [a, b]) if (boundDriver(n) === 'vfio-pci') unbindFromVfio(n);
    const [ia, ib] = [ifaceOf(a), ifaceOf(b)];
    for (const i of [ia, ib]) execFileSync('ip', ['link', 'set', i, 'up']);
    const ibMac = fs.readFileSync(`/sys/class/net/${ib}/address`, 'utf8').trim();
    // The receiver's interrupts to CPU 1 (pktgen's thread kpktgend_0 runs on CPU 0).
    const vb = virtioIndex(b);
    for (const line of fs.readFileSync('/proc/interrupts', 'utf8').split('\n')) {
      const m = new RegExp(`^\\s*(\\d+):.*\\b${vb}-`).exec(line);
      if (m) try { fs.writeFileSync(`/proc/irq/${m[1]}/smp_affinity`, '2'); } catch { /* not movable */ }
    }
    await sleep(500);
    for (const size of PPS ? [60, 1514] : []) {
      const c = `pps-${size === 60 ? 64 : size}`;
      const { pps, intervals } = await kernelPps(ia, ib, ibMac, size, `r${round}-kernel-${c}`);
      add(c, 'kernel', pps);
      console.log(`round ${round} kernel ${size}-byte frames: ${pps.toFixed(0)} pps (per ${INTERVAL_MS} ms: ${intervals.join(' ')})`);
    }
    if (PINGPONG) {
      const rtt = await pingPong(`r${round}-kernel-rtt-64`, [PINGPONG, ['ping', ia, String(RTTS)]], [PINGPONG, ['echo', ib]]);
      latency.kernel.push(...rtt);
      console.log(`round ${round} kernel rtt p50 ${pct(rtt, 50).toFixed(1)} us p99 ${pct(rtt, 99).toFixed(1)} us`);
    }
    for (const i of [ia, ib]) execFileSync('ip', ['link', 'set', i, 'down']);
  };
  for (let round = 0; round < ROUNDS; round++) {
    if (KERNEL) await kernelRound(round);
    // Ours on both NICs (with --ab-event-idx: with RING_EVENT_IDX, then declined; alternating order per round).
    for (const n of [a, b]) if (boundDriver(n) !== 'vfio-pci') bindToVfio(n);
    const variants = AB_EVENT_IDX ? (round % 2 === 0 ? ['', '-noevidx'] : ['-noevidx', '']) : [''];
    for (const v of variants) {
      if (v) process.env.NET_BENCH_EVENT_IDX = '0';
      else delete process.env.NET_BENCH_EVENT_IDX;
      for (const size of PPS ? [60, 1514] : []) {
        const c = `pps-${size === 60 ? 64 : size}`;
        const { pps, intervals } = await oursPps(a, b, size, `r${round}-ours-${c}${v}`);
        add(`${c}${v}`, 'ours', pps);
        if (v && KERNEL) add(`${c}${v}`, 'kernel', results[c]!.kernel[round]!);
        console.log(`round ${round} ours${v} ${size}-byte frames: ${pps.toFixed(0)} pps (per ${INTERVAL_MS} ms: ${intervals.join(' ')})`);
      }
      const rtt = await pingPong(`r${round}-ours-rtt-64${v}`, [process.execPath, [WORKER, 'ping', a, String(RTTS)]], [process.execPath, [WORKER, 'echo', b]], { ping: a, echo: b });
      latencyOf(v).ours.push(...rtt);
      console.log(`round ${round} ours${v} rtt p50 ${pct(rtt, 50).toFixed(1)} us p99 ${pct(rtt, 99).toFixed(1)} us`);
      // The same on the receive interrupt (onReceive + bursts): nobody spins, so QEMU's main-loop
      // thread (virtio-net's transmit bottom half, the hub) is not competing with two busy vCPUs.
      const rttIrq = await pingPong(`r${round}-ours-rtt-64-irq${v}`, [process.execPath, [WORKER, 'ping-irq', a, String(RTTS)]], [process.execPath, [WORKER, 'echo-irq', b]], { ping: a, echo: b });
      latencyOf(v).oursIrq.push(...rttIrq);
      console.log(`round ${round} ours${v} (interrupts) rtt p50 ${pct(rttIrq, 50).toFixed(1)} us p99 ${pct(rttIrq, 99).toFixed(1)} us`);
    }
    delete process.env.NET_BENCH_EVENT_IDX;
  }
  for (const n of [a, b]) if (boundDriver(n) === 'vfio-pci') unbindFromVfio(n);
  const traces: { name: string; summary: TraceSummary }[] = [];
  if (TRACE > 0) {
    const traced = async (name: string, run: () => Promise<unknown>) => {
      process.env.NET_BENCH_TRACE = '1';
      startRttTrace();
      try {
        await run();
      } finally {
        delete process.env.NET_BENCH_TRACE;
      }
      const summary = summarize(stopTrace());
      traces.push({ name, summary });
      console.log(describeTrace(name, summary));
    };
    const [ia, ib] = [ifaceOf(a), ifaceOf(b)];
    for (const i of [ia, ib]) execFileSync('ip', ['link', 'set', i, 'up']);
    await sleep(500);
    if (PINGPONG) await traced('kernel', () => pingPong('trace-kernel', [PINGPONG, ['ping', ia, String(TRACE)]], [PINGPONG, ['echo', ib]]));
    for (const i of [ia, ib]) execFileSync('ip', ['link', 'set', i, 'down']);
    for (const n of [a, b]) bindToVfio(n);
    await traced('ours', () => pingPong('trace-ours', [process.execPath, [WORKER, 'ping', a, String(TRACE)]], [process.execPath, [WORKER, 'echo', b]], { ping: a, echo: b }));
    await traced('ours-irq', () => pingPong('trace-ours-irq', [process.execPath, [WORKER, 'ping-irq', a, String(TRACE)]], [process.execPath, [WORKER, 'echo-irq', b]], { ping: a, echo: b }));
    for (const n of [a, b]) if (boundDriver(n) === 'vfio-pci') unbindFromVfio(n);
  }
  const profiles: { name: string; top: unknown }[] = [];
  if (PROFILE > 0) {
    for (const n of [a, b]) bindToVfio(n);
    for (const [ping, echo] of [['ping', 'echo'], ['ping-irq', 'echo-irq']] as const) {
      const dir = fs.mkdtempSync('/tmp/netprof-');
      // Each worker profiles its own steady state (bench/net/worker.ts) into NET_BENCH_PROFILE.
      const prof = (side: string) => ['env', `NET_BENCH_PROFILE=${dir}/${side}.cpuprofile`, process.execPath];
      const rtt = await pingPong(`profile-${ping}`, [prof('ping')[0]!, [...prof('ping').slice(1), WORKER, ping, a, String(PROFILE)]], [prof('echo')[0]!, [...prof('echo').slice(1), WORKER, echo, b]], { ping: a, echo: b });
      console.log(`profile ${ping}/${echo}: rtt p50 ${pct(rtt, 50).toFixed(1)} us p99 ${pct(rtt, 99).toFixed(1)} us`);
      for (const side of ['ping', 'echo']) {
        if (!fs.existsSync(`${dir}/${side}.cpuprofile`)) { console.log(`profile ${side}: none written`); continue; }
        const s = summarizeProfile(`${dir}/${side}.cpuprofile`);
        profiles.push({ name: `${side === 'ping' ? ping : echo}`, top: s });
        console.log(describeProfile(side === 'ping' ? ping : echo, s));
      }
    }
    for (const n of [a, b]) if (boundDriver(n) === 'vfio-pci') unbindFromVfio(n);
  }
  // An interrupt line nobody handles (a polled NIC without MSI-X raises INTx) would show here.
  try {
    const kmsg = execFileSync('dmesg', { encoding: 'utf8' }).split('\n').filter((l) => /nobody cared|Disabling IRQ|spurious/i.test(l));
    console.log(`guest kernel: ${kmsg.length ? kmsg.join(' | ') : 'no spurious-interrupt messages'}`);
  } catch {
    // no dmesg
  }
  for (const [k, t] of slowTotals) {
    console.log(`slow total ${k}: ${t.count} round trips over 10 ms in ${t.rounds} run(s) (${t.lost} lost among those noted); longest leg of those noted ${JSON.stringify(t.legs)}; ping sends unrung and stuck ${t.pingUnrungStuck}; echo replies unrung and late ${t.echoUnrungLate}`);
  }
  const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
  const cases: Record<string, unknown>[] = Object.entries(results).map(([name, r]) => ({
    name, ours: Math.round(mean(r.ours)), kernel: Math.round(mean(r.kernel)), unit: 'pps', ratio: +(mean(r.ours) / mean(r.kernel)).toFixed(3),
    oursRounds: r.ours.map(Math.round), kernelRounds: r.kernel.map(Math.round),
  }));
  for (const p of ROUNDS > 0 ? [50, 99] : []) {
    const ours = pct(latency.ours.sort((x, y) => x - y), p);
    const kernel = latency.kernel.length ? pct(latency.kernel.sort((x, y) => x - y), p) : NaN;
    // Latency: lower is better, so the ratio is kernel / ours (above 1: we are ahead).
    cases.push({ name: `rtt-64-p${p}`, ours: +ours.toFixed(1), kernel: +kernel.toFixed(1), unit: 'us', ratio: +(kernel / ours).toFixed(3) });
    const irq = pct(latency.oursIrq.sort((x, y) => x - y), p);
    cases.push({ name: `rtt-64-irq-p${p}`, ours: +irq.toFixed(1), kernel: +kernel.toFixed(1), unit: 'us', ratio: +(kernel / irq).toFixed(3) });
    if (AB_EVENT_IDX) {
      const o = pct(declined.ours.sort((x, y) => x - y), p);
      cases.push({ name: `rtt-64-p${p}-noevidx`, ours: +o.toFixed(1), kernel: +kernel.toFixed(1), unit: 'us', ratio: +(kernel / o).toFixed(3) });
      const i = pct(declined.oursIrq.sort((x, y) => x - y), p);
      cases.push({ name: `rtt-64-irq-p${p}-noevidx`, ours: +i.toFixed(1), kernel: +kernel.toFixed(1), unit: 'us', ratio: +(kernel / i).toFixed(3) });
    }
  }
  console.log(`BENCH_JSON ${JSON.stringify({ cases, traces, profiles })}`);
}

main().catch((err: Error) => {
  console.error(err.stack ?? err.message);
  process.exitCode = 1;
});
