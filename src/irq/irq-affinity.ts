/**
 * Which CPUs the host kernel takes an interrupt on, found by the name its driver gave the IRQ
 * (/proc/interrupts, then /proc/irq/N/effective_affinity_list). A vector's handler thread is
 * pinned there, as the kernel pins its own threaded handlers to their IRQ's affinity: the
 * thread is woken on the CPU that took the interrupt, with no cross-CPU wake-up in between.
 */
import * as fs from 'node:fs';

/** "0-3,6,8-9" -> [0, 1, 2, 3, 6, 8, 9]; undefined for anything else. */
export function parseCpuList(text: string): number[] | undefined {
  const cpus: number[] = [];
  for (const part of text.trim().split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) return undefined;
    const from = Number(m[1]);
    const to = m[2] === undefined ? from : Number(m[2]);
    if (to < from || to - from > 4096) return undefined;
    for (let c = from; c <= to; c++) cpus.push(c);
  }
  return cpus.length > 0 ? cpus : undefined;
}

/** The IRQ number of the /proc/interrupts line whose name (last field) is `name`. */
export function irqNumberByName(interrupts: string, name: string): number | undefined {
  for (const line of interrupts.split('\n')) {
    const m = /^\s*(\d+):/.exec(line);
    if (m && line.trimEnd().endsWith(` ${name}`)) return Number(m[1]);
  }
  return undefined;
}

/** CPUs the kernel delivers the IRQ named `name` to; undefined when it cannot be told. */
export function kernelIrqCpus(name: string, procRoot = '/proc'): number[] | undefined {
  try {
    const irq = irqNumberByName(fs.readFileSync(`${procRoot}/interrupts`, 'utf8'), name);
    if (irq === undefined) return undefined;
    for (const file of ['effective_affinity_list', 'smp_affinity_list']) {
      try {
        const cpus = parseCpuList(fs.readFileSync(`${procRoot}/irq/${irq}/${file}`, 'utf8'));
        if (cpus) return cpus;
      } catch {
        // Older kernels have no effective_affinity_list: the affinity asked for then.
      }
    }
  } catch {
    // No procfs: the thread is left where the scheduler puts it.
  }
  return undefined;
}
