/**
 * `npm run bench:net`: our virtio-net driver against the kernel's, side by side in one guest with
 * two virtio-net NICs on one QEMU hub (nothing leaves QEMU).
 *
 * Host side: compiles bench/net/kernel-pingpong.c statically into .cache, boots the guest and
 * runs bench/net/guest.ts there, which alternates kernel and ours for --rounds rounds. Prints
 * each measurement, a table, and last the RESULT line:
 *   RESULT {"bench": "net", "cases": [{"name", "ours", "baseline", "unit", "ratio"}]}
 * pps cases: frames per second counted at the receiver, ratio ours / kernel (pktgen into
 * virtio_net). Latency cases: round trip of a 60-byte frame, ratio kernel / ours (above 1: ours
 * is faster), kernel = AF_PACKET sockets on virtio_net on both sides.
 *
 * Options: --seconds S (per measurement, default 3), --warmup S (default 1), --rounds N
 * (default 2), --rtts N (round trips per latency run, default 1000), --verbose (guest console),
 * --tsc (guest clocksource TSC instead of the HPET Linux picks under TCG), --trace N and --profile N
 * (after the rounds: N round trips of each ping-pong under ftrace, cut into legs with the system
 * calls per round trip, bench/net/trace.ts; and under the V8 profiler, steady state only),
 * --ab-event-idx (each of our cases twice per round, with RING_EVENT_IDX and declined: "-noevidx"
 * cases; each worker's closing line gives its doorbells and receive interrupts), --packed (both NICs
 * offer packed virtqueues), --no-pps (the ping-pongs only), --no-kernel (our cases only), --watch (the echo notes when it took each
 * frame and when its reply left, so that each round trip over 10 ms is cut into legs with both
 * workers' ring state: bench/net/slow.ts; the ping notes its rings on every slow round trip anyway).
 * While it runs, the host notes for every measurement its CPUs' load and this guest's QEMU
 * threads (CPU time, time runnable but waiting for a host CPU: bench/host-load.ts), and the
 * guest its own view (user/system time per CPU and per worker); the table adds the rates per
 * QEMU CPU-second and the QEMU CPU per round trip, which the host's load moves far less.
 */
import { arg, benchMain, buildStatic, runGuestBench } from '../guest-bench';
import { childQemu, describeLoad, hostLoad, snapshot, type HostLoad, type HostSnapshot } from '../host-load';

/** --packed: both NICs offer packed virtqueues (QEMU packed=on); the kernel's virtio_net takes them too. */
const PACKED = process.argv.includes('--packed') ? ',packed=on' : '';
const NET_BENCH_DEVICES = [
  // Thread names ("CPU 0/TCG", the main loop keeps "qemu-system-x86") for the host-load lines.
  '-name', 'debug-threads=on',
  '-netdev', 'hubport,id=h0,hubid=0', '-device', `virtio-net-pci,netdev=h0,disable-legacy=on,iommu_platform=on${PACKED},mac=52:54:00:00:88:01`,
  '-netdev', 'hubport,id=h1,hubid=0', '-device', `virtio-net-pci,netdev=h1,disable-legacy=on,iommu_platform=on${PACKED},mac=52:54:00:00:88:02`,
];

interface Case {
  name: string;
  ours: number;
  kernel: number;
  unit: string;
  ratio: number;
  oursRounds?: number[];
  kernelRounds?: number[];
}

async function main(): Promise<number> {
  const guestArgs = ['--pingpong', buildStatic('bench/net/kernel-pingpong.c')];
  for (const o of ['--seconds', '--warmup', '--rounds', '--rtts', '--trace', '--profile']) {
    const v = arg(o);
    if (v !== undefined) guestArgs.push(o, v);
  }
  for (const o of ['--ab-event-idx', '--watch', '--no-pps', '--no-kernel']) if (process.argv.includes(o)) guestArgs.push(o);
  const t0 = Date.now();
  // The guest says when each measurement starts and ends (console lines); the host notes what its
  // CPUs and this guest's QEMU threads did meanwhile.
  const verbose = process.argv.includes('--verbose');
  const rtts = Number(arg('--rtts') ?? 1000);
  const started = new Map<string, HostSnapshot>();
  const phases = new Map<string, HostLoad>();
  let qemu: number | undefined;
  const data = await runGuestBench<{ cases: Case[] }>('net', {
    devices: NET_BENCH_DEVICES,
    onConsole: (line) => {
      if (verbose) process.stderr.write(`${line}\n`);
      else if (/^bench:net: \S+: guest:/.test(line) || /^bench:net worker \S+: eventIdx/.test(line)) process.stderr.write(`${line}\n`);
      const m = /bench:net: phase-(start|end) (\S+)/.exec(line);
      if (!m) return;
      qemu ??= childQemu();
      if (qemu === undefined) return;
      if (m[1] === 'start') started.set(m[2]!, snapshot(qemu));
      else if (started.has(m[2]!)) {
        const load = hostLoad(started.get(m[2]!)!, snapshot(qemu));
        phases.set(m[2]!, load);
        // Round trips in the phase (100 warm-up ones included): host CPU per round trip per thread.
        const n = /rtt/.test(m[2]!) ? rtts + 100 : /^trace/.test(m[2]!) ? Number(arg('--trace')) + 100 : /^profile/.test(m[2]!) ? Number(arg('--profile')) + 100 : 0;
        process.stderr.write(`bench:net: ${m[2]}: ${describeLoad(load, n)}\n`);
      }
    },
    // --tsc: the guest keeps its TSC as clocksource (Linux marks it unstable under TCG and falls
    // back to the HPET, whose every read is a system call and an MMIO exit under QEMU's big lock).
    kernelArgs: process.argv.includes('--tsc') ? ['tsc=reliable'] : [],
    command: `node dist/bench/net/guest.js ${guestArgs.join(' ')}`,
    timeoutMs: 30 * 60_000,
  });
  if (!data) return 1;
  // What the guest got from the host differs between phases (other guests come and go), and every
  // guest step is a host thread's step under TCG: so beside each rate, the same per second of CPU
  // this guest's QEMU threads got (frames per QEMU CPU-second), and beside each latency the QEMU
  // CPU per round trip. These do not move with the host's load the way the raw figures do.
  const qemuCpuS = (l: HostLoad) => l.threads.reduce((x, t) => x + t.cpuMs, 0) / 1000;
  const derived: Case[] = [];
  for (const c of data.cases.filter((x) => x.unit === 'pps')) {
    const eff = (side: 'ours' | 'kernel', rounds: number[]) => rounds.map((pps, r) => {
      const l = phases.get(`r${r}-${side}-${c.name}`);
      return l ? (pps * l.seconds) / qemuCpuS(l) : NaN;
    });
    const o = eff('ours', c.oursRounds ?? []);
    const k = eff('kernel', c.kernelRounds ?? []);
    const mean = (xs: number[]) => xs.reduce((x, y) => x + y, 0) / xs.length;
    if (o.some(Number.isNaN) || k.some(Number.isNaN) || o.length === 0) continue;
    derived.push({ name: `${c.name}-cpu`, ours: Math.round(mean(o)), kernel: Math.round(mean(k)), unit: 'frames/cpu-s', ratio: +(mean(o) / mean(k)).toFixed(3), oursRounds: o.map(Math.round), kernelRounds: k.map(Math.round) });
  }
  const perRt = (suffix: string) => {
    const xs = [...phases].filter(([k]) => k.endsWith(suffix) && /^r\d+-/.test(k)).map(([, l]) => (qemuCpuS(l) * 1000) / (rtts + 100));
    return xs.length ? xs.reduce((x, y) => x + y, 0) / xs.length : NaN;
  };
  const kernelRt = perRt('-kernel-rtt-64');
  for (const [name, suffix] of [['rtt-64-cpu', '-ours-rtt-64'], ['rtt-64-irq-cpu', '-ours-rtt-64-irq']] as const) {
    const o = perRt(suffix);
    if (!Number.isNaN(o)) derived.push({ name, ours: +o.toFixed(2), kernel: +kernelRt.toFixed(2), unit: 'cpu-ms/rt', ratio: +(kernelRt / o).toFixed(3) });
  }
  data.cases.push(...derived);
  console.log('');
  console.log(`virtio-net on a QEMU hub, guest with 2 vCPUs (TCG), one per side; ${Math.round((Date.now() - t0) / 1000)} s in all`);
  console.log(`${'case'.padEnd(16)} ${'ours'.padStart(10)} ${'kernel'.padStart(10)} ${'unit'.padEnd(12)}  ${'ratio'.padStart(6)}   per round (ours | kernel)`);
  for (const c of data.cases) {
    console.log(`${c.name.padEnd(16)} ${String(c.ours).padStart(10)} ${String(c.kernel).padStart(10)} ${c.unit.padEnd(12)}  ${(c.ratio ?? NaN).toFixed(2).padStart(6)}   ${c.oursRounds ? `${c.oursRounds.join(' ')} | ${c.kernelRounds!.join(' ')}` : ''}`);
  }
  // The host during each case's runs (means over the rounds): busy = all its CPUs, others = all
  // but this guest's QEMU; a case measured while others took the cores shows it here.
  const hostOf = (name: string) => {
    const base = name.replace(/-cpu$/, '').replace(/-p(50|99)$/, '');
    const side = (s: 'ours' | 'kernel') => {
      const want = s === 'kernel' ? base.replace(/-irq$/, '') : base;
      const ls = [...phases].filter(([k]) => k.replace(/^r\d+-/, '') === `${s}-${want}`).map(([, l]) => l);
      if (ls.length === 0) return undefined;
      const m = (f: (l: HostLoad) => number) => Math.round(ls.reduce((x, l) => x + f(l), 0) / ls.length);
      return { busy: m((l) => l.hostBusy), others: m((l) => l.others), load1: +(ls.reduce((x, l) => x + l.load1, 0) / ls.length).toFixed(1) };
    };
    return { ours: side('ours'), kernel: side('kernel') };
  };
  console.log('');
  console.log(`host CPU during the runs (% of one core; ${phases.size ? 'busy: all, others: all but this guest' : 'not measured'}):`);
  for (const c of data.cases) {
    const h = hostOf(c.name);
    const f = (x?: { busy: number; others: number; load1: number }) => (x ? `busy ${x.busy}% others ${x.others}% load ${x.load1}` : '-');
    console.log(`${c.name.padEnd(16)} ours: ${f(h.ours)} | kernel: ${f(h.kernel)}`);
  }
  console.log('pps: ours on both NICs vs pktgen -> virtio_net, counted at the receiver; ratio ours/kernel.');
  console.log('-cpu: the same per CPU time this guest\'s QEMU threads got (pps: frames per QEMU CPU-second, ratio ours/kernel; rtt: QEMU CPU-ms per round trip, ratio kernel/ours).');
  console.log('rtt: 60-byte frame ping-pong, ours on both NICs (spinning; -irq: on the receive interrupt) vs AF_PACKET on virtio_net; ratio kernel/ours (above 1: ours faster).');
  const result = { bench: 'net', cases: data.cases.map((c) => ({ name: c.name, ours: c.ours, baseline: c.kernel, unit: c.unit, ratio: c.ratio, host: hostOf(c.name) })) };
  console.log(`RESULT ${JSON.stringify(result)}`);
  return 0;
}

benchMain(main);
