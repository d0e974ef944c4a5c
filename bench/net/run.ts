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
import { arg, benchMain, buildStatic, runGuestBench } from '../guest-bench';

const NET_BENCH_DEVICES = [
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
  const guestArgs = ['--pingpong', buildStatic('bench/net/kernel-pingpong.c')];
  for (const o of ['--seconds', '--warmup', '--rounds', '--rtts']) {
    const v = arg(o);
    if (v !== undefined) guestArgs.push(o, v);
  }
  const t0 = Date.now();
  const data = await runGuestBench<{ cases: Case[] }>('net', {
    devices: NET_BENCH_DEVICES,
    command: `node dist/bench/net/guest.js ${guestArgs.join(' ')}`,
    timeoutMs: 30 * 60_000,
  });
  if (!data) return 1;
  console.log('');
  console.log(`virtio-net on a QEMU hub, guest with 2 vCPUs (TCG), one per side; ${Math.round((Date.now() - t0) / 1000)} s in all`);
  console.log(`${'case'.padEnd(14)} ${'ours'.padStart(10)} ${'kernel'.padStart(10)} unit  ${'ratio'.padStart(6)}   per round (ours | kernel)`);
  for (const c of data.cases) {
    console.log(`${c.name.padEnd(14)} ${String(c.ours).padStart(10)} ${String(c.kernel).padStart(10)} ${c.unit.padEnd(4)}  ${c.ratio.toFixed(2).padStart(6)}   ${c.oursRounds ? `${c.oursRounds.join(' ')} | ${c.kernelRounds!.join(' ')}` : ''}`);
  }
  console.log('pps: ours on both NICs vs pktgen -> virtio_net, counted at the receiver; ratio ours/kernel.');
  console.log('rtt: 60-byte frame ping-pong, ours on both NICs (spinning; -irq: on the receive interrupt) vs AF_PACKET on virtio_net; ratio kernel/ours (above 1: ours faster).');
  const result = { bench: 'net', cases: data.cases.map((c) => ({ name: c.name, ours: c.ours, baseline: c.kernel, unit: c.unit, ratio: c.ratio })) };
  console.log(`RESULT ${JSON.stringify(result)}`);
  return 0;
}

benchMain(main);
