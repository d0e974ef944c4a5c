import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import {
  Command,
  Errno,
  HEADER_SIZE,
  MessageFlags,
  ProtocolError,
  REGION_INFO_SIZE,
  Vfio,
  decodeDeviceInfo,
  decodeDmaAccess,
  decodeDmaMap,
  decodeDmaUnmap,
  decodeHeader,
  decodeIrqInfo,
  decodeRegionAccess,
  decodeRegionInfoReply,
  decodeRegionInfoRequest,
  decodeSetIrqs,
  decodeVersion,
  encodeDeviceInfo,
  encodeDmaAccess,
  encodeDmaMap,
  encodeDmaUnmap,
  encodeHeader,
  encodeIrqInfo,
  encodeRegionAccess,
  encodeRegionInfoReply,
  encodeRegionInfoRequest,
  encodeSetIrqs,
  encodeVersion,
  getU64,
  smallestPageSize,
} from '../../src/vfio-user/protocol/codec';

const isProtocolError = (errno?: number) => (e: unknown) => e instanceof ProtocolError && (errno === undefined || e.errnoValue === errno);

test('header: 16 bytes, little-endian, fields in the spec order', () => {
  const bytes = encodeHeader({ id: 0x1234, command: Command.REGION_READ, size: 48, flags: MessageFlags.TYPE_REPLY | MessageFlags.ERROR, error: Errno.EINVAL });
  assert.equal(bytes.length, HEADER_SIZE);
  assert.deepEqual([...bytes], [0x34, 0x12, 9, 0, 48, 0, 0, 0, 0x21, 0, 0, 0, 22, 0, 0, 0]);
  assert.deepEqual(decodeHeader(bytes), { id: 0x1234, command: 9, size: 48, flags: 0x21, error: 22 });
  assert.throws(() => decodeHeader(bytes.subarray(0, 15)), (e: unknown) => e instanceof ProtocolError && e.fatal);
  const tooSmall = encodeHeader({ id: 1, command: 1, size: 15, flags: 0, error: 0 });
  assert.throws(() => decodeHeader(tooSmall), (e: unknown) => e instanceof ProtocolError && e.fatal);
});

test('VERSION: major/minor and NUL-terminated JSON capabilities round trip', () => {
  const bytes = encodeVersion({
    major: 0,
    minor: 2,
    capabilities: { maxMsgFds: 8, maxDataXferSize: 65536, pgsizes: 4096 | 0x200000, twinSocket: { supported: true, fdIndex: 0 } },
  });
  assert.equal(bytes[bytes.length - 1], 0, 'JSON ends with its NUL');
  const json = JSON.parse(Buffer.from(bytes.subarray(4, bytes.length - 1)).toString());
  assert.deepEqual(json, { capabilities: { max_msg_fds: 8, max_data_xfer_size: 65536, pgsizes: 4096 | 0x200000, twin_socket: { supported: true, fd_index: 0 } } });
  const back = decodeVersion(bytes);
  assert.equal(back.major, 0);
  assert.equal(back.minor, 2);
  assert.equal(back.capabilities.maxMsgFds, 8);
  assert.equal(back.capabilities.maxDataXferSize, 65536);
  assert.deepEqual(back.capabilities.twinSocket, { supported: true, fdIndex: 0 });
  assert.equal(back.capabilities.maxDmaMaps, 65535, 'absent fields take the spec defaults');
});

test('VERSION: the spec defaults apply without JSON; libvfio-user style JSON parses', () => {
  const bare = new Uint8Array(4);
  const v = decodeVersion(bare);
  assert.equal(v.capabilities.maxMsgFds, 1);
  assert.equal(v.capabilities.maxDataXferSize, 1048576);
  assert.equal(v.capabilities.pgsizes, 4096);
  // As libvfio-user's own tests send it (migration object is ignored).
  const json = Buffer.from('{ "capabilities": { "max_msg_fds": 8, "migration": { "pgsize": 4096 } } }\0');
  const payload = new Uint8Array(4 + json.length);
  payload.set(json, 4);
  assert.equal(decodeVersion(payload).capabilities.maxMsgFds, 8);
  assert.equal(smallestPageSize(4096 | 0x200000), 4096);
  assert.equal(smallestPageSize(0x200000), 0x200000);
});

test('VERSION: malformed JSON and out-of-range capabilities are refused', () => {
  const withJson = (text: string) => {
    const t = Buffer.from(text);
    const p = new Uint8Array(4 + t.length + 1);
    p.set(t, 4);
    return p;
  };
  assert.throws(() => decodeVersion(withJson('{')), isProtocolError(Errno.EINVAL));
  assert.throws(() => decodeVersion(withJson('[1,2]')), isProtocolError());
  assert.throws(() => decodeVersion(withJson('{"capabilities": 5}')), isProtocolError());
  assert.throws(() => decodeVersion(withJson('{"capabilities": {"max_msg_fds": -1}}')), isProtocolError());
  assert.throws(() => decodeVersion(withJson('{"capabilities": {"max_data_xfer_size": 1e300}}')), isProtocolError());
  assert.throws(() => decodeVersion(withJson('{"capabilities": {"max_data_xfer_size": 0}}')), isProtocolError());
  assert.throws(() => decodeVersion(withJson('{"capabilities": {"twin_socket": true}}')), isProtocolError());
  assert.throws(() => decodeVersion(new Uint8Array(3)), isProtocolError());
});

test('DMA_MAP and DMA_UNMAP: 32 and 24 bytes, u64 fields exact up to 2^53', () => {
  const map = encodeDmaMap({ flags: 3, offset: 0x1000, address: 2 ** 52 + 4096, size: 0x20_0000 });
  assert.equal(map.length, 32);
  assert.equal(new DataView(map.buffer).getUint32(0, true), 32, 'argsz is the structure size');
  assert.deepEqual(decodeDmaMap(map), { flags: 3, offset: 0x1000, address: 2 ** 52 + 4096, size: 0x20_0000 });
  const unmap = encodeDmaUnmap({ address: 0x10000, size: 4096 });
  assert.deepEqual(decodeDmaUnmap(unmap), { argsz: 24, flags: 0, address: 0x10000, size: 4096 });
  assert.throws(() => decodeDmaMap(map.subarray(0, 31)), isProtocolError(Errno.EINVAL));
  const huge = new Uint8Array(8);
  new DataView(huge.buffer).setBigUint64(0, 1n << 60n, true);
  assert.throws(() => getU64(new DataView(huge.buffer), 0), isProtocolError(Errno.ERANGE));
});

test('DEVICE_GET_INFO and GET_IRQ_INFO round trip', () => {
  const info = { argsz: 16, flags: Vfio.DEVICE_FLAGS_PCI | Vfio.DEVICE_FLAGS_RESET, numRegions: 9, numIrqs: 5 };
  assert.deepEqual(decodeDeviceInfo(encodeDeviceInfo(info)), info);
  const irq = { argsz: 16, flags: Vfio.IRQ_INFO_EVENTFD | Vfio.IRQ_INFO_NORESIZE, index: 1, count: 32 };
  assert.deepEqual(decodeIrqInfo(encodeIrqInfo(irq)), irq);
  assert.throws(() => decodeIrqInfo(new Uint8Array(12)), isProtocolError());
});

test('GET_REGION_INFO: the two-step argsz exchange and the sparse-mmap capability', () => {
  const request = encodeRegionInfoRequest(2, REGION_INFO_SIZE);
  assert.deepEqual(decodeRegionInfoRequest(request), { argsz: 32, index: 2 });
  const region = {
    flags: Vfio.REGION_INFO_FLAG_READ | Vfio.REGION_INFO_FLAG_WRITE | Vfio.REGION_INFO_FLAG_MMAP,
    index: 2,
    size: 0x4000,
    offset: 0x10000,
    sparseAreas: [{ offset: 0x1000, size: 0x1000 }, { offset: 0x3000, size: 0x1000 }],
  };
  // Step one: the client gave 32 bytes; the reply is the fixed part, naming the size it needs.
  const short = encodeRegionInfoReply(region, 32);
  assert.equal(short.complete, false);
  assert.equal(short.bytes.length, 32);
  const first = decodeRegionInfoReply(short.bytes);
  assert.equal(first.argsz, 32 + 8 + 8 + 2 * 16);
  assert.equal(first.capOffset, 0);
  assert.ok(first.flags & Vfio.REGION_INFO_FLAG_CAPS);
  assert.equal(first.sparseAreas, undefined);
  // Step two: enough room; the capability chain starts right after the fixed part.
  const full = encodeRegionInfoReply(region, first.argsz);
  assert.equal(full.complete, true);
  const second = decodeRegionInfoReply(full.bytes);
  assert.equal(second.capOffset, 32);
  assert.deepEqual(second.sparseAreas, region.sparseAreas);
  assert.equal(second.offset, 0x10000);
  const v = new DataView(full.bytes.buffer);
  assert.equal(v.getUint16(32, true), Vfio.REGION_INFO_CAP_SPARSE_MMAP);
  assert.equal(v.getUint16(34, true), 1, 'capability version 1');
  assert.equal(v.getUint32(40, true), 2, 'nr_areas');
});

test('GET_REGION_INFO decoding survives hostile capability chains', () => {
  const base = encodeRegionInfoReply({ flags: 7, index: 0, size: 4096, offset: 0, sparseAreas: [{ offset: 0, size: 4096 }] }, 1000).bytes;
  const loop = base.slice();
  new DataView(loop.buffer).setUint32(32 + 4, 32, true); // next points at itself
  assert.throws(() => decodeRegionInfoReply(loop), isProtocolError());
  const outside = base.slice();
  new DataView(outside.buffer).setUint32(12, 0xffff0000, true);
  assert.throws(() => decodeRegionInfoReply(outside), isProtocolError());
  const manyAreas = base.slice();
  new DataView(manyAreas.buffer).setUint32(40, 0xffffffff, true);
  assert.throws(() => decodeRegionInfoReply(manyAreas), isProtocolError(), 'an area count beyond the reply is refused before any allocation');
  const pastEnd = base.slice();
  new DataView(pastEnd.buffer).setUint32(40, 3, true);
  assert.throws(() => decodeRegionInfoReply(pastEnd), isProtocolError());
});

test('SET_IRQS: eventfd, bool and none forms; flags and ranges checked', () => {
  const eventfds = encodeSetIrqs({ flags: Vfio.IRQ_SET_DATA_EVENTFD | Vfio.IRQ_SET_ACTION_TRIGGER, index: 2, start: 0, count: 4 });
  assert.equal(eventfds.length, 20, 'fds ride as SCM_RIGHTS, not in the payload');
  assert.deepEqual(decodeSetIrqs(eventfds), { flags: 0x24, index: 2, start: 0, count: 4 });
  const bools = encodeSetIrqs({ flags: Vfio.IRQ_SET_DATA_BOOL | Vfio.IRQ_SET_ACTION_MASK, index: 0, start: 0, count: 2, bools: new Uint8Array([1, 0]) });
  assert.equal(new DataView(bools.buffer).getUint32(0, true), 22, 'argsz includes the data');
  assert.deepEqual([...decodeSetIrqs(bools).bools!], [1, 0]);
  const two = encodeSetIrqs({ flags: Vfio.IRQ_SET_DATA_NONE | Vfio.IRQ_SET_DATA_BOOL | Vfio.IRQ_SET_ACTION_TRIGGER, index: 0, start: 0, count: 1 });
  assert.throws(() => decodeSetIrqs(two), isProtocolError());
  const huge = encodeSetIrqs({ flags: Vfio.IRQ_SET_DATA_NONE | Vfio.IRQ_SET_ACTION_TRIGGER, index: 0, start: 0, count: 0xffffffff });
  assert.throws(() => decodeSetIrqs(huge), isProtocolError());
  const boolShort = encodeSetIrqs({ flags: Vfio.IRQ_SET_DATA_BOOL | Vfio.IRQ_SET_ACTION_MASK, index: 0, start: 0, count: 1 });
  assert.throws(() => decodeSetIrqs(boolShort), isProtocolError());
});

test('REGION_READ/WRITE and DMA_READ/WRITE: counts must match the data', () => {
  const head = encodeRegionAccess({ offset: 0x40, region: 7, count: 4 });
  const write = new Uint8Array(20);
  write.set(head);
  write.set([1, 2, 3, 4], 16);
  const m = decodeRegionAccess(write, true);
  assert.deepEqual({ ...m, data: [...m.data!] }, { offset: 0x40, region: 7, count: 4, data: [1, 2, 3, 4] });
  assert.throws(() => decodeRegionAccess(write.subarray(0, 19), true), isProtocolError());
  assert.deepEqual(decodeRegionAccess(head, false), { offset: 0x40, region: 7, count: 4 });

  const dma = encodeDmaAccess({ address: 0x1000, count: 8 });
  assert.equal(dma.length, 16, 'count is u64 with data at +16');
  assert.deepEqual(decodeDmaAccess(dma, false), { address: 0x1000, count: 8 });
  // The spec's DMA_WRITE reply has a u32 count (12 bytes); libvfio-user sends 16: accept both.
  assert.deepEqual(decodeDmaAccess(dma.subarray(0, 12), false, true), { address: 0x1000, count: 8 });
  assert.throws(() => decodeDmaAccess(dma.subarray(0, 12), false), isProtocolError());
  const withData = new Uint8Array(16 + 7);
  withData.set(dma);
  assert.throws(() => decodeDmaAccess(withData, true), isProtocolError(), 'count says 8, data is 7');
});
