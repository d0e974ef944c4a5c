/** ublk export of block devices: /dev/ublkbN served from user space (Linux 6.0+, ublk_drv). */
export { UblkServer, type UblkServerOptions } from './server';
export { UblkControl, type UblkDeviceInfo, type UblkParams } from './control';
export { type UblkBlockDevice } from './block-device';
export { NvmeUblkDevice, serveNamespaceOverUblk, serveNamespaceOverUblkThreads } from './nvme';
export { UblkThreadServer, type UblkThreadServerOptions, type UblkThreadDeviceSpec } from './thread-server';
export type { UblkThreadDevice, UblkThreadDeviceFactory } from './queue-thread';
