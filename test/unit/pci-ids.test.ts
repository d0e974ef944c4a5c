import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { DEFAULT_PCI_IDS_PATHS, PciIds, loadPciIds } from '../../src/pci/ids.js';

// The file's real layout: vendors with tab-indented devices and double-tab subsystems, comments
// anywhere, then the class section.
const SAMPLE = [
  '# header comment',
  '#\tcommented-out device line',
  '0001  SafeNet (wrong ID)',
  '1af4  Red Hat, Inc.',
  '\t1000  Virtio network device',
  '\t\t1af4 0001  Virtio network device',
  '# a comment inside a block',
  '\t1041  Virtio 1.0 network device',
  '\t1042  Virtio 1.0 block device',
  '\t\t1af4 1100  QEMU Virtual Machine',
  '1af5  Netezza Corp.',
  '8086  Intel Corporation',
  '\t10fb  82599ES 10-Gigabit SFI/SFP+ Network Connection',
  '\t\t8086 0003  Ethernet Server Adapter X520-2',
  '',
  '# List of known device classes, subclasses and programming interfaces',
  'C 01  Mass storage controller',
  '\t08  Non-Volatile memory controller',
  '\t\t02  NVM Express',
  '\t80  Mass storage controller',
  'C 02  Network controller',
  '\t00  Ethernet controller',
  'C ff  Unassigned class',
  '',
].join('\n');

describe('pci.ids names', () => {
  const ids = new PciIds(SAMPLE, 'sample');

  it('names vendors, devices and subsystems', () => {
    assert.equal(ids.vendorName(0x1af4), 'Red Hat, Inc.');
    assert.equal(ids.vendorName(0x8086), 'Intel Corporation');
    assert.equal(ids.deviceName(0x1af4, 0x1041), 'Virtio 1.0 network device');
    assert.equal(ids.deviceName(0x8086, 0x10fb), '82599ES 10-Gigabit SFI/SFP+ Network Connection');
    assert.equal(ids.subsystemName(0x8086, 0x10fb, 0x8086, 0x0003), 'Ethernet Server Adapter X520-2');
    assert.equal(ids.subsystemName(0x1af4, 0x1042, 0x1af4, 0x1100), 'QEMU Virtual Machine');
  });

  it('does not mistake device or subsystem lines for vendors', () => {
    // "1000" and "1af4 0001" appear indented inside Red Hat's block only.
    assert.equal(ids.vendorName(0x1000), undefined);
    assert.equal(ids.deviceName(0x1af5, 0x1000), undefined);
    assert.equal(ids.vendorName(0x0001), 'SafeNet (wrong ID)');
  });

  it('gives a subsystem that repeats the device IDs the device name, as lspci does', () => {
    assert.equal(ids.subsystemName(0x1af4, 0x1041, 0x1af4, 0x1041), 'Virtio 1.0 network device');
    assert.equal(ids.subsystemName(0x1af4, 0x1041, 0x1af4, 0x9999), undefined);
  });

  it('names classes, subclasses and programming interfaces', () => {
    assert.equal(ids.className(0x01), 'Mass storage controller');
    assert.equal(ids.subclassName(0x01, 0x08), 'Non-Volatile memory controller');
    assert.equal(ids.progIfName(0x01, 0x08, 0x02), 'NVM Express');
    assert.equal(ids.subclassName(0x02, 0x00), 'Ethernet controller');
    assert.equal(ids.className(0xff), 'Unassigned class');
    assert.equal(ids.subclassName(0xff, 0xff), undefined);
  });

  it('returns undefined for unknown IDs', () => {
    assert.equal(ids.vendorName(0xabcd), undefined);
    assert.equal(ids.deviceName(0x8086, 0xffff), undefined);
    assert.equal(ids.className(0x77), undefined);
  });

  it('falls back to bare IDs (undefined names) when no pci.ids exists', async () => {
    const empty = await loadPciIds(['/nonexistent/pci.ids', '/also/missing/pci.ids']);
    assert.equal(empty.available, false);
    assert.equal(empty.source, undefined);
    assert.equal(empty.vendorName(0x8086), undefined);
    assert.equal(empty.className(0x02), undefined);
  });

  it('reads the first readable path of the list', async () => {
    const directory = mkdtempSync(join(tmpdir(), 'userpci-ids-'));
    const path = join(directory, 'pci.ids');
    writeFileSync(path, SAMPLE);
    const loaded = await loadPciIds(['/nonexistent/pci.ids', path]);
    assert.equal(loaded.source, path);
    assert.equal(loaded.vendorName(0x1af4), 'Red Hat, Inc.');
  });

  const systemPath = DEFAULT_PCI_IDS_PATHS.find((path) => existsSync(path));
  it('reads the system pci.ids, parsing only the vendors asked for', async () => {
    assert.ok(systemPath, `no pci.ids in ${DEFAULT_PCI_IDS_PATHS.join(', ')}: install Debian's pci.ids (CI does, with pciutils)`);
    const system = await loadPciIds();
    assert.equal(system.source, systemPath);
    assert.equal(system.vendorName(0x8086), 'Intel Corporation');
    assert.equal(system.vendorName(0x1af4), 'Red Hat, Inc.');
    assert.equal(system.subclassName(0x02, 0x00), 'Ethernet controller');
    assert.equal(system.subclassName(0x06, 0x04), 'PCI bridge');
    for (let device = 0; device < 0x1000; device++) system.deviceName(0x8086, device);
    // The file holds thousands of vendors; only the two looked up were parsed (how it stays
    // cheap: speed itself is not a pass/fail matter).
    assert.equal((system as unknown as { vendors: Map<number, unknown> }).vendors.size, 2);
  });
});
