/**
 * The shared NVMe suite (test/shared/nvme-driver-suite.ts, the same test bodies as
 * test/guest/nvme.test.ts runs on vfio-pci directly) with the driver in this process and QEMU's
 * nvme drives held by `userpci proxy` in two others, over vfio-user: once with the BARs mapped by
 * the client, once with --trace (every access a message, written to the trace).
 */
import { describe, before, after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { bindToVfio, unbindFromVfio, boundDriver } from '../../src/pci/bind';
import { requireGuest } from './guest-env';
import { nvmeBySerial } from './nvme-drives';
import { registerNvmeDriverSuite } from '../shared/nvme-driver-suite';

const CLI = path.resolve(__dirname, '../../../bin/userpci.js');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'userpci-proxy-nvme-'));
let devA: string;
let devB: string;

before(() => {
  requireGuest();
  const found = nvmeBySerial();
  devA = found.get('userpci-a')!;
  devB = found.get('userpci-b')!;
  assert.ok(devA && devB, `expected NVMe devices with serials userpci-a and userpci-b, found ${[...found.keys()].join(', ')}`);
  bindToVfio(devA);
  bindToVfio(devB);
});

after(() => {
  for (const a of [devA, devB]) {
    if (a && boundDriver(a) === 'vfio-pci') unbindFromVfio(a);
  }
});

async function startProxy(address: string, socket: string, trace?: string): Promise<ChildProcess> {
  const proc = spawn(process.execPath, [CLI, 'proxy', address, '--socket', socket, ...(trace ? ['--trace', trace] : [])], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  await new Promise<void>((resolve, reject) => {
    proc.stderr!.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      if (stderr.includes('listening')) resolve();
    });
    proc.on('exit', (code) => reject(new Error(`userpci proxy ${address} exited (${code}) before listening: ${stderr}`)));
  });
  return proc;
}

async function stopProxy(proc: ChildProcess | undefined): Promise<void> {
  if (!proc || proc.exitCode !== null) return;
  const exited = once(proc, 'exit');
  proc.kill('SIGTERM');
  const [code] = await exited;
  assert.equal(code, 0, 'the proxy exits cleanly');
}

for (const traced of [false, true]) {
  describe(`NVMe through userpci proxy${traced ? ' --trace' : ''}`, () => {
    const tag = traced ? 'traced' : 'plain';
    const sockA = path.join(dir, `${tag}-a.sock`);
    const sockB = path.join(dir, `${tag}-b.sock`);
    const traceA = path.join(dir, `${tag}-a.trace`);
    let proxyA: ChildProcess | undefined;
    let proxyB: ChildProcess | undefined;
    const startA = async () => {
      proxyA = await startProxy(devA, sockA, traced ? traceA : undefined);
    };
    before(async () => {
      await startA();
      proxyB = await startProxy(devB, sockB, traced ? path.join(dir, `${tag}-b.trace`) : undefined);
    });
    after(async () => {
      await stopProxy(proxyA);
      await stopProxy(proxyB);
    });

    registerNvmeDriverSuite({
      label: `proxy${traced ? ' --trace' : ''}`,
      a: () => sockA,
      b: () => sockB,
      pciA: () => devA,
      releaseA: () => stopProxy(proxyA),
      retakeA: startA,
      mapsAnyMemory: false,
    });

    test(`proxy${traced ? ' --trace' : ''}: the proxies served every client and are still there`, () => {
      assert.equal(proxyA!.exitCode, null);
      assert.equal(proxyB!.exitCode, null);
      if (traced) {
        // Drive A's trace (appended to across the proxy's restart): doorbells, maps, MSI-X.
        const events = fs.readFileSync(traceA, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
        assert.ok(events.some((e) => e.ev === 'write' && e.region === 0 && e.offset >= 0x1000), 'doorbell writes (BAR0 from 0x1000)');
        assert.ok(events.some((e) => e.ev === 'dma-map' && e.fd === true), 'DMA maps by fd');
        assert.ok(events.some((e) => e.ev === 'irq'), 'interrupts');
      }
    });
  });
}
