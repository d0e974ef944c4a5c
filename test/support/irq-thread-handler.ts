/**
 * Interrupt handlers for 'thread' delivery tests: they run on the vector's own thread and report
 * through shared memory (word 0: interrupts counted, word 1: handler calls).
 */
export function handler(count: number, data: { words: SharedArrayBuffer }): void {
  const w = new Int32Array(data.words);
  Atomics.add(w, 0, count);
  Atomics.add(w, 1, 1);
  Atomics.notify(w, 1);
}

export function failing(_count: number, data: { words: SharedArrayBuffer }): void {
  const w = new Int32Array(data.words);
  Atomics.add(w, 1, 1);
  Atomics.notify(w, 1);
  throw new Error('handler failed on purpose');
}

/** Word 2: the CPUs this thread may run on, as a bit mask (CPUs 0-30). */
export function affinity(count: number, data: { words: SharedArrayBuffer }): void {
  const w = new Int32Array(data.words);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const status = (require('node:fs') as typeof import('node:fs')).readFileSync('/proc/thread-self/status', 'utf8');
  const list = /^Cpus_allowed_list:\s*(\S+)$/m.exec(status)![1]!;
  let mask = 0;
  for (const part of list.split(',')) {
    const [a, b = a] = part.split('-').map(Number) as [number, number?];
    for (let c = a; c <= b! && c < 31; c++) mask |= 1 << c;
  }
  Atomics.store(w, 2, mask);
  handler(count, data);
}

/** Ends its own thread (as a handler calling process.exit() would). */
export function exiting(count: number, data: { words: SharedArrayBuffer }): void {
  handler(count, data);
  process.exit(0);
}

/** Word 2: this thread's scheduling policy (0 SCHED_OTHER, 1 SCHED_FIFO); word 3: its real-time priority. */
export function policy(count: number, data: { words: SharedArrayBuffer }): void {
  const w = new Int32Array(data.words);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const stat = (require('node:fs') as typeof import('node:fs')).readFileSync('/proc/thread-self/stat', 'utf8');
  // Fields after the command's closing parenthesis: state is field 3; rt_priority 40, policy 41.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  Atomics.store(w, 2, Number(fields[41 - 3]));
  Atomics.store(w, 3, Number(fields[40 - 3]));
  handler(count, data);
}
