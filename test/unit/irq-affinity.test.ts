/** Finding the CPUs the host kernel takes a VFIO interrupt on, from procfs text. */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { irqNumberByName, kernelIrqCpus, parseCpuList } from '../../src/irq/irq-affinity';

const INTERRUPTS = `           CPU0       CPU1
  29:          0       2100  IR-PCI-MSI 49152-edge      vfio-msi[0](0000:00:03.0)
  30:          5          0  IR-PCI-MSIX-0000:00:04.0    0-edge      vfio-msix[0](0000:00:04.0)
  31:          0          7  IR-PCI-MSIX-0000:00:04.0    1-edge      vfio-msix[1](0000:00:04.0)
  32:          1          0  IR-IO-APIC   11-fasteoi   vfio-intx(0000:00:05.0)
  33:          1          0  IR-PCI-MSIX-0000:00:06.0    1-edge      vfio-msix[11](0000:00:06.0)
`;

test('CPU lists parse as the kernel prints them; anything else is unknown', () => {
  assert.deepEqual(parseCpuList('0-3,6,8-9\n'), [0, 1, 2, 3, 6, 8, 9]);
  assert.deepEqual(parseCpuList('1'), [1]);
  assert.equal(parseCpuList(''), undefined);
  assert.equal(parseCpuList('3-1'), undefined);
  assert.equal(parseCpuList('ff'), undefined);
});

test('an IRQ is found by its whole name only', () => {
  assert.equal(irqNumberByName(INTERRUPTS, 'vfio-msi[0](0000:00:03.0)'), 29);
  assert.equal(irqNumberByName(INTERRUPTS, 'vfio-msix[1](0000:00:04.0)'), 31);
  assert.equal(irqNumberByName(INTERRUPTS, 'vfio-msix[1](0000:00:06.0)'), undefined, 'vector 11 is not vector 1');
  assert.equal(irqNumberByName(INTERRUPTS, 'vfio-intx(0000:00:05.0)'), 32);
  assert.equal(irqNumberByName(INTERRUPTS, 'vfio-msi[0](0000:00:09.0)'), undefined);
});

test('the effective affinity is preferred, the affinity asked for is the fallback, no procfs is unknown', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'irq-affinity-'));
  try {
    fs.writeFileSync(path.join(root, 'interrupts'), INTERRUPTS);
    fs.mkdirSync(path.join(root, 'irq/29'), { recursive: true });
    fs.writeFileSync(path.join(root, 'irq/29/effective_affinity_list'), '1\n');
    fs.writeFileSync(path.join(root, 'irq/29/smp_affinity_list'), '0-1\n');
    fs.mkdirSync(path.join(root, 'irq/32'), { recursive: true });
    fs.writeFileSync(path.join(root, 'irq/32/smp_affinity_list'), '0-1\n');
    assert.deepEqual(kernelIrqCpus('vfio-msi[0](0000:00:03.0)', root), [1]);
    assert.deepEqual(kernelIrqCpus('vfio-intx(0000:00:05.0)', root), [0, 1]);
    assert.equal(kernelIrqCpus('vfio-msix[0](0000:00:04.0)', root), undefined, 'no irq folder');
    assert.equal(kernelIrqCpus('vfio-msi[0](0000:00:03.0)', path.join(root, 'missing')), undefined);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});
