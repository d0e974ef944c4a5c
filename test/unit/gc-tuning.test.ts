/**
 * Scavenges stay V8's (parallel) when userpci is imported, and useSerialScavenge() makes them
 * serial at run time (were V8's flags frozen after start-up, the opt-in would silently do
 * nothing). Seen with --trace-parallel-scavenge: one line per scavenger task, before --trace-gc's
 * line for that scavenge.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { it } from 'node:test';

const INDEX = join(__dirname, '..', '..', 'src', 'index.js');

/** Tasks of each scavenge in `trace`. */
function tasksPerScavenge(trace: string): number[] {
  const tasks: number[] = [];
  let n = 0;
  for (const line of trace.split('\n')) {
    if (/ scavenge\[/.test(line)) n++;
    else if (/ Scavenge /.test(line)) {
      tasks.push(n);
      n = 0;
    }
  }
  return tasks;
}

it('importing userpci leaves scavenges parallel; after useSerialScavenge() each runs as one task', { timeout: 120_000 }, () => {
  // A few MiB kept alive across scavenges, so V8 grows the young generation to where it
  // scavenges with several tasks.
  const script = `
    const { useSerialScavenge } = require(${JSON.stringify(INDEX)});
    const ring = new Array(32768).fill(null);
    let at = 0;
    const churn = (n) => { for (let i = 0; i < n; i++) { ring[at] = [at, i, 0, 0, 0, 0, 0, 0]; at = (at + 1) & 32767; } };
    churn(2e7);
    console.log('SERIAL');
    useSerialScavenge();
    churn(5e6);`;
  const out = execFileSync(process.execPath, ['--trace-gc', '--trace-parallel-scavenge', '-e', script], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const split = out.indexOf('SERIAL');
  assert.ok(split > 0, 'the script ran to the call');
  const before = tasksPerScavenge(out.slice(0, split));
  const after = tasksPerScavenge(out.slice(split));
  assert.ok(before.some((n) => n > 1), `tasks per scavenge before the call: ${before.join(',')}`);
  assert.ok(after.length >= 10, `scavenges after the call: ${after.length}`);
  assert.deepEqual(after.filter((n) => n !== 1), []);
});
