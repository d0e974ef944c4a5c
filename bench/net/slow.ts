/**
 * bench:net's slow round trips (over the worker's SLOW_MS): which leg each lost its time in, from
 * the ping's notes (its rings when it had waited SLOW_MS, and when its frame left the transmit
 * ring) joined with the echo's per-frame notes (--watch: when the echo took the frame, whether
 * its reply rang the doorbell, when the device took the reply), all on CLOCK_MONOTONIC.
 *
 * A lost notification shows as: a frame still in a transmit ring whose send rang no doorbell
 * (unrung) while the device's avail_event / event word asked for one; or, interrupt-driven, a reply
 * back in the ping's receive ring (device used past consumed) with no interrupt taken.
 */
import type { VirtqueueState } from '../../src/drivers/virtio/virtqueue';

export interface SlowNote {
  seq: number;
  sent: number;
  rang: boolean;
  rttMs: number;
  atMs: number;
  state: { rx: VirtqueueState; tx: VirtqueueState };
  interrupts: number;
  leftMs: number;
}

export interface EchoLog {
  seq: number[];
  got: number[];
  rang: number[];
  left: number[];
}

export type Leg = 'ping-tx' | 'to-echo' | 'echo-tx' | 'to-ping' | 'unknown';

export interface SlowSummary {
  /** Round trips over SLOW_MS (warm-up included), and how many of them were noted. */
  count: number;
  noted: number;
  lost: number;
  /** Slow round trips by the leg that took longest. */
  legs: Record<Leg, number>;
  /** The ping's send rang no doorbell and its frame was still in the ring when noted. */
  pingUnrungStuck: number;
  /** The echo's reply rang no doorbell and left only after SLOW_MS. */
  echoUnrungLate: number;
  /** Interrupt-driven ping: the reply sat in the receive ring when noted, with no interrupt taken since the send. */
  replyWaitingNoIrq: number;
  lines: string[];
}

/** Entries the device has taken from a transmit ring are all of it: nothing of ours waits there. */
function txLeft(s: VirtqueueState): boolean {
  return s.format === 'split' ? s.deviceUsed === s.published : s.outstanding === 0 || s.deviceUsed > 0;
}

/** A reply is in the receive ring, not yet taken. */
function rxWaiting(s: VirtqueueState): boolean {
  return s.format === 'split' ? ((s.deviceUsed - s.consumed) & 0xffff) > 0 : s.deviceUsed > 0;
}

function ring(s: VirtqueueState): string {
  const hex = (x: number) => `0x${x.toString(16)}`;
  return s.format === 'split'
    ? `published ${s.published} kicked ${s.kicked} used ${s.deviceUsed} consumed ${s.consumed} avail_event ${s.deviceEvent} used_event ${s.driverEvent & 0xffff} flags ${s.deviceFlags}/${s.driverEvent >>> 16}`
    : `published ${hex(s.published)} sinceKick ${s.kicked} unread ${s.deviceUsed} next-used ${hex(s.consumed)} device-event ${hex(s.deviceEvent)} driver-event ${hex(s.driverEvent)} outstanding ${s.outstanding}`;
}

export function summarizeSlow(name: string, count: number, notes: SlowNote[], echo: EchoLog | undefined, irq: boolean): SlowSummary {
  const legs: Record<Leg, number> = { 'ping-tx': 0, 'to-echo': 0, 'echo-tx': 0, 'to-ping': 0, unknown: 0 };
  const out: SlowSummary = { count, noted: notes.length, lost: 0, legs, pingUnrungStuck: 0, echoUnrungLate: 0, replyWaitingNoIrq: 0, lines: [] };
  const bySeq = new Map<number, number>();
  if (echo) echo.seq.forEach((s, i) => bySeq.set(s, i));
  for (const n of notes) {
    if (n.rttMs >= 200) out.lost++;
    const stuck = !txLeft(n.state.tx);
    if (stuck && !n.rang) out.pingUnrungStuck++;
    const waiting = rxWaiting(n.state.rx);
    if (irq && waiting) out.replyWaitingNoIrq++;
    const i = bySeq.get(n.seq & 0xffff);
    let leg: Leg = 'unknown';
    let echoText = echo ? 'echo never took it' : 'echo not watched';
    if (i !== undefined) {
      const got = echo!.got[i]! - n.sent;
      const left = echo!.left[i]! < 0 ? undefined : echo!.left[i]! - n.sent;
      const rang = echo!.rang[i] === 1;
      if (!rang && left !== undefined && left - got > 10) out.echoUnrungLate++;
      echoText = `echo took it at +${got.toFixed(1)}, reply ${rang ? 'rang' : 'did not ring'}, left at ${left === undefined ? '?' : `+${left.toFixed(1)}`}`;
      const spans: [Leg, number][] = [['to-echo', got], ['echo-tx', left === undefined ? 0 : left - got], ['to-ping', left === undefined ? 0 : n.rttMs - left]];
      spans.sort((a, b) => b[1] - a[1]);
      leg = spans[0]![0];
      // The first leg splits at the moment the ping's frame left its transmit ring.
      if (leg === 'to-echo' && stuck) leg = 'ping-tx';
    } else if (stuck) leg = 'ping-tx';
    legs[leg]++;
    out.lines.push(`  ${name} seq ${n.seq}: ${n.rttMs >= 200 ? 'LOST (200 ms)' : `${n.rttMs.toFixed(1)} ms`}; send ${n.rang ? 'rang' : 'did not ring'}, frame ${stuck ? 'still in the ping\'s ring' : 'gone'} at +${n.atMs.toFixed(1)}${n.leftMs >= 0 ? ` (left at +${n.leftMs.toFixed(1)})` : ''}; ${echoText}; leg ${leg}` +
      `${irq ? `; reply ${waiting ? 'WAITING in' : 'not in'} the ping's receive ring, ${n.interrupts} receive interrupts taken by then` : ''}\n` +
      `    tx: ${ring(n.state.tx)}\n    rx: ${ring(n.state.rx)}`);
  }
  return out;
}

export function describeSlow(name: string, s: SlowSummary, rounds: number): string {
  const legs = Object.entries(s.legs).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`).join(', ');
  return `slow ${name}: ${s.count} of ${rounds + 100} round trips over 10 ms${s.noted < s.count ? `, the first ${s.noted} noted` : ''} (${s.lost} of those lost at 200 ms)${s.noted ? `; longest leg: ${legs}` : ''}; ` +
    `ping sends unrung with the frame still in the ring: ${s.pingUnrungStuck}; echo replies unrung and late: ${s.echoUnrungLate}` +
    `${s.replyWaitingNoIrq ? `; replies waiting in the receive ring at the note: ${s.replyWaitingNoIrq}` : ''}`;
}
