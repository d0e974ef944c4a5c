/**
 * bench:irq's handler for 'thread' delivery: runs on the vector's interrupt thread, reads the
 * clock first (the latency ends here), then tells the main thread (shared memory: a Float64 time
 * in ns at byte 0, an Int32 flag at byte 8).
 */
export function handler(_count: number, data: { shared: SharedArrayBuffer }): void {
  const [s, ns] = process.hrtime();
  const time = new Float64Array(data.shared, 0, 1);
  const flag = new Int32Array(data.shared, 8, 1);
  time[0] = s * 1e9 + ns;
  Atomics.store(flag, 0, 1);
  Atomics.notify(flag, 0);
}
