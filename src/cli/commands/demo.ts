/**
 * `userpci demo`: the project's main job on a machine without hardware. It starts the edu model
 * server (`userpci serve edu` in a child process, a real separate peer), opens it with
 * openDevice(socket) as any driver would, and drives it with the edu reference driver, showing
 * each step with its timing: identification, liveness, factorial, a DMA round trip through a
 * coherent DMA buffer, and completions by INTx and by MSI. Then it shuts everything down.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { UserpciError } from '../../errors.js';
import { openDevice } from '../../device/open.js';
import type { PciDevice } from '../../device/device.js';
import type { DmaBuffer } from '../../dma/dma-space.js';
import { EduDriver } from '../../drivers/edu/edu-driver.js';
import { DMA_BUFFER_USABLE, EDU_DEFAULT_DMA_MASK } from '../../drivers/edu/registers.js';
import { UsageError, parseCommandLine, print, toJson } from '../format.js';
import type { CliCommand } from '../main.js';

const USAGE = `userpci demo [--socket PATH] [--json]

Drive an emulated edu device with the edu reference driver, no hardware needed. Starts
"userpci serve edu" in a child process on a temporary socket, opens it with openDevice(socket)
exactly as a driver opens real hardware, and runs: identification, liveness, factorial (polled),
a DMA round trip both ways through a coherent DMA buffer, and factorial and DMA completion by
INTx and by MSI interrupts. Each step is printed with its timing; the exit code is 0 when every
step passed, 1 (with the failing step named) otherwise.

Options:
  --socket PATH   drive the vfio-user edu server already listening at PATH instead
  --json          print one JSON object (steps, timings, results) instead of text`;

/** How long the child server may take to start listening. */
const SERVER_START_MS = 15_000;
/** How long it may take to exit after SIGTERM. */
const SERVER_STOP_MS = 5_000;
/** Per-operation timeout handed to the driver. */
const OP_TIMEOUT_MS = 5_000;
const FACTORIAL_INPUT = 10;

export interface DemoStep {
  name: string;
  ok: boolean;
  ms: number;
  summary: string;
  details?: Record<string, unknown>;
}

interface StepOutcome {
  summary: string;
  details?: Record<string, unknown>;
}

class StepFailure extends Error {
  constructor(
    readonly step: string,
    readonly reason: unknown,
  ) {
    super(`${step}: ${reason instanceof Error ? reason.message : String(reason)}`);
  }
}

/** A step that ran but produced the wrong result. */
class CheckFailed extends UserpciError {
  constructor(message: string) {
    super('EIO', message);
  }
}

function check(condition: boolean, message: string): void {
  if (!condition) throw new CheckFailed(message);
}

export function formatMs(ms: number): string {
  if (ms < 1) return `${(ms * 1000).toFixed(0)} µs`;
  if (ms < 1000) return `${ms.toFixed(1)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

/** Milliseconds to the microsecond, for JSON. */
const roundMs = (ms: number) => Math.round(ms * 1000) / 1000;
const hex = (value: number) => `0x${value.toString(16)}`;
const hex32 = (value: number) => `0x${(value >>> 0).toString(16).padStart(8, '0')}`;

function formatBytes(bytes: number): string {
  if (bytes >= 1 << 20 && bytes % (1 << 20) === 0) return `${bytes >> 20} MiB`;
  if (bytes >= 1024 && bytes % 1024 === 0) return `${bytes >> 10} KiB`;
  return `${bytes} bytes`;
}

/** n! modulo 2^32, as the device computes it. */
function expectedFactorial(n: number): number {
  let r = 1n;
  for (let i = 2n; i <= BigInt(n); i++) r = (r * i) & 0xffffffffn;
  return Number(r);
}

function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 31 + seed) & 0xff;
  return out;
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) if (a[i] !== b[i]) return i;
  return -1;
}

class Reporter {
  readonly steps: DemoStep[] = [];

  constructor(private readonly json: boolean) {}

  line(text: string): void {
    if (!this.json) print(text);
  }

  async step(name: string, body: () => Promise<StepOutcome> | StepOutcome): Promise<void> {
    const t0 = performance.now();
    let outcome: StepOutcome;
    try {
      outcome = await body();
    } catch (err) {
      const ms = performance.now() - t0;
      this.steps.push({ name, ok: false, ms: roundMs(ms), summary: err instanceof Error ? err.message : String(err) });
      this.line(`  ${name.padEnd(16)} ${'FAILED'.padStart(9)}  after ${formatMs(ms)}`);
      throw new StepFailure(name, err);
    }
    const ms = performance.now() - t0;
    this.steps.push({ name, ok: true, ms: roundMs(ms), summary: outcome.summary, ...(outcome.details ? { details: outcome.details } : {}) });
    this.line(`  ${name.padEnd(16)} ${formatMs(ms).padStart(9)}  ${outcome.summary}`);
  }
}

/** `userpci serve edu` in a child process on a fresh temporary socket. */
class ServerChild {
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'userpci-demo-'));
  readonly socketPath = path.join(this.dir, 'edu.sock');
  private child: ChildProcess | undefined;
  private exitCode: Promise<{ code: number | null; signal: NodeJS.Signals | null }> | undefined;
  private stderr = '';
  private readonly killOnExit = () => this.child?.kill('SIGKILL');

  get pid(): number | undefined {
    return this.child?.pid;
  }

  async start(): Promise<void> {
    // dist/src/cli/commands/demo.js -> <package root>/bin/userpci.js
    const entry = path.resolve(__dirname, '..', '..', '..', '..', 'bin', 'userpci.js');
    const child = spawn(process.execPath, [entry, 'serve', 'edu', '--socket', this.socketPath], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    process.once('exit', this.killOnExit);
    this.exitCode = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new UserpciError('ETIMEDOUT', `userpci serve edu did not listen within ${SERVER_START_MS} ms${this.tail()}`));
      }, SERVER_START_MS);
      child.stderr!.on('data', (chunk: Buffer) => {
        this.stderr += chunk.toString();
        if (this.stderr.includes('listening')) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(new UserpciError('EIO', `cannot start userpci serve edu: ${err.message}`));
      });
      void this.exitCode!.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new UserpciError('EIO', `userpci serve edu exited (${signal ?? `code ${code}`}) before listening${this.tail()}`));
      });
    });
  }

  /** SIGTERM, then wait for it to exit; its exit code (SIGKILL after a timeout is a failure). */
  async stop(): Promise<number | null> {
    const child = this.child;
    if (!child || !this.exitCode) return 0;
    child.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const result = await Promise.race([
      this.exitCode,
      new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), SERVER_STOP_MS))),
    ]);
    clearTimeout(timer);
    this.child = undefined;
    process.removeListener('exit', this.killOnExit);
    if (!result) {
      child.kill('SIGKILL');
      throw new UserpciError('ETIMEDOUT', `userpci serve edu did not exit within ${SERVER_STOP_MS} ms of SIGTERM`);
    }
    if (result.signal) throw new UserpciError('EIO', `userpci serve edu was killed by ${result.signal}${this.tail()}`);
    return result.code;
  }

  /** Last resort on failure: no server outlives the demo. */
  kill(): void {
    this.child?.kill('SIGKILL');
    this.child = undefined;
    process.removeListener('exit', this.killOnExit);
  }

  removeDir(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** What the server said, for failure messages. */
  tail(): string {
    const text = this.stderr.trim().split('\n').slice(-5).join('; ');
    return text ? ` (server said: ${text})` : '';
  }
}

async function runDemo(reporter: Reporter, socketOption: string | undefined): Promise<{ socket: string; serverPid: number | null }> {
  const server = socketOption === undefined ? new ServerChild() : undefined;
  const socket = socketOption ?? server!.socketPath;
  let device: PciDevice | undefined;
  let edu: EduDriver | undefined;
  let dmaBuffer: DmaBuffer | undefined;
  const onSignal = (signal: NodeJS.Signals) => {
    server?.kill();
    server?.removeDir();
    process.exit(signal === 'SIGINT' ? 130 : 143);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    reporter.line(`userpci demo: the edu driver against ${server ? 'the edu model served by a child process' : `the server at ${socket}`}, over vfio-user`);

    if (server) {
      await reporter.step('server', async () => {
        await server.start();
        return { summary: `userpci serve edu (pid ${server.pid}) listening on ${socket}`, details: { pid: server.pid, socket } };
      });
    }

    await reporter.step('open', async () => {
      device = await openDevice(socket, { dmaMask: EDU_DEFAULT_DMA_MASK });
      edu = new EduDriver(device);
      const twin = (device.backend as { twinSocket?: boolean }).twinSocket === true;
      return {
        summary: `openDevice(socket): ${device.kind}${twin ? ' (twin socket)' : ''}, BAR0 ${formatBytes(edu.regs.size)}, DMA mask ${hex(device.dmaLimit)}`,
        details: { backend: device.kind, twinSocket: twin, bar0Size: edu.regs.size, dmaMask: hex(device.dmaLimit) },
      };
    });
    const driver = edu!;
    const dev = device!;

    await reporter.step('identify', () => {
      const id = driver.identify();
      check(id.id === 0x010000ed, `ID register reads ${hex32(id.id)}, expected 0x010000ed`);
      const ids = `${dev.vendorId.toString(16).padStart(4, '0')}:${dev.deviceId.toString(16).padStart(4, '0')}`;
      return { summary: `PCI ${ids}, ID register ${hex32(id.id)}: edu version ${id.major}.${id.minor}`, details: { pciId: ids, id: hex32(id.id), version: `${id.major}.${id.minor}` } };
    });

    await reporter.step('liveness', () => {
      const value = 0x5a5aa5a5;
      check(driver.checkLiveness(value), 'the liveness register did not invert what was written');
      const back = driver.regs.read32(0x04);
      return { summary: `wrote ${hex32(value)}, read back ${hex32(back)} (inverted)`, details: { wrote: hex32(value), read: hex32(back) } };
    });

    await reporter.step('factorial', async () => {
      const result = await driver.factorial(FACTORIAL_INPUT, { timeoutMs: OP_TIMEOUT_MS });
      check(result === expectedFactorial(FACTORIAL_INPUT), `${FACTORIAL_INPUT}! came back as ${result}, expected ${expectedFactorial(FACTORIAL_INPUT)}`);
      return { summary: `${FACTORIAL_INPUT}! = ${result}, polled`, details: { n: FACTORIAL_INPUT, result, mode: 'polled' } };
    });

    // One coherent buffer: the first page is the source, the second receives the copy back.
    const length = DMA_BUFFER_USABLE;
    const sent = pattern(length, 0x2a);
    await reporter.step('dma-alloc', () => {
      dmaBuffer = dev.allocDma(2 * 4096);
      return {
        summary: `coherent DMA buffer, ${formatBytes(dmaBuffer.size)} at IOVA ${hex(dmaBuffer.iova)} (a memfd shared with the server)`,
        details: { iova: hex(dmaBuffer.iova), size: dmaBuffer.size },
      };
    });
    const buffer = dmaBuffer!;
    await reporter.step('dma-to-device', async () => {
      new Uint8Array(buffer.buffer, 0, length).set(sent);
      await driver.dma('to-device', buffer.iova, 0, length, { timeoutMs: OP_TIMEOUT_MS });
      return {
        summary: `${length} bytes from IOVA ${hex(buffer.iova)} into the device's buffer`,
        details: { bytes: length, iova: hex(buffer.iova), deviceOffset: 0 },
      };
    });
    await reporter.step('dma-from-device', async () => {
      const back = new Uint8Array(buffer.buffer, 4096, length);
      back.fill(0);
      await driver.dma('from-device', buffer.iovaAt(4096), 0, length, { timeoutMs: OP_TIMEOUT_MS });
      const at = firstDifference(back, sent);
      check(at < 0, `the copy back differs from what was sent at byte ${at}`);
      return {
        summary: `${length} bytes from the device's buffer to IOVA ${hex(buffer.iovaAt(4096))}, verified identical`,
        details: { bytes: length, iova: hex(buffer.iovaAt(4096)), verified: true },
      };
    });

    for (const mode of ['intx', 'msi'] as const) {
      await reporter.step(mode, async () => {
        const vector = driver.useInterrupts(mode)!;
        try {
          const t0 = performance.now();
          const result = await driver.factorial(FACTORIAL_INPUT, { timeoutMs: OP_TIMEOUT_MS });
          const factMs = performance.now() - t0;
          check(result === expectedFactorial(FACTORIAL_INPUT), `${FACTORIAL_INPUT}! by interrupt came back as ${result}`);
          const data = pattern(length, mode === 'intx' ? 1 : 2);
          const t1 = performance.now();
          await driver.copyToDevice(data, 0, { timeoutMs: OP_TIMEOUT_MS });
          const back = await driver.copyFromDevice(0, length, { timeoutMs: OP_TIMEOUT_MS });
          const dmaMs = performance.now() - t1;
          const at = firstDifference(back, data);
          check(at < 0, `the DMA round trip by interrupt differs at byte ${at}`);
          // MSI is a message per completion (3 here); INTx a level that may be lowered before it
          // is delivered, so at least one. Give the last one a moment to arrive.
          const expected = mode === 'msi' ? 3 : 1;
          for (let waited = 0; vector.total < expected && waited < 1000; waited += 10) await new Promise((r) => setTimeout(r, 10));
          check(vector.total >= expected, `${vector.total} ${mode} interrupts arrived, expected at least ${expected}`);
          const name = mode === 'intx' ? 'INTx' : 'MSI';
          return {
            summary: `${name}: ${FACTORIAL_INPUT}! = ${result} in ${formatMs(factMs)}, ${length}-byte DMA round trip in ${formatMs(dmaMs)}, verified; ${vector.total} interrupts`,
            details: { factorial: result, factorialMs: roundMs(factMs), dmaBytes: length, dmaRoundTripMs: roundMs(dmaMs), interrupts: vector.total },
          };
        } finally {
          driver.useInterrupts(undefined);
        }
      });
    }

    await reporter.step('shutdown', async () => {
      driver.release();
      buffer.free();
      dmaBuffer = undefined;
      dev.close();
      device = undefined;
      if (!server) return { summary: 'DMA memory freed, device closed (the server keeps running)', details: {} };
      const code = await server.stop();
      check(code === 0, `userpci serve edu exited with code ${code}${server.tail()}`);
      return { summary: 'DMA memory freed, device closed, server exited 0', details: { serverExit: code } };
    });
    return { socket, serverPid: server?.pid ?? null };
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    try {
      if (dmaBuffer && !dmaBuffer.freed) dmaBuffer.free();
    } catch {
      // the device is going away anyway
    }
    device?.close();
    server?.kill();
    server?.removeDir();
  }
}

export const demoCommand: CliCommand = {
  name: 'demo',
  summary: 'start the edu model server and drive it with the edu driver, step by step (no hardware needed)',
  usage: USAGE,
  async run(args: string[]): Promise<number> {
    const { values } = parseCommandLine(args, { socket: { type: 'string' }, json: { type: 'boolean', default: false } }, []);
    if (values.socket === '') throw new UsageError('--socket needs a path');
    const json = values.json === true;
    const reporter = new Reporter(json);
    const t0 = performance.now();
    try {
      const { socket } = await runDemo(reporter, values.socket);
      const totalMs = performance.now() - t0;
      if (json) print(toJson({ ok: true, socket, totalMs: roundMs(totalMs), steps: reporter.steps }));
      else reporter.line(`ok: ${reporter.steps.length} steps passed in ${formatMs(totalMs)}`);
      return 0;
    } catch (err) {
      const totalMs = performance.now() - t0;
      const failedStep = err instanceof StepFailure ? err.step : undefined;
      const cause = err instanceof StepFailure ? err.reason : err;
      const message = cause instanceof Error ? cause.message : String(cause);
      const code = (cause as { code?: unknown } | null)?.code;
      if (json) {
        print(toJson({ ok: false, failedStep: failedStep ?? null, error: { code: typeof code === 'string' ? code : null, message }, totalMs: roundMs(totalMs), steps: reporter.steps }));
      }
      process.stderr.write(`userpci demo: FAILED${failedStep ? ` at step "${failedStep}"` : ''}: ${message}\n`);
      return 1;
    }
  },
};

export default demoCommand;
