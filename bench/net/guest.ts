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
 *   node dist/bench/net/guest.js --pingpong PATH [--seconds S] [--warmup S] [--rounds N] [--rtts N]
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { bindToVfio, unbindFromVfio, boundDriver } from '../../src/pci/bind';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1]! : def;
}

const SECONDS = Number(arg('--seconds', '3'));
const WARMUP = Number(arg('--warmup', '1'));
const ROUNDS = Number(arg('--rounds', '2'));
const RTTS = Number(arg('--rtts', '1000'));
const PINGPONG = arg('--pingpong', '');
const WORKER = path.join(__dirname, 'worker.js');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

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

async function oursPps(tx: string, rx: string, size: number): Promise<number> {
  console.error(`bench:net: ours, ${size}-byte frames`);
  const r = pinned(1, process.execPath, [WORKER, 'rx', rx]);
  await r.next();
  const t = pinned(0, process.execPath, [WORKER, 'tx', tx, String(size)]);
  await t.next();
  console.error('bench:net: both workers ready');
  await sleep(WARMUP * 1000);
  r.send('mark');
  const a = await r.next<{ count: number; t: number }>();
  await sleep(SECONDS * 1000);
  r.send('mark');
  const b = await r.next<{ count: number; t: number }>();
  console.error(`bench:net: counted ${b.count - a.count}`);
  t.send('stop');
  await t.next();
  r.send('stop');
  await Promise.all([r.finish(), t.finish()]);
  return ((b.count - a.count) * 1000) / (b.t - a.t);
}

function rxPackets(iface: string): number {
  return Number(fs.readFileSync(`/sys/class/net/${iface}/statistics/rx_packets`, 'utf8'));
}

function pg(file: string, cmd: string): void {
  fs.writeFileSync(`/proc/net/pktgen/${file}`, `${cmd}\n`);
}

async function kernelPps(txIf: string, rxIf: string, rxMac: string, size: number): Promise<number> {
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
  const a = rxPackets(rxIf);
  const ta = performance.now();
  await sleep(SECONDS * 1000);
  const b = rxPackets(rxIf);
  const tb = performance.now();
  fs.writeFileSync('/proc/net/pktgen/pgctrl', 'stop\n');
  await exited;
  // pktgen holds the interface until removed: unbinding virtio_net would wait for it forever.
  pg('kpktgend_0', 'rem_device_all');
  return ((b - a) * 1000) / (tb - ta);
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

async function pingPong(pingCmd: [string, string[]], echoCmd: [string, string[]], ours?: { ping: string; echo: string }): Promise<number[]> {
  const e = pinned(1, echoCmd[0], echoCmd[1]);
  await e.next();
  if (ours) pinVfioIrqs(ours.echo, 1);
  const p = pinned(0, pingCmd[0], pingCmd[1]);
  let result: { rttUs: number[] };
  if (ours) {
    await p.next(); // ours says ready first; its 100 warm-up round trips come before any measured
    pinVfioIrqs(ours.ping, 0);
  }
  result = await p.next<{ rttUs: number[] }>(600_000);
  await p.finish();
  if (echoCmd[0] === process.execPath) e.send('stop');
  else e.proc.kill('SIGTERM');
  await e.finish();
  return result.rttUs;
}

const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;

async function main(): Promise<void> {
  const [a, b] = nics();
  if (!a || !b) throw new Error('bench:net needs two virtio-net functions');
  execFileSync('modprobe', ['pktgen']);
  const results: Record<string, { ours: number[]; kernel: number[] }> = {};
  const add = (k: string, side: 'ours' | 'kernel', v: number) => {
    results[k] ??= { ours: [], kernel: [] };
    results[k]![side].push(v);
  };
  const latency: { ours: number[]; oursIrq: number[]; kernel: number[] } = { ours: [], oursIrq: [], kernel: [] };
  for (let round = 0; round < ROUNDS; round++) {
    // Kernel on both NICs.
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
    for (const size of [60, 1514]) {
      const pps = await kernelPps(ia, ib, ibMac, size);
      add(`pps-${size === 60 ? 64 : size}`, 'kernel', pps);
      console.log(`round ${round} kernel ${size}-byte frames: ${pps.toFixed(0)} pps`);
    }
    if (PINGPONG) {
      const rtt = await pingPong([PINGPONG, ['ping', ia, String(RTTS)]], [PINGPONG, ['echo', ib]]);
      latency.kernel.push(...rtt);
      console.log(`round ${round} kernel rtt p50 ${pct(rtt, 50).toFixed(1)} us p99 ${pct(rtt, 99).toFixed(1)} us`);
    }
    for (const i of [ia, ib]) execFileSync('ip', ['link', 'set', i, 'down']);
    // Ours on both NICs.
    for (const n of [a, b]) bindToVfio(n);
    for (const size of [60, 1514]) {
      const pps = await oursPps(a, b, size);
      add(`pps-${size === 60 ? 64 : size}`, 'ours', pps);
      console.log(`round ${round} ours ${size}-byte frames: ${pps.toFixed(0)} pps`);
    }
    const rtt = await pingPong([process.execPath, [WORKER, 'ping', a, String(RTTS)]], [process.execPath, [WORKER, 'echo', b]], { ping: a, echo: b });
    latency.ours.push(...rtt);
    console.log(`round ${round} ours rtt p50 ${pct(rtt, 50).toFixed(1)} us p99 ${pct(rtt, 99).toFixed(1)} us`);
    // The same on the receive interrupt (onReceive + bursts): nobody spins, so QEMU's main-loop
    // thread (virtio-net's transmit bottom half, the hub) is not competing with two busy vCPUs.
    const rttIrq = await pingPong([process.execPath, [WORKER, 'ping-irq', a, String(RTTS)]], [process.execPath, [WORKER, 'echo-irq', b]], { ping: a, echo: b });
    latency.oursIrq.push(...rttIrq);
    console.log(`round ${round} ours (interrupts) rtt p50 ${pct(rttIrq, 50).toFixed(1)} us p99 ${pct(rttIrq, 99).toFixed(1)} us`);
  }
  for (const n of [a, b]) if (boundDriver(n) === 'vfio-pci') unbindFromVfio(n);
  const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
  const cases: Record<string, unknown>[] = Object.entries(results).map(([name, r]) => ({
    name, ours: Math.round(mean(r.ours)), kernel: Math.round(mean(r.kernel)), unit: 'pps', ratio: +(mean(r.ours) / mean(r.kernel)).toFixed(3),
    oursRounds: r.ours.map(Math.round), kernelRounds: r.kernel.map(Math.round),
  }));
  for (const p of [50, 99]) {
    const ours = pct(latency.ours.sort((x, y) => x - y), p);
    const kernel = latency.kernel.length ? pct(latency.kernel.sort((x, y) => x - y), p) : NaN;
    // Latency: lower is better, so the ratio is kernel / ours (above 1: we are ahead).
    cases.push({ name: `rtt-64-p${p}`, ours: +ours.toFixed(1), kernel: +kernel.toFixed(1), unit: 'us', ratio: +(kernel / ours).toFixed(3) });
    const irq = pct(latency.oursIrq.sort((x, y) => x - y), p);
    cases.push({ name: `rtt-64-irq-p${p}`, ours: +irq.toFixed(1), kernel: +kernel.toFixed(1), unit: 'us', ratio: +(kernel / irq).toFixed(3) });
  }
  console.log(`BENCH_JSON ${JSON.stringify({ cases })}`);
}

main().catch((err: Error) => {
  console.error(err.stack ?? err.message);
  process.exitCode = 1;
});
