/**
 * stopSignal(): a long-running command installs it before it says it is ready, so a signal sent
 * the moment "serving" is read stops the command (exit 0) instead of killing it.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';

const MODULE = path.resolve(__dirname, '../../src/cli/stop-signal.js');

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  test(`stopSignal resolves with ${signal}, and the process goes on to exit by itself`, () => {
    const script = `
      const { stopSignal } = require(${JSON.stringify(MODULE)});
      stopSignal().then((s) => {
        console.log('stopped by ' + s + '; listeners left ' + (process.listenerCount('SIGINT') + process.listenerCount('SIGTERM')));
        process.exitCode = 0;
      });
      process.kill(process.pid, ${JSON.stringify(signal)});
      setTimeout(() => {}, 200);`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.signal, null, `not killed by the signal: ${r.stderr}`);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), `stopped by ${signal}; listeners left 0`);
  });
}
