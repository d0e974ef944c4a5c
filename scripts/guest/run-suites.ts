// The guest test table: every boot `npm run test:guest` makes, one after another.
//
//   node dist/scripts/guest/run-suites.js            all runs
//   node dist/scripts/guest/run-suites.js edu ...    only the named runs
//   node dist/scripts/guest/run-suites.js --list
//   node dist/scripts/guest/run-suites.js --kernel 6.12 edu   a run on the other kernel
//
// A boot costs about 7 s under TCG: add test files to an existing run with the same devices
// rather than adding runs. Tests are compiled files under dist/.

import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { guestCacheDir } from './assets';
import { GUEST_KERNELS, GuestKernel } from './assets';
import type { GuestRun } from './index';
import { installSignalHandlers, runSuites } from './suites';

const MIN = 60_000;

function scratch(name: string): string {
  return path.join(guestCacheDir(), 'scratch', name);
}

/** A run's setup making its drive images afresh: sparse files of the given sizes. */
function freshImages(images: readonly (readonly [name: string, bytes: number])[]): () => Promise<void> {
  return async () => {
    await fsp.mkdir(path.dirname(scratch('x')), { recursive: true });
    for (const [name, size] of images) {
      await fsp.rm(scratch(name), { force: true });
      await fsp.writeFile(scratch(name), '');
      await fsp.truncate(scratch(name), size);
    }
  };
}

/** The VFIO core suite's devices: an edu with its default 28-bit DMA mask, one with a 24-bit mask. */
const EDU_PAIR = ['-device', 'edu', '-device', 'edu,dma_mask=0xffffff'];

/**
 * The drives the NVMe suites find by serial (images PREFIX-{a,b,export}.img): 512-byte LBAs,
 * MDTS 7; 4096-byte LBAs, MDTS 10 for chained PRP lists; one to export (NBD or ublk).
 */
function nvmeSuiteDrives(prefix: string): { qemu: string[]; images: [string, number][] } {
  const [a, b, x] = [`${prefix}-a.img`, `${prefix}-b.img`, `${prefix}-export.img`] as const;
  return {
    qemu: [
      '-drive', `file=${scratch(a)},if=none,id=nvmea,format=raw`, '-device', 'nvme,drive=nvmea,serial=userpci-a',
      '-drive', `file=${scratch(b)},if=none,id=nvmeb,format=raw`, '-device', 'nvme,drive=nvmeb,serial=userpci-b,mdts=10,logical_block_size=4096,physical_block_size=4096',
      '-drive', `file=${scratch(x)},if=none,id=nvmen,format=raw`, '-device', 'nvme,drive=nvmen,serial=userpci-nbd',
    ],
    images: [[a, 64 << 20], [b, 32 << 20], [x, 64 << 20]],
  };
}

const NVME_DRIVES = nvmeSuiteDrives('nvme');
const UBLK_DRIVES = nvmeSuiteDrives('ublk');

export const SUITES: GuestRun[] = [
  {
    // Everything that needs only QEMU's edu device shares this boot: one edu with its default
    // 28-bit DMA mask, one started with a 24-bit mask.
    name: 'edu',
    qemuDevices: EDU_PAIR,
    tests: ['dist/test/guest/smoke.test.js', 'dist/test/guest/vfio-edu.test.js', 'dist/test/guest/irq-edu.test.js', 'dist/test/guest/vfio-dma.test.js', 'dist/test/guest/dma-safety.test.js', 'dist/test/guest/proxy-edu.test.js', 'dist/test/guest/iova-lifecycle.test.js'],
    timeoutMs: 15 * MIN, // a hang guard: a busy machine (several guests at once) takes far longer than CI
  },
  {
    // Binding: an edu and an e1000e share an IOMMU group behind a PCIe-to-PCI bridge; a second
    // e1000e stands alone, bound to its kernel driver.
    name: 'bind',
    qemuDevices: ['-device', 'pcie-pci-bridge,id=br1', '-device', 'edu,bus=br1,addr=1', '-device', 'e1000e,bus=br1,addr=2', '-device', 'e1000e'],
    tests: ['dist/test/guest/bind.test.js', 'dist/test/guest/msix-e1000e.test.js'],
    timeoutMs: 12 * MIN, // a hang guard: 40 s on a quiet machine; over 300 s once at load 17 (another guest and CI beside it)
  },
  {
    // QEMU's nvme: the NVMe suites' drives (nvmeSuiteDrives) and a sparse 4 TiB one for the
    // fault rounds (removal, rescan, kill -9) and verify without a span; fresh images each run.
    name: 'nvme',
    qemuDevices: [
      ...NVME_DRIVES.qemu,
      '-drive', `file=${scratch('nvme-fault.img')},if=none,id=nvmef,format=raw`, '-device', 'nvme,drive=nvmef,serial=userpci-fault',
    ],
    tests: ['dist/test/guest/nvme.test.js', 'dist/test/guest/proxy-nvme.test.js', 'dist/test/guest/nvme-cli.test.js', 'dist/test/guest/nbd.test.js', 'dist/test/guest/bind-mounted-nvme.test.js', 'dist/test/guest/nvme-faults.test.js'],
    timeoutMs: 25 * MIN, // a hang guard; the NVMe suite runs three times (vfio-pci, through the proxy, and traced)
    setup: freshImages([...NVME_DRIVES.images, ['nvme-fault.img', 4 * 2 ** 40]]),
  },
  {
    // virtio-net on QEMU hubs (no host networking): ours through vfio-pci, the kernel's
    // virtio_net as the peer, and a NIC without iommu_platform=on the driver must refuse; on a
    // hub of their own, the same pair with packed virtqueues (packed=on); ours also with mq=on
    // (a hubport gives one queue pair: MQ offered with max_virtqueue_pairs 1, and a control queue).
    name: 'net',
    qemuDevices: [
      '-netdev', 'hubport,id=h0,hubid=0', '-device', 'virtio-net-pci,netdev=h0,disable-legacy=on,iommu_platform=on,mac=52:54:00:00:77:01',
      '-netdev', 'hubport,id=h1,hubid=0', '-device', 'virtio-net-pci,netdev=h1,disable-legacy=on,iommu_platform=on,mac=52:54:00:00:77:02',
      '-netdev', 'hubport,id=h2,hubid=1', '-device', 'virtio-net-pci,netdev=h2,disable-legacy=on,mac=52:54:00:00:77:03',
      '-netdev', 'hubport,id=h3,hubid=2', '-device', 'virtio-net-pci,netdev=h3,disable-legacy=on,iommu_platform=on,packed=on,mac=52:54:00:00:78:01',
      '-netdev', 'hubport,id=h4,hubid=2', '-device', 'virtio-net-pci,netdev=h4,disable-legacy=on,iommu_platform=on,packed=on,mq=on,mac=52:54:00:00:78:02',
    ],
    tests: ['dist/test/guest/virtio-net.test.js', 'dist/test/guest/virtio-net-packed.test.js'],
    timeoutMs: 12 * MIN, // a hang guard: 4-5 min on a busy machine, the TAP test (ping, TCP) included
  },
  {
    // ublk needs Linux 6.0+: this boot is the 6.12 kernel's. Beside the ublk suite (QEMU's nvme
    // served as /dev/ublkb0, ext4 across restarts, a killed server, removal), the VFIO core and
    // interrupt suites on two edus and the NVMe driver suite (drives as in the nvme run) show
    // them on 6.12 too.
    name: 'ublk',
    kernel: '6.12',
    qemuDevices: [...EDU_PAIR, ...UBLK_DRIVES.qemu],
    tests: ['dist/test/guest/vfio-edu.test.js', 'dist/test/guest/irq-edu.test.js', 'dist/test/guest/nvme.test.js', 'dist/test/guest/ublk.test.js', 'dist/test/guest/ublk-threads.test.js'],
    timeoutMs: 18 * MIN, // a hang guard
    setup: freshImages(UBLK_DRIVES.images),
  },
];

async function main(argv: string[]): Promise<number> {
  if (argv.includes('--list')) {
    for (const s of SUITES) console.log(`${s.name}\t${s.kernel ?? 'default'}\t${s.qemuDevices.join(' ')}\t${s.tests.join(' ')}`);
    return 0;
  }
  // --kernel K runs the named runs (or all) on kernel K instead of each run's own.
  let kernel: GuestKernel | undefined;
  const k = argv.indexOf('--kernel');
  if (k >= 0) {
    const v = argv[k + 1];
    if (!v || !(GUEST_KERNELS as readonly string[]).includes(v)) {
      console.error(`--kernel wants one of ${GUEST_KERNELS.join(', ')}`);
      return 2;
    }
    kernel = v as GuestKernel;
    argv = [...argv.slice(0, k), ...argv.slice(k + 2)];
  }
  const unknown = argv.filter((a) => !SUITES.some((s) => s.name === a));
  if (unknown.length > 0) {
    console.error(`unknown guest run(s): ${unknown.join(', ')}; known: ${SUITES.map((s) => s.name).join(', ')}`);
    return 2;
  }
  const picked = argv.length > 0 ? SUITES.filter((s) => argv.includes(s.name)) : SUITES;
  const runs = kernel ? picked.map((s) => ({ ...s, kernel })) : picked;
  return (await runSuites(runs)) ? 0 : 1;
}

if (require.main === module) {
  installSignalHandlers();
  main(process.argv.slice(2)).then(
    (code) => (process.exitCode = code),
    (e: Error) => {
      console.error(e.stack ?? e.message);
      process.exitCode = 1;
    },
  );
}
