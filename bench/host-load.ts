/**
 * What the host did while a guest benchmark measured: the guest's QEMU threads' CPU time and the
 * time they spent runnable but waiting for a host CPU (/proc/PID/task/TID/schedstat), and the
 * whole machine's busy time (/proc/stat), between two snapshots. Under TCG every guest step is
 * a host thread's step, so a QEMU thread waiting on the host's run queue is guest time lost;
 * the benchmark prints this beside its figures so a slow case on a busy host says so.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { performance } from 'node:perf_hooks';

interface ThreadSample {
  name: string;
  cpuNs: number;
  waitNs: number;
}

export interface HostSnapshot {
  t: number;
  /** Jiffies: busy (not idle or iowait) and in all, summed over every CPU. */
  busy: number;
  total: number;
  threads: Map<number, ThreadSample>;
}

export interface ThreadLoad {
  /** QEMU's thread name (with `-name debug-threads=on`: "CPU 0/TCG", "qemu-system-x86" is the main loop). */
  name: string;
  /** Share of one host CPU it ran, and share of the interval it sat runnable without one (percent). */
  cpu: number;
  waited: number;
  /** The same as milliseconds in the interval. */
  cpuMs: number;
  waitedMs: number;
}

export interface HostLoad {
  seconds: number;
  /** Host CPUs busy (percent of one CPU, so up to 100 x cores), ours included. */
  hostBusy: number;
  /** Of that, QEMU threads other than this guest's: other guests and processes. */
  others: number;
  cores: number;
  load1: number;
  threads: ThreadLoad[];
}

function readThreads(pid: number): Map<number, ThreadSample> {
  const out = new Map<number, ThreadSample>();
  let tids: string[];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      const [cpu, wait] = fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').trim().split(/\s+/).map(Number);
      const name = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
      out.set(Number(tid), { name, cpuNs: cpu!, waitNs: wait! });
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return out;
}

function readCpu(): { busy: number; total: number } {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((s, x) => s + x, 0);
  const idle = f[3]! + f[4]!;
  return { busy: total - idle, total };
}

export function snapshot(pid: number): HostSnapshot {
  return { t: performance.now(), ...readCpu(), threads: readThreads(pid) };
}

/** The host between two snapshots of the same QEMU process. */
export function hostLoad(a: HostSnapshot, b: HostSnapshot): HostLoad {
  const seconds = (b.t - a.t) / 1000;
  const cores = os.cpus().length;
  const hostBusy = b.total > a.total ? (100 * cores * (b.busy - a.busy)) / (b.total - a.total) : 0;
  const threads: ThreadLoad[] = [];
  let qemuCpu = 0;
  for (const [tid, t1] of b.threads) {
    const t0 = a.threads.get(tid) ?? { cpuNs: 0, waitNs: 0 };
    const cpu = (100 * (t1.cpuNs - t0.cpuNs)) / 1e9 / seconds;
    const waited = (100 * (t1.waitNs - t0.waitNs)) / 1e9 / seconds;
    qemuCpu += cpu;
    if (cpu >= 0.5 || waited >= 0.5) {
      threads.push({ name: t1.name, cpu: Math.round(cpu), waited: Math.round(waited), cpuMs: (t1.cpuNs - t0.cpuNs) / 1e6, waitedMs: (t1.waitNs - t0.waitNs) / 1e6 });
    }
  }
  threads.sort((x, y) => y.cpu - x.cpu);
  return {
    seconds: +seconds.toFixed(1), hostBusy: Math.round(hostBusy), others: Math.max(0, Math.round(hostBusy - qemuCpu)), cores,
    load1: +os.loadavg()[0]!.toFixed(1), threads,
  };
}

/** The QEMU process this process started (the guest of the benchmark), if it runs. */
export function childQemu(): number | undefined {
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(rest[1]) === process.pid && stat.includes('(qemu-system-x86')) return Number(d);
    } catch {
      // gone
    }
  }
  return undefined;
}

/**
 * One line: "host 2 cores busy 180% (others 40%), load 7.1; QEMU threads: CPU 0/TCG 95% (waited 3%), ...";
 * with `ops`, each thread's CPU time per operation too ("0.41 ms/op").
 */
export function describeLoad(l: HostLoad, ops = 0): string {
  const per = (t: ThreadLoad) => (ops > 0 ? `; per op ${(t.cpuMs / ops).toFixed(2)} ms run, ${(t.waitedMs / ops).toFixed(2)} ms waited` : '');
  const th = l.threads.map((t) => `${t.name} ${t.cpu}% (waited ${t.waited}%${per(t)})`).join(', ');
  return `${l.seconds} s, host ${l.cores} cores busy ${l.hostBusy}% (others ${l.others}%), load ${l.load1}; QEMU threads: ${th}`;
}
