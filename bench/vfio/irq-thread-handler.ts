/**
 * bench:irq's handler for 'thread' delivery: runs on the vector's interrupt thread, reads the
 * clock first (the latency ends here), stores the time (shared memory: a Float64 in ns at byte 0)
 * and wakes the raiser with a write(2) on its eventfd (`done`). Its views are made once, as a
 * driver's would be. At its first call (a warm-up interrupt) it also notes where it runs: Int32s
 * at byte 12, the CPUs it may run on as a bit mask, at byte 16 its scheduling policy (1:
 * SCHED_FIFO), at byte 20 its thread id.
 */
import * as fs from 'node:fs';
import { native } from '../../src/native/index';

let time: Float64Array | null = null;

export function handler(_count: number, data: { shared: SharedArrayBuffer; done: number }): void {
  const t = process.hrtime(); // indexed, not destructured (an iterator until the JIT removes it)
  if (time === null) {
    time = new Float64Array(data.shared, 0, 1);
    const where = new Int32Array(data.shared, 12, 3);
    const list = /^Cpus_allowed_list:\s*(\S+)$/m.exec(fs.readFileSync('/proc/thread-self/status', 'utf8'))![1]!;
    for (const part of list.split(',')) {
      const [a, b = a] = part.split('-').map(Number) as [number, number?];
      for (let c = a; c <= b! && c < 31; c++) where[0]! |= 1 << c;
    }
    const stat = fs.readFileSync('/proc/thread-self/stat', 'utf8');
    where[1] = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[41 - 3]);
    where[2] = Number(stat.slice(0, stat.indexOf(' ')));
  }
  time[0] = t[0] * 1e9 + t[1];
  native.eventfdWrite(data.done, 1);
}
