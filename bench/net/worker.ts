/**
 * One side of bench:net with our driver, in its own process (pinned to a vCPU by the caller):
 *   rx ADDRESS            count received frames; on each "mark" line on stdin print
 *                         {"count", "t"} (t in ms); exit on "stop"
 *   tx ADDRESS SIZE       send SIZE-byte frames as fast as the ring takes them until "stop"
 *   echo ADDRESS          send every received frame back with the MAC addresses swapped
 *   ping ADDRESS N        N round trips of a 60-byte frame through an echoing peer; prints
 *                         {"rttUs": [...]} (sorted)
 *   echo-irq, ping-irq    the same, sleeping on the receive queue's MSI-X interrupt
 *                         (onReceive(), then rxBurst/txBurst) instead of spinning
 * Every mode prints {"ready": true} once its NIC is up. All poll; nothing allocates per packet.
 *
 * Slow round trips: a ping that waits over SLOW_MS notes, once, both of its rings as they stand
 * (VirtioNet.ringState: published/kicked/used indices and event words) and whether and when its
 * frame left (the device took it from the transmit ring); the result carries up to 40 such notes.
 * With NET_BENCH_WATCH=1 the echo notes per frame when it took it, whether its reply rang the
 * doorbell, and when the device took the reply, on the ping's clock (CLOCK_MONOTONIC, ms), and
 * prints them at 'stop': bench/net/guest.ts joins both to say which leg each slow round trip lost
 * its time in.
 */
import * as fs from 'node:fs';
import * as readline from 'node:readline';
import { Session } from 'node:inspector';
import { performance } from 'node:perf_hooks';
import { VirtioNet } from '../../src/drivers/virtio-net/net-device';
import { PacketBatch } from '../../src/drivers/virtio-net/packet-batch';

const ETHERTYPE = [0x88, 0xb6]; // local experimental

/** A round trip waiting longer than this is noted with the rings' state (bench/net/guest.ts says where it lost its time). */
const SLOW_MS = 10;
const MAX_SLOW = 40;
/**
 * performance.now() + this = CLOCK_MONOTONIC in ms: the same clock in every process of the guest.
 * From the tightest of a few bracketed reads: in the TCG guest a clock read can stall for
 * milliseconds (a system call and an HPET read under QEMU's big lock).
 */
const MONO = (() => {
  let best = Infinity;
  let offset = 0;
  for (let i = 0; i < 8; i++) {
    const a = performance.now();
    const mono = Number(process.hrtime.bigint()) / 1e6;
    const b = performance.now();
    if (b - a < best) {
      best = b - a;
      offset = mono - (a + b) / 2;
    }
  }
  return offset;
})();
const WATCH = process.env.NET_BENCH_WATCH === '1';

interface Slow {
  seq: number;
  /** Sent at (CLOCK_MONOTONIC ms). */
  sent: number;
  /** Whether that send rang the doorbell. */
  rang: boolean;
  /** Round trip in ms (200: lost). */
  rttMs: number;
  /** ms into the wait when the rings were noted, and their state then. */
  atMs: number;
  state: ReturnType<VirtioNet['ringState']>;
  /** Interrupt-driven: receive interrupts taken up to then (stats.rx.interrupts). */
  interrupts: number;
  /** ms into the wait when the frame was first seen gone from the transmit ring (-1: still there at the end). */
  leftMs: number;
}

/** Transmit ring empty as far as the device is concerned (everything published was taken back): the frame left. */
function txDone(net: VirtioNet, size: number): boolean {
  return net.txSpace(0) === size;
}

/** Per-frame notes of the echo (NET_BENCH_WATCH=1), indexed by arrival. */
class EchoLog {
  readonly seq = new Int32Array(4096);
  readonly got = new Float64Array(4096);
  readonly rang = new Uint8Array(4096);
  readonly left = new Float64Array(4096);
  n = 0;
  private pending = -1;
  private doorbells = 0;
  private readonly size: number;
  constructor(private readonly net: VirtioNet) {
    this.size = net.info().queueSize;
  }
  /** After echoing the batch's first n frames. */
  echoed(batch: PacketBatch, n: number, t: number): void {
    const d = this.net.stats().tx.doorbells;
    for (let i = 0; i < n && this.n < this.seq.length; i++) {
      const o = batch.offset(i);
      this.seq[this.n] = batch.data[o + 14]! | (batch.data[o + 15]! << 8);
      this.got[this.n] = t + MONO;
      this.rang[this.n] = d > this.doorbells ? 1 : 0;
      this.left[this.n] = -1;
      this.pending = this.n++;
    }
    this.doorbells = d;
  }
  /** While spinning: when the device has taken the last reply. */
  poll(): void {
    if (this.pending >= 0 && txDone(this.net, this.size)) {
      this.left[this.pending] = performance.now() + MONO;
      this.pending = -1;
    }
  }
  toJSON(): unknown {
    const n = this.n;
    return { seq: [...this.seq.subarray(0, n)], got: [...this.got.subarray(0, n)].map((x) => +x.toFixed(3)), rang: [...this.rang.subarray(0, n)], left: [...this.left.subarray(0, n)].map((x) => +x.toFixed(3)) };
  }
}

// bench:net --trace: a marker in the guest kernel's trace at each step (bench/net/trace.ts).
const traceFd = process.env.NET_BENCH_TRACE === '1' ? fs.openSync('/sys/kernel/tracing/trace_marker', 'w') : -1;
function mark(step: string): void {
  if (traceFd >= 0) fs.writeSync(traceFd, step);
}

// bench:net --profile: a V8 CPU profile of the steady state only (after the warm-up round trips,
// until the end), written where NET_BENCH_PROFILE says.
const profileFile = process.env.NET_BENCH_PROFILE;
let profiler: Session | undefined;
function profileStart(): void {
  if (!profileFile || profiler) return;
  profiler = new Session();
  profiler.connect();
  profiler.post('Profiler.enable');
  profiler.post('Profiler.setSamplingInterval', { interval: 100 });
  profiler.post('Profiler.start');
}
function profileStop(): Promise<void> {
  const s = profiler;
  if (!s) return Promise.resolve();
  return new Promise((resolve) => s.post('Profiler.stop', (err, r) => {
    if (!err) fs.writeFileSync(profileFile!, JSON.stringify(r.profile));
    resolve();
  }));
}

function say(o: unknown): void {
  process.stdout.write(`${JSON.stringify(o)}\n`);
}

/**
 * Lines from stdin: polled between bursts by the spinning loops (which never block the event loop
 * for long), or awaited (`until`) by the interrupt-driven ones, which must not wake up for nothing:
 * in the TCG guest a wake-up of the event loop costs about a millisecond of the vCPU the echo runs on.
 */
function commands(): { next: () => string | undefined; until: (line: string) => Promise<void> } {
  const queue: string[] = [];
  let waiting: { line: string; resolve: () => void } | undefined;
  readline.createInterface({ input: process.stdin }).on('line', (l) => {
    const line = l.trim();
    if (waiting?.line === line) waiting.resolve();
    else queue.push(line);
  });
  return {
    next: () => queue.shift(),
    until: (line) => (queue.includes(line) ? Promise.resolve() : new Promise((resolve) => (waiting = { line, resolve }))),
  };
}

const tick = () => new Promise((r) => setImmediate(r));

async function rx(net: VirtioNet): Promise<void> {
  const cmd = commands();
  const batch = new PacketBatch(64);
  let count = 0;
  for (let spin = 0; ; spin++) {
    count += net.rxBurst(0, batch);
    // Check for commands now and then: an event-loop turn costs ~15 us in the TCG guest.
    if ((spin & 255) === 0) {
      await tick();
      for (let c = cmd.next(); c !== undefined; c = cmd.next()) {
        if (c === 'stop') return;
        if (c === 'mark') say({ count, t: performance.now() });
      }
    }
  }
}

async function tx(net: VirtioNet, size: number): Promise<void> {
  const cmd = commands();
  const batch = new PacketBatch(64);
  const frame = new Uint8Array(size).fill(0x5a);
  frame.fill(0xff, 0, 6);
  frame.set(net.mac, 6);
  frame.set(ETHERTYPE, 12);
  for (let i = 0; i < batch.capacity; i++) batch.add(frame);
  let sent = 0;
  for (let spin = 0; ; spin++) {
    sent += net.txBurst(0, batch);
    if ((spin & 255) === 0) {
      await tick();
      if (cmd.next() === 'stop') {
        say({ sent });
        return;
      }
    }
  }
}

async function echo(net: VirtioNet): Promise<void> {
  const cmd = commands();
  const batch = new PacketBatch(64);
  const log = WATCH ? new EchoLog(net) : undefined;
  for (let spin = 0; ; spin++) {
    const n = net.rxBurst(0, batch);
    if (n > 0) {
      const t = log ? performance.now() : 0;
      mark('netlat E rx');
      echoBack(net, batch, n);
      mark('netlat E tx');
      log?.echoed(batch, n, t);
    }
    log?.poll();
    if ((spin & 1023) === 0) {
      await tick();
      if (cmd.next() === 'stop') {
        if (log) say({ echoLog: log });
        return;
      }
    }
  }
}

async function ping(net: VirtioNet, rounds: number): Promise<void> {
  const out = new PacketBatch(1);
  const inb = new PacketBatch(8);
  const frame = new Uint8Array(60).fill(0);
  frame.fill(0xff, 0, 6);
  frame.set(net.mac, 6);
  frame.set(ETHERTYPE, 12);
  out.add(frame);
  const rtt = new Float64Array(rounds);
  const slow: Slow[] = [];
  let slowCount = 0;
  const size = net.info().queueSize;
  for (let r = -100; r < rounds; r++) { // 100 warm-up round trips
    if (r === 0) profileStart();
    const seq = r + 100;
    out.data[14] = seq & 0xff;
    out.data[15] = (seq >> 8) & 0xff;
    const t0 = performance.now();
    mark('netlat P tx');
    const bells = net.stats().tx.doorbells;
    while (net.txBurst(0, out) === 0);
    let got = false;
    let note: Slow | undefined;
    for (let spin = 0; !got; spin++) {
      const n = net.rxBurst(0, inb);
      for (let i = 0; i < n; i++) {
        const o = inb.offset(i);
        if (inb.data[o + 12] === ETHERTYPE[0] && inb.data[o + 13] === ETHERTYPE[1] && inb.data[o + 14] === (seq & 0xff) && inb.data[o + 15] === ((seq >> 8) & 0xff)) got = true;
      }
      // Lost: counts as 200 ms, as in the C baseline. The clock only every 1024 spins: in the TCG
      // guest a clock read is a system call and an HPET register read under QEMU's big lock,
      // which the device model needs to move the frame this loop waits for.
      if (!got && (spin & 1023) === 1023) {
        const waited = performance.now() - t0;
        if (waited > SLOW_MS && !note && slow.length < MAX_SLOW) {
          note = { seq, sent: t0 + MONO, rang: net.stats().tx.doorbells > bells, rttMs: 0, atMs: +waited.toFixed(3), state: net.ringState(0), interrupts: 0, leftMs: -1 };
          slow.push(note);
        }
        if (note && note.leftMs < 0 && txDone(net, size)) note.leftMs = +(performance.now() - t0).toFixed(3);
        if (waited > 200) break;
      }
    }
    mark('netlat P rx');
    const ms = performance.now() - t0;
    if (note) note.rttMs = +Math.min(ms, 200).toFixed(3);
    if (ms > SLOW_MS) slowCount++;
    if (r >= 0) rtt[r] = ms * 1000;
  }
  say({ rttUs: [...rtt].sort((a, b) => a - b), slow, slowCount });
}

/** Send the batch's first `n` frames back where they came from: MACs swapped in place, every one sent. */
function echoBack(net: VirtioNet, batch: PacketBatch, n: number): void {
  for (let i = 0; i < n; i++) {
    const o = batch.offset(i);
    for (let k = 0; k < 6; k++) {
      const t = batch.data[o + k]!;
      batch.data[o + k] = batch.data[o + 6 + k]!;
      batch.data[o + 6 + k] = t;
    }
  }
  let done = 0;
  while (done < n) done += net.txBurst(0, batch, done, n - done);
}

async function echoIrq(net: VirtioNet): Promise<void> {
  const cmd = commands();
  const batch = new PacketBatch(64);
  const log = WATCH ? new EchoLog(net) : undefined;
  // On the receive interrupt: take what is there, swap the MACs, send it back (bursts, no allocation).
  const stop = net.onReceive(0, () => {
    for (let n = net.rxBurst(0, batch); n > 0; n = net.rxBurst(0, batch)) {
      const t = log ? performance.now() : 0;
      mark('netlat E rx');
      echoBack(net, batch, n);
      mark('netlat E tx');
      log?.echoed(batch, n, t);
    }
  });
  await cmd.until('stop');
  stop();
  if (log) say({ echoLog: log });
}

async function pingIrq(net: VirtioNet, rounds: number): Promise<void> {
  const out = new PacketBatch(1);
  const inb = new PacketBatch(8);
  const frame = new Uint8Array(60);
  frame.fill(0xff, 0, 6);
  frame.set(net.mac, 6);
  frame.set(ETHERTYPE, 12);
  out.add(frame);
  let seq = 0;
  let waiting: (() => void) | undefined;
  // The interrupt handler looks for the echo of the current sequence number.
  const stop = net.onReceive(0, () => {
    for (let n = net.rxBurst(0, inb); n > 0; n = net.rxBurst(0, inb)) {
      for (let i = 0; i < n; i++) {
        const o = inb.offset(i);
        if (inb.data[o + 12] === ETHERTYPE[0] && inb.data[o + 13] === ETHERTYPE[1] && inb.data[o + 14] === (seq & 0xff) && inb.data[o + 15] === ((seq >> 8) & 0xff)) waiting?.();
      }
    }
  });
  const rtt = new Float64Array(rounds);
  const slow: Slow[] = [];
  let slowCount = 0;
  const size = net.info().queueSize;
  for (let r = -100; r < rounds; r++) {
    if (r === 0) profileStart();
    seq = (r + 100) & 0xffff;
    out.data[14] = seq & 0xff;
    out.data[15] = (seq >> 8) & 0xff;
    const t0 = performance.now();
    mark('netlat P tx');
    const bells = net.stats().tx.doorbells;
    let note: Slow | undefined;
    const got = new Promise<void>((resolve) => {
      // At SLOW_MS: note the rings (a frame back in the receive ring with no interrupt taken shows
      // here), then wait out the rest of the 200 ms loss timeout, watching the transmit ring.
      let timer = setTimeout(function slowCheck() {
        const waited = performance.now() - t0;
        if (waited >= 200) {
          resolve();
          return;
        }
        if (!note && slow.length < MAX_SLOW) {
          note = { seq, sent: t0 + MONO, rang: net.stats().tx.doorbells > bells, rttMs: 0, atMs: +waited.toFixed(3), state: net.ringState(0), interrupts: net.stats().rx.interrupts, leftMs: -1 };
          slow.push(note);
        }
        if (note && note.leftMs < 0 && txDone(net, size)) note.leftMs = +waited.toFixed(3);
        timer = setTimeout(slowCheck, note && note.leftMs < 0 ? 5 : 200 - waited);
      }, SLOW_MS);
      waiting = () => {
        clearTimeout(timer);
        waiting = undefined;
        resolve();
      };
    });
    while (net.txBurst(0, out) === 0);
    await got;
    mark('netlat P rx');
    const ms = performance.now() - t0;
    if (note) note.rttMs = +Math.min(ms, 200).toFixed(3);
    if (ms > SLOW_MS) slowCount++;
    if (r >= 0) rtt[r] = ms * 1000;
  }
  stop();
  say({ rttUs: [...rtt].sort((a, b) => a - b), slow, slowCount });
}

async function main(): Promise<void> {
  const [mode, address, arg] = process.argv.slice(2);
  // bench:net --ab-event-idx: the same run with RING_EVENT_IDX declined (NET_BENCH_EVENT_IDX=0).
  const eventIdx = process.env.NET_BENCH_EVENT_IDX !== '0';
  const net = await VirtioNet.open(address!, { interrupts: mode!.endsWith('-irq') ? 'msix' : 'poll', eventIdx });
  say({ ready: true, mac: net.macString });
  process.stderr.write(`bench:net worker ${mode} ${address}: up\n`);
  if (mode!.startsWith('echo')) profileStart();
  try {
    if (mode === 'rx') await rx(net);
    else if (mode === 'tx') await tx(net, Number(arg));
    else if (mode === 'echo') await echo(net);
    else if (mode === 'ping') await ping(net, Number(arg));
    else if (mode === 'echo-irq') await echoIrq(net);
    else if (mode === 'ping-irq') await pingIrq(net, Number(arg));
    else throw new Error(`unknown mode ${mode}`);
  } finally {
    await profileStop();
    // One line the host prints (bench/net/run.ts): doorbells and interrupts per frame come from it.
    process.stderr.write(`bench:net worker ${mode}: eventIdx ${net.info().eventIdx} closing (${JSON.stringify(net.stats())})\n`);
    await net.close();
  }
}

// Exit explicitly: the stdin reader would keep the process alive.
main().then(
  () => process.exit(0),
  (err: Error) => {
    process.stderr.write(`${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);
