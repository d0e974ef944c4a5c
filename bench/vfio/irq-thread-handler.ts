/**
 * bench:irq's handler for 'thread' delivery: runs on the vector's interrupt thread, reads the
 * clock first (the latency ends here), then tells the main thread (shared memory: a Float64 time
 * in ns at byte 0, an Int32 flag at byte 8). Its views are made once, as a driver's would be.
 */
let time: Float64Array | null = null;
let flag: Int32Array | null = null;

export function handler(_count: number, data: { shared: SharedArrayBuffer }): void {
  const t = process.hrtime(); // indexed, not destructured (an iterator until the JIT removes it)
  if (time === null) {
    time = new Float64Array(data.shared, 0, 1);
    flag = new Int32Array(data.shared, 8, 1);
  }
  time[0] = t[0] * 1e9 + t[1];
  Atomics.store(flag!, 0, 1);
  Atomics.notify(flag!, 0);
}
