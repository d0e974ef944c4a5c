/**
 * The TypeScript half of the VFIO and interrupt benchmarks, run in the guest beside
 * edu-baseline.c doing the same operations. Prints one JSON object, like the C program.
 *
 *   node dist/bench/vfio/guest.js regs|dma|irq|irq-thread|irq-thread-fifo|irq-polled ADDRESS N
 *   node dist/bench/vfio/guest.js clock - N     ns per process.hrtime() (no device)
 *
 * irq: the handler on the event loop (default delivery); irq-thread: on the vector's dedicated
 * thread blocked in the kernel on the eventfd; irq-thread-fifo: the same thread SCHED_FIFO
 * (realtimePriority 50, as the kernel's threaded IRQ handlers); irq-polled: the main thread
 * spinning on poll(). The irq modes also print where the IRQ is delivered (irqCpuMask: its
 * effective affinity) and, for the thread modes, where the thread may run (threadCpuMask) and
 * its policy (threadPolicy 1: SCHED_FIFO). With IRQ_SAMPLES=FILE the irq modes also write each
 * sample's start and end (CLOCK_MONOTONIC ns, as process.hrtime) and the thread ids to FILE as
 * JSON, as edu-baseline does, for bench/vfio/irq-trace.ts.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openDevice } from '../../src/device/open';
import type { InterruptVector } from '../../src/irq/interrupt-vector';
import type { Region } from '../../src/device/region';
import { native } from '../../src/native/index';

async function main(): Promise<void> {
  const [mode, address, count] = process.argv.slice(2);
  const n = Number(count);
  if (mode === 'clock') {
    // Per read, the least over batches of 1000 (the batch the host left alone), as edu-baseline.
    const sink = new Float64Array(1);
    let best = Infinity;
    for (let b = 0; b < n / 1000; b++) {
      const t0 = process.hrtime();
      for (let i = 0; i < 1000; i++) sink[0] += process.hrtime()[1];
      const dt = ns(process.hrtime(t0)) / 1000;
      if (b >= 5 && dt < best) best = dt;
    }
    console.log(JSON.stringify({ clockNs: best }));
    return;
  }
  const device = await openDevice(address!);
  device.enableBusMaster(); // MSI and DMA need it; the benchmark is the driver and its edu is idle
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
  } else if (mode === 'irq' || mode === 'irq-thread' || mode === 'irq-thread-fifo' || mode === 'irq-polled') {
    const [vector] = device.enableInterrupts('msi');
    // Raise from (and, but for the thread mode, receive on) the CPU the interrupt is delivered
    // to, as edu-baseline does: under TCG a wake-up of another, halted vCPU costs tens of us.
    const cpus = vector!.hostCpus();
    if (cpus) native.setThreadAffinity(Int32Array.from(cpus));
    const where = { threadCpuMask: -1, threadPolicy: -1, irqTid: -1 };
    const start = new Float64Array(n);
    const lat = mode === 'irq' ? await latencyEventLoop(bar, vector!, n, start)
      : mode === 'irq-polled' ? latencyPolled(bar, vector!, n, start)
      : await latencyThread(bar, vector!, n, mode === 'irq-thread-fifo' ? 50 : undefined, where, start, cpus);
    dumpSamples(start, lat, mode.startsWith('irq-thread') ? where.irqTid : process.pid);
    lat.sort();
    const pct = (p: number) => lat[Math.floor((n * p) / 100)]! / 1e3;
    const irqCpuMask = cpus ? cpus.reduce((m, c) => m | (1 << c), 0) : -1;
    const { threadCpuMask, threadPolicy } = where;
    console.log(JSON.stringify({ p50Us: pct(50), p90Us: pct(90), p99Us: pct(99), irqCpuMask, ...(mode.startsWith('irq-thread') ? { threadCpuMask, threadPolicy } : {}) }));
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  device.close();
}

/**
 * Interrupts taken before measuring: the JIT optimizes the handler and the loops meanwhile (under
 * TCG, code the interpreter or the baseline compiler runs costs microseconds more per interrupt:
 * the thread's handler reached its clock read 3.1-3.4 us p50 after eventfdTake returned once
 * 2000-3000 interrupts had been taken, 5-8 us after 100).
 */
const WARM_UP = Number(process.env.IRQ_WARM_UP ?? 2000);

const RAISE = 0x60;
const ACK = 0x64;
const STATUS = 0x24;

/** Raise to the wait() promise settling on the event loop. */
async function latencyEventLoop(bar: Region, v: InterruptVector, n: number, start: Float64Array): Promise<Float64Array> {
  const lat = new Float64Array(n);
  for (let i = -WARM_UP; i < n; i++) {
    const t0 = process.hrtime();
    bar.write32(RAISE, 1);
    await v.wait();
    const dt = process.hrtime(t0);
    if (i >= 0) {
      lat[i] = ns(dt);
      start[i] = ns(t0);
    }
    bar.write32(ACK, bar.read32(STATUS));
  }
  return lat;
}

/**
 * Raise to the handler's first instruction on the vector's interrupt thread (SCHED_FIFO at
 * realtimePriority when given). The raiser then blocks in read(2) on an eventfd the handler
 * signals once it has stamped the interrupt, as edu-baseline's raiser does (Atomics.wait would be
 * V8's futex emulation: a mutex, a condition variable and, with a timeout, clock reads). No hang
 * guard here, as in C: the guest's timeout is one.
 */
async function latencyThread(bar: Region, v: InterruptVector, n: number, realtimePriority: number | undefined, where: { threadCpuMask: number; threadPolicy: number; irqTid: number }, start: Float64Array, cpus: number[] | undefined): Promise<Float64Array> {
  const shared = new SharedArrayBuffer(24);
  const time = new Float64Array(shared, 0, 1);
  const placed = new Int32Array(shared, 12, 3);
  const done = native.eventfd(0, 0); // blocking: the raiser sleeps in the kernel
  await v.deliverOnThread({ module: path.join(__dirname, 'irq-thread-handler.js'), data: { shared, done }, ...(realtimePriority !== undefined ? { realtimePriority } : {}) });
  const lat = new Float64Array(n);
  for (let i = -WARM_UP; i < n; i++) {
    // Indexed, not destructured; the span starts at the clock read, and its arithmetic waits
    // until the raise is out (as little as possible between the clock read and the store).
    const t = process.hrtime();
    bar.write32(RAISE, 1);
    const t0 = t[0] * 1e9 + t[1];
    native.eventfdTake(done);
    if (i === -WARM_UP) placeOtherThreads(placed[2]!, cpus);
    if (i >= 0) {
      lat[i] = time[0]! - t0;
      start[i] = t0;
    }
    bar.write32(ACK, bar.read32(STATUS));
  }
  await v.deliverOnEventLoop();
  native.close(done);
  where.threadCpuMask = placed[0]!;
  where.threadPolicy = placed[1]!;
  where.irqTid = placed[2]!;
  return lat;
}

/**
 * IRQ_OTHER_THREADS=away|irq: the process's threads other than the raiser and the interrupt
 * thread (V8's compiler and GC helpers, libuv's) moved off the IRQ's CPUs, or onto them, once
 * the interrupt thread runs (taskset: the addon pins only the calling thread).
 */
function placeOtherThreads(irqTid: number, irqCpus: number[] | undefined): void {
  const how = process.env.IRQ_OTHER_THREADS;
  if (!how || !irqCpus) return;
  const all = fs.readdirSync('/sys/devices/system/cpu').filter((d) => /^cpu\d+$/.test(d)).map((d) => Number(d.slice(3)));
  const target = how === 'away' ? all.filter((c) => !irqCpus.includes(c)) : irqCpus;
  if (target.length === 0) return;
  for (const tid of fs.readdirSync('/proc/self/task').map(Number)) {
    if (tid === process.pid || tid === irqTid) continue;
    execFileSync('taskset', ['-p', '-c', target.join(','), String(tid)], { stdio: 'ignore' });
  }
}

/**
 * IRQ_SAMPLES: {pid, irqTid, tids, samples: [[start, end], ...]} in ns (CLOCK_MONOTONIC), in the
 * order taken; tids: the process's threads now (V8's helpers among them; the interrupt thread has ended).
 */
function dumpSamples(start: Float64Array, lat: Float64Array, irqTid: number): void {
  const file = process.env.IRQ_SAMPLES;
  if (!file) return;
  const samples = Array.from(start, (s, i) => [Math.round(s), Math.round(s + lat[i]!)]);
  const tids = fs.readdirSync('/proc/self/task').map(Number);
  fs.writeFileSync(file, `${JSON.stringify({ pid: process.pid, irqTid, tids, samples })}\n`);
}

/** Raise to poll() seeing it, the main thread spinning on the eventfd. */
function latencyPolled(bar: Region, v: InterruptVector, n: number, start: Float64Array): Float64Array {
  v.deliverPolled();
  const lat = new Float64Array(n);
  for (let i = -WARM_UP; i < n; i++) {
    const t0 = process.hrtime();
    bar.write32(RAISE, 1);
    while (v.poll() === 0);
    const dt = process.hrtime(t0);
    if (i >= 0) {
      lat[i] = ns(dt);
      start[i] = ns(t0);
    }
    bar.write32(ACK, bar.read32(STATUS));
  }
  return lat;
}

function ns([s, n]: [number, number]): number {
  return s * 1e9 + n;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
