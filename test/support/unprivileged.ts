/**
 * Run code as an unprivileged user from a copy of the package that user can read.
 *
 * Tests that drop privileges (to `nobody`, with setpriv) cannot load the package from the
 * checkout when it sits in a private folder (`mktemp -d` makes 0700, and CI clones there), so
 * the files a child needs at run time are staged once per test process in a world-readable
 * temporary folder and removed at exit. Without root the child already runs unprivileged and
 * the same copy is used, so both paths load the same files.
 */
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The package root: test/support/unprivileged.ts compiles to dist/test/support/unprivileged.js. */
const REPO = join(__dirname, '..', '..', '..');

/** What the CLI and library load at run time (no runtime dependencies live in node_modules). */
const RUNTIME_FILES = ['package.json', 'bin', join('dist', 'src'), join('build', 'Release', 'userpci_native.node')];

const NOBODY = 65534;
let staged: string | undefined;

export const runningAsRoot = process.getuid?.() === 0;

/** A world-readable copy of the package's run-time files; made on first use. */
export function unprivilegedPackageRoot(): string {
  if (staged) return staged;
  const root = copyRuntimeFiles('userpci-unprivileged-');
  chmodTree(root);
  staged = root;
  return root;
}

/** A fresh temporary copy of what the package needs at run time; removed when the test process exits. */
export function copyRuntimeFiles(prefix: string): string {
  const root = mkdtempSync(join(tmpdir(), prefix));
  process.on('exit', () => rmSync(root, { recursive: true, force: true }));
  for (const file of RUNTIME_FILES) {
    const from = join(REPO, file);
    if (!existsSync(from)) throw new Error(`cannot copy ${from}: build the package first (npm ci)`);
    cpSync(from, join(root, file), { recursive: true });
  }
  return root;
}

/** Path of a staged file, e.g. `dist/src/dma/dma-memory.js`. */
export function stagedPath(relative: string): string {
  return join(unprivilegedPackageRoot(), relative);
}

export interface UnprivilegedOptions {
  /** RLIMIT_MEMLOCK for the child, in KiB (`ulimit -l`). */
  memlockKiB?: number;
  /** RLIMIT_RTPRIO for the child (`ulimit -r`): the highest real-time priority it may take without CAP_SYS_NICE. */
  rtprio?: number;
  env?: NodeJS.ProcessEnv;
}

/** Run `node ...args` as nobody (from root) or as ourselves (already unprivileged). */
export function runNodeUnprivileged(args: string[], options: UnprivilegedOptions = {}): SpawnSyncReturns<string> {
  unprivilegedPackageRoot();
  if (runningAsRoot && !existsSync('/usr/bin/setpriv')) throw new Error('setpriv (util-linux) is needed to run a test unprivileged as root');
  const drop = runningAsRoot ? ['/usr/bin/setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups'] : [];
  const limit = (options.memlockKiB === undefined ? '' : `ulimit -l ${options.memlockKiB} && `) + (options.rtprio === undefined ? '' : `ulimit -r ${options.rtprio} && `);
  // The shell sets the limits (setpriv has no option for it), then execs the rest unchanged.
  return spawnSync('sh', ['-c', `${limit}exec "$@"`, 'sh', ...drop, process.execPath, ...args], {
    encoding: 'utf8',
    env: options.env ?? process.env,
    cwd: tmpdir(),
  });
}

function chmodTree(path: string): void {
  chmodSync(path, 0o755);
  for (const entry of readdirSync(path)) {
    const child = join(path, entry);
    if (statSync(child).isDirectory()) chmodTree(child);
    else chmodSync(child, 0o644 | (statSync(child).mode & 0o111 ? 0o111 : 0));
  }
}
