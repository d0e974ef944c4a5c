/** userpci: PCI device drivers in user space, in TypeScript. The public API. */
export * from './errors';
export { useSerialScavenge } from './gc-tuning';
export { openDevice } from './device/open';
export { PciDevice, dmaLimitFromMask, type OpenOptions, CONFIG_REGION_INDEX, ROM_REGION_INDEX, BAR_COUNT } from './device/device';
export { Region } from './device/region';
export type { Backend } from './device/backend';
export { DmaBuffer, DmaMapping, type DmaDirection, type DmaSegment, type DmaAllocOptions } from './dma/dma-space';
export { IovaAllocator } from './dma/iova-allocator';
export { ProtocolError, RemoteError } from './vfio-user/protocol/codec';
export { ConnectionClosedError } from './vfio-user/protocol/transport';
export { NvmeStatusError } from './drivers/nvme/errors';
export { bindToVfio, unbindFromVfio, boundDriver, iommuGroupOf, groupBlockers, deviceUses, type BindOptions, type BindResult } from './pci/bind';
export type { DeviceUse } from './pci/in-use';
export { parsePciAddress, formatPciAddress, type PciAddress } from './pci/address';
// Discovery: what `userpci list` and `userpci info` show, from code.
export { findPciDevices, findPciDevice, findByIds, matchesPciFilter, type PciDeviceFilter } from './pci/find';
export {
  listPciDevices,
  readPciDevice,
  inspectPciDevice,
  readConfigBytes,
  type PciDeviceInfo,
  type PciResource,
  type InspectedDevice,
  type SysfsOptions,
  type ConfigBytes,
} from './pci/sysfs';
export {
  parseConfigSpace,
  findCapability,
  findExtendedCapability,
  type ConfigSpace as ParsedConfigSpace,
  type Bar,
  type Capability,
  type ExtendedCapability,
} from './pci/config-space';
export { PciIds, loadPciIds, DEFAULT_PCI_IDS_PATHS } from './pci/ids';
export { EduDriver } from './drivers/edu/edu-driver';
export { InterruptVector, type WaitOptions } from './irq/interrupt-vector';
export type { InterruptMode } from './irq/device-interrupts';
export { connectVfioUser } from './vfio-user/client/client';
export * as server from './vfio-user/server/index';
export { serveVfioUser, createModel } from './vfio-user/server/index';
export * as nvme from './drivers/nvme/index';
export * as nbd from './exports/nbd/index';
export * as ublk from './exports/ublk/index';
export * as tap from './exports/tap/index';
export * as virtioNet from './drivers/virtio-net/index';
