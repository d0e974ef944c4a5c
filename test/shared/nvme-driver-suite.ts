/**
 * The NVMe driver's guest tests, written once and run against QEMU's nvme reached two ways: the
 * guest kernel's vfio-pci in this process (test/guest/nvme.test.ts), and `userpci proxy` holding
 * it in another process, with and without --trace (test/guest/proxy-nvme.test.ts). The drives
 * (see the 'nvme' row of the suites table):
 *   serial userpci-a: file-backed, 512-byte blocks, MDTS 7 (512 KiB per command)
 *   serial userpci-b: file-backed, 4096-byte blocks, MDTS 10 (4 MiB: PRP lists chain over pages)
 * Each test opens its own controller; one gives drive A to the kernel's nvme driver for a while,
 * to read our bytes through it.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bindToVfio, unbindFromVfio } from '../../src/pci/bind';
import { openDevice } from '../../src/device/open';
import { NvmeController } from '../../src/drivers/nvme/controller';
import { NvmeStatusError } from '../../src/drivers/nvme/errors';
import { planWrites, runWorkload, fillPattern } from '../../src/drivers/nvme/workload';
import * as R from '../../src/drivers/nvme/registers';

const SYS = '/sys/bus/pci/devices';

export interface NvmeSuiteTarget {
  /** Prefix of every test name. */
  label: string;
  /** What openDevice takes for drives A and B: their PCI addresses, or the sockets of proxies holding them. */
  a(): string;
  b(): string;
  /** Drive A's PCI address (bound to vfio-pci). */
  pciA(): string;
  /** Let go of drive A before it goes to the kernel driver, and take it again once it is back on vfio-pci (a proxy stops and restarts). */
  releaseA?(): Promise<void>;
  retakeA?(): Promise<void>;
  /** What device.mapsAnyMemory must say: false through a proxy, whose real IOMMU reaches memory only by memfd. */
  mapsAnyMemory: boolean;
}

export function registerNvmeDriverSuite(target: NvmeSuiteTarget): void {
  const { label } = target;

  test(`${label}: identify: controller and namespaces (512- and 4096-byte LBA formats), MDTS, queues granted`, async () => {
    await using a = await NvmeController.open(target.a(), { queuePairs: 8 });
    assert.equal(a.identity.model, 'QEMU NVMe Ctrl');
    assert.equal(a.identity.serial, 'userpci-a');
    assert.equal(a.identity.mdts, 7);
    assert.equal(a.maxTransfer, 512 * 1024);
    assert.equal(a.grantedQueuePairs, 8);
    assert.ok(a.capabilities.maxQueueEntries >= 64);
    assert.deepEqual(await a.namespaceIds(), [1]);
    const nsA = await a.namespace(1);
    assert.equal(nsA.blockSize, 512);
    assert.equal(nsA.blocks, (64 << 20) / 512);
    assert.ok(nsA.lbaFormats.some((f) => f.blockSize === 4096), 'QEMU offers 4096-byte formats too');
    await using b = await NvmeController.open(target.b());
    const nsB = await b.namespace(1);
    assert.equal(nsB.blockSize, 4096);
    assert.equal(nsB.blocks, (32 << 20) / 4096);
    assert.equal(b.maxTransfer, 4 << 20);
  });

  test(`${label}: random-offset, random-length writes across PRP-list and MDTS boundaries read back equal (512-byte LBAs)`, async () => {
    await using ctrl = await NvmeController.open(target.a(), { defaultQueue: { depth: 32 } });
    const ns = await ctrl.namespace(1);
    const plan = planWrites({ seed: 0x5eed01, blocks: ns.blocks, blockSize: ns.blockSize, count: 48, maxBytes: 2 << 20 });
    assert.ok(plan.some((w) => w.length > ctrl.maxTransfer), 'some writes are split at MDTS');
    assert.ok(plan.some((w) => w.length > 8192 && w.length <= ctrl.maxTransfer), 'some writes use one PRP list');
    assert.ok(plan.some((w) => !w.zeroCopy) && plan.some((w) => w.zeroCopy));
    const r = await runWorkload(ns, plan, { concurrency: 4 });
    assert.deepEqual(r.mismatches, []);
    assert.ok(r.bytesVerified > 0);
    console.log(`# 512-byte LBAs: ${r.writes} writes, ${(r.bytesWritten / 1048576).toFixed(1)} MiB written, ${(r.bytesVerified / 1048576).toFixed(1)} MiB verified in ${r.ms} ms`);
  });

  test(`${label}: 4096-byte LBAs and 4 MiB commands (PRP lists chained over list pages): random writes read back equal`, async () => {
    await using ctrl = await NvmeController.open(target.b(), { defaultQueue: { depth: 16 } });
    const ns = await ctrl.namespace(1);
    assert.equal(ns.blockSize, 4096);
    const plan = planWrites({ seed: 0x5eed02, blocks: ns.blocks, blockSize: 4096, count: 24, maxBytes: 6 << 20 });
    plan.push({ lba: 17, length: 4 << 20, bufferOffset: 8, dataSeed: 77, zeroCopy: true }); // 1025 pages: chained list
    const r = await runWorkload(ns, plan, { concurrency: 3 });
    assert.deepEqual(r.mismatches, []);
    console.log(`# 4096-byte LBAs: ${r.writes} writes, ${(r.bytesWritten / 1048576).toFixed(1)} MiB written in ${r.ms} ms`);
  });

  test(`${label}: errors: beyond the end (ERANGE), misaligned buffer and length (EINVAL), and the controller's own status codes decoded`, async () => {
    await using ctrl = await NvmeController.open(target.b(), { defaultQueue: { depth: 4 } });
    const ns = await ctrl.namespace(1);
    const buf = ctrl.allocBuffer(16384);
    await assert.rejects(ns.readDma(ns.blocks - 1, buf, 0, 8192), { code: 'ERANGE', message: /beyond the end of the namespace/ });
    await assert.rejects(ns.write(ns.blocks, new Uint8Array(4096)), { code: 'ERANGE' });
    await assert.rejects(ns.readDma(0, buf, 2, 4096), { code: 'EINVAL', message: /not 4-byte aligned/ });
    await assert.rejects(ns.read(0, new Uint8Array(512)), { code: 'EINVAL', message: /multiple of the 4096-byte block size/ });
    // Past our checks, QEMU's answers: LBA Out of Range, Invalid Namespace, Invalid Command Opcode.
    const q = ctrl.defaultQueue!;
    const e1 = await q.rw(R.NVM_READ, 1, 4096, ns.blocks, buf.iova, null, 4096, 0, null)!.then(() => null, (e: unknown) => e);
    assert.ok(e1 instanceof NvmeStatusError, String(e1));
    assert.equal(e1.code, 'ERANGE');
    assert.equal(e1.statusText, 'LBA Out of Range');
    // An inactive namespace: QEMU 7.2 answers Invalid Field (the spec also allows Invalid Namespace or Format).
    await assert.rejects(q.command(R.NVM_READ, 99, 0, 0, 0, 0, 0, 0, buf.iova, 4096)!,
      (e: NvmeStatusError) => e.code === 'EINVAL' && ['Invalid Namespace or Format', 'Invalid Field in Command'].includes(e.statusText));
    await assert.rejects(ctrl.adminCommand(0x7f, 0), (e: NvmeStatusError) => e.code === 'EINVAL' && e.statusText === 'Invalid Command Opcode');
    // The queue is fine after all that.
    await ns.readDma(0, buf, 0, 4096);
  });

  test(`${label}: MSI-X: completions by interrupt per queue, and the vector count changed at run time with device.enableInterrupts`, { timeout: 180_000 }, async () => {
    // A completion can be reaped before its MSI-X reaches the vector (the queue's periodic tick
    // polls too, a safety net for a lost interrupt), so interrupts are awaited, not counted when
    // the I/O resolves.
    const fired = async (cond: () => boolean) => { while (!cond()) await new Promise((r) => setTimeout(r, 5)); };
    await using ctrl = await NvmeController.open(target.a(), { defaultQueue: false });
    const ns = await ctrl.namespace(1);
    const offered = ctrl.device.interrupts.info('msix').count;
    assert.ok(offered >= 4, `QEMU's nvme offers MSI-X vectors (${offered})`);
    const q1 = await ctrl.createQueuePair({ depth: 16, interrupts: true });
    assert.equal(q1.mode, 'interrupt');
    assert.equal(ctrl.device.interrupts.mode, 'msix');
    assert.equal(ctrl.device.interrupts.active.length, 2);
    const v1 = q1.interruptVector!;
    const buf = ctrl.allocBuffer(64 * 1024);
    fillPattern(new Uint8Array(buf.buffer, 0, 65536), 3);
    const t0 = v1.total;
    for (let i = 0; i < 20; i++) await ns.writeDma(i * 128, buf, 0, 65536, q1);
    await fired(() => v1.total - t0 >= 20); // 20 completions came by MSI-X
    // Re-route with more vectors: the same eventfd-backed vector objects carry on.
    const vectors = ctrl.device.enableInterrupts('msix', 4);
    assert.equal(vectors.length, 4);
    assert.equal(vectors[1], v1);
    const q3 = await ctrl.createQueuePair({ depth: 16, interrupts: true, vector: 3 });
    const t1 = v1.total;
    const t3 = q3.interruptVector!.total;
    const back = new Uint8Array(65536);
    await ns.read(0, back, q3);
    await ns.read(128, back, q1);
    assert.deepEqual(back, new Uint8Array(buf.buffer, 0, 65536));
    await fired(() => q3.interruptVector!.total > t3); // vector 3 fires
    await fired(() => v1.total > t1); // vector 1 still fires after the change
    // Fewer vectors: queue 3 loses its vector and polls; queue 1 keeps interrupts.
    ctrl.setInterruptVectors(2);
    assert.equal(q3.mode, 'poll');
    assert.equal(q1.mode, 'interrupt');
    await Promise.all([ns.read(0, back, q3), ns.read(128, back, q1)]);
    // Many in flight on an interrupt queue.
    await Promise.all(Array.from({ length: 64 }, (_, i) => ns.readDma(i * 8, buf, (i % 16) * 4096, 4096, q1)));
  });

  test(`${label}: several queue pairs at once, polled, each with its own depth`, async () => {
    await using ctrl = await NvmeController.open(target.a(), { defaultQueue: false, queuePairs: 4 });
    const ns = await ctrl.namespace(1);
    const queues = await ctrl.createQueuePairs(4, { depth: 8 });
    assert.equal(queues.length, 4);
    const data = queues.map((_, i) => fillPattern(new Uint8Array(128 * 1024), 100 + i));
    await Promise.all(queues.map((q, i) => ns.write(40000 + i * 256, data[i]!, q)));
    const backs = await Promise.all(queues.map(async (q, i) => {
      const b = new Uint8Array(128 * 1024);
      await ns.read(40000 + i * 256, b, queues[(i + 1) % 4]);
      return b;
    }));
    for (let i = 0; i < 4; i++) assert.deepEqual(backs[i], data[i]);
    for (const q of queues) assert.ok(q.completed >= 1);
  });

  test(`${label}: controller reset with I/O in flight: those fail with EIO, requests that waited go out afterwards`, async () => {
    await using ctrl = await NvmeController.open(target.a(), { defaultQueue: { depth: 4 } });
    const ns = await ctrl.namespace(1);
    const jobs = Array.from({ length: 12 }, (_, i) => ns.read(i * 8, new Uint8Array(4096)).then(() => 'ok', (e: { code: string }) => e.code));
    await ctrl.recover('test');
    const results = await Promise.all(jobs);
    assert.ok(results.every((r) => r === 'ok' || r === 'EIO'), results.join(','));
    assert.ok(results.filter((r) => r === 'ok').length >= 8, 'the ones that had not been sent went out after the reset');
    const data = fillPattern(new Uint8Array(8192), 8);
    await ns.write(5000, data);
    const back = new Uint8Array(8192);
    await ns.read(5000, back);
    assert.deepEqual(back, data);
    assert.equal(ctrl.resets, 1);
  });

  test(`${label}: device.reset() (FLR through VFIO, or through the proxy's VFIO), then re-initialise the controller: DMA buffers and mappings still work`, async () => {
    await using ctrl = await NvmeController.open(target.a(), { defaultQueue: { depth: 8 } });
    const ns = await ctrl.namespace(1);
    const buf = ctrl.allocBuffer(256 * 1024);
    fillPattern(new Uint8Array(buf.buffer, 0, 256 * 1024), 42);
    await ns.writeDma(60000, buf, 0, 256 * 1024);
    // A streaming map of the caller's memory (ordinary memory where the backend maps any; else an
    // allocDma buffer's, which a proxy's real IOMMU reaches by memfd), made before the reset.
    const plain = new Uint8Array(target.mapsAnyMemory ? new ArrayBuffer(8192) : ctrl.device.allocDma(8192).buffer, 0, 8192);
    assert.equal(ctrl.device.mapsAnyMemory, target.mapsAnyMemory);
    const mapping = ctrl.device.mapDma(plain, 'bidirectional');
    ctrl.device.reset();
    assert.equal(ctrl.status().ready, false, 'the reset disabled the controller');
    await ctrl.reinitialize();
    assert.equal(ctrl.status().ready, true);
    new Uint8Array(buf.buffer).fill(0);
    await ns.readDma(60000, buf, 0, 256 * 1024);
    assert.deepEqual(new Uint8Array(buf.buffer, 0, 256 * 1024), fillPattern(new Uint8Array(256 * 1024), 42));
    await ns.readIova(60000, mapping.iova, 8192);
    assert.deepEqual(plain, fillPattern(new Uint8Array(256 * 1024), 42).subarray(0, 8192));
    mapping.unmap();
  });

  test(`${label}: close shuts down (CC.SHN, CSTS.SHST complete); the kernel driver then reads the bytes we wrote`, async () => {
    const data = fillPattern(new Uint8Array(1 << 20), 0xabc);
    // vfio-pci resets the function when it is released, so look at CSTS before that.
    {
      await using device = await openDevice(target.a());
      const ctrl = await NvmeController.open(device, { defaultQueue: { depth: 8 } });
      const ns = await ctrl.namespace(1);
      await ns.write(90000, data);
      await ns.flush();
      await ctrl.close();
      assert.equal(device.closed, false, 'a device the caller opened stays open');
      const csts = device.bar(0).read32(R.REG_CSTS);
      assert.equal(csts & R.CSTS_SHST_MASK, R.CSTS_SHST_COMPLETE, `shutdown complete (CSTS 0x${csts.toString(16)})`);
    }
    const devA = target.pciA();
    await target.releaseA?.();
    const restored = unbindFromVfio(devA);
    assert.equal(restored.restoredDriver, 'nvme');
    const ctrlDir = path.join(SYS, devA, 'nvme');
    let disk = '';
    for (let i = 0; i < 200 && !disk; i++) {
      try {
        const c = fs.readdirSync(ctrlDir)[0];
        if (c && fs.existsSync(`/dev/${c}n1`)) disk = `/dev/${c}n1`;
      } catch {
        // not there yet
      }
      if (!disk) await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(disk, 'the kernel driver attached the namespace');
    const fd = fs.openSync(disk, 'r');
    try {
      const back = Buffer.alloc(data.length);
      fs.readSync(fd, back, 0, back.length, 90000 * 512);
      assert.ok(back.equals(data), 'the kernel driver reads what our driver wrote');
    } finally {
      fs.closeSync(fd);
    }
    bindToVfio(devA);
    await target.retakeA?.();
  });

  test(`${label}: queue depths 128 and the controller's limit (CAP.MQES + 1 entries): every command in flight at once, polled and MSI-X, data read back`, async () => {
    await using ctrl = await NvmeController.open(target.a(), { defaultQueue: false, queuePairs: 4 });
    const ns = await ctrl.namespace(1);
    const limit = ctrl.capabilities.maxQueueEntries - 1;
    console.log(`# CAP.MQES + 1 = ${ctrl.capabilities.maxQueueEntries} entries: deepest queue ${limit} commands`);
    assert.ok(limit >= 2047, `QEMU's nvme takes queues of 2048 entries or more (${limit + 1})`);
    for (const depth of [128, limit]) {
      for (const interrupts of [false, true]) {
        const q = await ctrl.createQueuePair({ depth, interrupts });
        const data = fillPattern(new Uint8Array(depth * 512), depth + (interrupts ? 1 : 0));
        const buf = ctrl.allocBuffer(depth * 512);
        new Uint8Array(buf.buffer, 0, data.length).set(data);
        const writes = Array.from({ length: depth }, (_, i) => ns.writeDma(20000 + i, buf, i * 512, 512, q));
        assert.equal(q.outstanding, depth, 'all submitted before any completed');
        await Promise.all(writes);
        new Uint8Array(buf.buffer).fill(0);
        await Promise.all(Array.from({ length: depth }, (_, i) => ns.readDma(20000 + i, buf, i * 512, 512, q)));
        assert.deepEqual(new Uint8Array(buf.buffer, 0, data.length), data, `depth ${depth}${interrupts ? ' (MSI-X)' : ''}`);
        buf.free();
        await ctrl.deleteQueuePair(q);
      }
    }
  });
}
