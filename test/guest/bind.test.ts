/**
 * `userpci bind` / `unbind` against the guest kernel's real driver model. The guest has an edu
 * and an e1000e behind one PCIe-to-PCI bridge (so they share an IOMMU group, the e1000e bound
 * to its kernel driver) and a second e1000e on its own.
 */
import { test, before } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import * as fs from 'node:fs';
import { execFileSync, spawnSync } from 'node:child_process';
import { requireGuest, findDevices } from './guest-env';
import { boundDriver, iommuGroupOf } from '../../src/pci/bind';
import { openDevice } from '../../src/device/open';

const CLI = path.resolve(__dirname, '../../../bin/userpci.js');
let eduBehindBridge: string;
let nicInSameGroup: string;
let nicAlone: string;

function userpci(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
}

before(() => {
  requireGuest();
  [eduBehindBridge] = findDevices(0x1234, 0x11e8) as [string];
  const nics = findDevices(0x8086, 0x10d3);
  nicInSameGroup = nics.find((a) => iommuGroupOf(a) === iommuGroupOf(eduBehindBridge))!;
  nicAlone = nics.find((a) => a !== nicInSameGroup)!;
  assert.ok(eduBehindBridge && nicInSameGroup && nicAlone, `guest devices: ${nics.join(', ')}`);
});

test('bind refuses when the IOMMU group holds a device on a host driver, naming it', async () => {
  assert.equal(boundDriver(nicInSameGroup), 'e1000e');
  const r = userpci('bind', eduBehindBridge);
  assert.equal(r.status, 1);
  assert.match(r.stderr, new RegExp(`${nicInSameGroup.replace(/\./g, '\\.')} \\(e1000e\\)`));
  assert.equal(boundDriver(eduBehindBridge), undefined, 'nothing changed');
  await assert.rejects(openDevice(eduBehindBridge), (e: any) => e.code === 'EBUSY' && /bind it to vfio-pci/.test(e.message));
});

test('bind refuses an e1000e whose interface is up, and its IOMMU group partner, unless forced; dry runs change nothing', () => {
  // The grouped e1000e: the lone one is driven by the MSI-X suite next, and QEMU's e1000e keeps
  // state across vfio-pci's reset (its 'pm' reset is a no-op in the model).
  assert.equal(boundDriver(nicInSameGroup), 'e1000e');
  const [ifname] = fs.readdirSync(path.join('/sys/bus/pci/devices', nicInSameGroup, 'net'));
  assert.ok(ifname, 'the e1000e has a network interface');
  execFileSync('ip', ['link', 'set', ifname, 'up']);
  try {
    for (const args of [[], ['--dry-run']]) {
      const r = userpci('bind', nicInSameGroup, ...args);
      assert.equal(r.status, 1, `bind ${args.join(' ')} refused`);
      assert.equal(r.stderr, `userpci bind: ${nicInSameGroup} is in use: ${ifname} interface is up; unbinding e1000e would take it from the host (--force / force: true binds anyway)\n`);
    }
    const partner = userpci('bind', eduBehindBridge, '--dry-run');
    assert.equal(partner.status, 1);
    assert.match(partner.stderr, new RegExp(`is in use: ${ifname} interface is up \\(behind ${nicInSameGroup.replace(/\./g, '\\.')}, same IOMMU group\\)`));
    const forced = userpci('bind', nicInSameGroup, '--dry-run', '--force', '--json');
    assert.equal(forced.status, 0, forced.stderr);
    const plan = JSON.parse(forced.stdout);
    assert.deepEqual(plan.overriddenUses, [{ address: nicInSameGroup, kind: 'net', name: ifname, reason: 'interface is up' }]);
    assert.ok(plan.actions.some((action: string) => action.endsWith('(detach e1000e)')));
  } finally {
    execFileSync('ip', ['link', 'set', ifname, 'down']);
  }
  assert.equal(boundDriver(nicInSameGroup), 'e1000e', 'the dry runs changed nothing');
  assert.equal(boundDriver(eduBehindBridge), undefined);
});

test('bind takes a device from its kernel driver; unbind gives it back', async () => {
  assert.equal(boundDriver(nicAlone), 'e1000e');
  const r = userpci('bind', nicAlone);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /bound to vfio-pci .*was e1000e/);
  assert.equal(boundDriver(nicAlone), 'vfio-pci');
  assert.equal(userpci('bind', nicAlone).status, 0, 'binding again is harmless');
  {
    await using nic = await openDevice(nicAlone);
    assert.equal(nic.vendorId, 0x8086);
    assert.equal(nic.deviceId, 0x10d3);
    // e1000e STATUS register (BAR0 + 0x8): bit 1 is "link up" under QEMU; any read works.
    assert.equal(typeof nic.bar(0).read32(0x8), 'number');
    assert.ok(nic.interrupts.info('msix').count >= 3, 'e1000e offers MSI-X vectors');
    // BAR2 is an I/O port BAR: VFIO offers no mmap, so the same calls go through pread/pwrite.
    // e1000e's IOADDR (offset 0) selects a register, IODATA (offset 4) reads it.
    const io = nic.bar(2);
    assert.equal(io.mapped, false);
    io.write32(0, 0x8);
    assert.equal(io.read32(4), nic.bar(0).read32(0x8), 'STATUS through the I/O window equals STATUS through MMIO');
    assert.throws(() => io.read32(io.size), (e: any) => e.code === 'ERANGE');
  }
  const u = userpci('unbind', nicAlone, '--json');
  assert.equal(u.status, 0, u.stderr);
  assert.deepEqual(JSON.parse(u.stdout), { address: nicAlone, restoredDriver: 'e1000e' });
  assert.equal(boundDriver(nicAlone), 'e1000e');
});

test('bind/unbind reject malformed and absent addresses with clear messages', () => {
  const bad = userpci('bind', 'zz:00.0');
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /invalid PCI address/);
  const absent = userpci('bind', '0000:7f:00.0');
  assert.equal(absent.status, 1);
  assert.match(absent.stderr, /no PCI device at 0000:7f:00.0/);
});
