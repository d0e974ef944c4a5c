/**
 * bench:irq --trace, in the guest: the kernel's scheduler and interrupt events around each
 * measured interrupt, to say where a slow sample's time went.
 *
 *   node dist/bench/vfio/irq-trace.js start             ftrace on (bench/guest-trace.ts)
 *   node dist/bench/vfio/irq-trace.js stop SAMPLES      ftrace off; one JSON line for SAMPLES
 *
 * SAMPLES is what edu-baseline or guest.ts wrote with IRQ_SAMPLES: the process, the thread that
 * stamps the interrupt and each sample's [start, end] (CLOCK_MONOTONIC ns; the trace runs on the
 * mono clock, printed to the microsecond). Each sample is split into legs at the first events of
 * that interrupt: raise -> the MSI's handler entry in the guest (QEMU's device model and the
 * interrupt's delivery), -> the stamping thread woken, -> switched in, -> the stamp (the thread's
 * own run: the read(2) returning, for ours the JS to the handler's clock read). For the slowest
 * 1% and every sample over 50 us it adds what ran on the stamping thread's CPU meanwhile (the
 * raiser, the stamping thread, other threads of the same process, other tasks by name, idle),
 * interrupts taken there, and how often the stamping thread was preempted.
 */
import * as fs from 'node:fs';
import { startTrace, stopTrace } from '../guest-trace';

interface Samples {
  pid: number;
  irqTid: number;
  samples: [number, number][];
}

interface Event {
  t: number; // ns (microsecond resolution)
  cpu: number;
  name: string;
  body: string;
}

const EVENTS = [
  'sched:sched_switch', 'sched:sched_wakeup', 'sched:sched_waking', 'sched:sched_migrate_task',
  'irq:irq_handler_entry', 'irq_vectors:local_timer_entry', 'irq_vectors:reschedule_entry',
  'irq_vectors:call_function_entry', 'irq_vectors:call_function_single_entry', 'irq:softirq_entry',
];

const LINE = /^\s*(.+?)-(\d+)\s+\[(\d+)\]\s+\S+\s+(\d+)\.(\d+):\s+(\w+):\s*(.*)$/;

function parse(text: string): Event[] {
  const out: Event[] = [];
  for (const l of text.split('\n')) {
    const m = LINE.exec(l);
    if (!m) continue;
    out.push({ t: Number(m[4]) * 1e9 + Number(m[5]!.padEnd(9, '0')), cpu: Number(m[3]), name: m[6]!, body: m[7]! });
  }
  return out;
}

function field(body: string, key: string): string | undefined {
  return new RegExp(`(?:^|\\s)${key}=(\\S+)`).exec(body)?.[1];
}

/** sched_switch's "prev_comm=a prev_pid=1 ... ==> next_comm=b next_pid=2 ..." */
function switchOf(body: string): { prevPid: number; prevState: string; nextPid: number; nextComm: string } {
  const [prev, next] = body.split('==>') as [string, string];
  return { prevPid: Number(field(prev, 'prev_pid')), prevState: field(prev, 'prev_state') ?? '?', nextPid: Number(field(next, 'next_pid')), nextComm: field(next, 'next_comm') ?? '?' };
}

function pct(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((s.length * p) / 100))]!;
}

const us = (ns: number) => Math.round(ns / 100) / 10;

function analyse(events: Event[], s: Samples, tids: Set<number>): Record<string, unknown> {
  events.sort((a, b) => a.t - b.t);
  const first = events.length > 0 ? events[0]!.t : Infinity;
  // Which task each CPU runs, replayed from the switches; per slow window, time by task class.
  const classOf = (pid: number, comm: string) => (pid === 0 ? 'idle' : pid === s.irqTid ? 'stamping thread' : pid === s.pid ? 'raiser' : tids.has(pid) ? 'same process, other threads' : comm);
  const legs = { device: [] as number[], wake: [] as number[], switchIn: [] as number[], run: [] as number[] };
  const lat = s.samples.map(([a, b]) => b - a);
  const threshold = Math.min(pct(lat, 99), 50_000);
  const slow: Record<string, unknown>[] = [];
  const slowTotals: Record<string, number> = {};
  let slowLegs = { device: 0, wake: 0, switchIn: 0, run: 0 };
  let slowN = 0;
  let preempted = 0;
  let traced = 0;
  let cursor = 0;
  let irqCpu = -1;
  for (const [t0, t1] of s.samples) {
    if (t0 < first) continue;
    while (cursor < events.length && events[cursor]!.t < t0 - 1000) cursor++;
    let tIrq = NaN, tWake = NaN, tRun = NaN;
    let preempts = 0;
    const irqs: Record<string, number> = {};
    for (let k = cursor; k < events.length && events[k]!.t <= t1 + 1000; k++) {
      const e = events[k]!;
      if (e.name === 'irq_handler_entry' && /vfio-msi/.test(e.body) && Number.isNaN(tIrq)) {
        tIrq = e.t;
        irqCpu = e.cpu;
      } else if (e.name === 'sched_wakeup' && Number(field(e.body, 'pid')) === s.irqTid && !Number.isNaN(tIrq) && Number.isNaN(tWake)) tWake = e.t;
      else if (e.name === 'sched_switch') {
        const sw = switchOf(e.body);
        if (sw.nextPid === s.irqTid && !Number.isNaN(tWake) && Number.isNaN(tRun)) tRun = e.t;
        else if (sw.prevPid === s.irqTid && !Number.isNaN(tRun) && sw.prevState.startsWith('R')) preempts++;
      }
      if (e.name !== 'sched_switch' && e.name !== 'sched_wakeup' && e.name !== 'sched_waking' && e.name !== 'sched_migrate_task') {
        const what = e.name === 'irq_handler_entry' ? `irq ${field(e.body, 'name') ?? '?'}` : e.name === 'softirq_entry' ? `softirq ${field(e.body, 'action') ?? '?'}` : e.name;
        irqs[what] = (irqs[what] ?? 0) + 1;
      }
    }
    traced++;
    preempted += preempts;
    // The stamping thread polls, or the raiser stamps itself (C irq, event loop, polled): no wake-up legs.
    const hasLegs = !Number.isNaN(tRun);
    if (!Number.isNaN(tIrq)) legs.device.push(tIrq - t0);
    if (hasLegs) {
      legs.wake.push(tWake - tIrq);
      legs.switchIn.push(tRun - tWake);
      legs.run.push(Math.max(0, t1 - tRun));
    }
    if (t1 - t0 < threshold) continue;
    slowN++;
    if (hasLegs) {
      slowLegs = { device: slowLegs.device + (tIrq - t0), wake: slowLegs.wake + (tWake - tIrq), switchIn: slowLegs.switchIn + (tRun - tWake), run: slowLegs.run + Math.max(0, t1 - tRun) };
    }
    // Replay the switches on the IRQ's CPU over [t0, t1].
    const cpu = irqCpu;
    const byClass: Record<string, number> = {};
    let current = 'unknown';
    for (let k = cursor - 1; k >= 0; k--) {
      const e = events[k]!;
      if (e.cpu === cpu && e.name === 'sched_switch') {
        const sw = switchOf(e.body);
        current = classOf(sw.nextPid, sw.nextComm);
        break;
      }
    }
    let since = t0;
    for (let k = cursor; k < events.length && events[k]!.t <= t1; k++) {
      const e = events[k]!;
      if (e.cpu !== cpu || e.name !== 'sched_switch' || e.t < t0) continue;
      byClass[current] = (byClass[current] ?? 0) + (e.t - since);
      since = e.t;
      const sw = switchOf(e.body);
      current = classOf(sw.nextPid, sw.nextComm);
    }
    byClass[current] = (byClass[current] ?? 0) + (t1 - since);
    for (const [k, v] of Object.entries(byClass)) slowTotals[k] = (slowTotals[k] ?? 0) + v;
    if (slow.length < 12) {
      slow.push({
        us: us(t1 - t0),
        legsUs: hasLegs ? [us(tIrq - t0), us(tWake - tIrq), us(tRun - tWake), us(t1 - tRun)] : Number.isNaN(tIrq) ? null : [us(tIrq - t0)],
        cpuUs: Object.fromEntries(Object.entries(byClass).map(([k, v]) => [k, us(v)])),
        preempts,
        irqs,
      });
    }
  }
  // Over the whole measurement: each CPU's time by task class, and its interrupts.
  const perCpu: Record<string, { ms: Record<string, number>; irqs: Record<string, number> }> = {};
  const measured = s.samples.filter(([a]) => a >= first);
  if (measured.length > 0) {
    const from = measured[0]![0], to = measured[measured.length - 1]![1];
    const current = new Map<number, { what: string; since: number }>();
    for (const e of events) {
      if (e.t > to) break;
      const c = (perCpu[`cpu${e.cpu}`] ??= { ms: {}, irqs: {} });
      if (e.name === 'sched_switch') {
        const sw = switchOf(e.body);
        const cur = current.get(e.cpu);
        if (cur && e.t > from) c.ms[cur.what] = (c.ms[cur.what] ?? 0) + (e.t - Math.max(cur.since, from));
        current.set(e.cpu, { what: classOf(sw.nextPid, sw.nextComm), since: e.t });
      } else if (e.t >= from && e.name !== 'sched_wakeup' && e.name !== 'sched_waking' && e.name !== 'sched_migrate_task') {
        const what = e.name === 'irq_handler_entry' ? `irq ${field(e.body, 'name') ?? '?'}` : e.name === 'softirq_entry' ? 'softirq' : e.name;
        c.irqs[what] = (c.irqs[what] ?? 0) + 1;
      }
    }
    for (const [cpu, cur] of current) {
      const c = perCpu[`cpu${cpu}`]!;
      c.ms[cur.what] = (c.ms[cur.what] ?? 0) + (to - Math.max(cur.since, from));
    }
    for (const c of Object.values(perCpu)) for (const k of Object.keys(c.ms)) c.ms[k] = Math.round(c.ms[k]! / 1e5) / 10;
  }
  const p = (xs: number[]) => [us(pct(xs, 50)), us(pct(xs, 90)), us(pct(xs, 99))];
  return {
    traced,
    irqCpu,
    thresholdUs: us(threshold),
    legsP50P90P99Us: { raiseToMsi: p(legs.device), msiToWakeup: p(legs.wake), wakeupToSwitchIn: p(legs.switchIn), switchInToStamp: p(legs.run) },
    stampingThreadPreempted: preempted,
    perCpu,
    slow: {
      n: slowN,
      legsMeanUs: slowN ? Object.fromEntries(Object.entries(slowLegs).map(([k, v]) => [k, us(v / slowN)])) : null,
      irqCpuMeanUs: slowN ? Object.fromEntries(Object.entries(slowTotals).sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, us(v / slowN)])) : null,
      worst: slow.sort((a, b) => (b.us as number) - (a.us as number)),
    },
  };
}

function main(): void {
  const [cmd, file] = process.argv.slice(2);
  if (cmd === 'start') {
    startTrace({ events: EVENTS, bufferKb: 32768 });
    return;
  }
  if (cmd !== 'stop' || !file) throw new Error('usage: irq-trace.js start | stop SAMPLES');
  const text = stopTrace();
  const s = JSON.parse(fs.readFileSync(file, 'utf8')) as Samples & { tids?: number[] };
  const tids = new Set<number>(s.tids ?? []);
  console.log(JSON.stringify(analyse(parse(text), s, tids)));
}

main();
