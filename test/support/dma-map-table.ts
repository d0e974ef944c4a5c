/**
 * The DMA maps a device simulated in this process was given (Backend.dmaMap/dmaUnmap), and the
 * driver's own memory behind an IOVA, which the simulated device reads and writes in place.
 */
import type { BackendDmaMapRequest } from '../../src/device/backend';

export class DmaMapTable {
  private readonly maps: { iova: number; memory: Uint8Array }[] = [];

  add(request: BackendDmaMapRequest): void {
    this.maps.push({ iova: request.memoryIova, memory: request.memory });
  }

  /** Forget the map that starts in iova..iova+size (the driver unmaps what it mapped, whole). */
  remove(iova: number, size: number): void {
    const i = this.maps.findIndex((m) => m.iova >= iova && m.iova < iova + size);
    if (i >= 0) this.maps.splice(i, 1);
  }

  /** The `length` bytes at an IOVA inside one map (no copy), or undefined: a real device would fault. */
  bytes(iova: number, length: number): Uint8Array | undefined {
    for (const m of this.maps) {
      if (iova >= m.iova && iova + length <= m.iova + m.memory.length) return m.memory.subarray(iova - m.iova, iova - m.iova + length);
    }
    return undefined;
  }
}
