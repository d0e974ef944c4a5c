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
