/**
 * A broken install fails in one line: the CLI without its build, with its addon missing or not
 * loadable. Each case runs a copy of the built package with one piece taken away.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { copyRuntimeFiles } from '../support/unprivileged';

const ADDON = join('build', 'Release', 'userpci_native.node');

function runCli(root: string, args: string[]) {
  return spawnSync(process.execPath, [join(root, 'bin', 'userpci.js'), ...args], { encoding: 'utf8' });
}

function assertOneLineFailure(result: ReturnType<typeof runCli>, pattern: RegExp): void {
  assert.equal(result.status, 1, result.stderr);
  assert.equal(result.stdout, '');
  const lines = result.stderr.split('\n').filter((line) => line !== '');
  assert.equal(lines.length, 1, `one line on stderr, got:\n${result.stderr}`);
  assert.match(lines[0]!, pattern);
}

test('an intact copy runs (the cases below fail for the reason they name)', () => {
  const result = runCli(copyRuntimeFiles('userpci-cli-'), ['--version']);
  assert.equal(result.status, 0, result.stderr);
  assert.match(result.stdout, /^userpci \d+\.\d+\.\d+\n$/);
});

test('addon missing: one line naming the file and what to run', () => {
  const root = copyRuntimeFiles('userpci-cli-');
  rmSync(join(root, ADDON));
  assertOneLineFailure(runCli(root, ['list']), /^userpci: cannot load the native addon at .*userpci_native\.node \(it was not built\); run `npm ci`/);
});

test('addon not loadable: one line with the loader\'s reason', () => {
  const root = copyRuntimeFiles('userpci-cli-');
  writeFileSync(join(root, ADDON), 'not an ELF object');
  assertOneLineFailure(runCli(root, ['info', '0000:00:00.0']), /^userpci: cannot load the native addon at .*\(.*(too short|invalid ELF header).*\); run `npm ci`/);
});

test('package not built: one line saying so', () => {
  const root = copyRuntimeFiles('userpci-cli-');
  rmSync(join(root, 'dist'), { recursive: true });
  assertOneLineFailure(runCli(root, ['demo']), /^userpci: the package is not built \(dist\/ is missing\): run `npm ci`/);
});
