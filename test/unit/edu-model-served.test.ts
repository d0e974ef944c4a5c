/**
 * The edu model served over vfio-user and driven through the client backend, as a driver would.
 * The server runs on a worker thread (the client blocks its own thread while waiting for
 * replies), and once in a child process through the `serve` CLI command.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { native, constants } from '../../src/native/index';
import { connectVfioUser, type VfioUserClient } from '../../src/vfio-user/client/client';
import { Vfio } from '../../src/vfio-user/protocol/codec';
import { startServerThread, type ServerThread } from '../../src/vfio-user/server/thread';
import { EduReg } from '../../src/models/edu';

const BAR0 = 0;
const CONFIG = Vfio.PCI_CONFIG_REGION_INDEX;

function socketPath(name: string): string {
  return path.join(os.tmpdir(), `userpci-${name}-${process.pid}.sock`);
}

function read32(c: VfioUserClient, region: number, offset: number): number {
  const b = new Uint8Array(4);
  c.regionRead(region, offset, b);
  return new DataView(b.buffer).getUint32(0, true);
}

function write32(c: VfioUserClient, region: number, offset: number, value: number): void {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, value >>> 0, true);
  c.regionWrite(region, offset, b);
}

/** Bus Master Enable: the server, like a PCI bus, lets no DMA through without it. */
function enableBusMaster(c: VfioUserClient): void {
  write32(c, CONFIG, 0x04, read32(c, CONFIG, 0x04) | 0x6);
}

function write64(c: VfioUserClient, offset: number, value: number): void {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(value), true);
  c.regionWrite(BAR0, offset, b);
}

function read64(c: VfioUserClient, offset: number): bigint {
  const b = new Uint8Array(8);
  c.regionRead(BAR0, offset, b);
  return new DataView(b.buffer).getBigUint64(0, true);
}

/** Poll a register until (value & mask) === 0, as a driver does; bounded. */
function waitClear(c: VfioUserClient, offset: number, mask: number): void {
  const deadline = Date.now() + 5000;
  while (read32(c, BAR0, offset) & mask) {
    if (Date.now() > deadline) throw new Error(`register 0x${offset.toString(16)} stayed busy`);
  }
}

function eventfdFired(fd: number, timeoutMs = 5000): Promise<number> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      native.watchStop(handle);
      reject(new Error('no interrupt'));
    }, timeoutMs);
    const handle = native.watch(fd, 1, true, (_status, value) => {
      clearTimeout(timer);
      native.watchStop(handle);
      resolve(value);
    });
  });
}

/** A Backend DMA map request over all of `memory` (the facade computes these for drivers). */
function mapRequest(iova: number, memory: ArrayBuffer | Uint8Array, fd?: number) {
  const bytes = memory instanceof Uint8Array ? memory : new Uint8Array(memory);
  return {
    iova,
    size: bytes.byteLength,
    vaddr: native.addressOf(bytes),
    memory: bytes,
    memoryIova: iova,
    ...(fd === undefined ? {} : { fd, fdOffset: 0 }),
    deviceReads: true,
    deviceWrites: true,
  };
}

function memfdBuffer(size: number): { fd: number; memory: ArrayBuffer } {
  const fd = native.memfdCreate('edu-dma', 0);
  native.ftruncate(fd, size);
  return { fd, memory: native.mmap(size, constants.PROT_READ | constants.PROT_WRITE, constants.MAP_SHARED, fd, 0) };
}

let server: ServerThread;
let serverNoTwin: ServerThread;

before(async () => {
  server = await startServerThread({ model: 'edu', socketPath: socketPath('edu') });
  serverNoTwin = await startServerThread({ model: 'edu', socketPath: socketPath('edu-single'), twinSocket: false, maxDataXferSize: 1024 });
});

after(async () => {
  await server.stop();
  await serverNoTwin.stop();
});

test('identification: config space is edu\'s, ID register reads 0x010000ed', () => {
  const c = connectVfioUser(server.socketPath);
  try {
    const info = c.deviceInfo();
    assert.equal(info.numRegions, 9);
    assert.equal(info.numIrqs, 5);
    assert.ok(info.canReset);
    assert.ok(info.flags & Vfio.DEVICE_FLAGS_PCI);
    const bar0 = c.regionInfo(BAR0);
    assert.equal(bar0.size, 1 << 20);
    assert.equal(bar0.mappable, false, 'edu registers are trapped, never mapped');
    assert.equal(c.regionInfo(1).size, 0);
    const config = new Uint8Array(256);
    c.regionRead(CONFIG, 0, config);
    const v = new DataView(config.buffer);
    assert.equal(v.getUint16(0, true), 0x1234);
    assert.equal(v.getUint16(2, true), 0x11e8);
    assert.equal(config[8], 0x10, 'revision');
    assert.deepEqual([config[9], config[10], config[11]], [0x00, 0xff, 0x00], 'class 0x00ff');
    assert.equal(v.getUint16(0x2c, true), 0x1af4);
    assert.equal(v.getUint16(0x2e, true), 0x1100);
    assert.equal(config[0x3d], 1, 'INTA#');
    assert.ok(v.getUint16(6, true) & 0x10, 'capability list');
    assert.equal(config[0x34], 0x40);
    assert.equal(config[0x40], 0x05, 'MSI');
    assert.ok(v.getUint16(0x42, true) & 0x80, '64-bit MSI');
    // BAR sizing: all ones in, size mask out.
    write32(c, CONFIG, 0x10, 0xffffffff);
    assert.equal(read32(c, CONFIG, 0x10), 0xfff00000);
    write32(c, CONFIG, 0x10, 0);
    assert.equal(read32(c, BAR0, EduReg.ID), 0x010000ed);
    const wide = new Uint8Array(8);
    c.regionRead(BAR0, EduReg.ID, wide);
    assert.deepEqual([...wide], [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], '8-byte access below 0x80 reads all ones');
  } finally {
    c.close();
  }
});

test('liveness inverts, factorial computes with the busy bit', () => {
  const c = connectVfioUser(server.socketPath);
  enableBusMaster(c);
  try {
    write32(c, BAR0, EduReg.LIVENESS, 0x12345678);
    assert.equal(read32(c, BAR0, EduReg.LIVENESS), ~0x12345678 >>> 0);
    write32(c, BAR0, EduReg.FACTORIAL, 10);
    waitClear(c, EduReg.STATUS, 0x01);
    assert.equal(read32(c, BAR0, EduReg.FACTORIAL), 3628800);
    write32(c, BAR0, EduReg.FACTORIAL, 13);
    waitClear(c, EduReg.STATUS, 0x01);
    assert.equal(read32(c, BAR0, EduReg.FACTORIAL), Number(6227020800n & 0xffffffffn), '13! wraps at 32 bits');
  } finally {
    c.close();
  }
});

for (const [label, getServer] of [
  ['twin socket', () => server],
  ['single socket, 1 KiB transfers', () => serverNoTwin],
] as const) {
  test(`DMA both ways through a memfd-shared buffer and through DMA_READ/DMA_WRITE (${label})`, () => {
    const c = connectVfioUser(getServer().socketPath);
    enableBusMaster(c);
    const shared = memfdBuffer(8192);
    const plain = new ArrayBuffer(8192);
    try {
      assert.equal(c.twinSocket, label === 'twin socket');
      c.dmaMap(mapRequest(0x100000, shared.memory, shared.fd));
      c.dmaMap(mapRequest(0x200000, plain));
      for (const [iova, memory] of [[0x100000, shared.memory], [0x200000, plain]] as const) {
        const bytes = new Uint8Array(memory);
        for (let i = 0; i < 4096; i++) bytes[i] = (i * 7 + iova / 0x100000) & 0xff;
        bytes.fill(0, 4096);
        // RAM -> EDU buffer, then EDU buffer -> RAM at +4096: the whole 4 KiB round trip.
        write64(c, EduReg.DMA_SRC, iova);
        write64(c, EduReg.DMA_DST, 0x40000);
        write64(c, EduReg.DMA_COUNT, 4096);
        write64(c, EduReg.DMA_CMD, 0x1);
        waitClear(c, EduReg.DMA_CMD, 0x1);
        write64(c, EduReg.DMA_SRC, 0x40000);
        write64(c, EduReg.DMA_DST, iova + 4096);
        write64(c, EduReg.DMA_COUNT, 4096);
        write64(c, EduReg.DMA_CMD, 0x3);
        waitClear(c, EduReg.DMA_CMD, 0x1);
        assert.deepEqual(bytes.subarray(4096), bytes.subarray(0, 4096), `iova 0x${iova.toString(16)}`);
      }
      assert.equal(read64(c, EduReg.DMA_SRC), 0x40000n);
      c.dmaUnmap(0x100000, 8192);
      c.dmaUnmap(0x200000, 8192);
    } finally {
      c.close();
      native.munmap(shared.memory);
      native.close(shared.fd);
    }
  });
}

test('the DMA example of edu.rst: 100 bytes to the buffer and back to addr+100', () => {
  const c = connectVfioUser(server.socketPath);
  enableBusMaster(c);
  const memory = new Uint8Array(4096);
  try {
    const addr = 0x400000;
    c.dmaMap(mapRequest(addr, memory));
    memory.set(Buffer.from('edu.rst example: '.repeat(6).slice(0, 100)));
    write64(c, EduReg.DMA_SRC, addr);
    write64(c, EduReg.DMA_DST, 0x40000);
    write64(c, EduReg.DMA_COUNT, 100);
    write64(c, EduReg.DMA_CMD, 1);
    waitClear(c, EduReg.DMA_CMD, 1);
    write64(c, EduReg.DMA_SRC, 0x40000);
    write64(c, EduReg.DMA_DST, addr + 100);
    write64(c, EduReg.DMA_COUNT, 100);
    write64(c, EduReg.DMA_CMD, 3);
    waitClear(c, EduReg.DMA_CMD, 1);
    assert.deepEqual(memory.subarray(100, 200), memory.subarray(0, 100));
    assert.ok(memory.subarray(200).every((b) => b === 0), 'nothing past the 100 bytes');
  } finally {
    c.close();
  }
});

test('DMA completes while the client is idle on the event loop (server DMA_READ served by the watcher)', async () => {
  const c = connectVfioUser(serverNoTwin.socketPath);
  enableBusMaster(c);
  const plain = new Uint8Array(4096).fill(0x5a);
  const efd = native.eventfd(0, constants.EFD_NONBLOCK);
  try {
    c.dmaMap(mapRequest(0x300000, plain));
    c.setIrqEventfds(Vfio.PCI_MSI_IRQ_INDEX, 0, [efd]);
    write64(c, EduReg.DMA_SRC, 0x300000);
    write64(c, EduReg.DMA_DST, 0x40000);
    write64(c, EduReg.DMA_COUNT, 4096);
    const fired = eventfdFired(efd);
    write64(c, EduReg.DMA_CMD, 0x1 | 0x4);
    assert.equal(await fired, 1, 'the DMA-done MSI arrived');
    assert.equal(read32(c, BAR0, EduReg.IRQ_STATUS) & 0x100, 0x100);
    write32(c, BAR0, EduReg.IRQ_ACK, 0x100);
    c.disableIrqs(Vfio.PCI_MSI_IRQ_INDEX);
  } finally {
    c.close();
    native.close(efd);
  }
});

test('INTx on an eventfd: level-triggered, automasked, delivered again on unmask while asserted', () => {
  const c = connectVfioUser(server.socketPath);
  const efd = native.eventfd(0, constants.EFD_NONBLOCK);
  try {
    assert.deepEqual(c.irqInfo(Vfio.PCI_INTX_IRQ_INDEX), { index: 0, count: 1, flags: Vfio.IRQ_INFO_EVENTFD | Vfio.IRQ_INFO_MASKABLE | Vfio.IRQ_INFO_AUTOMASKED });
    c.setIrqEventfds(Vfio.PCI_INTX_IRQ_INDEX, 0, [efd]);
    write32(c, BAR0, EduReg.IRQ_RAISE, 0x5);
    assert.equal(native.eventfdRead(efd), 1);
    assert.equal(read32(c, BAR0, EduReg.IRQ_STATUS), 0x5);
    assert.ok(read32(c, CONFIG, 4) & (0x8 << 16), 'status: interrupt pending');
    write32(c, BAR0, EduReg.IRQ_RAISE, 0x2);
    assert.equal(native.eventfdRead(efd), 0, 'masked after firing until the driver unmasks');
    c.unmaskIrq(Vfio.PCI_INTX_IRQ_INDEX, 0);
    assert.equal(native.eventfdRead(efd), 1, 'still asserted: fires again on unmask');
    write32(c, BAR0, EduReg.IRQ_ACK, 0x7);
    c.unmaskIrq(Vfio.PCI_INTX_IRQ_INDEX, 0);
    assert.equal(native.eventfdRead(efd), 0, 'line low after the ack');
    assert.equal(read32(c, CONFIG, 4) & (0x8 << 16), 0);
    write32(c, BAR0, EduReg.IRQ_RAISE, 0x1);
    assert.equal(native.eventfdRead(efd), 1);
    write32(c, BAR0, EduReg.IRQ_ACK, 0x1);
    // One type at a time, as vfio-pci: MSI cannot be enabled while INTx is.
    assert.throws(() => c.setIrqEventfds(Vfio.PCI_MSI_IRQ_INDEX, 0, [efd]), (e: any) => e.code === 'EINVAL');
    c.disableIrqs(Vfio.PCI_INTX_IRQ_INDEX);
    assert.throws(() => c.unmaskIrq(Vfio.PCI_INTX_IRQ_INDEX, 0), (e: any) => e.code === 'EINVAL', 'INTx is off');
  } finally {
    c.close();
    native.close(efd);
  }
});

test('MSI on an eventfd: enabling sets the capability\'s enable bit; factorial interrupt', async () => {
  const c = connectVfioUser(server.socketPath);
  const efd = native.eventfd(0, constants.EFD_NONBLOCK);
  try {
    assert.equal(c.irqInfo(Vfio.PCI_MSI_IRQ_INDEX).count, 1);
    c.setIrqEventfds(Vfio.PCI_MSI_IRQ_INDEX, 0, [efd]);
    assert.ok(read32(c, CONFIG, 0x40) & (1 << 16), 'MSI enable');
    write32(c, BAR0, EduReg.IRQ_RAISE, 0x40);
    assert.equal(native.eventfdRead(efd), 0, 'an MSI is a memory write: none leaves with bus mastering off');
    write32(c, BAR0, EduReg.IRQ_ACK, 0x40);
    enableBusMaster(c);
    write32(c, BAR0, EduReg.IRQ_RAISE, 0x40);
    assert.equal(native.eventfdRead(efd), 1);
    write32(c, BAR0, EduReg.IRQ_RAISE, 0x40);
    assert.equal(native.eventfdRead(efd), 1, 'MSI is an edge per raise, no masking');
    write32(c, BAR0, EduReg.IRQ_ACK, 0x40);
    write32(c, BAR0, EduReg.STATUS, 0x80);
    const fired = eventfdFired(efd);
    write32(c, BAR0, EduReg.FACTORIAL, 6);
    assert.equal(await fired, 1);
    assert.equal(read32(c, BAR0, EduReg.IRQ_STATUS), 0x1);
    assert.equal(read32(c, BAR0, EduReg.FACTORIAL), 720);
    write32(c, BAR0, EduReg.IRQ_ACK, 0x1);
    write32(c, BAR0, EduReg.STATUS, 0);
    c.disableIrqs(Vfio.PCI_MSI_IRQ_INDEX);
    assert.equal(read32(c, CONFIG, 0x40) & (1 << 16), 0, 'MSI disabled again');
  } finally {
    c.close();
    native.close(efd);
  }
});

test('the server survives a client disconnect and serves the next with the device state kept', async () => {
  const first = connectVfioUser(server.socketPath);
  enableBusMaster(first);
  const efd = native.eventfd(0, constants.EFD_NONBLOCK);
  first.setIrqEventfds(Vfio.PCI_MSI_IRQ_INDEX, 0, [efd]);
  first.dmaMap(mapRequest(0x100000, new ArrayBuffer(4096)));
  write32(first, BAR0, EduReg.LIVENESS, 0xcafe);
  const gone = server.nextDisconnect();
  // Drop the socket without any goodbye, as a crashed driver would.
  first.close();
  await gone;
  const second = connectVfioUser(server.socketPath);
  enableBusMaster(second);
  try {
    assert.equal(read32(second, BAR0, EduReg.LIVENESS), ~0xcafe >>> 0, 'device state is retained');
    assert.equal(read32(second, CONFIG, 0x40) & (1 << 16), 0, 'the old client\'s MSI setup is gone');
    // The old DMA map is gone too: the same IOVA can be mapped again.
    second.dmaMap(mapRequest(0x100000, new ArrayBuffer(4096)));
    second.reset();
    assert.equal(read32(second, BAR0, EduReg.ID), 0x010000ed);
  } finally {
    second.close();
    native.close(efd);
  }
});

test('served from another process by `userpci serve edu --socket PATH`', async () => {
  const sock = socketPath('edu-child');
  const serveModule = path.resolve(__dirname, '../../src/cli/commands/serve.js');
  const child = spawn(process.execPath, ['-e', `require(${JSON.stringify(serveModule)}).serveCommand.run(process.argv.slice(1)).then((code) => process.exit(code))`, 'edu', '--socket', sock], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    let text = '';
    child.stderr!.on('data', (chunk: Buffer) => {
      text += chunk.toString();
      if (text.includes('listening')) resolve();
    });
    child.on('exit', () => reject(new Error(`serve exited early: ${text}`)));
  });
  const c = connectVfioUser(sock);
  try {
    assert.equal(read32(c, BAR0, EduReg.ID), 0x010000ed);
    write32(c, BAR0, EduReg.FACTORIAL, 5);
    waitClear(c, EduReg.STATUS, 1);
    assert.equal(read32(c, BAR0, EduReg.FACTORIAL), 120);
  } finally {
    c.close();
  }
  child.kill('SIGTERM');
  assert.equal(await exited, 0);
});
