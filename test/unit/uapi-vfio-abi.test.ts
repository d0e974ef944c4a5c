import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, it } from 'node:test';

import { InvalidArgumentError, MalformedConfigError } from '../../src/errors';
import { _IO, _IOC, _IOR, _IOW, _IOWR, decodeIoctl, IOC_READ, IOC_WRITE } from '../../src/uapi/ioctl';
import {
  decodeDeviceInfo,
  decodeDmaMap,
  decodeDmaUnmap,
  decodeGroupStatus,
  decodeHotResetInfo,
  decodeIommuInfo,
  decodeIrqInfo,
  decodeIrqSet,
  decodePciHotReset,
  decodeRegionInfo,
  encodeDeviceInfo,
  encodeDmaMap,
  encodeDmaUnmap,
  encodeGroupStatus,
  encodeHotResetInfo,
  encodeIommuInfo,
  encodeIrqDisable,
  encodeIrqInfo,
  encodeIrqSet,
  encodeIrqSetEventfds,
  encodePciHotReset,
  encodeRegionInfo,
  hotResetInfoArgsz,
  VFIO_ABI,
  VFIO_DEVICE_FLAGS_CAPS,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_INFO_PGSIZES,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_NORESIZE,
  VFIO_IRQ_SET_ACTION_MASK,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_ACTION_UNMASK,
  VFIO_IRQ_SET_DATA_BOOL,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  walkCapabilityChain,
} from '../../src/uapi/vfio';

// dist/test/unit -> repository root
const fixture = resolve(__dirname, '../../../test/fixtures/abi/vfio-abi.c');

type Section = Record<string, number>;

function compileAndRunAbiProgram(): Record<string, Section> {
  const dir = mkdtempSync(join(tmpdir(), 'userpci-vfio-abi-'));
  try {
    const program = join(dir, 'vfio-abi');
    execFileSync('cc', ['-std=gnu11', '-Wall', '-Wextra', '-o', program, fixture], { stdio: ['ignore', 'pipe', 'pipe'] });
    return JSON.parse(execFileSync(program, { encoding: 'utf8' })) as Record<string, Section>;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Each side must have exactly the other's keys, with equal values. */
function assertSameSection(name: string, fromC: Section | undefined, fromTs: Readonly<Section>): void {
  assert.ok(fromC, `C program printed no "${name}" section`);
  const cKeys = Object.keys(fromC).sort();
  const tsKeys = Object.keys(fromTs).sort();
  assert.deepEqual(
    tsKeys.filter((k) => !(k in fromC)),
    [],
    `${name}: entries in the TS table that the C program does not check`,
  );
  assert.deepEqual(
    cKeys.filter((k) => !(k in fromTs)),
    [],
    `${name}: entries the C program prints that the TS table lacks`,
  );
  for (const key of tsKeys) assert.equal(fromTs[key], fromC[key], `${name}: ${key}`);
}

/** Hand-encoded twins of the `encodings` section of vfio-abi.c. */
const ioctlEncodings: Section = {
  IO_3b_64_0: _IO(';', 100),
  IOR_78_01_16: _IOR('x', 1, 16),
  IOW_ab_ff_4: _IOW(0xab, 0xff, 4),
  IOWR_ff_80_16383: _IOWR(0xff, 0x80, 16383),
  IOWR_00_00_1: _IOWR(0, 0, 1),
};

describe('VFIO ABI against the C compiler and linux/vfio.h', () => {
  const fromC = compileAndRunAbiProgram();

  for (const section of ['ioctls', 'sizes', 'offsets', 'constants'] as const) {
    it(`${section} match`, () => assertSameSection(section, fromC[section], VFIO_ABI[section]));
  }

  it('generic ioctl encodings match', () => assertSameSection('encodings', fromC['encodings'], ioctlEncodings));

  it('prints nothing the test does not look at', () => {
    assert.deepEqual(Object.keys(fromC).sort(), ['constants', 'encodings', 'ioctls', 'offsets', 'sizes']);
  });
});

describe('ioctl encoding', () => {
  it('sets the direction bits as an unsigned number', () => {
    const request = _IOWR(0xff, 0xff, 0x3fff);
    assert.equal(request, 0xffffffff);
    assert.deepEqual(decodeIoctl(request), { dir: IOC_READ | IOC_WRITE, type: 0xff, nr: 0xff, size: 0x3fff });
    assert.equal(_IOC(IOC_READ, 'T', 1, 8), 0x80085401);
  });

  it('rejects fields that do not fit', () => {
    assert.throws(() => _IO('ab', 1), InvalidArgumentError);
    assert.throws(() => _IO(256, 1), InvalidArgumentError);
    assert.throws(() => _IO(1, 256), InvalidArgumentError);
    assert.throws(() => _IOR(1, 1, 0x4000), InvalidArgumentError);
    assert.throws(() => _IOC(4, 1, 1, 0), InvalidArgumentError);
    assert.throws(() => _IOW(1, 1.5, 4), InvalidArgumentError);
  });
});

/** A DataView over a fresh zeroed buffer, for hand-built kernel replies. */
function handBuilt(length: number): { buf: ArrayBuffer; view: DataView } {
  const buf = new ArrayBuffer(length);
  return { buf, view: new DataView(buf) };
}

describe('group status and device info', () => {
  it('round-trips vfio_group_status; the default is the request', () => {
    assert.deepEqual([...encodeGroupStatus()], [8, 0, 0, 0, 0, 0, 0, 0]);
    const status = decodeGroupStatus(encodeGroupStatus({ flags: VFIO_GROUP_FLAGS_VIABLE }));
    assert.deepEqual(status, { argsz: 8, flags: 1, viable: true, containerSet: false });
  });

  it('round-trips vfio_device_info without capabilities', () => {
    const flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET;
    const info = decodeDeviceInfo(encodeDeviceInfo({ flags, numRegions: 9, numIrqs: 5 }));
    assert.deepEqual(info, { argsz: 20, flags, numRegions: 9, numIrqs: 5, capOffset: 0, complete: true, capabilities: [] });
  });

  it('leaves room for capabilities when asked, and reports a reply that needs more', () => {
    const request = encodeDeviceInfo({ argsz: 64 });
    assert.equal(request.byteLength, 64);
    assert.equal(new DataView(request.buffer).getUint32(0, true), 64);

    const tooSmall = encodeDeviceInfo({ argsz: 96, flags: VFIO_DEVICE_FLAGS_CAPS, capOffset: 0 }).subarray(0, 20);
    const info = decodeDeviceInfo(tooSmall);
    assert.equal(info.complete, false);
    assert.equal(info.argsz, 96);
  });
});

describe('region info', () => {
  it('round-trips the fixed part with a large region offset', () => {
    const offset = 7 * 2 ** 40;
    const flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP;
    const bytes = encodeRegionInfo({ index: VFIO_PCI_BAR0_REGION_INDEX, flags, size: 0x1000_0000, offset });
    assert.equal(bytes.byteLength, 32);
    const info = decodeRegionInfo(bytes);
    assert.equal(info.offset, offset);
    assert.equal(info.size, 0x1000_0000);
    assert.equal(info.flags, flags);
    assert.equal(info.complete, true);
    assert.equal(info.sparseMmapAreas, undefined);
    assert.equal(info.msixMappable, false);
  });

  it('round-trips a capability chain', () => {
    const areas = [
      { offset: 0, size: 0x2000 },
      { offset: 0x3000, size: 0xd000 },
    ];
    const bytes = encodeRegionInfo({
      index: 2,
      flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_MMAP,
      size: 0x10000,
      offset: 2 * 2 ** 40,
      sparseMmapAreas: areas,
      regionType: { type: 0x80008086, subtype: 1 },
      msixMappable: true,
    });
    const info = decodeRegionInfo(bytes);
    assert.equal(info.argsz, bytes.byteLength);
    assert.ok(info.flags & VFIO_REGION_INFO_FLAG_CAPS);
    assert.equal(info.capOffset, 32);
    assert.deepEqual(info.sparseMmapAreas, areas);
    assert.deepEqual(info.regionType, { type: 0x80008086, subtype: 1 });
    assert.equal(info.msixMappable, true);
    assert.deepEqual(
      info.capabilities.map((c) => c.id),
      [1, 2, 3],
    );
  });

  it('decodes sparse mmap areas from a hand-built kernel reply', () => {
    // region_info (32 bytes) then cap header {id 1, version 1, next 0}, nr_areas 2, two {offset, size}.
    const { buf, view } = handBuilt(32 + 16 + 2 * 16);
    view.setUint32(0, 80, true); // argsz
    view.setUint32(4, 0b1111, true); // READ | WRITE | MMAP | CAPS
    view.setUint32(8, 4, true); // index: BAR4
    view.setUint32(12, 32, true); // cap_offset
    view.setUint32(16, 0x4000, true); // size
    view.setUint32(28, 0x400, true); // offset high word: 4 << 40
    view.setUint16(32, 1, true); // VFIO_REGION_INFO_CAP_SPARSE_MMAP
    view.setUint16(34, 1, true);
    view.setUint32(36, 0, true);
    view.setUint32(40, 2, true); // nr_areas
    view.setUint32(48, 0, true); // area 0 offset
    view.setUint32(56, 0x1000, true); // area 0 size
    view.setUint32(64, 0x3000, true); // area 1 offset
    view.setUint32(72, 0x1000, true); // area 1 size

    const info = decodeRegionInfo(buf);
    assert.equal(info.index, 4);
    assert.equal(info.offset, 4 * 2 ** 40);
    assert.deepEqual(info.capabilities, [{ id: VFIO_REGION_INFO_CAP_SPARSE_MMAP, version: 1, offset: 32, next: 0 }]);
    assert.deepEqual(info.sparseMmapAreas, [
      { offset: 0, size: 0x1000 },
      { offset: 0x3000, size: 0x1000 },
    ]);
  });

  it('reports an incomplete reply when the kernel asks for a larger argsz', () => {
    const { buf, view } = handBuilt(32);
    view.setUint32(0, 80, true); // the kernel's answer: 80 bytes needed
    view.setUint32(4, VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_CAPS, true);
    view.setUint32(12, 0, true); // cap_offset stays 0 when the caps did not fit
    const info = decodeRegionInfo(buf);
    assert.equal(info.complete, false);
    assert.equal(info.argsz, 80);
    assert.deepEqual(info.capabilities, []);
  });

  it('rejects a capability chain that loops', () => {
    const { buf, view } = handBuilt(64);
    view.setUint32(0, 64, true);
    view.setUint32(4, VFIO_REGION_INFO_FLAG_CAPS, true);
    view.setUint32(12, 32, true);
    view.setUint16(32, 2, true);
    view.setUint32(36, 48, true); // -> 48
    view.setUint16(48, 3, true);
    view.setUint32(52, 32, true); // -> back to 32
    assert.throws(() => decodeRegionInfo(buf), (err: unknown) => err instanceof MalformedConfigError && /loop/.test(err.message));

    view.setUint32(36, 32, true); // a capability pointing at itself
    assert.throws(() => decodeRegionInfo(buf), MalformedConfigError);
  });

  it('rejects a next pointer past the end of the buffer', () => {
    const { buf, view } = handBuilt(48);
    view.setUint32(0, 48, true);
    view.setUint32(4, VFIO_REGION_INFO_FLAG_CAPS, true);
    view.setUint32(12, 32, true);
    view.setUint16(32, 3, true);
    view.setUint32(36, 44, true); // a header at 44 would end at 52 > 48
    assert.throws(() => decodeRegionInfo(buf), (err: unknown) => err instanceof MalformedConfigError && /outside/.test(err.message));
  });

  it('rejects a cap_offset inside the fixed struct', () => {
    const { buf, view } = handBuilt(64);
    view.setUint32(0, 64, true);
    view.setUint32(4, VFIO_REGION_INFO_FLAG_CAPS, true);
    view.setUint32(12, 8, true);
    assert.throws(() => decodeRegionInfo(buf), MalformedConfigError);
  });

  it('rejects a sparse mmap capability whose areas run past the end', () => {
    const { buf, view } = handBuilt(64);
    view.setUint32(0, 64, true);
    view.setUint32(4, VFIO_REGION_INFO_FLAG_CAPS, true);
    view.setUint32(12, 32, true);
    view.setUint16(32, VFIO_REGION_INFO_CAP_SPARSE_MMAP, true);
    view.setUint32(40, 1000, true); // nr_areas
    assert.throws(() => decodeRegionInfo(buf), MalformedConfigError);
  });

  it('limits the chain to argsz, not only to the buffer', () => {
    const bytes = encodeRegionInfo({ index: 0, sparseMmapAreas: [{ offset: 0, size: 4096 }] });
    const walked = walkCapabilityChain(bytes, 32, { minOffset: 32, limit: bytes.byteLength });
    assert.equal(walked.length, 1);
    assert.throws(() => walkCapabilityChain(bytes, 32, { minOffset: 32, limit: 36 }), MalformedConfigError);
  });

  it('refuses u64 values at or above 2^53 with a RangeError', () => {
    const bytes = encodeRegionInfo({ index: 0, size: Number.MAX_SAFE_INTEGER });
    assert.equal(decodeRegionInfo(bytes).size, Number.MAX_SAFE_INTEGER);
    new DataView(bytes.buffer).setBigUint64(16, 2n ** 53n, true);
    assert.throws(() => decodeRegionInfo(bytes), RangeError);
    assert.throws(() => encodeRegionInfo({ index: 0, size: 2 ** 53 }), InvalidArgumentError);
    assert.throws(() => encodeRegionInfo({ index: 0, offset: -1 }), InvalidArgumentError);
  });

  it('decodes the config region request as the kernel sees it', () => {
    const bytes = encodeRegionInfo({ index: VFIO_PCI_CONFIG_REGION_INDEX, argsz: 128 });
    assert.equal(bytes.byteLength, 128);
    const info = decodeRegionInfo(bytes);
    assert.equal(info.argsz, 128);
    assert.equal(info.index, 7);
    assert.equal(info.complete, true);
  });
});

describe('irq info and irq set', () => {
  it('round-trips vfio_irq_info', () => {
    const info = { argsz: 16, flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, index: VFIO_PCI_MSIX_IRQ_INDEX, count: 2048 };
    assert.deepEqual(decodeIrqInfo(encodeIrqInfo(info)), info);
    assert.deepEqual(decodeIrqInfo(encodeIrqInfo({ index: 1 })), { argsz: 16, flags: 0, index: 1, count: 0 });
  });

  it('builds an eventfd set for N vectors, -1 meaning none', () => {
    const bytes = encodeIrqSetEventfds(VFIO_PCI_MSIX_IRQ_INDEX, [10, -1, 12], 4);
    assert.equal(bytes.byteLength, 20 + 3 * 4);
    const set = decodeIrqSet(bytes);
    assert.equal(set.argsz, 32);
    assert.equal(set.flags, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER);
    assert.equal(set.index, VFIO_PCI_MSIX_IRQ_INDEX);
    assert.equal(set.start, 4);
    assert.equal(set.count, 3);
    assert.deepEqual(set.eventfds, [10, -1, 12]);
    assert.equal(set.bools, undefined);
    assert.equal(new DataView(bytes.buffer).getInt32(24, true), -1);
  });

  it('round-trips bool payloads and DATA_NONE actions', () => {
    const bools = decodeIrqSet(encodeIrqSet({ action: VFIO_IRQ_SET_ACTION_MASK, index: 0, bools: [true, false, true] }));
    assert.equal(bools.dataType, VFIO_IRQ_SET_DATA_BOOL);
    assert.equal(bools.argsz, 23);
    assert.deepEqual(bools.bools, [true, false, true]);

    const unmask = decodeIrqSet(encodeIrqSet({ action: VFIO_IRQ_SET_ACTION_UNMASK, index: 0, count: 1 }));
    assert.equal(unmask.flags, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK);
    assert.equal(unmask.count, 1);
    assert.equal(unmask.argsz, 20);

    const disable = decodeIrqSet(encodeIrqDisable(VFIO_PCI_MSIX_IRQ_INDEX));
    assert.equal(disable.flags, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER);
    assert.equal(disable.count, 0);
    assert.equal(disable.start, 0);
  });

  it('rejects inconsistent irq sets', () => {
    assert.throws(() => encodeIrqSet({ action: VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_TRIGGER, index: 0 }), InvalidArgumentError);
    assert.throws(() => encodeIrqSet({ action: VFIO_IRQ_SET_ACTION_TRIGGER, index: 0, eventfds: [3], count: 2 }), InvalidArgumentError);
    assert.throws(() => encodeIrqSetEventfds(0, [-2]), InvalidArgumentError);
    const truncated = encodeIrqSetEventfds(0, [3, 4]).subarray(0, 24);
    assert.throws(() => decodeIrqSet(truncated), MalformedConfigError);
  });
});

describe('hot reset', () => {
  it('round-trips dependent devices and reports a reply that needs more room', () => {
    const devices = [
      { groupId: 7, segment: 0, bus: 3, devfn: 0 },
      { groupId: 8, segment: 1, bus: 0xff, devfn: 0x81 },
    ];
    const info = decodeHotResetInfo(encodeHotResetInfo({ devices }));
    assert.equal(info.argsz, hotResetInfoArgsz(2));
    assert.equal(info.complete, true);
    assert.deepEqual(info.devices, devices);

    const small = decodeHotResetInfo(encodeHotResetInfo({ count: 2 }));
    assert.equal(small.complete, false);
    assert.equal(small.count, 2);
  });

  it('round-trips the group fds of a hot reset', () => {
    const decoded = decodePciHotReset(encodePciHotReset([5, 9]));
    assert.deepEqual(decoded, { argsz: 20, flags: 0, groupFds: [5, 9] });
  });
});

describe('iommu info', () => {
  it('round-trips page sizes and capabilities, clamping ranges to safe integers', () => {
    const pgsizes = 0xffff_ffff_ffff_f000n; // what Intel VT-d reports: every size from 4 KiB up
    const bytes = encodeIommuInfo({
      flags: VFIO_IOMMU_INFO_PGSIZES,
      iovaPgsizes: pgsizes,
      iovaRanges: [
        { start: 0, end: 0xfedf_ffff },
        { start: 0xfef0_0000, end: 0xffff_ffff_ffff_ffffn },
        { start: 2n ** 60n, end: 2n ** 61n },
      ],
      dmaAvailable: 65535,
      migration: { flags: 0, pgsizeBitmap: 0x1000n, maxDirtyBitmapSize: 256 * 1024 * 1024 },
    });
    const info = decodeIommuInfo(bytes);
    assert.equal(info.flags, VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS);
    assert.equal(info.capOffset, 24);
    assert.equal(info.iovaPgsizes, pgsizes);
    assert.equal(info.minPageSize, 4096);
    assert.equal(info.complete, true);
    assert.deepEqual(info.iovaRanges, [
      { start: 0, end: 0xfedf_ffff },
      { start: 0xfef0_0000, end: Number.MAX_SAFE_INTEGER },
    ]);
    assert.equal(info.iovaRangesRaw?.length, 3);
    assert.equal(info.iovaRangesRaw?.[1]?.end, 0xffff_ffff_ffff_ffffn);
    assert.equal(info.dmaAvailable, 65535);
    assert.deepEqual(info.migration, { flags: 0, pgsizeBitmap: 0x1000n, maxDirtyBitmapSize: 256 * 1024 * 1024 });
  });

  it('decodes a request and a reply without capabilities', () => {
    const request = decodeIommuInfo(encodeIommuInfo());
    assert.equal(request.argsz, 24);
    assert.equal(request.iovaRanges, undefined);
    assert.equal(request.minPageSize, 0);

    const { buf, view } = handBuilt(24);
    view.setUint32(0, 48, true);
    view.setUint32(4, VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS, true);
    view.setUint32(8, 0x20_1000, true); // 4 KiB and 2 MiB
    const reply = decodeIommuInfo(buf);
    assert.equal(reply.complete, false);
    assert.equal(reply.minPageSize, 4096);
    assert.equal(reply.argsz, 48);
  });

  it('rejects an iova range capability that claims more ranges than fit', () => {
    const bytes = encodeIommuInfo({ iovaRanges: [{ start: 0, end: 0xffff }] });
    new DataView(bytes.buffer).setUint32(24 + 8, 2, true);
    assert.throws(() => decodeIommuInfo(bytes), MalformedConfigError);
  });
});

describe('dma map and unmap', () => {
  it('round-trips into a caller-provided buffer at an offset', () => {
    const backing = new Uint8Array(64).fill(0xee);
    const target = backing.subarray(8, 40);
    const map = { argsz: 32, flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE, vaddr: 0x7f12_3456_7000, iova: 2 ** 52, size: 2 * 1024 * 1024 };
    const bytes = encodeDmaMap(map, target);
    assert.equal(bytes.buffer, backing.buffer);
    assert.equal(bytes.byteOffset, 8);
    assert.deepEqual(decodeDmaMap(target), map);
    assert.equal(backing[7], 0xee);
    assert.equal(backing[40], 0xee);
  });

  it('round-trips unmap, where the kernel writes back the size', () => {
    assert.deepEqual(decodeDmaUnmap(encodeDmaUnmap({ iova: 0x10_0000, size: 0x1000 })), {
      argsz: 24,
      flags: 0,
      iova: 0x10_0000,
      size: 0x1000,
    });
  });

  it('rejects a target that is too small and values that are not u64 numbers', () => {
    assert.throws(() => encodeDmaMap({ flags: 1, vaddr: 0, iova: 0, size: 4096 }, new ArrayBuffer(16)), InvalidArgumentError);
    assert.throws(() => encodeDmaMap({ flags: 1, vaddr: 0, iova: -4096, size: 4096 }), InvalidArgumentError);
    assert.throws(() => encodeDmaUnmap({ iova: 0.5, size: 4096 }), InvalidArgumentError);
    assert.throws(() => decodeDmaMap(new ArrayBuffer(24)), MalformedConfigError);
  });
});
