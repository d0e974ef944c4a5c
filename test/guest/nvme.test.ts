/**
 * The NVMe driver against QEMU's nvme device through the guest kernel's vfio-pci and the
 * emulated IOMMU: the shared NVMe suite (test/shared/nvme-driver-suite.ts) with the driver on
 * vfio-pci in this process. Both drives start bound to the kernel's nvme driver and go back to
 * it at the end.
 */
import { twoDrivesOnVfio } from './nvme-drives';
import { registerNvmeDriverSuite } from '../shared/nvme-driver-suite';

const drives = twoDrivesOnVfio({ startOnKernelDriver: true });

registerNvmeDriverSuite({
  label: 'VFIO',
  a: drives.a,
  b: drives.b,
  pciA: drives.a,
  mapsAnyMemory: true,
});
