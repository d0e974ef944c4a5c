/**
 * bench:net --trace: where a ping-pong's round trip goes, from the guest kernel's ftrace (mono
 * clock, every vCPU): the workers (ours and the C baseline) write markers at each step when
 * NET_BENCH_TRACE=1, the kernel adds the receive interrupts and the switches to the waiting
 * process. Each round trip is cut into legs:
 *   ping tx -> echo irq       QEMU: the doorbell, virtio-net's transmit bottom half on the main
 *                             loop, the hub, the other NIC's receive, the MSI-X to the vCPU
 *   echo irq -> echo runs     the guest kernel waking the echo process
 *   echo runs -> echo rx      the process (event loop or recv) up to its receive marker
 *   echo rx -> echo tx        the echo's own work
 *   echo tx -> ping irq, ping irq -> ping runs, ping runs -> ping rx   the same way back
 * Spinning workers take no interrupt and never sleep: those legs are then absent and the QEMU
 * leg runs from one marker to the next.
 */
import { startTrace } from '../guest-trace';

/** The trace session of --trace: interrupts, switches, wake-ups and system calls. */
export function startRttTrace(): void {
  startTrace({ events: ['irq:irq_handler_entry', 'sched:sched_switch', 'sched:sched_wakeup', 'raw_syscalls:sys_enter'], bufferKb: 8192 });
}

interface Ev {
  t: number; // us
  cpu: number;
  pid: number;
  kind: 'mark' | 'irq' | 'switch' | 'wakeup' | 'syscall';
  text: string;
  nextPid?: number;
}

const LINE = /^\s*(.+?)-(\d+)\s+\[(\d+)\]\s+\S+\s+([\d.]+):\s+(\w+):\s*(.*)$/;

function parse(text: string): Ev[] {
  const out: Ev[] = [];
  for (const l of text.split('\n')) {
    const m = LINE.exec(l);
    if (!m) continue;
    const [, , pid, cpu, ts, ev, rest] = m;
    const base = { t: Number(ts) * 1e6, cpu: Number(cpu), pid: Number(pid), text: rest! };
    if (ev === 'tracing_mark_write' && rest!.startsWith('netlat ')) out.push({ ...base, kind: 'mark', text: rest!.slice(7).trim() });
    else if (ev === 'irq_handler_entry' && /name=(vfio-msix\[1\]|virtio\d+-input)/.test(rest!)) out.push({ ...base, kind: 'irq' });
    else if (ev === 'sched_switch') out.push({ ...base, kind: 'switch', nextPid: Number(/next_pid=(\d+)/.exec(rest!)?.[1]) });
    else if (ev === 'sys_enter') out.push({ ...base, kind: 'syscall', text: /NR (\d+)/.exec(rest!)?.[1] ?? '?' });
    else if (ev === 'sched_wakeup') out.push({ ...base, kind: 'wakeup', nextPid: Number(/pid=(\d+)/.exec(rest!)?.[1]) });
  }
  return out;
}

const POINTS = ['ping tx', 'echo irq', 'echo runs', 'echo rx', 'echo tx', 'ping irq', 'ping runs', 'ping rx'];

export interface TraceSummary {
  roundTrips: number;
  /** Median and p90 of each leg in us (absent legs left out), and of the whole round trip. */
  legs: { leg: string; p50: number; p90: number; n: number }[];
  rtt: { p50: number; p90: number };
  /** System calls per round trip by number (x86-64: 1 write, 228 clock_gettime, 232 epoll_wait, 0 read), ping and echo; the markers' writes included. */
  syscalls: { ping: Record<string, number>; echo: Record<string, number> };
}

const q = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? +s[Math.min(s.length - 1, Math.floor(p * s.length))]!.toFixed(1) : NaN;
};

/**
 * Cuts the trace into round trips at the ping's "P tx" markers; within each, the first matching
 * event of each step in order. A step not found (no interrupt when spinning) leaves its legs out.
 */
export function summarize(text: string): TraceSummary {
  const evs = parse(text).sort((a, b) => a.t - b.t);
  const pingPid = evs.find((e) => e.kind === 'mark' && e.text.startsWith('P '))?.pid;
  const echoPid = evs.find((e) => e.kind === 'mark' && e.text.startsWith('E '))?.pid;
  const legs = new Map<string, number[]>();
  const rtts: number[] = [];
  const starts = evs.map((e, i) => (e.kind === 'mark' && e.text.startsWith('P tx') ? i : -1)).filter((i) => i >= 0);
  for (let s = 0; s < starts.length - 1; s++) {
    const seg = evs.slice(starts[s]!, starts[s + 1]!);
    let at = 0;
    const find = (ok: (e: Ev) => boolean) => {
      for (let i = at; i < seg.length; i++) if (ok(seg[i]!)) { at = i; return seg[i]!.t; }
      return undefined;
    };
    const t0 = seg[0]!.t;
    const eIrq = find((e) => e.kind === 'irq');
    if (eIrq === undefined) at = 0;
    const eRun = eIrq === undefined ? undefined : find((e) => e.kind === 'switch' && e.nextPid === echoPid);
    if (eRun === undefined && eIrq !== undefined) at = seg.findIndex((e) => e.t === eIrq);
    const eRx = find((e) => e.kind === 'mark' && e.pid === echoPid && e.text.startsWith('E rx'));
    const eTx = find((e) => e.kind === 'mark' && e.pid === echoPid && e.text.startsWith('E tx'));
    if (eRx === undefined || eTx === undefined) continue;
    const from = at;
    const pIrq = find((e) => e.kind === 'irq');
    if (pIrq === undefined) at = from;
    const pRun = pIrq === undefined ? undefined : find((e) => e.kind === 'switch' && e.nextPid === pingPid);
    if (pRun === undefined && pIrq !== undefined) at = seg.findIndex((e) => e.t === pIrq);
    const pRx = find((e) => e.kind === 'mark' && e.pid === pingPid && e.text.startsWith('P rx'));
    if (pRx === undefined) continue;
    rtts.push(pRx - t0);
    const points = [t0, eIrq, eRun, eRx, eTx, pIrq, pRun, pRx];
    // Each leg from the last point found before it (absent steps: the leg spans them).
    for (let k = 1; k < points.length; k++) {
      if (points[k] === undefined) continue;
      let j = k - 1;
      while (points[j] === undefined) j--;
      const name = `${POINTS[j]} -> ${POINTS[k]}`;
      if (!legs.has(name)) legs.set(name, []);
      legs.get(name)!.push(points[k]! - points[j]!);
    }
  }
  const perRt = (pid: number | undefined) => {
    const c: Record<string, number> = {};
    const from = starts[0] === undefined ? 0 : evs[starts[0]]!.t;
    const to = starts.length > 1 ? evs[starts[starts.length - 1]!]!.t : 0;
    for (const e of evs) if (e.kind === 'syscall' && e.pid === pid && e.t >= from && e.t < to) c[e.text] = (c[e.text] ?? 0) + 1;
    for (const k of Object.keys(c)) c[k] = +(c[k]! / Math.max(1, starts.length - 1)).toFixed(2);
    return c;
  };
  return {
    syscalls: { ping: perRt(pingPid), echo: perRt(echoPid) },
    roundTrips: rtts.length,
    legs: [...legs].map(([leg, xs]) => ({ leg, p50: q(xs, 0.5), p90: q(xs, 0.9), n: xs.length })),
    rtt: { p50: q(rtts, 0.5), p90: q(rtts, 0.9) },
  };
}

export function describeTrace(name: string, s: TraceSummary): string {
  return `trace ${name} (${s.roundTrips} round trips, rtt p50 ${s.rtt.p50} us p90 ${s.rtt.p90} us): ` +
    s.legs.map((l) => `${l.leg} ${l.p50}/${l.p90}`).join(' | ') + ' (us p50/p90); system calls per round trip (nr: count): ' +
    `ping ${JSON.stringify(s.syscalls.ping)} echo ${JSON.stringify(s.syscalls.echo)}`;
}
