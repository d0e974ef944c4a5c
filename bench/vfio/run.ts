/**
 * Runs the VFIO benchmarks in one QEMU guest, this library and a C program side by side on the
 * same edu device, and prints ratios. Last line:
 *   RESULT {"bench": NAME, "cases": [{name, ours, baseline, unit, ratio}]}
 * ratio = ours/baseline for rates, baseline/ours for times: 1.0 is parity, above 1.0 we are ahead.
 *
 *   node dist/bench/vfio/run.js vfio    register access and DMA map/unmap
 *   node dist/bench/vfio/run.js irq     interrupt latency: the handler on the event loop (default),
 *                                       on the vector's dedicated thread (time-shared and SCHED_FIFO 50),
 *                                       and the main thread polling, against C reading on the raising
 *                                       thread; the dedicated thread also against a C reader thread
 *                                       woken by the IRQ (the same span; time-shared and SCHED_FIFO 50);
 *                                       every side raises from the CPU the kernel takes the MSI on
 *                                       (a wake-up of another, halted vCPU costs tens of us under TCG)
 *
 * Options (irq):
 *   --clock tsc|hpet   the guest's clocksource (default tsc: `tsc=reliable`; Debian 12's 6.1 kernel
 *                      otherwise takes the HPET under TCG, whose every read is a system call and
 *                      an MMIO exit under QEMU's big lock). The same for every case, C and ours.
 *   --ab-hpet          with the TSC: each round runs every case on the HPET too (switched at run
 *                      time: an A/B in one boot), reported with [HPET]
 *   --count N          interrupts measured per case (default 10000: ours' JIT and the host's
 *                      scheduling both reach their steady state; a 3000-interrupt C case ran
 *                      in 0.1-0.4 s, inside the vCPU thread's first host time slice)
 *   --rounds N         rounds of every case (default 2; each case keeps its best round)
 *   --only a,b         only these steps (irq, irq-thread, irq-thread-fifo)
 *   --variant L=PREFIX ours' thread modes again as `PREFIX dist/bench/vfio/guest.js ...` (node flags,
 *                      `env IRQ_OTHER_THREADS=away node`: see guest.ts), reported as MODE@L; without
 *                      one, st='node --single-threaded' (--no-variants: none)
 *   --trace            ftrace each case (bench/vfio/irq-trace.ts: legs of each sample, what ran on
 *                      the IRQ's CPU in the slow ones); tracing costs time: figures differ
 *   --kernel 6.12      boot the newer guest kernel
 *   --verbose          the guest's console on stderr
 * Per case the host side prints what this guest's QEMU threads did meanwhile (bench/host-load.ts).
 */
import { arg, benchMain, bootBench, buildStatic } from '../guest-bench';
import { childQemu, describeLoad, hostLoad, snapshot, type HostSnapshot } from '../host-load';

interface Case {
  name: string;
  ours: number;
  baseline: number;
  unit: string;
  ratio: number;
}

/** The guest's edu function, found by its ids (shell, run in the guest). */
const FIND_EDU = 'EDU=$(for d in /sys/bus/pci/devices/*; do [ "$(cat $d/vendor)" = 0x1234 ] && [ "$(cat $d/device)" = 0x11e8 ] && basename $d; done | head -n 1)';
const ADDRESS = '$EDU';

async function main(which: string): Promise<number> {
  if (which !== 'vfio' && which !== 'irq') throw new Error('usage: run.js vfio|irq');
  const baseline = buildStatic('bench/vfio/edu-baseline.c');
  const ours = 'node dist/bench/vfio/guest.js';
  const bind = `${FIND_EDU}\n[ -n "$EDU" ] || { echo "no edu device in the guest"; exit 1; }\nnode -e "require('./dist/src/pci/bind.js').bindToVfio(process.argv[1])" "$EDU"`;
  // Alternate the two sides so neither gets a warmer machine: each C baseline runs right before
  // the modes of ours compared with it. [C mode, its arguments after N, our modes]
  const only = arg('--only')?.split(',');
  const steps: [string, string, string[]][] = (which === 'vfio'
    ? [['regs', '', ['regs']], ['dma', '', ['dma']]] as [string, string, string[]][]
    : [
        ['irq', '', ['irq', 'irq-polled']],
        // C reader threads woken by the IRQ, as ours on its thread; time-shared, then SCHED_FIFO 50.
        ['irq-thread', '', ['irq-thread']],
        ['irq-thread-fifo', ' 50', ['irq-thread-fifo']],
      ] as [string, string, string[]][]).filter(([mode]) => !only || only.includes(mode));
  const count = which === 'vfio' ? { regs: 200000, dma: 2000 } as Record<string, number> : {};
  const rounds = Number(arg('--rounds') ?? 2);
  const samples = Number(arg('--count') ?? 10000);
  const trace = which === 'irq' && process.argv.includes('--trace');
  const clock = arg('--clock') ?? 'tsc';
  if (clock !== 'tsc' && clock !== 'hpet') throw new Error('--clock tsc|hpet');
  const kernel = arg('--kernel');
  // --variant LABEL=PREFIX (repeatable): ours' thread modes again, run as `PREFIX dist/bench/vfio/guest.js ...`
  // (e.g. stgc='node --single-threaded-gc', away='env IRQ_OTHER_THREADS=away node').
  const variants: [string, string][] = [];
  process.argv.forEach((a, i) => {
    if (a !== '--variant') return;
    const v = process.argv[i + 1] ?? '';
    const eq = v.indexOf('=');
    if (eq < 1 || !/^[\w.-]+$/.test(v.slice(0, eq))) throw new Error(`--variant LABEL=PREFIX, got ${v}`);
    variants.push([v.slice(0, eq), v.slice(eq + 1)]);
  });
  // By default ours' thread modes also run as a latency-bound driver would (ThreadHandler's advice):
  // no V8 helper threads beside the interrupt thread.
  if (which === 'irq' && variants.length === 0 && !process.argv.includes('--no-variants')) variants.push(['st', 'node --single-threaded']);
  const lines: string[] = [bind];
  if (which === 'irq') {
    lines.push('echo "CLOCKSOURCE $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource) $(uname -r)"');
  }
  /** One case: a phase on the console for the host's load line, under ftrace with --trace. */
  const run = (side: 'C' | 'TS', mode: string, command: string, label: string) => {
    lines.push(`echo "bench:irq: phase-start ${label}" >&2`);
    if (trace) lines.push('node dist/bench/vfio/irq-trace.js start');
    lines.push(`echo "${side} ${mode} $(${trace ? 'IRQ_SAMPLES=/tmp/irq-samples.json ' : ''}${command})"`);
    if (trace) lines.push(`echo "TRACE ${label} $(node dist/bench/vfio/irq-trace.js stop /tmp/irq-samples.json)"`);
    lines.push(`echo "bench:irq: phase-end ${label}" >&2`);
  };
  // --ab-hpet (with the TSC): every round again on the HPET, switched at run time, cases MODE.hpet.
  const clocks = which === 'irq' && clock === 'tsc' && process.argv.includes('--ab-hpet') ? ['tsc', 'hpet'] : [clock];
  const CURRENT_CLOCKSOURCE = '/sys/devices/system/clocksource/clocksource0/current_clocksource';
  for (let round = 0; round < rounds; round++) {
    for (const cs of clocks) {
      const sfx = cs === clocks[0] ? '' : `.${cs}`;
      if (clocks.length > 1) lines.push(`echo ${cs} > ${CURRENT_CLOCKSOURCE}`, `[ "$(cat ${CURRENT_CLOCKSOURCE})" = ${cs} ]`);
      // What a clock read costs on each side (both read CLOCK_MONOTONIC: C clock_gettime, ours process.hrtime).
      if (which === 'irq' && round === 0) lines.push(`echo "CLOCK C${sfx} $(${baseline} clock - 100000)"`, `echo "CLOCK TS${sfx} $(${ours} clock - 100000)"`);
      for (const [mode, args, oursModes] of steps) {
        const n = count[mode] ?? samples;
        const cMode = mode === 'irq-thread-fifo' ? 'irq-thread' : mode;
        run('C', `${mode}${sfx}`, `${baseline} ${cMode} ${ADDRESS} ${n}${args}`, `C-${mode}${sfx}-r${round}`);
        for (const m of oursModes) run('TS', `${m}${sfx}`, `${ours} ${m} ${ADDRESS} ${n}`, `TS-${m}${sfx}-r${round}`);
        // Variants of ours' thread modes: the same guest half under another command prefix.
        if (mode.startsWith('irq-thread')) for (const [label, prefix] of variants) run('TS', `${mode}@${label}${sfx}`, `${prefix} dist/bench/vfio/guest.js ${mode} ${ADDRESS} ${n}`, `TS-${mode}@${label}${sfx}-r${round}`);
      }
    }
  }
  const verbose = process.argv.includes('--verbose');
  const started = new Map<string, HostSnapshot>();
  const loads: string[] = [];
  let qemu: number | undefined;
  const stdout = await bootBench(which, {
    devices: [
      // Thread names ("CPU 0/TCG"; the main loop keeps "qemu-system-x86") for the host-load lines.
      '-name', 'debug-threads=on', '-device', 'edu',
    ],
    command: `set -e\n${lines.join('\n')}`,
    timeoutMs: (trace ? 40 : 15) * 60_000,
    kernelArgs: which === 'irq' && clock === 'tsc' ? ['tsc=reliable'] : [],
    ...(kernel === '6.12' ? { kernel: '6.12' as const } : {}),
    onConsole: (line) => {
      if (verbose) process.stderr.write(`${line}\n`);
      const m = /bench:irq: phase-(start|end) (\S+)/.exec(line);
      if (!m) return;
      qemu ??= childQemu();
      if (qemu === undefined) return;
      if (m[1] === 'start') started.set(m[2]!, snapshot(qemu));
      else if (started.has(m[2]!)) loads.push(`${m[2]}: ${describeLoad(hostLoad(started.get(m[2]!)!, snapshot(qemu)))}`);
    },
  });
  if (stdout === undefined) return 1;
  for (const l of loads) console.log(`  host ${l}`);
  for (const line of stdout.split('\n')) {
    // Every round's figures as measured (the table below keeps each case's best round).
    if (/^(CLOCKSOURCE|CLOCK|TRACE|C|TS) /.test(line)) console.log(`  ${line}`);
  }
  // Keep the best of the rounds for each side and mode (least disturbed by the emulator).
  const best = new Map<string, number>();
  /** Where the IRQ and our interrupt threads ran, per mode and round (CPU bit masks, policy). */
  const placement: string[] = [];
  for (const line of stdout.split('\n')) {
    const m = /^(C|TS) ([\w@.-]+) (\{.*\})$/.exec(line.trim());
    if (!m) continue;
    const figures = JSON.parse(m[3]!) as Record<string, number>;
    if (figures.irqCpuMask !== undefined) {
      const cpusOf = (mask: number) => (mask < 0 ? 'unknown' : [...Array(31).keys()].filter((c) => mask & (1 << c)).join(','));
      placement.push(`${m[2]}: IRQ delivered to CPU ${cpusOf(figures.irqCpuMask)}${figures.threadCpuMask !== undefined ? `, thread on CPU ${cpusOf(figures.threadCpuMask)} ${figures.threadPolicy === 1 ? 'SCHED_FIFO' : 'SCHED_OTHER'}` : ''}`);
    }
    for (const [k, v] of Object.entries(figures)) {
      if (!k.endsWith('Ns') && !k.endsWith('Us') && !k.endsWith('PerSec')) continue;
      const key = `${m[1]} ${m[2]} ${k}`;
      const lowerIsBetter = k.endsWith('Ns') || k.endsWith('Us');
      const prev = best.get(key);
      if (prev === undefined || (lowerIsBetter ? v < prev : v > prev)) best.set(key, v);
    }
  }
  const get = (side: 'C' | 'TS', mode: string, k: string) => {
    const v = best.get(`${side} ${mode} ${k}`);
    if (v === undefined) throw new Error(`no ${side} ${mode} figure for ${k} in:\n${stdout}`);
    return v;
  };
  const cases: Case[] = [];
  const time = (name: string, mode: string, k: string, unit: string, oursMode = mode) => cases.push({ name, ours: get('TS', oursMode, k), baseline: get('C', mode, k), unit, ratio: get('C', mode, k) / get('TS', oursMode, k) });
  const rate = (name: string, mode: string, k: string, unit: string) => cases.push({ name, ours: get('TS', mode, k), baseline: get('C', mode, k), unit, ratio: get('TS', mode, k) / get('C', mode, k) });
  if (which === 'vfio') {
    time('edu BAR read32', 'regs', 'readNs', 'ns/op');
    time('edu BAR write32', 'regs', 'writeNs', 'ns/op');
    rate('coherent 4 KiB buffer alloc+map+unmap+free', 'dma', 'coherentPerSec', 'ops/s');
    rate('streaming 4 KiB map+unmap', 'dma', 'streamingPerSec', 'ops/s');
  } else {
    for (const cs of clocks) {
      const sfx = cs === clocks[0] ? '' : `.${cs}`;
      const tag = clocks.length > 1 ? ` [${cs.toUpperCase()}]` : '';
      // C blocks in read(2) on the eventfd; ours: the event loop (default), a dedicated thread, polling.
      const has = (mode: string) => steps.some(([m]) => m === mode);
      for (const [label, mode] of [['event loop', 'irq'], ['dedicated thread', 'irq-thread'], ['dedicated thread SCHED_FIFO', 'irq-thread-fifo'], ['polled', 'irq-polled']] as const) {
        if (!has('irq') || !has(mode === 'irq-polled' ? 'irq' : mode)) continue;
        for (const p of ['p50', 'p90', 'p99']) time(`MSI latency ${p}, ${label} (raise to handler)${tag}`, `irq${sfx}`, `${p}Us`, 'us', `${mode}${sfx}`);
      }
      // The same span in C: the raiser blocks in read(2) on an eventfd, a reader thread blocked in
      // read(2) on the IRQ's CPU is woken (C above reads on the raising thread: no wake-up, no switch).
      if (has('irq-thread')) for (const p of ['p50', 'p90', 'p99']) time(`MSI latency ${p}, dedicated thread vs a C reader thread${tag}`, `irq-thread${sfx}`, `${p}Us`, 'us', `irq-thread${sfx}`);
      if (has('irq-thread-fifo')) for (const p of ['p50', 'p90', 'p99']) time(`MSI latency ${p}, dedicated thread SCHED_FIFO vs a C reader thread SCHED_FIFO${tag}`, `irq-thread-fifo${sfx}`, `${p}Us`, 'us', `irq-thread-fifo${sfx}`);
      for (const [label] of variants) {
        if (has('irq-thread')) for (const p of ['p50', 'p90', 'p99']) time(`MSI latency ${p}, dedicated thread [${label}] vs a C reader thread${tag}`, `irq-thread${sfx}`, `${p}Us`, 'us', `irq-thread@${label}${sfx}`);
        if (has('irq-thread-fifo')) for (const p of ['p50', 'p90', 'p99']) time(`MSI latency ${p}, dedicated thread SCHED_FIFO [${label}] vs a C reader thread SCHED_FIFO${tag}`, `irq-thread-fifo${sfx}`, `${p}Us`, 'us', `irq-thread-fifo@${label}${sfx}`);
      }
    }
    for (const l of placement) console.log(`  placement ${l}`);
  }
  console.log(`\n${which} benchmark (edu in a TCG guest; C = same operations in C through VFIO)`);
  for (const c of cases) {
    console.log(`  ${c.name.padEnd(46)} ours ${fmt(c.ours).padStart(10)} ${c.unit.padEnd(6)} C ${fmt(c.baseline).padStart(10)}  ratio ${c.ratio.toFixed(2)}`);
  }
  console.log(`RESULT ${JSON.stringify({ bench: which, cases: cases.map((c) => ({ ...c, ours: round(c.ours), baseline: round(c.baseline), ratio: round(c.ratio) })) })}`);
  return 0;
}

function fmt(v: number): string {
  return v >= 100 ? v.toFixed(0) : v.toFixed(2);
}

function round(v: number): number {
  return Math.round(v * 1000) / 1000;
}

benchMain(() => main(process.argv[2] ?? 'vfio'));
