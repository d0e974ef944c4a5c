/**
 * `userpci proxy` against the real thing: QEMU's edu behind the guest kernel's vfio-pci, held by
 * the proxy in one process and driven over vfio-user by the edu driver in another (this test
 * process, or a child killed mid-DMA). The shared edu suite runs through it with and without
 * --trace.
 */
import { test, before, after, describe } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { once } from 'node:events';
import { openDevice } from '../../src/device/open';
import { EduDriver } from '../../src/drivers/edu/edu-driver';
import { EDU_DEVICE_ID, EDU_VENDOR_ID, DMA_BUFFER_USABLE } from '../../src/drivers/edu/registers';
import { requireGuest, boundDevices } from './guest-env';
import { startProxy, stopProxy } from './proxy-process';
import { pattern, registerEduDriverSuite } from '../shared/edu-driver-suite';

const CLI = path.resolve(__dirname, '../../../bin/userpci.js');
const HUGE = 2 << 20;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'userpci-proxy-'));
let edu0: string;

before(() => {
  requireGuest();
  [edu0] = boundDevices(EDU_VENDOR_ID, EDU_DEVICE_ID, 2) as [string, string];
});

/** A short drive of the edu driver through the proxy: registers, interrupts, DMA through the real IOMMU. */
async function driveEdu(socket: string): Promise<{ mappable: boolean }> {
  await using device = await openDevice(socket, { dmaMask: 0xfffffff });
  assert.equal(device.kind, 'vfio-user');
  const edu = new EduDriver(device);
  assert.equal(edu.identify().id, 0x010000ed);
  assert.equal(await edu.factorial(10), 3628800);
  edu.useInterrupts('msi');
  assert.equal(await edu.factorial(12), 479001600);
  edu.useInterrupts(undefined);
  const data = pattern(DMA_BUFFER_USABLE, 7);
  await edu.copyToDevice(data, 0);
  assert.deepEqual(await edu.copyFromDevice(0, DMA_BUFFER_USABLE), data, 'DMA both ways through the coherent buffer, mapped in the real IOMMU');
  edu.release();
  return { mappable: device.backend.regionInfo(0).mappable };
}

/**
 * The shared edu suite (the same test bodies as against VFIO directly and the vfio-user model),
 * with the driver in this process and the real edu held by `userpci proxy` in another, once with
 * BARs the client maps itself, once with --trace. The real IOMMU enforces maps and directions
 * (fullIommu); memory reaches it only by memfd.
 */
for (const traced of [false, true]) {
  const name = traced ? 'proxy --trace' : 'proxy';
  describe(`through userpci ${name}`, () => {
    const socket = path.join(dir, traced ? 'traced.sock' : 'plain.sock');
    const trace = path.join(dir, 'edu.trace');
    let proc: ChildProcess | undefined;
    before(async () => (proc = await startProxy(edu0, socket, traced ? trace : undefined)));
    after(() => stopProxy(proc));

    registerEduDriverSuite({
      label: `${name}, QEMU edu`,
      open: () => openDevice(socket, { dmaMask: 0xfffffff }),
      fullIommu: true,
      mapsAnyMemory: false,
      timeoutMs: 60_000, // a hang guard, as for VFIO directly (a busy host's TCG guest can be slow)
    });

    if (traced) tracedProxyTests(socket, trace, () => proc!);
    else plainProxyTests(socket, () => proc!);
  });
}

/** Without a trace: the client maps BARs itself, and interrupts bypass the proxy. */
function plainProxyTests(socket: string, proxy: () => ChildProcess): void {
  test('proxy: BAR0 is offered for mmap (VFIO allows it), so the client maps it itself', async () => {
    await using device = await openDevice(socket, { dmaMask: 0xfffffff });
    assert.equal(device.backend.regionInfo(0).mappable, true);
  });

  test('proxy: part of a 2 MiB hugepage DmaBuffer maps by fd (the server maps the hugepage around it); the device writes exactly there', async () => {
    fs.writeFileSync('/proc/sys/vm/nr_hugepages', '4');
    try {
      await using device = await openDevice(socket, { dmaMask: 0xfffffff });
      const edu = new EduDriver(device);
      await edu.ready();
      const buf = device.allocDma(HUGE, { hugePages: 'always' });
      const bytes = new Uint8Array(buf.buffer);
      const part = bytes.subarray(0x3005, 0x3005 + 4000); // neither its offset nor its length a hugepage's
      const map = device.mapDma(part, 'from-device');
      const data = pattern(4000, 3);
      await edu.copyToDevice(data, 0);
      await edu.dma('from-device', map.iova, 0, 4000);
      assert.deepEqual(part.slice(), data);
      assert.ok(bytes.subarray(0, 0x3005).every((b) => b === 0) && bytes.subarray(0x3005 + 4000).every((b) => b === 0), 'nothing else written');
      map.unmap();
      buf.free();
      edu.release();
    } finally {
      fs.writeFileSync('/proc/sys/vm/nr_hugepages', '0');
    }
  });

  test('proxy: interrupts go from VFIO straight to the driver\'s eventfd: an MSI arrives while the proxy is stopped', async () => {
    await using device = await openDevice(socket, { dmaMask: 0xfffffff });
    const edu = new EduDriver(device);
    await edu.ready();
    const msi = edu.useInterrupts('msi')!;
    proxy().kill('SIGSTOP');
    try {
      edu.raiseInterrupt(0x100); // BAR0 is mapped by this process: the write needs no proxy either
      assert.equal(await msi.wait({ timeoutMs: 60_000 }), 1); // a hang guard
      assert.equal(edu.acknowledgeInterrupt(), 0x100);
    } finally {
      proxy().kill('SIGCONT');
    }
    edu.useInterrupts(undefined); // SET_IRQS goes through the proxy again
  });
}

/** With a trace: every access is a message, and the trace has them all. */
function tracedProxyTests(socket: string, trace: string, proxy: () => ChildProcess): void {
  test('proxy --trace: nothing is offered for mmap; no reset where VFIO has none', async () => {
    const { mappable } = await driveEdu(socket);
    assert.equal(mappable, false, 'with a trace nothing is mapped by the client');
    // QEMU's edu offers VFIO no reset method: the proxy passes that on, as VFIO would say it.
    await using device = await openDevice(socket, { dmaMask: 0xfffffff });
    assert.equal(device.backend.deviceInfo().canReset, false);
    assert.throws(() => device.reset(), (e: any) => e.code === 'ENOTSUP');
  });

  test('proxy --trace: every access, DMA map and interrupt of the suite was written; `userpci trace` prints it', async () => {
    await stopProxy(proxy());
    const events = fs.readFileSync(trace, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const has = (pred: (e: any) => boolean, what: string) => assert.ok(events.some(pred), `trace has ${what}`);
    assert.ok(events.every((e) => typeof e.t === 'number' && typeof e.ev === 'string'), 'each line has a timestamp and an event');
    has((e) => e.ev === 'read' && e.region === 0 && e.offset === 0 && e.data === 'ed000001', 'the ID register read');
    has((e) => e.ev === 'write' && e.region === 7 && e.offset === 4, 'a config write (command register)');
    has((e) => e.ev === 'dma-map' && e.fd === true && !e.error, 'a DMA map by fd');
    has((e) => e.ev === 'dma-map' && e.fd === false && e.error === 'ENOTSUP', 'the refused fd-less map');
    has((e) => e.ev === 'dma-unmap', 'a DMA unmap');
    has((e) => e.ev === 'irq' && e.index === 1, 'an MSI');
    has((e) => e.ev === 'irq' && e.index === 0, 'an INTx');
    has((e) => e.ev === 'stop-dma', 'bus mastering off when a client left');
    const printed = spawnSync(process.execPath, [CLI, 'trace', trace], { encoding: 'utf8' });
    assert.equal(printed.status, 0, printed.stderr);
    assert.match(printed.stdout, /bar0\s+read32\s+\[0x0\] = 0x010000ed/);
    assert.match(printed.stdout, /dma map\s+iova 0x[0-9a-f]+ \+0x1000 rw/);
    assert.match(printed.stdout, /irq\s+msi\[0\] x\d+/);
  });
}

test('proxy: kill -9 of the driver mid-DMA leaves the proxy serving the next client', async () => {
  const socket = path.join(dir, 'victim.sock');
  const proxy = await startProxy(edu0, socket);
  try {
    const child = spawn(process.execPath, [path.join(__dirname, 'edu-dma-loop.js'), socket], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (d) => String(d).includes('running') && resolve());
      child.on('exit', (code) => reject(new Error(`DMA loop exited ${code}: ${stderr}`)));
    });
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    const [, signal] = await exited;
    assert.equal(signal, 'SIGKILL');
    // The next client: the device (its DMA stopped, the dead client's maps gone) works again.
    await driveEdu(socket);
    assert.equal(proxy.exitCode, null, 'the proxy lived through it');
  } finally {
    await stopProxy(proxy);
  }
});
