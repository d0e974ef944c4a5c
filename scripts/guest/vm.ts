// Boots one guest under QEMU (TCG, emulated Intel IOMMU), runs a job script in it, and collects
// what the job left in the writable results share.
//
// The guest's serial console is QEMU's stdout: it is streamed line by line to the caller and
// kept whole in a log file. The guest reports its job's exit code through the results share;
// a guest that powers off without one, panics, or outlives its timeout is a failed run.

import { spawn, ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { ensureGuestAssets, guestCacheDir, GuestAssets, GuestKernel } from './assets';
import { P9_OPTS } from './init-script';
import { repoRoot, shQuote } from './util';

export interface BootOptions {
  /** Shell script (busybox ash) run as root in the guest, with the checkout as cwd. */
  job: string;
  /** QEMU arguments for the devices under test, e.g. ['-device', 'edu']. */
  qemuArgs?: string[];
  timeoutMs: number;
  /** Names the console log file (.cache/guest/logs/<label>.console.log). */
  label?: string;
  memoryMiB?: number;
  cpus?: number;
  /** Extra environment for the job. */
  env?: Record<string, string>;
  /** RLIMIT_MEMLOCK for the job (`ulimit -l`, KiB); default: the kernel's own default. */
  memlockKiB?: number | 'unlimited';
  /** More kernel command-line arguments (e.g. bench:net --tsc: 'tsc=reliable'). */
  kernelArgs?: string[];
  /** Each console line as it arrives (kernel messages and the job's terminal output). */
  onConsole?: (line: string) => void;
  /** Which kernel the guest boots; default 'default'. Given assets must be of this line. */
  kernel?: GuestKernel;
  /** Default: ensureGuestAssets for `kernel`. */
  assets?: GuestAssets;
}

export interface BootResult {
  /** The job's exit code; null when the guest never reported one. */
  exitCode: number | null;
  timedOut: boolean;
  panicked: boolean;
  /** Set when the run failed for a reason other than the job's own exit code. */
  failure?: string;
  /** Host ms from spawning QEMU until init started the job; null if it never did. */
  bootMs: number | null;
  totalMs: number;
  /** Files the job left in /results, by name (job.sh excluded). */
  files: Map<string, Buffer>;
  consoleLog: string;
  /** The last lines of the console, for failure reports. */
  consoleTail: string[];
}

const TAIL_LINES = 60;
const running = new Set<ChildProcess>();

/** Kills every QEMU this process started (for signal handlers in the CLIs). */
export function killAllGuests(): void {
  for (const c of running) c.kill('SIGKILL');
}

function jobScript(repo: string, env: Record<string, string>, memlock: number | 'unlimited' | undefined, body: string): string {
  const exports = Object.entries(env)
    .map(([k, v]) => {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`bad environment variable name: ${k}`);
      return `export ${k}=${shQuote(v)}`;
    })
    .join('\n');
  return `# Written by the host for one guest run (scripts/guest/vm.ts).
report() { echo "$1" > /results/exit-code.tmp && mv /results/exit-code.tmp /results/exit-code; }
mkdir -p ${shQuote(repo)}
if ! mount -t 9p -o ${P9_OPTS},cache=loose,ro repo ${shQuote(repo)}; then
  echo "userpci-guest: cannot mount the checkout"; report 125; exit
fi
cd ${shQuote(repo)}
export HOME=/root USERPCI_GUEST=1 USERPCI_REPO=${shQuote(repo)} USERPCI_RESULTS=/results
# RLIMIT_MEMLOCK stays at the kernel default unless the run asks otherwise; root has
# CAP_IPC_LOCK, so VFIO's pinning is not charged against it. Tests can read it here.
${memlock === undefined ? '' : `ulimit -l ${memlock}`}
export USERPCI_GUEST_MEMLOCK="$(ulimit -l)"
${exports}
(
${body}
)
report $?
`;
}

/** Boots a guest for one job; never throws for the guest's failures, only for the host's. */
export async function bootGuest(opts: BootOptions): Promise<BootResult> {
  const kernel = opts.kernel ?? 'default';
  if (opts.assets && opts.assets.line !== kernel) throw new Error(`guest harness: assets of kernel ${opts.assets.line} given for a ${kernel} boot`);
  const assets = opts.assets ?? (await ensureGuestAssets({ kernel }));
  const repo = repoRoot();
  if (opts.memlockKiB !== undefined && opts.memlockKiB !== 'unlimited' && !Number.isInteger(opts.memlockKiB)) {
    throw new Error(`memlockKiB must be an integer or 'unlimited'`);
  }
  if (/\s|,/.test(repo)) throw new Error(`guest harness: checkout path must not contain spaces or commas: ${repo}`);
  const results = await fsp.mkdtemp(path.join(os.tmpdir(), 'userpci-guest-'));
  const logDir = path.join(guestCacheDir(), 'logs');
  await fsp.mkdir(logDir, { recursive: true });
  const label = (opts.label ?? 'run').replace(/[^A-Za-z0-9_.-]/g, '_');
  // Written under a private name, renamed when done: parallel runs must not share a file.
  const consoleLog = path.join(logDir, `${label}.console.log`);
  const consoleTmp = path.join(logDir, `${label}.${process.pid}.${Date.now()}.console.log`);
  try {
    await fsp.writeFile(path.join(results, 'job.sh'), jobScript(repo, opts.env ?? {}, opts.memlockKiB, opts.job));
    const args = [
      '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
      '-accel', 'tcg,thread=multi',
      '-machine', 'q35,kernel-irqchip=split',
      '-cpu', 'max',
      '-smp', String(opts.cpus ?? 2),
      '-m', `${opts.memoryMiB ?? 1536}M`,
      // The IOMMU must exist before the devices it translates for.
      '-device', 'intel-iommu,intremap=on,caching-mode=on',
      '-kernel', assets.kernel,
      '-initrd', assets.initramfs,
      // panic=-1 reboots at once on a panic, and -no-reboot turns that into QEMU exiting.
      '-append', ['console=ttyS0 intel_iommu=on panic=-1 quiet loglevel=4 no_timer_check', ...(opts.kernelArgs ?? [])].join(' '),
      '-serial', 'stdio',
      '-fsdev', `local,id=repo,path=${repo},security_model=none,readonly=on`,
      '-device', 'virtio-9p-pci,fsdev=repo,mount_tag=repo',
      '-fsdev', `local,id=results,path=${results},security_model=none`,
      '-device', 'virtio-9p-pci,fsdev=results,mount_tag=results',
      ...(opts.qemuArgs ?? []),
    ];
    const logStream = createWriteStream(consoleTmp);
    logStream.write(`# qemu-system-x86_64 ${args.join(' ')}\n`);
    const tail: string[] = [];
    let panicked = false;
    let bootMs: number | null = null;
    const t0 = Date.now();
    const qemu = spawn('qemu-system-x86_64', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    running.add(qemu);
    let stderr = '';
    qemu.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      logStream.write(d);
    });
    let partial = '';
    const onLine = (raw: string) => {
      const line = raw.replace(/\r/g, '');
      tail.push(line);
      if (tail.length > TAIL_LINES) tail.shift();
      if (bootMs === null && line.startsWith('userpci-guest: job start')) bootMs = Date.now() - t0;
      if (/Kernel panic - not syncing/.test(line)) panicked = true;
      opts.onConsole?.(line);
    };
    // A chunk may end inside a multi-byte character (the spec reporter's ✔).
    const decoder = new StringDecoder('utf8');
    qemu.stdout.on('data', (d: Buffer) => {
      logStream.write(d);
      const text = partial + decoder.write(d);
      const lines = text.split('\n');
      partial = lines.pop()!;
      for (const l of lines) onLine(l);
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      qemu.kill('SIGKILL');
    }, opts.timeoutMs);
    const spawnError = await new Promise<Error | null>((resolve) => {
      qemu.on('error', (e) => resolve(e));
      qemu.on('close', () => resolve(null));
    });
    clearTimeout(timer);
    running.delete(qemu);
    partial += decoder.end();
    if (partial) onLine(partial);
    await new Promise<void>((r) => logStream.end(r));
    await fsp.rename(consoleTmp, consoleLog);
    const totalMs = Date.now() - t0;

    const files = new Map<string, Buffer>();
    for (const name of await fsp.readdir(results)) {
      if (name === 'job.sh') continue;
      const p = path.join(results, name);
      if ((await fsp.stat(p)).isFile()) files.set(name, await fsp.readFile(p));
    }
    const codeText = files.get('exit-code')?.toString().trim();
    const exitCode = codeText !== undefined && /^\d+$/.test(codeText) ? Number(codeText) : null;
    let failure: string | undefined;
    if (spawnError) failure = `cannot start qemu-system-x86_64: ${spawnError.message} (run .ci/install-guest-deps.sh)`;
    else if (timedOut) failure = `guest did not finish within ${Math.round(opts.timeoutMs / 1000)} s; killed`;
    else if (panicked) failure = 'guest kernel panicked';
    else if (exitCode === null) {
      const qemuErr = stderr.trim().split('\n').filter(Boolean).slice(-5).join('\n');
      failure = `guest stopped without reporting an exit code${qemuErr ? `; qemu said:\n${qemuErr}` : ''}`;
    }
    return { exitCode, timedOut, panicked, failure, bootMs, totalMs, files, consoleLog, consoleTail: tail };
  } finally {
    await fsp.rm(results, { recursive: true, force: true });
  }
}

/** Where suites' setup functions may put backing files (NVMe images and such); host-side only. */
export async function scratchPath(name: string): Promise<string> {
  const dir = path.join(guestCacheDir(), 'scratch');
  await fsp.mkdir(dir, { recursive: true });
  return path.join(dir, name);
}

/** True when this machine can run guests at all (QEMU installed). */
export function guestsAvailable(): boolean {
  const dirs = (process.env.PATH ?? '/usr/bin:/bin').split(':').filter(Boolean);
  return dirs.some((d) => existsSync(path.join(d, 'qemu-system-x86_64')));
}
