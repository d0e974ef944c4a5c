/**
 * `userpci nvme ublk` as a child process for the guest suites: its output collected, started
 * once it says it serves (the disk then exists), stopped with SIGTERM and expected to exit 0.
 */
import * as assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const CLI = path.resolve(__dirname, '../../src/cli/commands/nvme.js');
export const DISK = '/dev/ublkb0';

export interface UblkProcess {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

export function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
}

/** Resolves when `check` holds after some output arrived or the process exited; rejects after ms (hang guard). */
export function waitOutput(s: UblkProcess, check: () => boolean, what: string, ms = 120_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new Error(`${what}: not seen in ${ms} ms; stdout ${s.stdout()} stderr ${s.stderr()}`)), ms);
    const onData = () => check() && done(null);
    const onExit = () => done(check() ? null : new Error(`${what}: server exited ${s.child.exitCode}: ${s.stderr()}`));
    const done = (e: Error | null) => {
      clearTimeout(timer);
      s.child.stdout!.off('data', onData);
      s.child.off('exit', onExit);
      if (e) reject(e);
      else resolve();
    };
    s.child.stdout!.on('data', onData);
    s.child.once('exit', onExit);
    onData();
  });
}

/** `userpci nvme ublk ARGS...`, not waited for. */
export function launchUblk(args: string[]): UblkProcess {
  const child = spawn(process.execPath, [CLI, 'ublk', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (c, signal) => {
    if (signal) err += `(ended by ${signal})`;
    r(c);
  }));
  return { child, stdout: () => out, stderr: () => err, exited };
}

/** `userpci nvme ublk ARGS...` once it serves. */
export async function startUblk(args: string[]): Promise<UblkProcess> {
  const s = launchUblk(args);
  await waitOutput(s, () => s.stdout().includes('ublk: serving'), 'ublk server start');
  assert.ok(fs.existsSync(DISK), `${DISK} exists once the server says it serves`);
  return s;
}

/** SIGTERM, exit status 0; what it printed. */
export async function stopUblk(s: UblkProcess): Promise<string> {
  s.child.kill('SIGTERM');
  assert.equal(await s.exited, 0, `server exit status; stderr: ${s.stderr()}`);
  return s.stdout();
}

/**
 * Removes PCI function `address` (from a child: the write blocks until vfio-pci has the device
 * back) under a serving `s`: the server ends by itself with status 0, the removal completes, the
 * disk and its ublk device are gone; then a rescan brings the function back.
 */
export async function removeUnderServer(s: UblkProcess, address: string, removedWhat = 'the removal completed'): Promise<void> {
  const sys = path.join('/sys/bus/pci/devices', address);
  const remover = spawn('sh', ['-c', `echo 1 > ${path.join(sys, 'remove')}`], { stdio: 'ignore' });
  const removed = new Promise<number | null>((r) => remover.once('exit', (c) => r(c)));
  const hang = new Promise<string>((r) => setTimeout(() => r('hang'), 180_000).unref());
  const first = await Promise.race([s.exited.then(() => 'server exited'), hang]);
  assert.equal(first, 'server exited', `server still running after the removal; stdout ${s.stdout()} stderr ${s.stderr()}`);
  assert.equal(await removed, 0, removedWhat);
  assert.equal(await s.exited, 0, `exit status after removal; stderr ${s.stderr()}`);
  assert.match(s.stdout(), /ublk: device removed: \/dev\/ublkb0 deleted/);
  assert.ok(!fs.existsSync('/dev/ublkc0'));
  fs.writeFileSync('/sys/bus/pci/rescan', '1');
  assert.ok(fs.existsSync(sys), 'the function is back after a rescan');
}
