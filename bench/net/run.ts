/**
 * `npm run bench:net`: our virtio-net driver against the kernel's, side by side in one guest with
 * two virtio-net NICs on one QEMU hub (nothing leaves QEMU).
 *
 * Host side: compiles bench/net/kernel-pingpong.c statically into .cache, boots the guest and
 * runs bench/net/guest.ts there, which alternates kernel and ours for --rounds rounds. Prints
 * each measurement, a table, and last the RESULT line:
 *   RESULT {"bench": "net", "cases": [{"name", "ours", "baseline", "unit", "ratio"}]}
 * pps cases: frames per second counted at the receiver, ratio ours / kernel (pktgen into
 * virtio_net). Latency cases: round trip of a 60-byte frame, ratio kernel / ours (above 1: ours
 * is faster), kernel = AF_PACKET sockets on virtio_net on both sides.
 *
 * Options: --seconds S (per measurement, default 3), --warmup S (default 1), --rounds N
 * (default 2), --rtts N (round trips per latency run, default 1000), --verbose (guest console).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runInGuest, GuestRunError } from '../../scripts/guest/index';
import { installSignalHandlers } from '../../scripts/guest/suites';

const REPO = path.resolve(__dirname, '../../..');

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

function buildPingPong(): string {
  const src = path.join(REPO, 'bench/net/kernel-pingpong.c');
  const out = path.join(REPO, '.cache/bench/net/kernel-pingpong');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  if (!fs.existsSync(out) || fs.statSync(out).mtimeMs < fs.statSync(src).mtimeMs) {
    execFileSync('cc', ['-static', '-O2', '-Wall', '-o', out, src], { stdio: 'inherit' });
  }
  return path.relative(REPO, out);
}

export const NET_BENCH_DEVICES = [
  '-netdev', 'hubport,id=h0,hubid=0', '-device', 'virtio-net-pci,netdev=h0,disable-legacy=on,iommu_platform=on,mac=52:54:00:00:88:01',
  '-netdev', 'hubport,id=h1,hubid=0', '-device', 'virtio-net-pci,netdev=h1,disable-legacy=on,iommu_platform=on,mac=52:54:00:00:88:02',
];

interface Case {
  name: string;
  ours: number;
  kernel: number;
  unit: string;
  ratio: number;
  oursRounds?: number[];
  kernelRounds?: number[];
}

async function main(): Promise<number> {
  const pingpong = buildPingPong();
  const guestArgs = ['--pingpong', pingpong];
  for (const o of ['--seconds', '--warmup', '--rounds', '--rtts']) {
    const v = arg(o);
    if (v !== undefined) guestArgs.push(o, v);
  }
  const t0 = Date.now();
  let stdout: string;
  try {
    const r = await runInGuest({
      devices: NET_BENCH_DEVICES,
      command: `node dist/bench/net/guest.js ${guestArgs.join(' ')}`,
      timeoutMs: 30 * 60_000,
      onConsole: (l) => {
        if (process.argv.includes('--verbose')) process.stderr.write(`${l}\n`);
      },
    });
    stdout = r.stdout;
    if (r.exitCode !== 0) {
      process.stderr.write(`${stdout}\nbench:net: the guest side failed (exit ${r.exitCode}):\n${r.consoleTail.join('\n')}\n`);
      return 1;
    }
  } catch (e) {
    if (e instanceof GuestRunError) {
      process.stderr.write(`${e.message}\n`);
      return 1;
    }
    throw e;
  }
  const jsonLine = stdout.split('\n').find((l) => l.startsWith('BENCH_JSON '));
  if (!jsonLine) {
    process.stderr.write(`${stdout}\nbench:net: no BENCH_JSON line from the guest\n`);
    return 1;
  }
  for (const l of stdout.split('\n')) if (l && !l.startsWith('BENCH_JSON ')) console.log(l);
  const data = JSON.parse(jsonLine.slice('BENCH_JSON '.length)) as { cases: Case[] };
  console.log('');
  console.log(`virtio-net on a QEMU hub, guest with 2 vCPUs (TCG), one per side; ${Math.round((Date.now() - t0) / 1000)} s in all`);
  console.log(`${'case'.padEnd(14)} ${'ours'.padStart(10)} ${'kernel'.padStart(10)} unit  ${'ratio'.padStart(6)}   per round (ours | kernel)`);
  for (const c of data.cases) {
    console.log(`${c.name.padEnd(14)} ${String(c.ours).padStart(10)} ${String(c.kernel).padStart(10)} ${c.unit.padEnd(4)}  ${c.ratio.toFixed(2).padStart(6)}   ${c.oursRounds ? `${c.oursRounds.join(' ')} | ${c.kernelRounds!.join(' ')}` : ''}`);
  }
  console.log('pps: ours on both NICs vs pktgen -> virtio_net, counted at the receiver; ratio ours/kernel.');
  console.log('rtt: 60-byte frame ping-pong, ours on both NICs vs AF_PACKET on virtio_net; ratio kernel/ours (above 1: ours faster).');
  const result = { bench: 'net', cases: data.cases.map((c) => ({ name: c.name, ours: c.ours, baseline: c.kernel, unit: c.unit, ratio: c.ratio })) };
  console.log(`RESULT ${JSON.stringify(result)}`);
  return 0;
}

if (require.main === module) {
  installSignalHandlers();
  main().then(
    (code) => (process.exitCode = code),
    (e: Error) => {
      console.error(e.stack ?? e.message);
      process.exitCode = 1;
    },
  );
}
