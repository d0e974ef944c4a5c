/**
 * `userpci nvme identify|read|write|verify|export ADDRESS ...`: a quick look at an NVMe disk
 * through the user-space driver, and the user-level block device (an NBD export the kernel can
 * mount). ADDRESS is a PCI address of a function bound to vfio-pci (--bind binds it first) or a
 * vfio-user socket path.
 */
import * as fs from 'node:fs';
import { isValidPciAddress } from '../../pci/address.js';
import { UserpciError, InvalidArgumentError } from '../../errors.js';
import { NvmeController } from '../../drivers/nvme/controller.js';
import type { NvmeNamespace } from '../../drivers/nvme/namespace.js';
import { planFootprint, planWrites, runWorkload } from '../../drivers/nvme/workload.js';
import { NbdServer } from '../../exports/nbd/server.js';
import { NvmeBlockDevice } from '../../exports/nbd/nvme-device.js';
import { serveNamespaceOverUblk, serveNamespaceOverUblkThreads } from '../../exports/ublk/nvme.js';
import type { UblkThreadServer } from '../../exports/ublk/thread-server.js';
import type { UblkServer } from '../../exports/ublk/server.js';
import { UsageError, formatSize, parseCommandLine, parseCount, print, toJson } from '../format.js';
import { stopSignal } from '../stop-signal.js';
import { useSerialScavenge } from '../../gc-tuning.js';
import type { CliCommand } from '../main.js';
import { requireVfioBinding, sysfsNumber } from '../vfio-target.js';

const USAGE = `userpci nvme identify|read|write|verify|export|ublk ADDRESS [options]

Drive an NVMe controller from user space (the device must be bound to vfio-pci; --bind does
that first and leaves it bound: \`userpci unbind ADDRESS\` gives it back to the kernel).

  identify ADDRESS [--json]
      controller (model, serial, firmware, version, transfer size, queues, optional commands)
      and every active namespace (size, block size, LBA formats)
  read ADDRESS --lba N (--blocks N | --length BYTES) [--out FILE | --raw]
      read blocks; a hex dump unless written to FILE or, with --raw, to stdout as is
  write ADDRESS --lba N (--file FILE | --byte VALUE (--blocks N | --length BYTES)) [--fua] [--pad]
      write a file (its length a multiple of the block size, or --pad with zeroes) or a
      repeated byte
  verify ADDRESS [--seed N] [--writes N] [--max-bytes BYTES] [--span BYTES] [--json]
      random writes of random lengths at random offsets (crossing PRP-list and MDTS
      boundaries; zero-copy and bounce paths), then read everything back and compare.
      DESTROYS the data in the span. Exit 1 on a mismatch. The same seed writes the same bytes.
  export ADDRESS (--socket PATH | --port N [--host ADDR]) [--name NAME] [--read-only]
      serve the namespace over NBD (fixed newstyle) until SIGINT/SIGTERM, e.g. for
      \`nbd-client -N NAME -u PATH -t 10 /dev/nbd0\`; flushes and shuts the controller down on
      exit. If the device goes away (unplug, reset), outstanding requests get ESHUTDOWN, the
      clients are disconnected, and the export exits with status 3
  ublk ADDRESS [--id N] [--queues N] [--threads] [--read-only] [--spin-us N] [--defer-taskrun]
      serve the namespace as the kernel block device /dev/ublkbN (Linux 6.0+, modprobe ublk_drv),
      one ublk queue per NVMe I/O queue pair, until SIGINT/SIGTERM or the device's removal; then
      the disk is removed and the ublk device deleted. Devices that killed servers of ours left
      are deleted first; --id reuses an id (a dead server's leftover with it is deleted first).
      --spin-us: once a queue has nothing in flight, look for the next request this long
      before sleeping (default 0); --defer-taskrun: rings that take new requests only when the
      server enters them, not by interrupting it (IORING_SETUP_DEFER_TASKRUN); --threads: each
      queue on a thread of its own pinned to the CPUs the kernel maps to it, with its own polled
      NVMe queue pair (--queues defaults to one per CPU then; kernel VFIO only). Either mode
      rides through a controller reset (after a fatal status or a timeout): the requests in
      flight fail with EIO, later ones are served
  export and ublk scavenge V8's young generation on the main thread only (useSerialScavenge):
  their garbage is short-lived, and parallel scavenges cost them more than they save

Common options:
  --nsid N        namespace (default 1)
  --depth N       I/O queue depth (default 64)
  --bind          bind ADDRESS to vfio-pci first
  --interrupts    I/O queues complete by MSI-X interrupt instead of polling
  --verbose       log NBD connections (export)

Numbers take K, M, G suffixes (powers of 1024) and 0x prefixes.`;

const OPTIONS = {
  json: { type: 'boolean', default: false },
  bind: { type: 'boolean', default: false },
  nsid: { type: 'string' },
  depth: { type: 'string' },
  lba: { type: 'string' },
  blocks: { type: 'string' },
  length: { type: 'string' },
  out: { type: 'string' },
  raw: { type: 'boolean', default: false },
  file: { type: 'string' },
  byte: { type: 'string' },
  fua: { type: 'boolean', default: false },
  pad: { type: 'boolean', default: false },
  seed: { type: 'string' },
  writes: { type: 'string' },
  'max-bytes': { type: 'string' },
  span: { type: 'string' },
  socket: { type: 'string' },
  port: { type: 'string' },
  host: { type: 'string' },
  name: { type: 'string' },
  'read-only': { type: 'boolean', default: false },
  verbose: { type: 'boolean', default: false },
  id: { type: 'string' },
  queues: { type: 'string' },
  interrupts: { type: 'boolean', default: false },
  'spin-us': { type: 'string' },
  'defer-taskrun': { type: 'boolean', default: false },
  threads: { type: 'boolean', default: false },
} as const;

type Values = ReturnType<typeof parse>['values'];

function parse(args: string[]) {
  return parseCommandLine(args, OPTIONS, ['identify|read|write|verify|export|ublk', 'ADDRESS']);
}

function need<T>(value: T | undefined, name: string): T {
  if (value === undefined) throw new UsageError(`missing ${name}`);
  return value;
}

/** PCI class of NVMe controllers: mass storage, non-volatile memory, NVM Express. */
const NVME_CLASS = 0x010802;

async function openController(address: string, values: Values): Promise<NvmeController> {
  if (isValidPciAddress(address)) {
    requireVfioBinding(address, values.bind, (dir) => {
      const classCode = sysfsNumber(dir, 'class');
      if (classCode !== NVME_CLASS) {
        throw new UserpciError('EINVAL', `${address} is not an NVMe controller (class 0x${classCode.toString(16).padStart(6, '0')}, NVMe is 0x010802): not binding it; find one with \`userpci list --class 0108\``);
      }
    });
  }
  const depth = parseCount(values.depth, '--depth') ?? 64;
  return NvmeController.open(address, { defaultQueue: { depth, interrupts: values.interrupts }, queuePairs: 4 });
}

async function withNamespace<T>(address: string, values: Values, fn: (ns: NvmeNamespace, ctrl: NvmeController) => Promise<T>): Promise<T> {
  const ctrl = await openController(address, values);
  try {
    const ns = await ctrl.namespace(parseCount(values.nsid, '--nsid') ?? 1);
    return await fn(ns, ctrl);
  } finally {
    await ctrl.close();
  }
}

/** The byte length of a read/write: --blocks or --length, checked against the block size. */
function lengthOf(values: Values, ns: NvmeNamespace): number {
  const blocks = parseCount(values.blocks, '--blocks');
  const length = parseCount(values.length, '--length');
  if ((blocks === undefined) === (length === undefined)) throw new UsageError('give exactly one of --blocks N and --length BYTES');
  const bytes = blocks !== undefined ? blocks * ns.blockSize : length!;
  if (bytes <= 0 || bytes % ns.blockSize !== 0) throw new InvalidArgumentError(`length ${bytes} is not a positive multiple of the ${ns.blockSize}-byte block size`);
  return bytes;
}

async function identify(address: string, values: Values): Promise<number> {
  return withNamespaceList(address, values, async (ctrl, namespaces) => {
    const id = ctrl.identity;
    if (values.json) {
      print(toJson({
        address: ctrl.name,
        controller: { ...id, maxTransferBytes: ctrl.maxTransfer, queuePairsGranted: ctrl.grantedQueuePairs, capabilities: ctrl.capabilities },
        namespaces: namespaces.map((ns) => ({ ...ns.identity, sizeBytes: ns.size })),
      }));
      return 0;
    }
    const features = [id.supportsDatasetManagement && 'dataset management (trim)', id.supportsWriteZeroes && 'write zeroes', id.volatileWriteCache && 'volatile write cache'].filter(Boolean);
    const lines = [
      `${ctrl.name}: ${id.model}`,
      `  serial ${id.serial}, firmware ${id.firmware}, NVMe ${id.version || ctrl.capabilities.version}, vendor ${id.vendorId.toString(16).padStart(4, '0')}`,
      `  max transfer ${formatSize(ctrl.maxTransfer)}B (MDTS ${id.mdts}), ${ctrl.grantedQueuePairs} I/O queue pairs granted, queues up to ${ctrl.capabilities.maxQueueEntries} entries, doorbell stride ${ctrl.capabilities.doorbellStride}`,
      `  optional: ${features.length ? features.join(', ') : 'none'}`,
      `  namespaces: ${namespaces.length}`,
    ];
    for (const ns of namespaces) {
      const formats = ns.lbaFormats.map((f) => `${f.index === ns.identity.formatIndex ? '*' : ''}${f.blockSize}${f.metadataSize ? `+${f.metadataSize}` : ''}`).join(' ');
      lines.push(`  nsid ${ns.nsid}: ${ns.blocks} blocks of ${ns.blockSize} bytes (${formatSize(ns.size)}B); LBA formats ${formats}`);
    }
    print(lines.join('\n'));
    return 0;
  });
}

async function withNamespaceList<T>(address: string, values: Values, fn: (ctrl: NvmeController, ns: NvmeNamespace[]) => Promise<T>): Promise<T> {
  const ctrl = await openController(address, values);
  try {
    const ids = await ctrl.namespaceIds();
    const list: NvmeNamespace[] = [];
    for (const nsid of ids) {
      try {
        list.push(await ctrl.namespace(nsid));
      } catch {
        // A namespace this driver cannot use is still not worth failing identify for.
      }
    }
    return await fn(ctrl, list);
  } finally {
    await ctrl.close();
  }
}

async function read(address: string, values: Values): Promise<number> {
  const lba = need(parseCount(values.lba, '--lba'), '--lba N');
  return withNamespace(address, values, async (ns) => {
    const bytes = lengthOf(values, ns);
    const data = Buffer.alloc(bytes);
    await ns.read(lba, data);
    if (values.out) fs.writeFileSync(values.out, data);
    else if (values.raw) await new Promise<void>((r) => process.stdout.write(data, () => r()));
    else print(hexdump(data, lba * ns.blockSize));
    return 0;
  });
}

async function write(address: string, values: Values): Promise<number> {
  const lba = need(parseCount(values.lba, '--lba'), '--lba N');
  if ((values.file === undefined) === (values.byte === undefined)) throw new UsageError('give exactly one of --file FILE and --byte VALUE');
  return withNamespace(address, values, async (ns) => {
    let data: Buffer;
    if (values.file !== undefined) {
      data = fs.readFileSync(values.file);
      if (data.length === 0) throw new InvalidArgumentError(`${values.file} is empty`);
      const rem = data.length % ns.blockSize;
      if (rem !== 0) {
        if (!values.pad) throw new InvalidArgumentError(`${values.file} is ${data.length} bytes, not a multiple of the ${ns.blockSize}-byte block size (add --pad to fill the last block with zeroes)`);
        data = Buffer.concat([data, Buffer.alloc(ns.blockSize - rem)]);
      }
    } else {
      const byte = parseCount(values.byte, '--byte')!;
      if (byte > 255) throw new UsageError(`--byte must be 0..255, got ${values.byte}`);
      data = Buffer.alloc(lengthOf(values, ns), byte);
    }
    await ns.write(lba, data, undefined, { fua: values.fua });
    await ns.flush();
    print(`wrote ${data.length} bytes (${data.length / ns.blockSize} blocks) at LBA ${lba}`);
    return 0;
  });
}

async function verify(address: string, values: Values): Promise<number> {
  const seed = parseCount(values.seed, '--seed') ?? 1;
  const count = parseCount(values.writes, '--writes') ?? 64;
  return withNamespace(address, values, async (ns) => {
    const span = parseCount(values.span, '--span');
    const plan = planWrites({
      seed, count, blocks: ns.blocks, blockSize: ns.blockSize,
      maxBytes: parseCount(values['max-bytes'], '--max-bytes') ?? Math.min(2 << 20, ns.maxTransfer * 3),
      spanBlocks: span === undefined ? undefined : Math.floor(span / ns.blockSize),
    });
    // Known before anything is written: where, how much, and the memory it takes.
    const footprint = planFootprint(plan, ns.blockSize, { concurrency: 4, maxTransfer: ns.maxTransfer });
    if (!values.json) {
      print(`verify: ${plan.length} writes, ${footprint.bytesWritten} bytes, over ${footprint.bytesCovered} bytes of namespace ${ns.nsid} between LBA ${footprint.firstLba} and ${footprint.endLba - 1} (their data is destroyed); ${footprint.dmaBytes} bytes of DMA memory`);
    }
    const r = await runWorkload(ns, plan, { concurrency: 4 });
    if (values.json) print(toJson({ seed, footprint, ...r }));
    else {
      print(`${r.writes} writes, ${r.bytesWritten} bytes written, ${r.bytesVerified} bytes read back in ${r.ms} ms: ${r.mismatches.length === 0 ? 'all equal' : `${r.mismatches.length} blocks differ`}`);
      for (const m of r.mismatches.slice(0, 10)) print(`  LBA ${m.lba}: first difference at byte ${m.firstBadByte}`);
    }
    return r.mismatches.length === 0 ? 0 : 1;
  });
}

async function exportNbd(address: string, values: Values): Promise<number> {
  useSerialScavenge();
  const port = parseCount(values.port, '--port');
  if ((values.socket === undefined) === (port === undefined)) throw new UsageError('give exactly one of --socket PATH and --port N');
  if (port !== undefined && (port < 1 || port > 65535)) throw new UsageError(`--port must be 1..65535, got ${port}`);
  const ctrl = await openController(address, values);
  let server: NbdServer | undefined;
  try {
    const ns = await ctrl.namespace(parseCount(values.nsid, '--nsid') ?? 1);
    const device = new NvmeBlockDevice(ns, { readOnly: values['read-only'] });
    const name = values.name ?? '';
    const log = values.verbose ? (m: string) => process.stderr.write(`${m}\n`) : undefined;
    server = new NbdServer([{ name, description: `${ctrl.identity.model} ${ctrl.identity.serial} nsid ${ns.nsid}`, device }], { log });
    const where = values.socket !== undefined ? values.socket : `${values.host ?? '127.0.0.1'}:${port}`;
    await server.listen(values.socket !== undefined ? { path: values.socket } : { port: port!, host: values.host });
    const stop = stopSignal();
    print(`nbd: serving ${ctrl.name} namespace ${ns.nsid} (${ns.size} bytes, ${ns.blockSize}-byte blocks${device.readOnly ? ', read-only' : ''}) as "${name}" on ${where}`);
    const srv = server;
    const counts = () => Object.entries(srv.counts).map(([k, v]) => `${k} ${v}`).join(', ') || 'no requests';
    const event = await new Promise<{ signal: string } | { lost: Error }>((resolve) => {
      void stop.then((signal) => resolve({ signal }));
      // The device went away (unplugged, reset under us): the server answers what is
      // outstanding with ESHUTDOWN and hangs up on its clients; then this process ends.
      srv.once('device-lost', (_name: string, error: Error) => resolve({ lost: error }));
    });
    if ('lost' in event) {
      await waitFor(() => srv.connections === 0, 10_000);
      process.stderr.write(
        `userpci nvme export: ${event.lost.message}\n` +
        `nbd: answered ${srv.shutdownReplies} request(s) with ESHUTDOWN and disconnected ${srv.lostConnections} client(s); exiting.\n` +
        `nbd: once the device is back (e.g. echo 1 > /sys/bus/pci/rescan; userpci bind ${address}), start the export again and reattach (nbd-client -d, then nbd-client); see README "When the exporter or its device dies"\n`,
      );
      await server.close();
      print(`nbd: stopped, device lost (${counts()})`);
      return 3;
    }
    if (values.verbose) process.stderr.write(`nbd: ${event.signal}: stopping\n`);
    await server.close();
    await ns.flush().catch(() => undefined);
    print(`nbd: stopped (${counts()})`);
    return 0;
  } finally {
    await server?.close().catch(() => undefined);
    await ctrl.close();
  }
}

async function exportUblk(address: string, values: Values): Promise<number> {
  useSerialScavenge();
  if (values.threads) return exportUblkThreads(address, values);
  const queues = parseCount(values.queues, '--queues') ?? 1;
  const id = parseCount(values.id, '--id');
  const ctrl = await openController(address, values);
  let server: UblkServer | undefined;
  try {
    const ns = await ctrl.namespace(parseCount(values.nsid, '--nsid') ?? 1);
    server = await serveNamespaceOverUblk(ctrl, ns, { id, queues, depth: parseCount(values.depth, '--depth') ?? 64, readOnly: values['read-only'], interrupts: values.interrupts,
      idleSpinUs: parseCount(values['spin-us'], '--spin-us') ?? 0, deferTaskrun: values['defer-taskrun'] });
    const stop = stopSignal();
    for (const r of server.reclaimed) print(`ublk: deleted /dev/ublkb${r.id}, left by process ${r.pid} (no longer running)`);
    print(`ublk: serving ${ctrl.name} namespace ${ns.nsid} (${ns.size} bytes, ${ns.blockSize}-byte blocks) as ${server.diskPath} (${server.queues.length} queue(s) of depth ${server.info.depth}, requests up to ${server.info.maxIoBytes} bytes)`);
    const why = await new Promise<string>((resolve) => {
      void stop.then(resolve);
      ctrl.device.once('removed', () => resolve('device removed'));
    });
    if (values.verbose) process.stderr.write(`ublk: ${why}: stopping ${server.diskPath}\n`);
    await server.close();
    if (why !== 'device removed') await ns.flush().catch(() => undefined);
    const sum = (f: (q: UblkServer['queues'][number]) => number) => server!.queues.reduce((n, q) => n + f(q), 0);
    const doorbells = ctrl.queues.reduce((n, q) => n + q.doorbells, 0);
    print(`ublk: ${why}: ${server.diskPath} deleted after ${server.requests} requests (${sum((q) => q.stats.callbacks)} on the driver's callback path); ` +
      `${sum((q) => q.ring.enters)} io_uring_enter calls, ${doorbells} NVMe SQ doorbells, ${sum((q) => q.stats.spinHits)} of ${sum((q) => q.stats.spins)} idle spins found a request`);
    return 0;
  } finally {
    await server?.close().catch(() => undefined);
    await ctrl.close().catch(() => undefined);
  }
}

/** `nvme ublk --threads`: one pinned thread per ublk queue, each with its own NVMe queue pair. */
async function exportUblkThreads(address: string, values: Values): Promise<number> {
  if (values.interrupts) throw new UsageError('--threads polls its NVMe queues (no --interrupts)');
  const queues = parseCount(values.queues, '--queues');
  const id = parseCount(values.id, '--id');
  const ctrl = await openController(address, values);
  let server: UblkThreadServer | undefined;
  try {
    const ns = await ctrl.namespace(parseCount(values.nsid, '--nsid') ?? 1);
    server = await serveNamespaceOverUblkThreads(ctrl, ns, { id, queues, depth: parseCount(values.depth, '--depth') ?? 64, readOnly: values['read-only'],
      idleSpinUs: parseCount(values['spin-us'], '--spin-us') ?? 0, deferTaskrun: values['defer-taskrun'] });
    const stop = stopSignal();
    for (const r of server.reclaimed) print(`ublk: deleted /dev/ublkb${r.id}, left by process ${r.pid} (no longer running)`);
    const cpus = server.queueCpus.map((c) => c.join(',') || 'any').join(' | ');
    print(`ublk: serving ${ctrl.name} namespace ${ns.nsid} (${ns.size} bytes, ${ns.blockSize}-byte blocks) as ${server.diskPath} (${server.queueCpus.length} queue(s) of depth ${server.info.depth}, requests up to ${server.info.maxIoBytes} bytes; a thread per queue on CPUs ${cpus})`);
    const why = await new Promise<string>((resolve) => {
      void stop.then(resolve);
      ctrl.device.once('removed', () => resolve('device removed'));
      server!.once('close', () => resolve('a queue thread ended'));
    });
    if (values.verbose) process.stderr.write(`ublk: ${why}: stopping ${server.diskPath}\n`);
    await server.close();
    if (why !== 'device removed') await ns.flush().catch(() => undefined);
    const stats = server.queueStats;
    const sum = (f: (q: NonNullable<(typeof stats)[number]>) => number) => stats.reduce((n, q) => n + (q ? f(q) : 0), 0);
    print(`ublk: ${why}: ${server.diskPath} deleted after ${server.requests} requests (${sum((q) => q.callbacks)} on the driver's callback path); ` +
      `${sum((q) => q.enters)} io_uring_enter calls, ${sum((q) => q.doorbells)} NVMe SQ doorbells, ${sum((q) => q.spinHits)} of ${sum((q) => q.spins)} idle spins found a request; ` +
      `per queue requests ${stats.map((q) => q?.requests ?? 0).join('/')}`);
    if (server.firstError) process.stderr.write(`ublk: ${server.firstError.message}\n`);
    return 0;
  } finally {
    await server?.close().catch(() => undefined);
    await ctrl.close().catch(() => undefined);
  }
}

/** Resolves when `cond()` holds, checked every 20 ms, or after `ms` (whichever comes first). */
async function waitFor(cond: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
}

/** hexdump -C style, with repeated lines folded into "*". */
export function hexdump(data: Uint8Array, base = 0): string {
  const out: string[] = [];
  let previous = '';
  let folded = false;
  for (let off = 0; off < data.length; off += 16) {
    const row = data.subarray(off, off + 16);
    const hexPart = Array.from(row, (b) => b.toString(16).padStart(2, '0'));
    const key = hexPart.join(' ');
    if (key === previous && off + 16 < data.length) {
      if (!folded) out.push('*');
      folded = true;
      continue;
    }
    previous = key;
    folded = false;
    const left = hexPart.slice(0, 8).join(' ').padEnd(23);
    const right = hexPart.slice(8).join(' ').padEnd(23);
    const ascii = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    out.push(`${(base + off).toString(16).padStart(8, '0')}  ${left}  ${right}  |${ascii}|`);
  }
  out.push((base + data.length).toString(16).padStart(8, '0'));
  return out.join('\n');
}

export const nvmeCommand: CliCommand = {
  name: 'nvme',
  summary: 'NVMe through the user-space driver: identify, read, write, verify, export over NBD or ublk',
  usage: USAGE,
  async run(args: string[]): Promise<number> {
    const { values, positionals } = parse(args);
    const [action, address] = positionals as [string, string];
    switch (action) {
      case 'identify': return identify(address, values);
      case 'read': return read(address, values);
      case 'write': return write(address, values);
      case 'verify': return verify(address, values);
      case 'export': return exportNbd(address, values);
      case 'ublk': return exportUblk(address, values);
      default: throw new UsageError(`unknown action "${action}" (identify, read, write, verify, export, ublk)`);
    }
  },
};

// Also runnable on its own (the guest tests run it so): the dispatcher's handling, --json failures included.
if (require.main === module) {
  void import('../main.js').then(async ({ main }) => {
    process.exitCode = await main(['nvme', ...process.argv.slice(2)]);
  });
}
