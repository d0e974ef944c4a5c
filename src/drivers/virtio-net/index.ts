/** The user-space virtio-net driver: the device, packet batches, queue statistics, and the virtio transport under it. */
export { VirtioNet, type VirtioNetOptions, type VirtioNetInfo } from './net-device';
export { PacketBatch } from './packet-batch';
export type { QueueStats } from './queues';
export * as netConstants from './constants';
export { VirtioPciTransport, virtioDeviceType, findVirtioLayout } from '../virtio/transport';
export { SplitQueue, splitQueueLayout } from '../virtio/split-queue';
export { PackedQueue, packedQueueLayout } from '../virtio/packed-queue';
export type { Virtqueue, VirtqueueState } from '../virtio/virtqueue';
export * as virtioConstants from '../virtio/constants';
