/**
 * bench:native's interrupt handler for 'thread' delivery. It runs on the vector's own thread:
 * reads the clock first, then records the latency against the raise time the C raiser left in
 * the shared page (a memfd this thread maps for itself) and acknowledges, as the event-loop and
 * polled variants do on the main thread. Page layout: see run.ts (RAISED_AT, ACK).
 */
import { native, constants } from '../../src/native/index';

interface Data {
  memfd: number;
  /** Float64Array of latencies, ns, filled in order. */
  latencies: SharedArrayBuffer;
}

let page: Float64Array | null = null;
let ack: Int32Array | null = null;
let lat: Float64Array | null = null;
let taken = 0;

export function handler(_count: number, data: Data): void {
  const [s, ns] = process.hrtime();
  const now = s * 1e9 + ns;
  if (page === null) {
    const buffer = native.mmap(constants.PAGE_SIZE, constants.PROT_READ | constants.PROT_WRITE, constants.MAP_SHARED, data.memfd, 0);
    page = new Float64Array(buffer, 0, 1);
    ack = new Int32Array(buffer, 8, 2);
    lat = new Float64Array(data.latencies);
  }
  if (taken < lat!.length) lat![taken] = now - page[0]!;
  taken++;
  Atomics.store(ack!, 0, taken);
}
