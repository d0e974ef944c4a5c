/**
 * The host side every guest benchmark (bench:vfio, bench:irq, bench:nvme, bench:net, bench:blk) shares: its
 * C baseline built statically for the guest, one guest boot running the benchmark's guest half,
 * the guest's BENCH_JSON line, and a main that kills the guest on Ctrl-C.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runInGuest, GuestRunError, type InGuestOptions } from '../scripts/guest/index';
import { installSignalHandlers } from '../scripts/guest/suites';

const REPO = path.resolve(__dirname, '../..');
const BENCH_JSON = 'BENCH_JSON ';

/** The value of a `--name value` option, if given. */
export function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

/**
 * Builds a C source of the checkout (cc -static -O2: the guest has no libc of ours) into .cache,
 * again only when the source is newer; returns the binary's path relative to the checkout, which
 * is the guest's working directory.
 */
export function buildStatic(source: string): string {
  const src = path.join(REPO, source);
  const out = path.join(REPO, '.cache', source.replace(/\.c$/, ''));
  fs.mkdirSync(path.dirname(out), { recursive: true });
  if (!fs.existsSync(out) || fs.statSync(out).mtimeMs < fs.statSync(src).mtimeMs) {
    execFileSync('cc', ['-static', '-O2', '-Wall', '-o', out, src], { stdio: 'inherit' });
  }
  return path.relative(REPO, out);
}

/**
 * Boots one guest and runs `opts.command` there; the guest console goes to stderr with --verbose.
 * Returns what the command printed, or undefined (having said why on stderr) when the guest or
 * the command failed.
 */
export async function bootBench(name: string, opts: InGuestOptions): Promise<string | undefined> {
  const verbose = process.argv.includes('--verbose');
  try {
    const r = await runInGuest({
      onConsole: (l) => {
        if (verbose) process.stderr.write(`${l}\n`);
      },
      ...opts,
    });
    if (r.exitCode === 0) return r.stdout;
    process.stderr.write(`${r.stdout}\nbench:${name}: the guest side failed (exit ${r.exitCode}):\n${r.consoleTail.join('\n')}\n`);
  } catch (e) {
    if (!(e instanceof GuestRunError)) throw e;
    process.stderr.write(`${e.message}\n`);
  }
  return undefined;
}

/**
 * bootBench for a guest half that ends with a `BENCH_JSON {...}` line: echoes every other line
 * and returns that object (undefined, having said why, when there is none).
 */
export async function runGuestBench<T>(name: string, opts: InGuestOptions): Promise<T | undefined> {
  const stdout = await bootBench(name, opts);
  if (stdout === undefined) return undefined;
  const lines = stdout.split('\n');
  const json = lines.find((l) => l.startsWith(BENCH_JSON));
  if (!json) {
    process.stderr.write(`${stdout}\nbench:${name}: no BENCH_JSON line from the guest\n`);
    return undefined;
  }
  for (const l of lines) if (l && !l.startsWith(BENCH_JSON)) console.log(l);
  return JSON.parse(json.slice(BENCH_JSON.length)) as T;
}

/** Runs a benchmark's main: its result is the exit code; SIGINT/SIGTERM kill the guest first. */
export function benchMain(main: () => Promise<number>): void {
  installSignalHandlers();
  main().then(
    (code) => (process.exitCode = code),
    (e: Error) => {
      console.error(e.stack ?? e.message);
      process.exitCode = 1;
    },
  );
}
