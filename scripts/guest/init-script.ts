// The guest's PID 1 (busybox sh) and the kernel modules it carries and loads.
// Both feed the asset cache key, so editing them rebuilds the initramfs.

/** Modules copied into the initramfs (with everything they depend on). */
export const INCLUDED_MODULES = [
  'virtio_pci', '9pnet_virtio', '9p',
  'vfio', 'vfio_iommu_type1', 'vfio-pci',
  'nvme', 'nbd', 'loop', 'e1000e', 'virtio_net',
  'ext4', 'crc32c_generic', 'crc32c-intel',
  'pktgen', // bench:net's kernel baseline; loaded by the bench, not at boot
  'tun', // userpci net tap's TAP interface; loaded by its test, not at boot
];

/** Copied in (with their dependencies) when the kernel has them: ublk_drv exists from 6.0 on. */
export const OPTIONAL_MODULES = ['ublk_drv'];

/**
 * Modules loaded at boot, in order. Device drivers (nvme, e1000e, virtio_net) are loaded so the
 * devices under test start bound to a kernel driver, as on a real machine: tests must unbind.
 * ext4 wants crc32c, which it only asks for by alias; load it by name first.
 */
export const LOADED_MODULES = [
  'virtio_pci', '9pnet_virtio', '9p',
  'vfio', 'vfio_iommu_type1', 'vfio-pci',
  'nvme', 'e1000e', 'virtio_net', 'nbd', 'loop',
  'crc32c_generic', 'ext4',
];

/** 9p mount options: 512000 is the largest msize Linux's virtio transport accepts. */
export const P9_OPTS = 'trans=virtio,version=9p2000.L,msize=512000';

/**
 * Generic on purpose: everything about one run lives in /results/job.sh, written by the host,
 * so the initramfs never changes between runs. Whatever happens, it ends in poweroff.
 */
export const INIT_SCRIPT = `#!/bin/sh
/bin/busybox --install -s
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/hugepages
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t hugetlbfs hugetlbfs /dev/hugepages
ip link set lo up 2>/dev/null
# A module built into this kernel (6.12's virtio_pci) is listed in modules.builtin instead.
for m in ${LOADED_MODULES.join(' ')}; do
  modprobe "$m" 2>/dev/null || grep -q "/$m.ko" "/lib/modules/$(uname -r)/modules.builtin" ||
    echo "userpci-guest: modprobe $m failed"
done
halt_now() { sync; poweroff -f; sleep 5; }
if ! mount -t 9p -o ${P9_OPTS} results /results; then
  echo "userpci-guest: cannot mount the results share"; halt_now
fi
echo "userpci-guest: job start at uptime $(cut -d' ' -f1 /proc/uptime) s"
sh /results/job.sh
echo "userpci-guest: job end at uptime $(cut -d' ' -f1 /proc/uptime) s"
umount /results
halt_now
`;
