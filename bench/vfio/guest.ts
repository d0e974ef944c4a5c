/**
 * The TypeScript half of the VFIO and interrupt benchmarks, run in the guest beside
 * edu-baseline.c doing the same operations. Prints one JSON object, like the C program.
 *
 *   node dist/bench/vfio/guest.js regs|dma|irq ADDRESS N
 */
import { openDevice } from '../../src/device/open';

async function main(): Promise<void> {
  const [mode, address, count] = process.argv.slice(2);
  const n = Number(count);
  const device = await openDevice(address!);
  const bar = device.bar(0);
  if (mode === 'regs') {
    let sink = 0;
    for (let i = 0; i < 1000; i++) sink += bar.read32(0); // let the JIT settle
    const t0 = process.hrtime();
    for (let i = 0; i < n; i++) sink += bar.read32(0);
    const t1 = process.hrtime(t0);
    const t2 = process.hrtime();
    for (let i = 0; i < n; i++) bar.write32(4, i);
    const t3 = process.hrtime(t2);
    if (sink === 42) console.log('');
    console.log(JSON.stringify({ readNs: ns(t1) / n, writeNs: ns(t3) / n }));
  } else if (mode === 'dma') {
    const t0 = process.hrtime();
    for (let i = 0; i < n; i++) device.allocDma(4096).free();
    const t1 = process.hrtime(t0);
    const buffer = new Uint8Array(4096);
    const t2 = process.hrtime();
    for (let i = 0; i < n; i++) device.mapDma(buffer, 'to-device').unmap();
    const t3 = process.hrtime(t2);
    console.log(JSON.stringify({ coherentPerSec: n / (ns(t1) / 1e9), streamingPerSec: n / (ns(t3) / 1e9) }));
  } else if (mode === 'irq') {
    const [vector] = device.enableInterrupts('msi');
    const v = vector!;
    const lat = new Float64Array(n);
    for (let i = -100; i < n; i++) {
      const t0 = process.hrtime();
      bar.write32(0x60, 1); // raise
      await v.wait();
      const dt = process.hrtime(t0);
      if (i >= 0) lat[i] = ns(dt);
      bar.write32(0x64, bar.read32(0x24)); // acknowledge
    }
    lat.sort();
    const pct = (p: number) => lat[Math.floor((n * p) / 100)]! / 1e3;
    console.log(JSON.stringify({ p50Us: pct(50), p90Us: pct(90), p99Us: pct(99) }));
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  device.close();
}

function ns([s, n]: [number, number]): number {
  return s * 1e9 + n;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
