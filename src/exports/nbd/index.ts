/** NBD export of block devices (an NVMe namespace, or anything implementing BlockDevice). */
export { NbdServer, errnoFor, type NbdExport, type NbdServerOptions, type ListenTarget } from './server';
export { MemoryBlockDevice, type BlockDevice } from './block-device';
export { NvmeBlockDevice, type NvmeBlockDeviceOptions } from './nvme-device';
export * as nbdProtocol from './protocol';
