/**
 * An NVMe namespace served over ublk: one NvmeBlockDevice per NVMe I/O queue pair (one ublk
 * queue each), with the tags' I/O buffers in the controller's DMA memory, so reads and writes
 * go zero copy between the kernel's copy and the device.
 */
import type { NvmeController } from '../../drivers/nvme/controller';
import type { NvmeNamespace } from '../../drivers/nvme/namespace';
import type { NvmeQueue } from '../../drivers/nvme/queue';
import type { DmaBuffer } from '../../dma/dma-space';
import { NvmeBlockDevice } from '../nbd/nvme-device';
import { UBLK_IO_OP_READ, UBLK_IO_OP_WRITE } from '../../uapi/ublk';
import type { UblkBlockDevice, UblkIoDone } from './block-device';
import { UblkServer, type UblkServerOptions } from './server';

export class NvmeUblkDevice extends NvmeBlockDevice implements UblkBlockDevice {
  readonly volatileCache: boolean;
  private readonly dma = new Map<ArrayBuffer, DmaBuffer>();
  private readonly q: NvmeQueue | undefined;

  constructor(namespace: NvmeNamespace, queue?: NvmeQueue, readOnly = false) {
    super(namespace, { queue, readOnly });
    this.q = queue;
    this.volatileCache = namespace.controller.identity.volatileWriteCache;
  }

  allocIoBuffer(size: number): Uint8Array {
    const buf = this.namespace.controller.allocBuffer(size);
    this.dma.set(buf.buffer, buf);
    return new Uint8Array(buf.buffer, 0, size);
  }

  freeIoBuffer(view: Uint8Array): void {
    const buf = this.dma.get(view.buffer as ArrayBuffer);
    if (!buf) return;
    this.dma.delete(view.buffer as ArrayBuffer);
    // Freed already when the device went away (removal releases all its DMA memory).
    if (this.namespace.controller.isClosed) return;
    try {
      buf.free();
    } catch {
      // released with its device
    }
  }

  /** The buffer's IOVA (-1 for memory that is not ours: such requests take the promise path). */
  ioBufferHandle(view: Uint8Array): number {
    const buf = this.dma.get(view.buffer as ArrayBuffer);
    return buf ? buf.iova + view.byteOffset : -1;
  }

  /**
   * Reads and plain writes go straight to the NVMe queue through the driver's callback API
   * (namespace.submit): the tag's `done` is the completion callback. FUA writes, flush, discard
   * and write zeroes are rare and take the promise methods.
   */
  startIo(op: number, offset: number, length: number, fua: boolean, iova: number, done: UblkIoDone): boolean {
    const q = this.q;
    const write = op === UBLK_IO_OP_WRITE;
    if (q === undefined || iova < 0 || (op !== UBLK_IO_OP_READ && (!write || fua || this.readOnly))) return false;
    const bs = this.blockSize;
    if (offset % bs !== 0) return false;
    try {
      this.namespace.submit(write, offset / bs, iova, length, q, done);
    } catch (e) {
      // Validation (a request past the end, a bad length): refused before it reached the queue.
      done(e as Error);
    }
    return true;
  }

  plug(): void {
    this.q?.plug();
  }

  unplug(): void {
    this.q?.unplug();
  }

  readInto(offset: number, target: Uint8Array): Promise<void> {
    const bs = this.blockSize;
    if (offset % bs !== 0 || target.length % bs !== 0) {
      return this.read(offset, target.length).then((d) => target.set(d));
    }
    return this.namespace.read(offset / bs, target, this.q);
  }
}

/**
 * Serves `namespace` as /dev/ublkbN with one ublk queue per NVMe I/O queue pair: the
 * controller's existing pairs, plus new ones of `depth` up to `queues` (default 1; completing by
 * MSI-X with `interrupts`, else polled). The driver
 * grants at most one ublk queue per CPU; pairs beyond that go unused.
 */
export async function serveNamespaceOverUblk(
  controller: NvmeController,
  namespace: NvmeNamespace,
  options: UblkServerOptions & { queues?: number; readOnly?: boolean; interrupts?: boolean } = {},
): Promise<UblkServer> {
  const want = options.queues ?? 1;
  const depth = options.depth ?? 64;
  const queues = [...controller.queues];
  while (queues.length < want) queues.push(await controller.createQueuePair({ depth, interrupts: options.interrupts }));
  const devices = queues.slice(0, want).map((q) => new NvmeUblkDevice(namespace, q, options.readOnly));
  return UblkServer.start(devices, { ...options, depth: Math.min(depth, ...queues.slice(0, want).map((q) => q.depth)) });
}
