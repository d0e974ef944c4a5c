import { bindToVfio, unbindFromVfio } from '../../pci/bind.js';
import { parseCommandLine, print, sysfsRoot } from '../format.js';
import type { CliCommand } from '../main.js';

const BIND_USAGE = `userpci bind ADDRESS [--dry-run] [--force] [--json]

Hand a PCI function to vfio-pci so a user-space driver can open it: sets driver_override,
unbinds the current driver (remembered under /run/userpci for \`userpci unbind\`) and probes.
Needs root, an IOMMU (intel_iommu=on / amd_iommu=on) and the vfio-pci module.

Refuses, naming what it found:
  - when the function, or any function of its IOMMU group, is in use by the host: a block
    device behind it mounted, used as swap, held by LVM/dm/md or open in a process, or a
    network interface that is up (the disk you booted from, the NIC you are logged in over);
  - when its IOMMU group holds devices bound to other host drivers (VFIO could not open it).
Find the right device first, e.g. \`userpci list --class 0108\` (NVMe) or --class 0200 (Ethernet).

Options:
  --dry-run   check, then print the steps binding would take; change nothing
  --force     bind even though the device is in use (its users lose it)
  --json      print the result as JSON`;

const UNBIND_USAGE = `userpci unbind ADDRESS [--json]

Release a PCI function from vfio-pci and give it back to the driver it had before \`userpci
bind\` (or let the kernel pick one when none was remembered).`;

export const bindCommand: CliCommand = {
  name: 'bind',
  summary: 'bind a function to vfio-pci (remembering its driver)',
  usage: BIND_USAGE,
  async run(args: string[]): Promise<number> {
    const { values, positionals } = parseCommandLine(
      args,
      { json: { type: 'boolean', default: false }, force: { type: 'boolean', default: false }, 'dry-run': { type: 'boolean', default: false } },
      ['ADDRESS'],
    );
    const r = bindToVfio(positionals[0]!, { sysfsRoot: sysfsRoot(), procRoot: process.env['USERPCI_PROC_ROOT'] || '/proc', force: values.force, dryRun: values['dry-run'] });
    if (values.json) {
      print(JSON.stringify(r));
    } else if (r.dryRun) {
      const steps = r.actions.length === 0 ? ['nothing: it is bound to vfio-pci already'] : r.actions;
      print(`${r.address}: would bind to vfio-pci (IOMMU group ${r.iommuGroup}, now ${r.previousDriver ?? 'no driver'}):\n${steps.map((step) => `  ${step}`).join('\n')}`);
    } else {
      for (const use of r.overriddenUses) process.stderr.write(`userpci bind: warning: forced while ${use.name} ${use.reason}\n`);
      print(`${r.address}: bound to vfio-pci (IOMMU group ${r.iommuGroup}${r.previousDriver ? `, was ${r.previousDriver}` : ''})`);
    }
    return 0;
  },
};

export const unbindCommand: CliCommand = {
  name: 'unbind',
  summary: 'release a function from vfio-pci and restore its previous driver',
  usage: UNBIND_USAGE,
  async run(args: string[]): Promise<number> {
    const { values, positionals } = parseCommandLine(args, { json: { type: 'boolean', default: false } }, ['ADDRESS']);
    const r = unbindFromVfio(positionals[0]!, { sysfsRoot: sysfsRoot() });
    print(values.json ? JSON.stringify(r) : `${r.address}: released from vfio-pci${r.restoredDriver ? `, now bound to ${r.restoredDriver}` : ', no driver bound'}`);
    return 0;
  },
};
