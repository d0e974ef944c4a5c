// The guest harness's library API: run compiled test files in a guest, or any command.
//
//   runGuestTests(run)              boot with run.qemuDevices, `node --test` run.tests, report
//   runInGuest({ devices, command }) boot, run a shell command, hand back its stdout
//
// Both boot a fresh guest per call (about 7 s under TCG), so group many test files per run.

import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { GuestAssets, GuestKernel } from './assets';
import { bootGuest, BootResult } from './vm';
import { repoRoot, shQuote } from './util';

export { ensureGuestAssets, GuestAssets, GuestKernel, GUEST_KERNELS } from './assets';
export { bootGuest, BootOptions, BootResult, scratchPath, killAllGuests, guestsAvailable } from './vm';

/** One guest boot in the suites table. */
export interface GuestRun {
  name: string;
  /** QEMU arguments adding the devices under test, e.g. ['-device', 'edu']. */
  qemuDevices: string[];
  /** Compiled test files (or folders), relative to the checkout: 'dist/test/guest/edu.test.js'. */
  tests: string[];
  /** For the whole boot, tests included. */
  timeoutMs: number;
  /** Host-side preparation before the boot (e.g. create a backing file for a drive). */
  setup?: () => Promise<void>;
  /** Extra environment for the tests in the guest. */
  env?: Record<string, string>;
  /** Which kernel the guest boots; default 'default' (Debian 12's own). */
  kernel?: GuestKernel;
  memoryMiB?: number;
  /** RLIMIT_MEMLOCK (KiB) for the tests; default: the guest kernel's default (8 MiB). */
  memlockKiB?: number | 'unlimited';
}

export interface TestCounts {
  tests: number;
  pass: number;
  fail: number;
  cancelled: number;
  skipped: number;
  todo: number;
}

export interface GuestTestResult {
  name: string;
  ok: boolean;
  /** Why it failed, when it did: a failing test, a timeout, a panic, a guest that never reported. */
  failure?: string;
  exitCode: number | null;
  counts: TestCounts | null;
  bootMs: number | null;
  totalMs: number;
  consoleLog: string;
  consoleTail: string[];
}

export interface OutputOptions {
  /** Where guest console lines go; default: this process's stdout. */
  onConsole?: (line: string) => void;
  assets?: GuestAssets;
}

function defaultColorEnv(): Record<string, string> {
  // The guest's console is a tty, so node would colour its output; only let it when ours is one too.
  return process.stdout.isTTY ? { FORCE_COLOR: '1' } : { NO_COLOR: '1', NODE_DISABLE_COLORS: '1' };
}

/** Reads the summary comments node's TAP reporter ends with (`# pass 3` etc). */
export function parseTapCounts(tap: string): TestCounts | null {
  const get = (k: string) => {
    const m = new RegExp(`^# ${k} (\\d+)$`, 'm').exec(tap);
    return m ? Number(m[1]) : null;
  };
  const tests = get('tests');
  if (tests === null) return null;
  return {
    tests, pass: get('pass') ?? 0, fail: get('fail') ?? 0, cancelled: get('cancelled') ?? 0,
    skipped: get('skipped') ?? 0, todo: get('todo') ?? 0,
  };
}

/**
 * A background job for the guest: after `seconds`, print where each node process waits (its
 * kernel wait channel and stack, for a system call that never returns) and ask each for a
 * diagnostic report (SIGUSR2 under --report-on-signal: the JavaScript stack, for a promise
 * that never settles: its stack and libuv handles), then print them. A process blocked in a
 * synchronous call (spawnSync, execFileSync) writes its report only once the call returns; its
 * kernel stack and the child it waits for say where it is. A run that finishes first ends the
 * guest and this job with it.
 */
function hangReport(seconds: number): string {
  return `(sleep ${seconds}; echo "userpci-guest: ${seconds} s into the job: where the node processes wait";` +
    ' for d in /proc/[0-9]*; do [ "$(cat $d/comm 2>/dev/null)" = node ] || continue;' +
    ' echo "--- pid ${d#/proc/}: $(tr "\\0" " " < $d/cmdline | cut -c1-200)";' +
    ' echo "wchan: $(cat $d/wchan)"; cat $d/stack;' +
    // Only node processes whose NODE_OPTIONS asks for a report on a signal (node --test, its
    // file processes, which carry no --test on their command line, and what they started with
    // that environment): any other would die of SIGUSR2.
    ' grep -qz "^NODE_OPTIONS=.*--report-on-signal" $d/environ && kill -USR2 ${d#/proc/}; done; sleep 20;' +
    ' for f in $(ls /tmp/report.*.json 2>/dev/null); do echo "--- $f"; grep -A8 javascriptStack $f;' +
    ' grep -A2000 \'"libuv"\' $f | grep -E \'"(type|fd|remainingTime|is_referenced)"\'; done) &';
}

/** Boots one guest with the run's devices and runs its test files there with `node --test`. */
export async function runGuestTests(run: GuestRun, opts: OutputOptions = {}): Promise<GuestTestResult> {
  const repo = repoRoot();
  const missing = run.tests.filter((t) => !existsSync(path.resolve(repo, t)));
  if (missing.length > 0) {
    return {
      name: run.name, ok: false, exitCode: null, counts: null, bootMs: null, totalMs: 0, consoleLog: '', consoleTail: [],
      failure: `test files not found (build first: npx tsc -p .): ${missing.join(', ')}`,
    };
  }
  await run.setup?.();
  // One file at a time: test files share the guest's devices. Spec to the console for people,
  // TAP to the results share for the counts. Two minutes before the host's hang guard, a
  // background report says where every node process waits (see hangReport).
  const job = [
    hangReport(Math.max(60, Math.floor(run.timeoutMs / 1000) - 120)),
    'NODE_OPTIONS="--report-on-signal --report-directory=/tmp" node --test --test-concurrency=1',
    '--test-reporter=spec --test-reporter-destination=stdout',
    '--test-reporter=tap --test-reporter-destination=/results/tap.txt',
    ...run.tests.map(shQuote),
    '2>&1',
  ].join(' ');
  const r = await bootGuest({
    job,
    qemuArgs: run.qemuDevices,
    timeoutMs: run.timeoutMs,
    label: run.name,
    memoryMiB: run.memoryMiB,
    memlockKiB: run.memlockKiB,
    env: { ...defaultColorEnv(), ...run.env },
    onConsole: opts.onConsole ?? ((l) => process.stdout.write(l + '\n')),
    kernel: run.kernel,
    assets: opts.assets,
  });
  const tap = r.files.get('tap.txt')?.toString();
  const counts = tap ? parseTapCounts(tap) : null;
  let failure = r.failure;
  if (!failure && r.exitCode !== 0) {
    failure = counts && counts.fail > 0 ? `${counts.fail} test(s) failed` : `node --test exited ${r.exitCode}`;
  }
  if (!failure && counts && counts.tests === 0) failure = 'no tests ran';
  return {
    name: run.name, ok: !failure, failure, exitCode: r.exitCode, counts, bootMs: r.bootMs, totalMs: r.totalMs,
    consoleLog: r.consoleLog, consoleTail: r.consoleTail,
  };
}

export interface InGuestOptions {
  /** QEMU arguments adding devices, e.g. ['-device', 'edu']. */
  devices?: string[];
  /** Shell command (busybox ash) run as root with the checkout as cwd. */
  command: string;
  /** Default 10 minutes. */
  timeoutMs?: number;
  env?: Record<string, string>;
  /** Which kernel the guest boots; default: the assets' line, else 'default'. */
  kernel?: GuestKernel;
  memoryMiB?: number;
  memlockKiB?: number | 'unlimited';
  /** More kernel command-line arguments. */
  kernelArgs?: string[];
  /** Console lines (the command's stderr, kernel messages); default: this process's stderr. */
  onConsole?: (line: string) => void;
  assets?: GuestAssets;
}

export interface InGuestResult {
  /** What the command wrote to its stdout. */
  stdout: string;
  exitCode: number;
  bootMs: number | null;
  totalMs: number;
  consoleTail: string[];
}

export class GuestRunError extends Error {
  constructor(message: string, readonly result: BootResult) {
    super(`${message}\n--- last console lines (${result.consoleLog}) ---\n${result.consoleTail.join('\n')}`);
    this.name = 'GuestRunError';
  }
}

/**
 * Runs one command in a fresh guest and returns its stdout and exit status. A non-zero exit is
 * returned, not thrown; a guest that times out, panics or never reports throws GuestRunError.
 */
export async function runInGuest(opts: InGuestOptions): Promise<InGuestResult> {
  const r = await bootGuest({
    job: `( ${opts.command}\n) > /results/stdout`,
    qemuArgs: opts.devices ?? [],
    timeoutMs: opts.timeoutMs ?? 10 * 60_000,
    label: 'in-guest',
    memoryMiB: opts.memoryMiB,
    memlockKiB: opts.memlockKiB,
    kernelArgs: opts.kernelArgs,
    env: { NO_COLOR: '1', ...opts.env },
    onConsole: opts.onConsole ?? ((l) => process.stderr.write(l + '\n')),
    kernel: opts.kernel ?? opts.assets?.line,
    assets: opts.assets,
  });
  if (r.failure || r.exitCode === null) throw new GuestRunError(r.failure ?? 'guest failed', r);
  return {
    stdout: r.files.get('stdout')?.toString() ?? '',
    exitCode: r.exitCode,
    bootMs: r.bootMs,
    totalMs: r.totalMs,
    consoleTail: r.consoleTail,
  };
}
