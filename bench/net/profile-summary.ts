/**
 * bench:net --profile: a V8 CPU profile (node --cpu-prof) cut down to where the time went: self
 * time by function (with its file), the idle share (the event loop blocked in epoll_wait) and
 * garbage collection.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export interface ProfileSummary {
  totalMs: number;
  /** Top functions by self time: name (file:line), ms, percent of the total. */
  top: { fn: string; ms: number; pct: number }[];
}

export function summarizeProfile(file: string, topN = 15): ProfileSummary {
  const p = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const n = byId.get(p.samples[i]!)!;
    const cf = n.callFrame;
    const key = cf.url ? `${cf.functionName || '(anonymous)'} ${path.basename(cf.url)}:${cf.lineNumber + 1}` : cf.functionName;
    // timeDeltas[i] is the time before sample i; the sample stands for the interval after it.
    const dt = p.timeDeltas[i + 1] ?? 0;
    self.set(key, (self.get(key) ?? 0) + dt);
  }
  const total = [...self.values()].reduce((s, x) => s + x, 0);
  const top = [...self].sort((a, b) => b[1] - a[1]).slice(0, topN)
    .map(([fn, us]) => ({ fn, ms: +(us / 1000).toFixed(1), pct: +((100 * us) / total).toFixed(1) }));
  return { totalMs: +(total / 1000).toFixed(0), top };
}

export function describeProfile(name: string, s: ProfileSummary): string {
  return `profile ${name} (${s.totalMs} ms): ` + s.top.map((t) => `${t.fn} ${t.pct}%`).join(', ');
}
