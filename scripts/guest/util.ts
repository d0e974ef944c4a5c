// Small helpers shared by the guest harness: running host commands, locating the checkout.

import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as path from 'node:path';

/** The checkout's root: the nearest directory above this file holding package.json. */
export function repoRoot(): string {
  // Compiled code lives in dist/scripts/guest, sources in scripts/guest; walk up either way.
  let dir = __dirname;
  for (;;) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'scripts'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`guest harness: no package.json above ${__dirname}`);
    dir = up;
  }
}

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number;
}

/** Runs a host command without a shell; never throws for a non-zero exit (callers decide). */
export function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd: opts.cwd, env: opts.env, maxBuffer: 64 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err && typeof (err as NodeJS.ErrnoException).code === 'string') {
        // Spawn failure (ENOENT etc.), not an exit status.
        reject(new Error(`${cmd}: ${err.message}`));
        return;
      }
      const code = err ? ((err as { code?: number }).code ?? 1) : 0;
      resolve({ stdout, stderr, code });
    });
  });
}

/** Like run(), but a non-zero exit is an error carrying the command's stderr. */
export async function runOk(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
  }
  return r.stdout;
}

/** Quotes a string for a POSIX shell (the guest's busybox ash). */
export function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

export function fmtMs(ms: number): string {
  return ms >= 10_000 ? `${(ms / 1000).toFixed(0)} s` : `${(ms / 1000).toFixed(1)} s`;
}
