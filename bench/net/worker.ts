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
 */
import * as fs from 'node:fs';
import * as readline from 'node:readline';
import { Session } from 'node:inspector';
import { performance } from 'node:perf_hooks';
import { VirtioNet } from '../../src/drivers/virtio-net/net-device';
import { PacketBatch } from '../../src/drivers/virtio-net/packet-batch';

const ETHERTYPE = [0x88, 0xb6]; // local experimental

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
  for (let spin = 0; ; spin++) {
    const n = net.rxBurst(0, batch);
    if (n > 0) {
      mark('netlat E rx');
      echoBack(net, batch, n);
      mark('netlat E tx');
    }
    if ((spin & 1023) === 0) {
      await tick();
      if (cmd.next() === 'stop') return;
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
  for (let r = -100; r < rounds; r++) { // 100 warm-up round trips
    if (r === 0) profileStart();
    const seq = r + 100;
    out.data[14] = seq & 0xff;
    out.data[15] = (seq >> 8) & 0xff;
    const t0 = performance.now();
    mark('netlat P tx');
    while (net.txBurst(0, out) === 0);
    let got = false;
    for (let spin = 0; !got; spin++) {
      const n = net.rxBurst(0, inb);
      for (let i = 0; i < n; i++) {
        const o = inb.offset(i);
        if (inb.data[o + 12] === ETHERTYPE[0] && inb.data[o + 13] === ETHERTYPE[1] && inb.data[o + 14] === (seq & 0xff) && inb.data[o + 15] === ((seq >> 8) & 0xff)) got = true;
      }
      // Lost: counts as 200 ms, as in the C baseline. The clock only every 1024 spins: in the TCG
      // guest a clock read is a system call and an HPET register read under QEMU's big lock,
      // which the device model needs to move the frame this loop waits for.
      if (!got && (spin & 1023) === 1023 && performance.now() - t0 > 200) break;
    }
    mark('netlat P rx');
    if (r >= 0) rtt[r] = (performance.now() - t0) * 1000;
  }
  say({ rttUs: [...rtt].sort((a, b) => a - b) });
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
  // On the receive interrupt: take what is there, swap the MACs, send it back (bursts, no allocation).
  const stop = net.onReceive(0, () => {
    for (let n = net.rxBurst(0, batch); n > 0; n = net.rxBurst(0, batch)) {
      mark('netlat E rx');
      echoBack(net, batch, n);
      mark('netlat E tx');
    }
  });
  await cmd.until('stop');
  stop();
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
  for (let r = -100; r < rounds; r++) {
    if (r === 0) profileStart();
    seq = (r + 100) & 0xffff;
    out.data[14] = seq & 0xff;
    out.data[15] = (seq >> 8) & 0xff;
    const t0 = performance.now();
    mark('netlat P tx');
    const got = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 200); // lost: counts as 200 ms
      waiting = () => {
        clearTimeout(timer);
        waiting = undefined;
        resolve();
      };
    });
    while (net.txBurst(0, out) === 0);
    await got;
    mark('netlat P rx');
    if (r >= 0) rtt[r] = (performance.now() - t0) * 1000;
  }
  stop();
  say({ rttUs: [...rtt].sort((a, b) => a - b) });
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
