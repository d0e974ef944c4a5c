/**
 * `testdev`: a small device that exercises what edu does not: a BAR backed by shared memory with
 * a sparse-mmap layout (mappable pages between trapped ones), MSI with per-vector masking, and
 * MSI-X with its table and PBA in a BAR. For tests of clients, facades and drivers.
 *
 * BAR0 (16 KiB, memfd): pages 1 and 3 mappable; pages 0 and 2 trapped. In page 0:
 *   0x000 W  notify: raise MSI/MSI-X vector <value>
 *   0x004 W  INTx: 1 asserts, 0 deasserts
 *   0x008 RW scratch (reads back what was written; reads elsewhere in trapped pages return the offset)
 *   0x00c R  trapped-access counter
 * BAR2 (4 KiB, 64-bit): MSI-X table for 4 vectors at 0x000, PBA at 0x800.
 */
import { native, constants } from '../native/index';
import { ConfigSpace, addMsiCapability, addMsixCapability } from './config-space';
import type { BarDefinition, DeviceContext, DeviceModel } from './device-model';

export const TESTDEV_BAR0_SIZE = 16 * 1024;
export const TestdevReg = { NOTIFY: 0x0, INTX: 0x4, SCRATCH: 0x8, TRAPS: 0xc } as const;

export class TestDeviceModel implements DeviceModel {
  readonly name = 'testdev';
  readonly config: ConfigSpace;
  readonly bars: ReadonlyMap<number, BarDefinition>;
  readonly memoryFd: number;
  readonly memory: ArrayBuffer;
  private context: DeviceContext | undefined;
  private scratch = 0;
  private traps = 0;

  constructor() {
    this.config = new ConfigSpace({ vendorId: 0x1234, deviceId: 0xfeed, revision: 1, classCode: 0xff0000, interruptPin: 1 });
    this.config.setBar(0, { size: TESTDEV_BAR0_SIZE });
    this.config.setBar(2, { size: 4096, is64: true });
    addMsiCapability(this.config, { vectors: 2, is64: true, perVectorMask: true });
    addMsixCapability(this.config, { vectors: 4, tableBar: 2, tableOffset: 0, pbaBar: 2, pbaOffset: 0x800 });
    this.memoryFd = native.memfdCreate('testdev-bar0', 0);
    native.ftruncate(this.memoryFd, TESTDEV_BAR0_SIZE);
    this.memory = native.mmap(TESTDEV_BAR0_SIZE, constants.PROT_READ | constants.PROT_WRITE, constants.MAP_SHARED, this.memoryFd, 0);
    this.bars = new Map<number, BarDefinition>([
      [
        0,
        {
          shared: { fd: this.memoryFd, memory: this.memory, areas: [{ offset: 0x1000, size: 0x1000 }, { offset: 0x3000, size: 0x1000 }] },
          handlers: { read: (o, d) => this.read(o, d), write: (o, d) => this.write(o, d) },
        },
      ],
      [2, {}],
    ]);
  }

  attach(context: DeviceContext): void {
    this.context = context;
  }

  reset(): void {
    this.scratch = 0;
  }

  dispose(): void {
    native.munmap(this.memory);
    native.close(this.memoryFd);
  }

  private read(offset: number, data: Uint8Array): void {
    this.traps++;
    const value = offset === TestdevReg.SCRATCH ? this.scratch : offset === TestdevReg.TRAPS ? this.traps : offset;
    const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
    data.fill(0);
    if (data.length >= 4) v.setUint32(0, value >>> 0, true);
    else for (let i = 0; i < data.length; i++) data[i] = (value >>> (8 * i)) & 0xff;
  }

  private write(offset: number, data: Uint8Array): void {
    this.traps++;
    let value = 0;
    for (let i = Math.min(4, data.length) - 1; i >= 0; i--) value = (value << 8) | data[i]!;
    value >>>= 0;
    if (offset === TestdevReg.NOTIFY) this.context?.irq.notify(value);
    else if (offset === TestdevReg.INTX) this.context?.irq.setIntx(value !== 0);
    else if (offset === TestdevReg.SCRATCH) this.scratch = value;
  }
}

export function createTestDeviceModel(): TestDeviceModel {
  return new TestDeviceModel();
}
