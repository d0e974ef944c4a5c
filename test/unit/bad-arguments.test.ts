/**
 * Bad arguments at the public surface: each gets an InvalidArgumentError (EINVAL) or another
 * UserpciError with its code, never a TypeError/RangeError, a crash from a timer, a faulted
 * controller or a DMA in the wrong direction. Values a TypeScript caller cannot pass (null
 * options, bigints, strings) come from JavaScript callers and `as any` alike.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as userpci from '../../src/index.js';
import { NvmeSimulator } from '../support/nvme-simulator';
import { VirtioNetSimulator } from '../support/virtio-net-simulator';
import { serveEduForSuite } from '../support/edu-server';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any;

/** The error is the given UserpciError subclass with this code (a plain TypeError fails here). */
function typed(code: string, cls: Function = userpci.UserpciError) {
  return (err: unknown) => {
    assert.ok(err instanceof cls, `expected a ${cls.name}, got ${err instanceof Error ? `${err.constructor.name}: ${err.message}` : String(err)}`);
    assert.equal((err as userpci.UserpciError).code, code, (err as Error).message);
    return true;
  };
}
const einval = typed('EINVAL', userpci.InvalidArgumentError);

async function rejectsEinval(make: () => unknown, what: string): Promise<void> {
  // A synchronous throw counts as well as a rejection: both are what the caller gets.
  await assert.rejects(async () => make(), einval, what);
}

describe('device, regions, DMA and interrupts (edu over vfio-user)', () => {
  const socketPath = serveEduForSuite('userpci-badargs-');

  it('Region: data that is not bytes, a 64-bit value of neither type', async () => {
    await using device = await userpci.openDevice(socketPath, { dmaMask: 0xfffffff });
    const bar = device.bar(0);
    for (const data of [undefined, null, 'abcd', [1, 2, 3]]) {
      assert.throws(() => bar.writeBytes(0x800, data as Any), einval, String(data));
      assert.throws(() => device.config.writeBytes(0x40, data as Any), einval, String(data));
    }
    for (const value of [undefined, null, {}, '4']) assert.throws(() => bar.write64(0x80, value as Any), einval, String(value));
    bar.write64(0x80, 5n); // still fine
    assert.equal(bar.read64(0x80), 5n);
  });

  it('DmaBuffer.iovaAt: NaN, fractions and bigints are not offsets', async () => {
    await using device = await userpci.openDevice(socketPath, { dmaMask: 0xfffffff });
    using buffer = device.allocDma(8192);
    for (const offset of [NaN, 1.5, undefined, null, '8', 4n]) assert.throws(() => buffer.iovaAt(offset as Any), einval, String(offset));
    assert.equal(buffer.iovaAt(4096), buffer.iova + 4096);
  });

  it('InterruptVector.wait: bad options, timeouts Node cannot keep, signals that are not AbortSignals', async () => {
    await using device = await userpci.openDevice(socketPath, { dmaMask: 0xfffffff });
    const [msi] = device.enableInterrupts('msi');
    await assert.rejects(msi!.wait(null as Any), einval);
    await assert.rejects(msi!.wait(5 as Any), einval);
    // Above 2^31 - 1 ms a Node timer fires after 1 ms: that wait would time out at once.
    for (const timeoutMs of [-1, NaN, Infinity, 2 ** 31, 2 ** 53, '10', 10n]) {
      await assert.rejects(msi!.wait({ timeoutMs: timeoutMs as Any }), einval, String(timeoutMs));
    }
    // A signal without removeEventListener used to throw from the timer, killing the process.
    for (const signal of [{}, 'abort', 1]) await assert.rejects(msi!.wait({ timeoutMs: 5, signal: signal as Any }), einval, String(signal));
    await assert.rejects(msi!.wait({ timeoutMs: 5, signal: new AbortController().signal }), typed('ETIMEDOUT'));
  });

  it('EduDriver: a direction that is neither way starts no DMA; bytes, bits and options are checked', async () => {
    await using device = await userpci.openDevice(socketPath, { dmaMask: 0xfffffff });
    const edu = new userpci.EduDriver(device);
    using buffer = device.allocDma(4096);
    const dmaCmd = () => edu.regs.read32(0x98);
    for (const direction of ['to-ram', undefined, null, 1]) {
      await rejectsEinval(() => edu.dma(direction as Any, buffer.iova, 0, 4), String(direction));
      assert.throws(() => edu.startDma(direction as Any, buffer.iova, 0, 4, false), einval);
    }
    assert.equal(dmaCmd() & 1, 0, 'no DMA was started');
    for (const bytes of [null, undefined, 'abcd']) await rejectsEinval(() => edu.copyToDevice(bytes as Any), String(bytes));
    for (const bits of [NaN, -1, 1.5, 2 ** 32, '1', 1n]) assert.throws(() => edu.raiseInterrupt(bits as Any), einval, String(bits));
    for (const value of [NaN, -1, 2 ** 32, '1']) assert.throws(() => edu.checkLiveness(value as Any), einval, String(value));
    for (const options of [null, 5]) await rejectsEinval(() => edu.factorial(3, options as Any), String(options));
    await rejectsEinval(() => edu.factorial(3, { timeoutMs: -5 }), 'negative timeout');
    assert.equal(await edu.factorial(5), 120, 'the device still works');
    await edu.copyToDevice(new Uint8Array([1, 2, 3]));
    assert.deepEqual([...(await edu.copyFromDevice(0, 3))], [1, 2, 3]);
    edu.release();
  });
});

describe('NVMe driver (simulated controller)', () => {
  async function open(options: Any = { defaultQueue: { depth: 16 } }) {
    const { device } = NvmeSimulator.open({});
    const ctrl = await userpci.nvme.NvmeController.open(device, options);
    return { device, ctrl, ns: await ctrl.namespace(1), async [Symbol.asyncDispose]() { await ctrl.close(); device.close(); } };
  }

  it('open: the target and the options are checked before anything is touched', async () => {
    for (const target of [undefined, null, 5, {}]) await rejectsEinval(() => userpci.nvme.NvmeController.open(target as Any), String(target));
    const { device } = NvmeSimulator.open({});
    try {
      for (const options of [null, 5, { adminTimeoutMs: -1 }, { adminTimeoutMs: 2 ** 40 }, { defaultQueue: null }, { defaultQueue: { timeoutMs: NaN } },
        { defaultQueue: { pollSpinUs: -1 } }, { defaultQueue: { doorbellEvery: 0 } }, { defaultQueue: { interrupts: 'yes' } }, { defaultQueue: { vector: 1.5 } }]) {
        await rejectsEinval(() => userpci.nvme.NvmeController.open(device, options as Any), JSON.stringify(options));
      }
    } finally {
      device.close();
    }
  });

  it('admin commands: a value the queue cannot store is refused, and the controller lives on', async () => {
    await using t = await open();
    for (const cns of [1n, 1.5, -1, 256, '1']) await rejectsEinval(() => t.ctrl.identify(cns as Any), String(cns));
    await rejectsEinval(() => t.ctrl.identify(1, 2 ** 32), 'nsid');
    await rejectsEinval(() => t.ctrl.adminCommand(0x06, 0, 1n as Any), 'bigint cdw10');
    await rejectsEinval(() => t.ctrl.adminCommand(0x106, 0), 'opcode');
    await rejectsEinval(() => t.ctrl.adminCommand(0x06, 0, 1, 0, 0, 0, 0, 0, 0, 1 << 30), 'length');
    // Before, a bigint reached the admin queue, which faulted: every command failed EIO from then on.
    assert.equal(t.ctrl.isClosed, false);
    assert.equal((await t.ctrl.identifyController()).serial, 'SIM0001');
    await t.ns.read(0, new Uint8Array(512));
  });

  it('queues: options, counts, foreign and non-queues', async () => {
    await using t = await open();
    await using other = await open();
    for (const options of [null, 3, { timeoutMs: -1 }, { pollBurst: 1.5 }, { cqAckBatch: 1 }]) await rejectsEinval(() => t.ctrl.createQueuePair(options as Any), JSON.stringify(options));
    for (const count of [0, 1n, NaN, '2']) await rejectsEinval(() => t.ctrl.createQueuePairs(count as Any), String(count));
    for (const queue of [undefined, null, {}, 1]) await rejectsEinval(() => t.ctrl.deleteQueuePair(queue as Any), String(queue));
    const foreign = other.ctrl.defaultQueue!;
    const buffer = t.ctrl.allocBuffer(4096);
    // Another controller's queue would carry this namespace's I/O to another device.
    await rejectsEinval(() => t.ns.read(0, new Uint8Array(512), foreign), 'read on a foreign queue');
    await rejectsEinval(() => t.ns.readIova(0, buffer.iova, 512, foreign), 'readIova on a foreign queue');
    await rejectsEinval(() => t.ns.flush(foreign), 'flush on a foreign queue');
    await rejectsEinval(() => t.ns.trim(0, 1, foreign), 'trim on a foreign queue');
    for (const queue of [5, 'q', {}]) await rejectsEinval(() => t.ns.read(0, new Uint8Array(512), queue as Any), String(queue));
    assert.throws(() => t.ns.submit(false, 0, buffer.iova, 512, foreign, () => {}), einval);
    assert.throws(() => t.ns.submit(false, 0, buffer.iova, 512, null as Any, () => {}), einval);
    assert.equal(other.ctrl.defaultQueue!.outstanding, 0, 'nothing reached the other controller');
  });

  it('submit: a callback that is not a function is refused up front (it used to throw from a poll pass)', async () => {
    await using t = await open();
    const buffer = t.ctrl.allocBuffer(4096);
    const q = t.ctrl.defaultQueue!;
    for (const callback of [undefined, null, 5, {}]) assert.throws(() => t.ns.submit(false, 0, buffer.iova, 512, q, callback as Any), einval, String(callback));
    assert.equal(q.outstanding, 0);
    await new Promise<void>((resolve, reject) => t.ns.submit(false, 0, buffer.iova, 512, q, (err) => (err ? reject(err) : resolve())));
  });

  it("registerBuffer: only this device's live DMA buffers", async () => {
    await using t = await open();
    await using other = await open();
    for (const buffer of [undefined, null, 5, {}, new Uint8Array(8)]) assert.throws(() => t.ctrl.registerBuffer(buffer as Any), einval, String(buffer));
    const foreign = other.device.allocDma(4096);
    assert.throws(() => t.ctrl.registerBuffer(foreign), einval, "another device's buffer: its IOVA means nothing here");
    t.ctrl.registerBuffer(t.device.allocDma(4096));
  });

  it('exports over it: NBD and ublk arguments', async () => {
    await using t = await open();
    for (const namespace of [undefined, null, 5, {}]) {
      assert.throws(() => new userpci.nbd.NvmeBlockDevice(namespace as Any), einval, String(namespace));
      assert.throws(() => new userpci.ublk.NvmeUblkDevice(namespace as Any), einval, String(namespace));
    }
    assert.throws(() => new userpci.nbd.NvmeBlockDevice(t.ns, null as Any), einval);
    for (const queues of [0, 1n, 1.5, 10_000]) await rejectsEinval(() => userpci.ublk.serveNamespaceOverUblk(t.ctrl, t.ns, { queues: queues as Any }), String(queues));
    for (const devices of [undefined, null, [null]]) await rejectsEinval(() => userpci.ublk.UblkServer.start(devices as Any), String(devices));
    await rejectsEinval(() => userpci.ublk.UblkServer.start(new userpci.ublk.NvmeUblkDevice(t.ns), null as Any), 'null options');
    for (const spec of [undefined, null]) await rejectsEinval(() => userpci.ublk.UblkThreadServer.start(spec as Any), String(spec));
  });
});

describe('NBD server and memory block device', () => {
  it('MemoryBlockDevice: sizes a Uint8Array cannot take are EINVAL or ENOMEM, not a RangeError', () => {
    for (const size of [-1, 1.5, NaN, Infinity, 4n, '4']) assert.throws(() => new userpci.nbd.MemoryBlockDevice(size as Any), einval, String(size));
    assert.throws(() => new userpci.nbd.MemoryBlockDevice(2 ** 50), typed('ENOMEM'));
    for (const blockSize of [0, 3, 1.5, 2 ** 20]) assert.throws(() => new userpci.nbd.MemoryBlockDevice(4096, blockSize), einval, String(blockSize));
  });

  it('NbdServer: exports, options and listen targets', async () => {
    const disk = new userpci.nbd.MemoryBlockDevice(1 << 16);
    for (const exports of [undefined, null, [], [null], [{ name: 'x' }], [{ name: 1, device: disk }]]) assert.throws(() => new userpci.nbd.NbdServer(exports as Any), einval, JSON.stringify(exports));
    for (const options of [null, 5, { maxInflight: 0 }, { maxInflight: 1.5 }, { maxOptionLength: -1 }, { log: 'yes' }]) {
      assert.throws(() => new userpci.nbd.NbdServer(disk, options as Any), einval, JSON.stringify(options));
    }
    const server = new userpci.nbd.NbdServer(disk);
    try {
      for (const target of [undefined, null, 5, 'path', { path: 5 }, { port: 'x' }, { port: 70000 }, { port: 1.5 }, { port: 0, host: 5 }]) {
        await rejectsEinval(() => server.listen(target as Any), JSON.stringify(target));
      }
    } finally {
      await server.close();
    }
  });
});

describe('virtio-net (simulated function)', () => {
  it('open, bursts, batches and receive callbacks', async () => {
    for (const target of [undefined, null, 5, {}]) await rejectsEinval(() => userpci.virtioNet.VirtioNet.open(target as Any), String(target));
    const { device } = VirtioNetSimulator.open({});
    await rejectsEinval(() => userpci.virtioNet.VirtioNet.open(device, null as Any), 'null options');
    const net = await userpci.virtioNet.VirtioNet.open(device, { interrupts: 'poll' });
    try {
      const batch = new userpci.virtioNet.PacketBatch(4);
      for (const bad of [undefined, null, 5, {}]) {
        assert.throws(() => net.rxBurst(0, bad as Any), einval, String(bad));
        assert.throws(() => net.txBurst(0, bad as Any), einval, String(bad));
        assert.throws(() => batch.add(bad as Any), einval, String(bad));
        assert.throws(() => net.onReceive(0, bad as Any), einval, String(bad));
      }
      batch.add(new Uint8Array(60));
      for (const start of [1n, 1.5, '0']) assert.throws(() => net.txBurst(0, batch, start as Any), einval, String(start));
      for (const count of [1n, 1.5, -1]) assert.throws(() => net.txBurst(0, batch, 0, count as Any), einval, String(count));
      for (const net2 of [undefined, null, {}]) assert.throws(() => userpci.tap.NetTap.attach(net2 as Any), einval, String(net2));
      assert.throws(() => userpci.tap.NetTap.attach(net, null as Any), einval);
      assert.throws(() => userpci.tap.NetTap.attach(net, { name: 5 as Any }), einval);
    } finally {
      await net.close();
      device.close();
    }
  });

  it('a polled onReceive left running does not touch the rings once the NIC is closed', async () => {
    const { device } = VirtioNetSimulator.open({});
    const net = await userpci.virtioNet.VirtioNet.open(device, { interrupts: 'poll' });
    let calls = 0;
    net.onReceive(0, () => calls++); // never stopped by the caller
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.ok(calls > 0, 'the poll ran while open');
    await net.close();
    device.close();
    // Before, the next poll read the freed ring: a TypeError thrown from a timer, the process gone.
    const uncaught: Error[] = [];
    const onUncaught = (err: Error) => uncaught.push(err);
    process.on('uncaughtException', onUncaught);
    try {
      await new Promise((resolve) => setTimeout(resolve, 30));
    } finally {
      process.off('uncaughtException', onUncaught);
    }
    assert.deepEqual(uncaught, []);
  });
});

describe('discovery, parsing and the IOVA allocator', () => {
  it('addresses, sysfs and bind options: objects of the wrong shape are EINVAL', async () => {
    for (const address of [undefined, null, 5, 4n, {}, { domain: 0, bus: 0, device: 40, function: 0 }]) {
      assert.throws(() => userpci.formatPciAddress(address as Any), einval, String(address));
      await assert.rejects(userpci.readPciDevice(address as Any), einval, String(address));
      await assert.rejects(userpci.readConfigBytes(address as Any), einval, String(address));
      await assert.rejects(userpci.inspectPciDevice(address as Any), einval, String(address));
      assert.throws(() => userpci.deviceUses(address as Any), einval, String(address));
    }
    assert.equal(userpci.formatPciAddress({ domain: 0, bus: 1, device: 2, function: 3 }), '0000:01:02.3');
    await assert.rejects(userpci.findPciDevices({}, null as Any), einval);
    assert.throws(() => userpci.bindToVfio('0000:00:03.0', null as Any), einval);
    assert.throws(() => userpci.boundDriver('0000:00:03.0', 5 as Any), einval);
  });

  it('parseConfigSpace and findCapability take bytes and a parsed space', () => {
    for (const bytes of [undefined, null, 5, 'abc', [1, 2, 3], new ArrayBuffer(64)]) assert.throws(() => userpci.parseConfigSpace(bytes as Any), einval, String(bytes));
    assert.throws(() => userpci.parseConfigSpace(new Uint8Array(10)), typed('EILSEQ', userpci.MalformedConfigError));
    for (const config of [undefined, null, 5, {}]) {
      assert.throws(() => userpci.findCapability(config as Any, 5), einval, String(config));
      assert.throws(() => userpci.findExtendedCapability(config as Any, 1), einval, String(config));
    }
  });

  it('loadPciIds takes an array of paths', async () => {
    for (const paths of [null, 5, '/usr/share/misc/pci.ids', [5]]) await assert.rejects(userpci.loadPciIds(paths as Any), einval, String(paths));
  });

  it('IovaAllocator: ranges, granule, limit and release', () => {
    for (const ranges of [undefined, null, 5, {}, [null], [{ start: 0, end: 4n }], [{ start: 10, end: 5 }]]) {
      assert.throws(() => new userpci.IovaAllocator(ranges as Any), einval, JSON.stringify(ranges, (_k, v) => (typeof v === 'bigint' ? `${v}n` : v)));
    }
    for (const granule of [0, 3, 4096n, NaN]) assert.throws(() => new userpci.IovaAllocator([{ start: 0, end: 1 << 30 }], granule as Any), einval, String(granule));
    const allocator = new userpci.IovaAllocator([{ start: 0, end: 2 ** 40 }]);
    for (const limit of [null, '5', -1, NaN]) assert.throws(() => allocator.allocate(4096, 4096, limit as Any), einval, String(limit));
    for (const iova of [undefined, null, '4096']) assert.throws(() => allocator.release(iova as Any), einval, String(iova));
    allocator.release(allocator.allocate(4096));
  });

  it('models and the vfio-user server: unknown names, objects that are not models, bad options', async () => {
    for (const name of ['toString', 'constructor', '__proto__', undefined, 5]) assert.throws(() => userpci.createModel(name as Any), einval, String(name));
    for (const model of [undefined, null, 5, {}]) await assert.rejects(userpci.serveVfioUser(model as Any, { socketPath: '/nonexistent/x.sock' }), einval, String(model));
    for (const options of [undefined, null, 5, { socketPath: 5 }]) await assert.rejects(userpci.serveVfioUser(userpci.createModel('edu'), options as Any), einval, String(options));
    for (const options of [undefined, null, { model: 'edu' }, { socketPath: '/tmp/x.sock' }]) await assert.rejects(userpci.server.startServerThread(options as Any), einval, JSON.stringify(options));
  });

  it('the device-model API: model options, header fields, MSI/MSI-X capability options', () => {
    const S = userpci.server;
    for (const dmaMask of [NaN, 1.5, Infinity, -1, {}, 'lots']) {
      assert.throws(() => new S.EduModel({ dmaMask: dmaMask as Any }), einval, String(dmaMask));
      assert.throws(() => userpci.createModel('edu', { dmaMask }), einval, String(dmaMask));
    }
    assert.equal(new S.EduModel({ dmaMask: 0xffffffn }).dmaMask, 0xffffffn);
    assert.equal((userpci.createModel('edu', { dmaMask: '0xffffff' }) as InstanceType<typeof S.EduModel>).dmaMask, 0xffffffn);
    assert.throws(() => new S.EduModel(null as Any), einval);
    assert.throws(() => new S.EduModel({ dmaDelayMs: -1 }), einval);
    assert.throws(() => userpci.createModel('edu', null as Any), einval);
    for (const header of [undefined, null, { vendorId: 1n, deviceId: 1, classCode: 0 }, { vendorId: 0x10000, deviceId: 1, classCode: 0 }]) {
      assert.throws(() => new S.ConfigSpace(header as Any), einval, String(header));
    }
    const config = new S.ConfigSpace({ vendorId: 0x1234, deviceId: 0x5678, classCode: 0xff0000 });
    assert.throws(() => S.addMsiCapability(config, null as Any), einval);
    for (const options of [undefined, null, { vectors: 4, tableBar: 9, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800 }, { vectors: 4, tableBar: 0, tableOffset: 1n, pbaBar: 0, pbaOffset: 0x800 }]) {
      assert.throws(() => S.addMsixCapability(config, options as Any), einval, String(options));
    }
  });
});
