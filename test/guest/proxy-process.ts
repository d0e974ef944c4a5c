/**
 * `userpci proxy` as a child process for the guest suites: started once it says it is listening,
 * stopped with SIGTERM and expected to exit cleanly.
 */
import * as assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import * as path from 'node:path';

const CLI = path.resolve(__dirname, '../../../bin/userpci.js');

export async function startProxy(address: string, socket: string, trace?: string): Promise<ChildProcess> {
  const proc = spawn(process.execPath, [CLI, 'proxy', address, '--socket', socket, ...(trace ? ['--trace', trace] : [])], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  await new Promise<void>((resolve, reject) => {
    proc.stderr!.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      if (stderr.includes('listening')) resolve();
    });
    proc.on('exit', (code) => reject(new Error(`userpci proxy ${address} exited (${code}) before listening: ${stderr}`)));
  });
  return proc;
}

/** SIGTERM, then exit status 0; a proxy already gone (or never started) is left as it is. */
export async function stopProxy(proc: ChildProcess | undefined): Promise<void> {
  if (!proc || proc.exitCode !== null) return;
  const exited = once(proc, 'exit');
  proc.kill('SIGTERM');
  const [code] = await exited;
  assert.equal(code, 0, 'the proxy exits cleanly');
}
