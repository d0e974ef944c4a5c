/**
 * Binding that cannot hurt the machine, on a fake sysfs and /proc: a function whose disk is
 * mounted, used as swap, held by dm or whose interface is up is refused (and so is one whose
 * IOMMU group partner is in use) unless forced; a dry run plans and writes nothing.
 * The guest's `bind` and `nvme` runs show the same against the real kernel.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { bindToVfio, deviceUses, unbindFromVfio } from '../../src/pci/bind.js';
import { makeFakeSysfs } from '../fixtures/config/fake-sysfs.js';
import { conventionalDevice, nicWithSriov } from '../fixtures/config/synthetic.js';

const ENTRY = resolve(__dirname, '..', '..', '..', 'bin', 'userpci.js');

/** An NVMe-like disk with one partition under the function, named as the kernel would. */
function addDisk(sysfs: string, address: string, disk: string, dev: string, partitionDev: string, holders: string[] = []): void {
  const directory = join(sysfs, 'bus/pci/devices', address, 'nvme', 'nvme0', disk);
  mkdirSync(join(directory, 'holders'), { recursive: true });
  writeFileSync(join(directory, 'dev'), `${dev}\n`);
  for (const holder of holders) mkdirSync(join(directory, 'holders', holder));
  const partition = join(directory, `${disk}p1`);
  mkdirSync(join(partition, 'holders'), { recursive: true });
  writeFileSync(join(partition, 'dev'), `${partitionDev}\n`);
  writeFileSync(join(partition, 'partition'), '1\n');
  mkdirSync(join(sysfs, 'block'), { recursive: true });
  symlinkSync(join('..', 'bus/pci/devices', address, 'nvme', 'nvme0', disk), join(sysfs, 'block', disk));
}

function addInterface(sysfs: string, address: string, name: string, flags: string): void {
  mkdirSync(join(sysfs, 'bus/pci/devices', address, 'net', name), { recursive: true });
  writeFileSync(join(sysfs, 'bus/pci/devices', address, 'net', name, 'flags'), `${flags}\n`);
}

function fakeProc(mountinfo: string[], swaps: string[] = []): string {
  const proc = mkdtempSync(join(tmpdir(), 'userpci-proc-'));
  mkdirSync(join(proc, 'self'));
  writeFileSync(join(proc, 'self', 'mountinfo'), mountinfo.map((line) => `${line}\n`).join(''));
  writeFileSync(join(proc, 'swaps'), ['Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority', ...swaps].join('\n') + '\n');
  return proc;
}

// Device numbers no real machine hands out (major 250 is in the dynamic range but minor 7xx is
// not used by any disk here), so the CLI runs below cannot match the host's own mounts.
function machine() {
  const sysfs = makeFakeSysfs([
    { address: '0000:01:00.0', config: conventionalDevice(), driver: 'nvme', iommuGroup: 3 },
    { address: '0000:02:00.0', config: conventionalDevice(), driver: 'nvme', iommuGroup: 4 },
    { address: '0000:03:00.0', config: nicWithSriov(), driver: 'e1000e', iommuGroup: 5 },
    { address: '0000:04:00.0', config: nicWithSriov(), driver: 'e1000e', iommuGroup: 6 },
    { address: '0000:05:00.0', config: conventionalDevice(), driver: 'nvme', iommuGroup: 7 },
    { address: '0000:05:00.1', config: conventionalDevice(), iommuGroup: 7 },
    { address: '0000:06:00.0', config: conventionalDevice(), driver: 'nvme', iommuGroup: 8 },
  ]);
  mkdirSync(join(sysfs, 'bus/pci/drivers/vfio-pci'), { recursive: true });
  for (const [group, addresses] of [[3, ['0000:01:00.0']], [4, ['0000:02:00.0']], [5, ['0000:03:00.0']], [6, ['0000:04:00.0']], [7, ['0000:05:00.0', '0000:05:00.1']], [8, ['0000:06:00.0']]] as const) {
    const directory = join(sysfs, 'kernel/iommu_groups', String(group), 'devices');
    mkdirSync(directory, { recursive: true });
    for (const address of addresses) symlinkSync(join('../../../../bus/pci/devices', address), join(directory, address));
  }
  addDisk(sysfs, '0000:01:00.0', 'nvme0n1', '250:700', '250:701'); // its partition is mounted on /boot
  addDisk(sysfs, '0000:02:00.0', 'nvme1n1', '250:710', '250:711'); // idle
  addDisk(sysfs, '0000:05:00.0', 'nvme2n1', '250:720', '250:721'); // swap on the partition
  addDisk(sysfs, '0000:06:00.0', 'nvme3n1', '250:730', '250:731', ['dm-0']); // under LVM
  addInterface(sysfs, '0000:03:00.0', 'eth0', '0x1003'); // up
  addInterface(sysfs, '0000:04:00.0', 'eth1', '0x1002'); // down
  const proc = fakeProc(['29 1 250:701 / /boot rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw'], ['/dev/nvme2n1p1 partition 1048572 0 -2']);
  return { sysfs, proc, stateDir: mkdtempSync(join(tmpdir(), 'userpci-state-')) };
}

describe('bind refuses a device the host uses', () => {
  it('finds mounts, swap, holders and up interfaces behind a function', () => {
    const { sysfs, proc } = machine();
    const uses = (address: string) => deviceUses(address, { sysfsRoot: sysfs, procRoot: proc }).map((u) => `${u.name} ${u.reason}`);
    assert.deepEqual(uses('0000:01:00.0'), ['nvme0n1p1 mounted on /boot']);
    assert.deepEqual(uses('0000:02:00.0'), []);
    assert.deepEqual(uses('0000:03:00.0'), ['eth0 interface is up']);
    assert.deepEqual(uses('0000:04:00.0'), []);
    assert.deepEqual(uses('0000:05:00.1'), ['nvme2n1p1 swap'], 'a group partner in use counts');
    assert.deepEqual(uses('0000:06:00.0'), ['nvme3n1 held by dm-0']);
  });

  it('refuses with EBUSY naming the use, and writes nothing', () => {
    const { sysfs, proc, stateDir } = machine();
    for (const [address, pattern] of [
      ['0000:01:00.0', /0000:01:00\.0 is in use: nvme0n1p1 mounted on \/boot; unbinding nvme would take it from the host \(--force/],
      ['0000:03:00.0', /eth0 interface is up/],
      ['0000:05:00.1', /nvme2n1p1 swap \(behind 0000:05:00\.0, same IOMMU group\)/],
      ['0000:06:00.0', /nvme3n1 held by dm-0/],
    ] as const) {
      assert.throws(() => bindToVfio(address, { sysfsRoot: sysfs, procRoot: proc, stateDir }), { code: 'EBUSY', message: pattern });
      assert.equal(existsSync(join(sysfs, 'bus/pci/devices', address, 'driver_override')), false, `${address} untouched`);
    }
    assert.equal(existsSync(join(sysfs, 'bus/pci/drivers_probe')), false);
  });

  it('plans without writing on a dry run, forced or idle', () => {
    const { sysfs, proc, stateDir } = machine();
    const forced = bindToVfio('01:00.0', { sysfsRoot: sysfs, procRoot: proc, stateDir, dryRun: true, force: true });
    assert.equal(forced.dryRun, true);
    assert.equal(forced.previousDriver, 'nvme');
    assert.deepEqual(
      forced.overriddenUses.map((u) => u.reason),
      ['mounted on /boot'],
    );
    const device = join(sysfs, 'bus/pci/devices/0000:01:00.0');
    assert.deepEqual(forced.actions, [
      `write vfio-pci to ${join(device, 'driver_override')}`,
      `remember nvme in ${join(stateDir, '0000:01:00.0.driver')} and write 0000:01:00.0 to ${join(device, 'driver/unbind')} (detach nvme)`,
      `write 0000:01:00.0 to ${join(sysfs, 'bus/pci/drivers_probe')}`,
    ]);
    const idle = bindToVfio('0000:02:00.0', { sysfsRoot: sysfs, procRoot: proc, stateDir, dryRun: true });
    assert.equal(idle.actions.length, 3);
    assert.equal(existsSync(join(device, 'driver_override')), false);
    assert.equal(existsSync(join(sysfs, 'bus/pci/devices/0000:02:00.0/driver_override')), false);
    assert.equal(existsSync(join(stateDir, '0000:01:00.0.driver')), false, 'nothing remembered');
  });

  it('unbind of a function not on vfio-pci says so', () => {
    const { sysfs, stateDir } = machine();
    assert.throws(() => unbindFromVfio('0000:02:00.0', { sysfsRoot: sysfs, stateDir }), { code: 'EINVAL', message: /bound to nvme, not to vfio-pci/ });
    assert.throws(() => unbindFromVfio('0000:05:00.1', { sysfsRoot: sysfs, stateDir }), { code: 'EINVAL', message: /not bound to vfio-pci \(no driver is bound\)/ });
  });
});

describe('userpci bind --dry-run / --force', () => {
  const { sysfs, proc } = machine();
  for (const address of ['0000:01:00.0', '0000:02:00.0']) writeFileSync(join(sysfs, 'bus/pci/devices', address, 'class'), '0x010802\n');
  const run = (...args: string[]) =>
    spawnSync(process.execPath, [ENTRY, ...args], { encoding: 'utf8', env: { ...process.env, USERPCI_SYSFS_ROOT: sysfs, USERPCI_PROC_ROOT: proc } });

  it('refuses a mounted disk with exit 1 and one line', () => {
    const r = run('bind', '0000:01:00.0');
    assert.equal(r.status, 1);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^userpci bind: 0000:01:00\.0 is in use: nvme0n1p1 mounted on \/boot; .*--force.*\n$/);
  });

  it('prints the plan on --dry-run and changes nothing', () => {
    const r = run('bind', '0000:02:00.0', '--dry-run');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^0000:02:00\.0: would bind to vfio-pci \(IOMMU group 4, now nvme\):\n  write vfio-pci to .*driver_override\n  remember nvme in .*\n  write 0000:02:00\.0 to .*drivers_probe\n$/);
    assert.equal(existsSync(join(sysfs, 'bus/pci/devices/0000:02:00.0/driver_override')), false);
    const json = JSON.parse(run('bind', '0000:01:00.0', '--dry-run', '--force', '--json').stdout);
    assert.equal(json.dryRun, true);
    assert.deepEqual(json.overriddenUses, [{ address: '0000:01:00.0', kind: 'block', name: 'nvme0n1p1', reason: 'mounted on /boot' }]);
  });

  it('nvme --bind binds only NVMe controllers, and not a mounted one', () => {
    const nic = run('nvme', 'identify', '0000:03:00.0', '--bind');
    assert.equal(nic.status, 1);
    assert.match(nic.stderr, /0000:03:00\.0 is not an NVMe controller \(class 0x020000, NVMe is 0x010802\): not binding it; find one with `userpci list --class 0108`/);
    const mounted = run('nvme', 'identify', '0000:01:00.0', '--bind');
    assert.equal(mounted.status, 1);
    assert.match(mounted.stderr, /0000:01:00\.0 is in use: nvme0n1p1 mounted on \/boot/);
    assert.equal(existsSync(join(sysfs, 'bus/pci/devices/0000:01:00.0/driver_override')), false);
  });

  it('net --bind binds only virtio network cards: an idle NVMe disk and an e1000e stay with their drivers', () => {
    for (const [address, ids] of [['0000:02:00.0', '10ec:8139'], ['0000:04:00.0', '8086:10fb']] as const) {
      const r = run('net', 'info', address, '--bind');
      assert.equal(r.status, 1);
      assert.ok(r.stderr.includes(`${address} is not a virtio network card (${ids}, virtio-net is 1af4:1041): not binding it; find one with \`userpci list --vendor 1af4 --device 1041\``), r.stderr);
      assert.equal(existsSync(join(sysfs, 'bus/pci/devices', address, 'driver_override')), false);
    }
  });
});
