/**
 * bench:blk --trace S: what a QD1 read costs the guest, per I/O, from the guest kernel's ftrace
 * (every vCPU) over S seconds of the C reader on one disk:
 *   - CPU time by process name (the time between its sched_switch in and out; "idle" is the
 *     swapper: a vCPU that halts costs the host nothing under TCG, any other time is a busy vCPU),
 *   - system calls by process name and number (x86-64: 0 read, 1 write, 228 clock_gettime,
 *     232 epoll_wait, 426 io_uring_enter; each clock read is also an HPET MMIO read in this guest),
 *   - switches to and wake-ups of each process, interrupts by handler name, IPIs received.
 * Threads are keyed "name/tid" (node's threads all carry the name "node", io_uring's workers
 * "iou-wrk-PID"). I/Os are counted as the reader's io_uring_enter calls (one per I/O at QD1).
 */
import * as fs from 'node:fs';
import { startTrace } from '../guest-trace';

const EVENTS = [
  'sched:sched_switch', 'sched:sched_wakeup', 'raw_syscalls:sys_enter', 'irq:irq_handler_entry',
  'irq_vectors:local_timer_entry', 'irq_vectors:reschedule_entry', 'irq_vectors:call_function_single_entry', 'irq_vectors:call_function_entry',
  'ipi:ipi_send_cpu', 'ipi:ipi_send_cpumask', 'lock:contention_begin', 'sched:sched_migrate_task',
];

/** Per CPU and idle state ("cpu0 POLL"): entries and µs spent, from cpuidle's sysfs counters. */
export function idleStates(): Record<string, { usage: number; us: number }> {
  const out: Record<string, { usage: number; us: number }> = {};
  const base = '/sys/devices/system/cpu';
  for (const cpu of fs.readdirSync(base).filter((d) => /^cpu\d+$/.test(d))) {
    const dir = `${base}/${cpu}/cpuidle`;
    if (!fs.existsSync(dir)) continue;
    for (const st of fs.readdirSync(dir).filter((d) => d.startsWith('state'))) {
      const r = (f: string) => fs.readFileSync(`${dir}/${st}/${f}`, 'utf8').trim();
      out[`${cpu} ${r('name')}`] = { usage: Number(r('usage')), us: Number(r('time')) };
    }
  }
  return out;
}

/** The idle driver and governor, e.g. "acpi_idle/menu" ("none" without cpuidle). */
export function idleDriver(): string {
  const d = '/sys/devices/system/cpu/cpuidle';
  const r = (f: string) => (fs.existsSync(`${d}/${f}`) ? fs.readFileSync(`${d}/${f}`, 'utf8').trim() : '?');
  return `${r('current_driver')}/${r('current_governor_ro') === '?' ? r('current_governor') : r('current_governor_ro')}`;
}

/** The trace session of --trace: EVENTS, and a kernel stack per contended lock. */
export function startIoTrace(): void {
  // Where a contended lock is taken: a kernel stack per contention (spinning under TCG is a
  // `pause` loop, each one a trip through QEMU's CPU loop and its big lock).
  startTrace({ events: EVENTS, bufferKb: 16384, triggers: { 'lock/contention_begin': 'stacktrace' } });
}

export interface IoTrace {
  ios: number;
  seconds: number;
  /** Per I/O: µs on a CPU by process name ("idle" the swapper), summed over CPUs. */
  cpuUs: Record<string, number>;
  /** Per I/O: system calls by "name nr". */
  syscalls: Record<string, number>;
  /** Per I/O: switches to a process (by name), wake-ups of it, interrupts by handler, IPIs and timer ticks. */
  switchesIn: Record<string, number>;
  wakeups: Record<string, number>;
  irqs: Record<string, number>;
  /** Per I/O: CPU µs by "thread@cpu", migrations by thread, IPIs sent by callsite, lock contentions by thread and stack. */
  onCpu: Record<string, number>;
  migrations: Record<string, number>;
  ipis: Record<string, number>;
  contentions: Record<string, number>;
  /** Per I/O: entries into each idle state and µs in it, by "cpuN STATE" (cpuidle counters around the run). */
  idle?: Record<string, { entries: number; us: number }>;
  idleDriver?: string;
  lost: boolean;
}

const LINE = /^\s*(.+?)-(\d+)\s+\[(\d+)\]\s+\S+\s+([\d.]+):\s+(\w+):\s*(.*)$/;

/**
 * One key per thread ("name/tid": a process's threads share its name), kernel workers folded by
 * kind ("kworker/1:2" -> "kworker"), the reader as "reader".
 */
function key(comm: string, pid: number): string {
  if (pid === 0) return 'idle';
  const c = comm.trim();
  if (c.startsWith('kworker')) return 'kworker';
  if (c.startsWith('ksoftirqd')) return 'ksoftirqd';
  if (c.startsWith('kernel-baselin')) return 'reader';
  return `${c}/${pid}`;
}

export function summarize(text: string): IoTrace {
  const cpuUs: Record<string, number> = {};
  const syscalls: Record<string, number> = {};
  const switchesIn: Record<string, number> = {};
  const wakeups: Record<string, number> = {};
  const irqs: Record<string, number> = {};
  const onCpu: Record<string, number> = {};
  const migrations: Record<string, number> = {};
  const ipis: Record<string, number> = {};
  const contentions: Record<string, number> = {};
  /** A contention waiting for its stack (the trigger's lines follow the event). */
  let stackOf: string | null = null;
  let frames: string[] = [];
  const endStack = () => {
    if (stackOf !== null) add(contentions, `${stackOf}: ${frames.filter((f) => !/lock|contention|trace/.test(f)).slice(0, 3).join(' < ')}`);
    stackOf = null;
    frames = [];
  };
  const last = new Map<number, number>();
  let first = Infinity;
  let end = 0;
  let ios = 0;
  const add = (r: Record<string, number>, k: string, v = 1) => (r[k] = (r[k] ?? 0) + v);
  const lost = /LOST \d+ EVENTS/.test(text);
  for (const l of text.split('\n')) {
    const frame = /^ => (\S+?)(\+0x[0-9a-f]+\/0x[0-9a-f]+)?$/.exec(l);
    if (frame) {
      if (stackOf !== null) frames.push(frame[1]!);
      continue;
    }
    const m = LINE.exec(l);
    if (!m) continue;
    if (m[5] !== 'kernel_stack' && m[5] !== '<stack trace>') endStack();
    const [, comm, pidS, cpuS, ts, ev, rest] = m;
    const t = Number(ts) * 1e6;
    const cpu = Number(cpuS);
    const who = key(comm!, Number(pidS));
    first = Math.min(first, t);
    end = Math.max(end, t);
    if (!last.has(cpu)) last.set(cpu, t);
    switch (ev) {
      case 'sys_enter': {
        const nr = /NR (\d+)/.exec(rest!)?.[1] ?? '?';
        add(syscalls, `${who} ${nr}`);
        if (who === 'reader' && nr === '426') ios++;
        break;
      }
      case 'sched_switch': {
        const prev = /prev_comm=(.*?) prev_pid=(\d+)/.exec(rest!);
        const next = /next_comm=(.*?) next_pid=(\d+)/.exec(rest!);
        if (prev) add(cpuUs, key(prev[1]!, Number(prev[2])), t - last.get(cpu)!);
        if (prev) add(onCpu, `${key(prev[1]!, Number(prev[2]))}@${cpu}`, t - last.get(cpu)!);
        if (next) add(switchesIn, key(next[1]!, Number(next[2])));
        last.set(cpu, t);
        break;
      }
      case 'sched_wakeup': {
        const w = /comm=(.*?) pid=(\d+)/.exec(rest!);
        if (w) add(wakeups, key(w[1]!, Number(w[2])));
        break;
      }
      case 'sched_migrate_task': {
        const w = /comm=(.*?) pid=(\d+)/.exec(rest!);
        if (w) add(migrations, key(w[1]!, Number(w[2])));
        break;
      }
      case 'ipi_send_cpu':
      case 'ipi_send_cpumask':
        add(ipis, `${who} ${/callsite=(\S+?)(\+|\s|$)/.exec(rest!)?.[1] ?? '?'}>${/callback=(\S+?)(\+|\s|$)/.exec(rest!)?.[1] ?? '?'}`);
        break;
      case 'contention_begin':
        stackOf = who;
        break;
      case 'kernel_stack':
        break;
      case 'irq_handler_entry':
        add(irqs, /name=(\S+)/.exec(rest!)?.[1] ?? '?');
        break;
      default:
        add(irqs, ev!.replace(/_entry$/, ''));
    }
  }
  endStack();
  const per = (r: Record<string, number>, digits: number) => {
    const out: Record<string, number> = {};
    for (const [k, v] of Object.entries(r).sort((a, b) => b[1] - a[1])) {
      const x = +(v / Math.max(1, ios)).toFixed(digits);
      if (x > 0) out[k] = x;
    }
    return out;
  };
  return { ios, seconds: (end - first) / 1e6, cpuUs: per(cpuUs, 0), syscalls: per(syscalls, 2), switchesIn: per(switchesIn, 2), wakeups: per(wakeups, 2), irqs: per(irqs, 2), onCpu: per(onCpu, 0), migrations: per(migrations, 2), ipis: per(ipis, 2), contentions: per(contentions, 2), lost };
}

export function describeTrace(name: string, s: IoTrace): string {
  return `trace ${name}: ${s.ios} I/Os in ${s.seconds.toFixed(2)} s${s.lost ? ' (EVENTS LOST)' : ''}; per I/O: ` +
    `CPU µs ${JSON.stringify(s.cpuUs)}; system calls (name nr) ${JSON.stringify(s.syscalls)}; switches in ${JSON.stringify(s.switchesIn)}; ` +
    `wake-ups ${JSON.stringify(s.wakeups)}; interrupts ${JSON.stringify(s.irqs)}; CPU µs by thread@cpu ${JSON.stringify(s.onCpu)}; ` +
    `idle states (${s.idleDriver}: entries, µs) ${JSON.stringify(s.idle)}; migrations ${JSON.stringify(s.migrations)}; IPIs sent (thread callsite) ${JSON.stringify(s.ipis)}; lock contentions (thread: stack) ${JSON.stringify(s.contentions)}`;
}
