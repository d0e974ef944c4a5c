import { parseArgs } from 'node:util';
import { bindToVfio, unbindFromVfio } from '../../pci/bind.js';
import { UsageError, print, sysfsRoot } from '../format.js';
import type { CliCommand } from '../main.js';

const BIND_USAGE = `userpci bind ADDRESS [--json]

Hand a PCI function to vfio-pci so a user-space driver can open it: sets driver_override,
unbinds the current driver (remembered under /run/userpci for \`userpci unbind\`) and probes.
Refuses, naming them, when the function's IOMMU group holds devices bound to host drivers.
Needs root, an IOMMU (intel_iommu=on / amd_iommu=on) and the vfio-pci module.`;

const UNBIND_USAGE = `userpci unbind ADDRESS [--json]

Release a PCI function from vfio-pci and give it back to the driver it had before \`userpci
bind\` (or let the kernel pick one when none was remembered).`;

function parse(args: string[]): { address: string; json: boolean } {
  const { values, positionals } = parseArgs({ args, options: { json: { type: 'boolean', default: false } }, allowPositionals: true, strict: true });
  if (positionals.length !== 1) throw new UsageError(positionals.length === 0 ? 'missing ADDRESS' : `unexpected argument "${positionals[1]}"`);
  return { address: positionals[0]!, json: values.json };
}

export const bindCommand: CliCommand = {
  name: 'bind',
  summary: 'bind a function to vfio-pci (remembering its driver)',
  usage: BIND_USAGE,
  async run(args: string[]): Promise<number> {
    const { address, json } = parse(args);
    const r = bindToVfio(address, { sysfsRoot: sysfsRoot() });
    print(json ? JSON.stringify(r) : `${r.address}: bound to vfio-pci (IOMMU group ${r.iommuGroup}${r.previousDriver ? `, was ${r.previousDriver}` : ''})`);
    return 0;
  },
};

export const unbindCommand: CliCommand = {
  name: 'unbind',
  summary: 'release a function from vfio-pci and restore its previous driver',
  usage: UNBIND_USAGE,
  async run(args: string[]): Promise<number> {
    const { address, json } = parse(args);
    const r = unbindFromVfio(address, { sysfsRoot: sysfsRoot() });
    print(json ? JSON.stringify(r) : `${r.address}: released from vfio-pci${r.restoredDriver ? `, now bound to ${r.restoredDriver}` : ', no driver bound'}`);
    return 0;
  },
};
