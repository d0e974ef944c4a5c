/**
 * The shared NVMe suite (test/shared/nvme-driver-suite.ts, the same test bodies as
 * test/guest/nvme.test.ts runs on vfio-pci directly) with the driver in this process and QEMU's
 * nvme drives held by `userpci proxy` in two others, over vfio-user: once with the BARs mapped by
 * the client, once with --trace (every access a message, written to the trace).
 */
import { describe, before, after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { twoDrivesOnVfio } from './nvme-drives';
import { startProxy, stopProxy } from './proxy-process';
import { registerNvmeDriverSuite } from '../shared/nvme-driver-suite';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'userpci-proxy-nvme-'));
const drives = twoDrivesOnVfio();

for (const traced of [false, true]) {
  describe(`NVMe through userpci proxy${traced ? ' --trace' : ''}`, () => {
    const tag = traced ? 'traced' : 'plain';
    const sockA = path.join(dir, `${tag}-a.sock`);
    const sockB = path.join(dir, `${tag}-b.sock`);
    const traceA = path.join(dir, `${tag}-a.trace`);
    let proxyA: ChildProcess | undefined;
    let proxyB: ChildProcess | undefined;
    const startA = async () => {
      proxyA = await startProxy(drives.a(), sockA, traced ? traceA : undefined);
    };
    before(async () => {
      await startA();
      proxyB = await startProxy(drives.b(), sockB, traced ? path.join(dir, `${tag}-b.trace`) : undefined);
    });
    after(async () => {
      await stopProxy(proxyA);
      await stopProxy(proxyB);
    });

    registerNvmeDriverSuite({
      label: `proxy${traced ? ' --trace' : ''}`,
      a: () => sockA,
      b: () => sockB,
      pciA: drives.a,
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
