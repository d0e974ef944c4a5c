/**
 * The package as a user gets it: `npm pack` of this checkout, installed into a copy of
 * examples/edu-driver (the README's driver snippet as a project of its own) with no network,
 * type-checked with --strict, then run against `userpci serve edu` over vfio-user.
 *
 * Offline: the example's typescript and @types/node come from the npm cache that the root's
 * `npm ci` filled, at the versions the root's package-lock.json pins (a lock derived from it is
 * written into the copy); the addon builds from source at install as it would for a user.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';

const REPO = resolve(__dirname, '..', '..', '..');
const EXAMPLE = join(REPO, 'examples', 'edu-driver');

const work = mkdtempSync(join(tmpdir(), 'userpci-package-'));
const project = join(work, 'edu-driver');
let tarball = '';
let packedFiles: string[] = [];

function npm(args: string[], cwd: string): string {
  const result = spawnSync('npm', [...args, '--no-audit', '--no-fund', '--loglevel=error'], { cwd, encoding: 'utf8' });
  if (result.status !== 0) assert.fail(`npm ${args.join(' ')} failed (${result.status}):\n${result.stdout}\n${result.stderr}`);
  return result.stdout;
}

/** The lock the example would have: its devDependencies as the root's lock pins them. */
function lockFromRoot(manifest: { name: string; dependencies?: object; devDependencies?: Record<string, string> }): object {
  const rootLock = JSON.parse(readFileSync(join(REPO, 'package-lock.json'), 'utf8')) as { packages: Record<string, unknown> };
  const packages: Record<string, unknown> = {
    '': { name: manifest.name, dependencies: manifest.dependencies, devDependencies: manifest.devDependencies },
  };
  for (const [key, entry] of Object.entries(rootLock.packages)) if (key !== '') packages[key] = entry;
  return { name: manifest.name, lockfileVersion: 3, requires: true, packages };
}

before(() => {
  // --ignore-scripts: dist/ is already built by `npm test`; rebuilding it here would race the
  // other test files reading it.
  const packed = JSON.parse(npm(['pack', '--ignore-scripts', '--json', '--pack-destination', work], REPO)) as {
    filename: string;
    files: { path: string }[];
  }[];
  tarball = join(work, packed[0]!.filename);
  packedFiles = packed[0]!.files.map((file) => file.path);
  cpSync(EXAMPLE, project, { recursive: true, filter: (path) => !/[\\/](node_modules|dist)$/.test(path) });
  const manifest = JSON.parse(readFileSync(join(project, 'package.json'), 'utf8'));
  writeFileSync(join(project, 'package-lock.json'), JSON.stringify(lockFromRoot(manifest), null, 2));
  npm(['install', '--offline', tarball], project);
});

after(() => rmSync(work, { recursive: true, force: true }));

describe('the packed package', () => {
  it('ships a LICENSE matching "license", repository and keywords, the bin, the sources its source maps name, and no tests', () => {
    const manifest = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { license: string; repository?: { url?: string }; keywords?: string[] };
    assert.equal(manifest.license, 'MIT');
    assert.match(manifest.repository?.url ?? '', /userpci/, 'repository names the project');
    assert.ok((manifest.keywords ?? []).includes('vfio'), 'keywords say what it is');
    assert.ok(packedFiles.includes('LICENSE'));
    assert.match(readFileSync(join(REPO, 'LICENSE'), 'utf8'), /^MIT License\n/);
    assert.ok(packedFiles.includes('bin/userpci.js'));
    assert.ok(!packedFiles.some((file) => file.startsWith('dist/test/') || file.startsWith('test/')), 'tests stay out');
    const maps = packedFiles.filter((file) => file.endsWith('.map'));
    assert.ok(maps.length > 0);
    const installed = join(project, 'node_modules', 'userpci');
    const missing: string[] = [];
    for (const map of maps) {
      const { sources } = JSON.parse(readFileSync(join(installed, map), 'utf8')) as { sources: string[] };
      for (const source of sources) {
        const target = resolve(join(installed, map, '..'), source);
        if (!existsSync(target)) missing.push(`${map} -> ${source}`);
      }
    }
    assert.deepEqual(missing, [], 'every source a map names is in the package');
  });

  it('is reachable through require(), import and the exports map, and its bin runs', () => {
    const cjs = execFileSync(process.execPath, ['-e', "const u = require('userpci'); console.log(typeof u.openDevice, typeof u.findPciDevices)"], {
      cwd: project,
      encoding: 'utf8',
    });
    assert.equal(cjs.trim(), 'function function');
    const esm = execFileSync(
      process.execPath,
      ['--input-type=module', '-e', "import { openDevice, NvmeStatusError } from 'userpci'; console.log(typeof openDevice, typeof NvmeStatusError)"],
      { cwd: project, encoding: 'utf8' },
    );
    assert.equal(esm.trim(), 'function function');
    const deep = spawnSync(process.execPath, ['-e', "require('userpci/dist/src/errors.js')"], { cwd: project, encoding: 'utf8' });
    assert.notEqual(deep.status, 0, 'internals are not part of the interface');
    assert.match(deep.stderr, /ERR_PACKAGE_PATH_NOT_EXPORTED/);
    const version = execFileSync(join(project, 'node_modules', '.bin', 'userpci'), ['--version'], { encoding: 'utf8' });
    assert.match(version, /^userpci \d+\.\d+\.\d+/);
  });

  it('publishes declarations without @internal members', () => {
    const dts = packedFiles.filter((file) => file.endsWith('.d.ts'));
    const leaking = dts.filter((file) => readFileSync(join(project, 'node_modules', 'userpci', file), 'utf8').includes('@internal'));
    assert.deepEqual(leaking, []);
  });
});

describe('examples/edu-driver against the packed package', () => {
  let server: ChildProcess | undefined;
  const socket = join(work, 'edu.sock');

  before(async () => {
    // The server is the installed package's CLI, as the README's quick start runs it
    // (`npx userpci serve edu --socket ...`), in a process of its own.
    server = spawn(join(project, 'node_modules', '.bin', 'userpci'), ['serve', 'edu', '--socket', socket], { stdio: ['ignore', 'ignore', 'pipe'] });
    await new Promise<void>((resolve, reject) => {
      let stderr = '';
      server!.stderr!.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
        if (stderr.includes('listening')) resolve();
      });
      server!.once('exit', (code) => reject(new Error(`userpci serve exited (${code}): ${stderr}`)));
    });
  });

  after(() => {
    server?.kill('SIGTERM');
  });

  it('holds the README snippet verbatim', () => {
    const readme = readFileSync(join(REPO, 'README.md'), 'utf8');
    const snippet = /```ts\n([\s\S]*?)```/.exec(readme)?.[1];
    assert.ok(snippet, 'the README has a TypeScript snippet');
    assert.equal(readFileSync(join(EXAMPLE, 'src', 'main.ts'), 'utf8'), snippet);
  });

  it('type-checks with --strict', () => {
    const tsc = join(project, 'node_modules', 'typescript', 'bin', 'tsc');
    const result = spawnSync(process.execPath, [tsc, '-p', '.', '--strict'], { cwd: project, encoding: 'utf8' });
    assert.equal(result.status, 0, `tsc --strict failed:\n${result.stdout}${result.stderr}`);
  });

  it("the quick start's commands for the emulated device run from the installed package", { timeout: 120_000 }, () => {
    const bin = join(project, 'node_modules', '.bin', 'userpci');
    // `npx userpci demo --socket /tmp/edu.sock --json`: every step passes against the served device.
    const demo = spawnSync(bin, ['demo', '--socket', socket, '--json'], { cwd: project, encoding: 'utf8', timeout: 100_000 });
    assert.equal(demo.status, 0, `userpci demo failed (${demo.status ?? demo.signal}):\n${demo.stdout}${demo.stderr}`);
    const report = JSON.parse(demo.stdout) as { ok: boolean; steps: { name: string; ok: boolean }[] };
    assert.equal(report.ok, true);
    assert.deepEqual(report.steps.filter((step) => !step.ok).map((step) => step.name), []);
    assert.ok(report.steps.some((step) => step.name === 'msi'), 'the demo took an MSI');
    // `npx userpci list`: whatever this machine has, the listing runs and is lspci-like.
    const list = spawnSync(bin, ['list', '--json'], { cwd: project, encoding: 'utf8' });
    assert.equal(list.status, 0, `userpci list failed:\n${list.stdout}${list.stderr}`);
    assert.ok(Array.isArray(JSON.parse(list.stdout)), 'list --json is an array');
  });

  it('runs against `userpci serve edu`', { timeout: 120_000 }, () => {
    const result = spawnSync(process.execPath, ['dist/main.js', socket], { cwd: project, encoding: 'utf8', timeout: 100_000 });
    assert.equal(result.status, 0, `the example failed (${result.status ?? result.signal}):\n${result.stdout}${result.stderr}`);
    const [identification, segments] = result.stdout.split('\n');
    assert.equal(identification, '10000ed', 'the edu identification register');
    assert.match(segments!, /^\[ \{ iova: \d+, length: 10000 \} \]$/);
  });
});
