/**
 * The guest kernel's ftrace for the guest benches' --trace (bench:net, bench:blk): one session
 * on tracefs with the events asked for, mono clock (the workers' markers use the same), all vCPUs.
 */
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';

const T = '/sys/kernel/tracing';

export interface TraceOptions {
  events: readonly string[];
  bufferKb: number;
  /** Triggers to set for the session, by event path (e.g. 'lock/contention_begin': 'stacktrace'). */
  triggers?: Record<string, string>;
}

let triggersSet: Record<string, string> = {};

export function startTrace(options: TraceOptions): void {
  if (!fs.existsSync(`${T}/trace_marker`)) execFileSync('mount', ['-t', 'tracefs', 'nodev', T]);
  const w = (f: string, v: string) => fs.writeFileSync(`${T}/${f}`, v);
  w('tracing_on', '0');
  w('trace_clock', 'mono');
  w('buffer_size_kb', String(options.bufferKb));
  // One event per write: an event this kernel lacks fails alone.
  w('set_event', '');
  for (const e of options.events) {
    try {
      fs.appendFileSync(`${T}/set_event`, `${e}\n`);
    } catch {
      // not in this kernel
    }
  }
  triggersSet = {};
  for (const [event, trigger] of Object.entries(options.triggers ?? {})) {
    try {
      w(`events/${event}/trigger`, trigger);
      triggersSet[event] = trigger;
    } catch {
      // no such event in this kernel
    }
  }
  w('trace', '');
  w('tracing_on', '1');
}

/** Stops the session and returns its text; events, triggers and the buffer are cleared. */
export function stopTrace(): string {
  fs.writeFileSync(`${T}/tracing_on`, '0');
  const text = fs.readFileSync(`${T}/trace`, 'utf8');
  fs.writeFileSync(`${T}/set_event`, '');
  for (const [event, trigger] of Object.entries(triggersSet)) fs.writeFileSync(`${T}/events/${event}/trigger`, `!${trigger}`);
  triggersSet = {};
  fs.writeFileSync(`${T}/trace`, '');
  return text;
}
