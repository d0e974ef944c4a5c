// Builds the guest's kernel and initramfs from Debian packages and this machine's own binaries,
// for one of two kernel lines (GuestKernel): Debian 12's default kernel, or the newest 6.12 package
// the same archive carries (ublk needs 6.0+). Cached under ~/.cache/userpci/guest/assets-<key>
// (6.12: assets-6.12-<key>; USERPCI_CACHE_DIR overrides), where the key hashes everything they are built
// from (kernel package version, host binaries' identity, init script). A fresh machine rebuilds
// from nothing; an unchanged one reuses the cache in well under a second.

import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { cpioStream, CpioEntry } from './cpio';
import { INCLUDED_MODULES, INIT_SCRIPT, OPTIONAL_MODULES } from './init-script';
import { repoRoot, run, runOk } from './util';

/** Bump when the way assets are assembled changes in a way the inputs do not show. */
const FORMAT = 4;

export interface GuestAssets {
  /** Hash of the inputs; names the cache directory. */
  key: string;
  dir: string;
  kernel: string;
  initramfs: string;
  /** `uname -r` inside the guest. */
  kernelRelease: string;
  /** The Debian package the kernel came from, e.g. linux-image-6.1.0-56-amd64 6.1.192-2. */
  kernelPackage: string;
  /** Which kernel line they boot. */
  line: GuestKernel;
  /** Whether this call built them (false: served from the cache). */
  built: boolean;
  buildMs: number;
}

/**
 * Which kernel the guest boots: 'default' is the one Debian 12's linux-image-amd64 depends on
 * (6.1); '6.12' the newest linux-image-6.12.*+deb12-amd64 (through linux-image-6.12-amd64).
 */
export type GuestKernel = 'default' | '6.12';
export const GUEST_KERNELS: readonly GuestKernel[] = ['default', '6.12'];

/** Per line: the meta package naming the newest image, and how its image packages are named. */
const KERNEL_LINES: Record<GuestKernel, { meta: string; image: RegExp; dirPrefix: string }> = {
  default: { meta: 'linux-image-amd64', image: /^linux-image-6\.1\.\d/, dirPrefix: 'assets-' },
  '6.12': { meta: 'linux-image-6.12-amd64', image: /^linux-image-6\.12\.\d/, dirPrefix: 'assets-6.12-' },
};

export interface AssetOptions {
  log?: (msg: string) => void;
  /** Default 'default'. */
  kernel?: GuestKernel;
  /** Rebuild even when a cached copy with the same key exists. */
  force?: boolean;
}

/** Host tools copied in when present, to their guest path. Optional: tests should check. */
const OPTIONAL_TOOLS: { name: string; guest: string; links?: string[] }[] = [
  { name: 'mke2fs', guest: '/usr/local/sbin/mke2fs', links: ['mkfs.ext4', 'mkfs.ext3', 'mkfs.ext2'] },
  { name: 'e2fsck', guest: '/usr/local/sbin/e2fsck', links: ['fsck.ext4'] },
  { name: 'nbd-client', guest: '/usr/local/sbin/nbd-client' },
  { name: 'lspci', guest: '/usr/local/bin/lspci' },
  { name: 'setpci', guest: '/usr/local/bin/setpci' },
  // iproute2's ip: network namespaces (busybox ip has no netns), for the TAP test.
  { name: 'ip', guest: '/usr/local/sbin/ip' },
];
const OPTIONAL_DATA = ['/etc/mke2fs.conf', '/usr/share/misc/pci.ids'];

const SEARCH_PATH = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

function which(name: string): string | undefined {
  for (const dir of SEARCH_PATH) {
    const p = path.join(dir, name);
    if (existsSync(p)) return p;
  }
  return undefined;
}

/** Per-checkout files: console logs, scratch images. */
export function guestCacheDir(): string {
  return path.join(repoRoot(), '.cache', 'guest');
}

/** Asset sets of other trees are removed only after this long unused (see the prune below). */
const UNUSED_ASSETS_PRUNED_AFTER_MS = 24 * 3600_000;

/**
 * Kernel packages and built assets, shared by every checkout on the machine (CI clones afresh
 * each run): keyed by their inputs, so a shared copy is never a stale one.
 */
export function assetCacheDir(): string {
  return process.env.USERPCI_CACHE_DIR ?? path.join(os.homedir(), '.cache', 'userpci', 'guest');
}

interface KernelSource {
  pkg: string;
  version: string;
  /** Set when the .deb is already at hand (cache or USERPCI_GUEST_KERNEL_DEB). */
  deb?: string;
}

/** Which kernel package to use: the one the line's meta package currently depends on. */
async function resolveKernel(debDir: string, line: GuestKernel): Promise<KernelSource> {
  const { meta, image } = KERNEL_LINES[line];
  // The override names a .deb of the default line (a 6.1 image at hand offline).
  const override = line === 'default' ? process.env.USERPCI_GUEST_KERNEL_DEB : undefined;
  if (override) {
    const m = /^(linux-image-[^_]+)_([^_]+)_/.exec(path.basename(override));
    if (!m) throw new Error(`USERPCI_GUEST_KERNEL_DEB: cannot parse package name from ${override}`);
    return { pkg: m[1]!, version: decodeURIComponent(m[2]!), deb: path.resolve(override) };
  }
  try {
    const deps = await runOk('apt-cache', ['depends', meta]);
    const pkg = /Depends:\s*(linux-image-\d\S*-amd64)\b/.exec(deps)?.[1];
    if (pkg) {
      const show = await runOk('apt-cache', ['show', '--no-all-versions', pkg]);
      const version = /^Version:\s*(\S+)/m.exec(show)?.[1];
      if (version) return { pkg, version };
    }
  } catch {
    // Fall through to whatever was downloaded before (offline machine, no apt lists).
  }
  const cached = (await cachedDebs(debDir)).filter((d) => image.test(d.pkg));
  if (cached.length > 0) {
    const newest = cached[cached.length - 1]!;
    return { pkg: newest.pkg, version: newest.version, deb: newest.file };
  }
  throw new Error(
    `guest assets: cannot resolve the Debian kernel package (apt-cache depends ${meta} gave nothing; ` +
      'run .ci/install-guest-deps.sh, which runs apt-get update)',
  );
}

async function cachedDebs(debDir: string): Promise<{ pkg: string; version: string; file: string; mtime: number }[]> {
  const out: { pkg: string; version: string; file: string; mtime: number }[] = [];
  for (const name of await fsp.readdir(debDir).catch(() => [] as string[])) {
    const m = /^(linux-image-[^_]+)_([^_]+)_amd64\.deb$/.exec(name);
    if (!m) continue;
    const file = path.join(debDir, name);
    out.push({ pkg: m[1]!, version: decodeURIComponent(m[2]!), file, mtime: (await fsp.stat(file)).mtimeMs });
  }
  return out.sort((a, b) => a.mtime - b.mtime);
}

async function downloadKernel(src: KernelSource, debDir: string, line: GuestKernel, log: (m: string) => void): Promise<string> {
  if (src.deb) return src.deb;
  const have = (await cachedDebs(debDir)).find((d) => d.pkg === src.pkg && d.version === src.version);
  if (have) return have.file;
  log(`downloading ${src.pkg} ${src.version}`);
  // apt-get download writes into the cwd; a scratch dir keeps a half-written file out of the cache.
  const tmp = await fsp.mkdtemp(path.join(debDir, 'dl-'));
  try {
    await runOk('apt-get', ['download', '-q', `${src.pkg}=${src.version}`], { cwd: tmp });
    const files = (await fsp.readdir(tmp)).filter((f) => f.endsWith('.deb'));
    if (files.length !== 1) throw new Error(`apt-get download left ${files.length} .deb files`);
    const dest = path.join(debDir, files[0]!);
    await fsp.rename(path.join(tmp, files[0]!), dest);
    // Older kernels of the same line are no longer needed (the other line's stay).
    for (const d of await cachedDebs(debDir)) {
      if (d.file !== dest && KERNEL_LINES[line].image.test(d.pkg)) await fsp.rm(d.file, { force: true });
    }
    return dest;
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}

/** Libraries (and the dynamic loader) a binary needs, as ldd names them. Static: none. */
async function lddLibs(bin: string): Promise<string[]> {
  const r = await run('ldd', [bin]);
  if (r.code !== 0) return []; // "not a dynamic executable"
  const libs: string[] = [];
  for (const line of r.stdout.split('\n')) {
    const arrow = /=>\s*(\/\S+)/.exec(line);
    if (arrow) libs.push(arrow[1]!);
    else {
      const loader = /^\s*(\/\S+)\s+\(0x/.exec(line);
      if (loader) libs.push(loader[1]!);
    }
  }
  return libs;
}

async function identity(file: string): Promise<string> {
  const st = await fsp.stat(file);
  return `${file}:${st.size}:${Math.trunc(st.mtimeMs)}`;
}

interface Plan {
  kernel: KernelSource;
  busybox: string;
  node: string;
  tools: { from: string; guest: string; links: string[] }[];
  data: string[];
  /** Every library any binary needs, by the path ldd printed. */
  libs: string[];
  key: string;
}

async function plan(debDir: string, line: GuestKernel): Promise<Plan> {
  const kernel = await resolveKernel(debDir, line);
  const busybox = which('busybox');
  if (!busybox) throw new Error('guest assets: busybox not found (apt-get install busybox-static)');
  const node = process.execPath;
  const tools: Plan['tools'] = [];
  for (const t of OPTIONAL_TOOLS) {
    const from = which(t.name);
    if (from) tools.push({ from, guest: t.guest, links: t.links ?? [] });
  }
  const data = OPTIONAL_DATA.filter((f) => existsSync(f));
  const libSet = new Set<string>();
  for (const bin of [busybox, node, ...tools.map((t) => t.from)]) for (const l of await lddLibs(bin)) libSet.add(l);
  const libs = [...libSet].sort();
  const inputs = {
    FORMAT,
    kernel: [kernel.pkg, kernel.version],
    files: await Promise.all([busybox, node, ...tools.map((t) => t.from), ...data, ...libs].map(identity)),
    tools: tools.map((t) => t.guest),
    nodeVersion: process.version,
    init: INIT_SCRIPT,
    modules: INCLUDED_MODULES,
    optionalModules: OPTIONAL_MODULES,
  };
  const key = createHash('sha256').update(JSON.stringify(inputs)).digest('hex').slice(0, 16);
  return { kernel, busybox, node, tools, data, libs, key };
}

/** Returns cached assets for the current inputs, building them first if needed. */
export async function ensureGuestAssets(opts: AssetOptions = {}): Promise<GuestAssets> {
  const log = opts.log ?? ((m: string) => process.stderr.write(`[guest-assets] ${m}\n`));
  const t0 = Date.now();
  const cache = assetCacheDir();
  const debDir = path.join(cache, 'debs');
  await fsp.mkdir(debDir, { recursive: true });
  const line = opts.kernel ?? 'default';
  const { dirPrefix } = KERNEL_LINES[line];
  const p = await plan(debDir, line);
  const dir = path.join(cache, `${dirPrefix}${p.key}`);
  const manifestPath = path.join(dir, 'manifest.json');
  if (!opts.force && existsSync(manifestPath)) {
    const m = JSON.parse(await fsp.readFile(manifestPath, 'utf8')) as { kernelRelease: string; kernelPackage: string };
    // Mark the set as in use: another checkout pruning superseded sets leaves it alone.
    const now = new Date();
    await fsp.utimes(manifestPath, now, now).catch(() => {});
    return {
      key: p.key, dir, kernel: path.join(dir, 'vmlinuz'), initramfs: path.join(dir, 'initramfs.cpio.gz'),
      kernelRelease: m.kernelRelease, kernelPackage: m.kernelPackage, line, built: false, buildMs: Date.now() - t0,
    };
  }
  log(`building guest assets ${p.key} (${p.kernel.pkg} ${p.kernel.version}, node ${process.version})`);
  const work = await fsp.mkdtemp(path.join(cache, 'build-'));
  try {
    const deb = await downloadKernel(p.kernel, debDir, line, log);
    const tDl = Date.now();
    const x = path.join(work, 'x');
    await runOk('dpkg-deb', ['-x', deb, x]);
    const modRoot = existsSync(path.join(x, 'lib', 'modules')) ? path.join(x, 'lib', 'modules') : path.join(x, 'usr', 'lib', 'modules');
    const releases = await fsp.readdir(modRoot);
    if (releases.length !== 1) throw new Error(`kernel package holds ${releases.length} module trees`);
    const release = releases[0]!;
    const vmlinuz = path.join(x, 'boot', `vmlinuz-${release}`);

    const modules = await moduleTree(p.busybox, modRoot, release, path.join(work, 'mods'));
    const tX = Date.now();

    const out = `${dir}.tmp-${process.pid}`;
    await fsp.rm(out, { recursive: true, force: true });
    await fsp.mkdir(out, { recursive: true });
    await fsp.copyFile(vmlinuz, path.join(out, 'vmlinuz'));
    const entries = await initramfsEntries(p, modules);
    await pipeline(Readable.from(cpioStream(entries)), createGzip({ level: 1 }), createWriteStream(path.join(out, 'initramfs.cpio.gz')));
    const tZ = Date.now();
    const manifest = {
      key: p.key, kernelRelease: release, kernelPackage: `${p.kernel.pkg} ${p.kernel.version}`,
      node: process.version, tools: p.tools.map((t) => t.guest), builtAt: new Date().toISOString(),
      timingsMs: { download: tDl - t0, extractAndModules: tX - tDl, initramfs: tZ - tX },
    };
    await fsp.writeFile(path.join(out, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
    if (existsSync(manifestPath) && !opts.force) {
      // Another process built the same set meanwhile (and may be booting it): keep theirs.
      await fsp.rm(out, { recursive: true, force: true });
    } else {
      await fsp.rm(dir, { recursive: true, force: true });
      await fsp.rename(out, dir);
    }
    // Superseded asset sets of the same line only take space, once nobody has booted them for a
    // day: another checkout on this machine (an older or newer tree) may be booting one right now.
    for (const name of await fsp.readdir(cache)) {
      if (name.startsWith(dirPrefix) && /^[0-9a-f]+$/.test(name.slice(dirPrefix.length)) && name !== `${dirPrefix}${p.key}`) {
        const used = await fsp.stat(path.join(cache, name, 'manifest.json')).then((st) => st.mtimeMs, () => 0);
        if (Date.now() - used > UNUSED_ASSETS_PRUNED_AFTER_MS) await fsp.rm(path.join(cache, name), { recursive: true, force: true });
      }
    }
    const buildMs = Date.now() - t0;
    log(`built in ${(buildMs / 1000).toFixed(1)} s (download ${tDl - t0} ms, extract+modules ${tX - tDl} ms, initramfs ${tZ - tX} ms)`);
    return {
      key: p.key, dir, kernel: path.join(dir, 'vmlinuz'), initramfs: path.join(dir, 'initramfs.cpio.gz'),
      kernelRelease: release, kernelPackage: manifest.kernelPackage, line, built: true, buildMs,
    };
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}

/**
 * Copies the wanted modules and their dependency closure into a small tree and runs depmod on
 * it there, so the guest's modprobe sees a consistent modules.dep. Dependencies come from each
 * module's own `depends=` modinfo string, so only the wanted modules are read (6.12's modules
 * ship as .ko.xz: a depmod over the whole tree decompresses thousands, ~2 min here). Modules are
 * staged uncompressed, so the guest's busybox modprobe needs no decompressor. Modules built into
 * the kernel (modules.builtin; e.g. 6.12's virtio_pci) are skipped; OPTIONAL_MODULES are taken
 * when the kernel has them. Busybox's depmod is used because kmod is often not installed.
 */
async function moduleTree(busybox: string, modRoot: string, release: string, stage: string): Promise<string> {
  const fullDir = path.join(modRoot, release);
  const norm = (n: string) => n.replace(/-/g, '_');
  const modName = (file: string) => norm(path.basename(file).replace(/\.ko(\.\w+)?$/, ''));
  const byName = new Map<string, string>();
  for (const f of await walk(path.join(fullDir, 'kernel'))) {
    if (!f.dir && /\.ko(\.xz|\.zst|\.gz)?$/.test(f.rel)) byName.set(modName(f.rel), path.posix.join('kernel', f.rel));
  }
  const builtinText = await fsp.readFile(path.join(fullDir, 'modules.builtin'), 'utf8').catch(() => '');
  const builtin = new Set(builtinText.split('\n').filter(Boolean).map(modName));
  const stageDir = path.join(stage, 'lib', 'modules', release);
  const staged = new Set<string>();
  const stageModule = async (name: string, wantedBy: string): Promise<void> => {
    if (staged.has(name) || builtin.has(name)) return;
    const rel = byName.get(name);
    if (!rel) throw new Error(`kernel ${release} has no module ${name} (wanted by ${wantedBy}), neither built in`);
    staged.add(name);
    const bytes = rel.endsWith('.ko.xz')
      ? await decompressXz(busybox, path.join(fullDir, rel))
      : rel.endsWith('.ko')
        ? await fsp.readFile(path.join(fullDir, rel))
        : undefined;
    if (!bytes) throw new Error(`module ${rel}: unsupported compression`);
    const dest = path.join(stageDir, rel.replace(/\.xz$/, ''));
    await fsp.mkdir(path.dirname(dest), { recursive: true });
    await fsp.writeFile(dest, bytes);
    for (const dep of modinfoDepends(bytes)) await stageModule(norm(dep), name);
  };
  for (const name of INCLUDED_MODULES) await stageModule(norm(name), 'INCLUDED_MODULES');
  for (const name of OPTIONAL_MODULES) if (byName.has(norm(name))) await stageModule(norm(name), 'OPTIONAL_MODULES');
  for (const f of ['modules.builtin', 'modules.builtin.modinfo', 'modules.order']) {
    if (existsSync(path.join(fullDir, f))) await fsp.copyFile(path.join(fullDir, f), path.join(stageDir, f));
  }
  await runOk(busybox, ['depmod', '-b', stage, release]);
  return stage;
}

function decompressXz(busybox: string, file: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    execFile(busybox, ['xz', '-dc', file], { encoding: 'buffer', maxBuffer: 256 << 20 }, (err, stdout) => {
      if (err) reject(new Error(`busybox xz -dc ${file}: ${err.message}`));
      else resolve(stdout);
    });
  });
}

/** The module names in a module's `depends=` modinfo string (NUL-separated strings in .modinfo). */
export function modinfoDepends(ko: Buffer): string[] {
  const key = Buffer.from('\0depends=');
  const at = ko.indexOf(key);
  if (at < 0) return [];
  const start = at + key.length;
  const end = ko.indexOf(0, start);
  return ko.subarray(start, end < 0 ? ko.length : end).toString('latin1').split(',').filter(Boolean);
}

async function walk(root: string, rel = ''): Promise<{ rel: string; dir: boolean }[]> {
  const out: { rel: string; dir: boolean }[] = [];
  for (const d of await fsp.readdir(path.join(root, rel), { withFileTypes: true })) {
    const r = path.posix.join(rel, d.name);
    if (d.isDirectory()) {
      out.push({ rel: r, dir: true });
      out.push(...(await walk(root, r)));
    } else out.push({ rel: r, dir: false });
  }
  return out;
}

async function initramfsEntries(p: Plan, moduleStage: string): Promise<CpioEntry[]> {
  const entries: CpioEntry[] = [];
  const dirs = new Set<string>();
  const mkdirs = (file: string) => {
    const parts = path.posix.dirname(file).split('/').filter(Boolean);
    for (let i = 1; i <= parts.length; i++) {
      const d = '/' + parts.slice(0, i).join('/');
      if (!dirs.has(d)) {
        dirs.add(d);
        entries.push({ kind: 'dir', name: d });
      }
    }
  };
  const dir = (d: string, mode = 0o755) => {
    mkdirs(d);
    if (!dirs.has(d)) {
      dirs.add(d);
      entries.push({ kind: 'dir', name: d, mode });
    }
  };
  for (const d of ['/bin', '/sbin', '/usr/bin', '/usr/sbin', '/usr/local/bin', '/usr/local/sbin', '/proc', '/sys', '/dev', '/run', '/mnt', '/results', '/root', '/etc']) dir(d);
  dir('/tmp', 0o1777);
  dir('/var/tmp', 0o1777);
  // The kernel opens /dev/console for init before anything is mounted.
  entries.push({ kind: 'chardev', name: '/dev/console', major: 5, minor: 1 });
  entries.push({ kind: 'data', name: '/init', mode: 0o755, data: INIT_SCRIPT });
  entries.push({ kind: 'file', name: '/bin/busybox', mode: 0o755, from: p.busybox });
  entries.push({ kind: 'symlink', name: '/bin/sh', target: 'busybox' });
  entries.push({ kind: 'file', name: '/usr/bin/node', mode: 0o755, from: p.node });
  for (const t of p.tools) {
    mkdirs(t.guest);
    entries.push({ kind: 'file', name: t.guest, mode: 0o755, from: t.from });
    for (const l of t.links) entries.push({ kind: 'symlink', name: path.posix.join(path.posix.dirname(t.guest), l), target: path.posix.basename(t.guest) });
  }
  for (const lib of p.libs) {
    // Copy the real file under the name ldd printed: the guest has no usrmerge symlinks.
    mkdirs(lib);
    entries.push({ kind: 'file', name: lib, mode: 0o755, from: await fsp.realpath(lib) });
  }
  for (const f of p.data) {
    mkdirs(f);
    entries.push({ kind: 'file', name: f, mode: 0o644, from: await fsp.realpath(f) });
  }
  // Node's os.userInfo() and getaddrinfo('localhost') need these.
  entries.push({ kind: 'data', name: '/etc/passwd', data: 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' });
  entries.push({ kind: 'data', name: '/etc/group', data: 'root:x:0:\nnogroup:x:65534:\n' });
  entries.push({ kind: 'data', name: '/etc/hosts', data: '127.0.0.1 localhost\n::1 localhost\n' });
  entries.push({ kind: 'data', name: '/etc/nsswitch.conf', data: 'passwd: files\ngroup: files\nhosts: files\n' });
  for (const f of await walk(moduleStage)) {
    const name = '/' + f.rel;
    if (f.dir) dir(name);
    else {
      mkdirs(name);
      entries.push({ kind: 'file', name, mode: 0o644, from: path.join(moduleStage, f.rel) });
    }
  }
  return entries;
}
