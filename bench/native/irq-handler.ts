/**
 * bench:native's interrupt handler for 'thread' delivery. It runs on the vector's own thread:
 * reads the clock first, then records the latency against the raise time the C raiser left in
 * the shared page (a memfd this thread maps for itself) and acknowledges, as the event-loop and
 * polled variants do on the main thread. Page layout: see run.ts (IrqPage).
 */
import { native, constants } from '../../src/native/index';

interface Data {
  memfd: number;
  /** Float64Array of latencies, ns, indexed by the acknowledgement count (reset by run.ts each round). */
  latencies: SharedArrayBuffer;
}

let raisedAt: Float64Array | null = null;
let ack: Int32Array | null = null;
let lat: Float64Array | null = null;

export function handler(_count: number, data: Data): void {
  const t = process.hrtime(); // indexed, not destructured (an iterator until the JIT removes it)
  if (raisedAt === null) {
    const buffer = native.mmap(constants.PAGE_SIZE, constants.PROT_READ | constants.PROT_WRITE, constants.MAP_SHARED, data.memfd, 0);
    raisedAt = new Float64Array(buffer, 0, 1);
    ack = new Int32Array(buffer, 8, 2);
    lat = new Float64Array(data.latencies);
  }
  const k = ack![0]!;
  if (k < lat!.length) lat![k] = t[0] * 1e9 + t[1] - raisedAt[0]!;
  Atomics.store(ack!, 0, k + 1);
}
