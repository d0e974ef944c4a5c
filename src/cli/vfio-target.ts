/**
 * The PCI function a driver command (nvme, net) opens must be bound to vfio-pci. With --bind the
 * command binds it first, but only a function of the kind it drives: binding takes the function
 * from its kernel driver, so a mistyped address must not cost the machine its disk or NIC.
 */
import * as fs from 'node:fs';
import { bindToVfio, boundDriver, VFIO_DRIVER } from '../pci/bind.js';
import { UserpciError } from '../errors.js';
import { sysfsRoot } from './format.js';

/**
 * Returns when ADDRESS (a valid PCI address) is bound to vfio-pci. Otherwise, with `bind`,
 * `checkKind(sysfsDir)` throws unless the function is what the command drives, then bind's own
 * in-use checks apply (USERPCI_PROC_ROOT honoured); without `bind`, EBUSY says what to run.
 */
export function requireVfioBinding(address: string, bind: boolean, checkKind: (sysfsDir: string) => void): void {
  const dir = `${sysfsRoot()}/bus/pci/devices/${address}`;
  if (!fs.existsSync(dir)) throw new UserpciError('ENOENT', `no PCI device at ${address}`);
  const driver = boundDriver(address, { sysfsRoot: sysfsRoot() });
  if (driver === VFIO_DRIVER) return;
  if (!bind) {
    throw new UserpciError('EBUSY', `${address} is ${driver ? `bound to ${driver}` : 'not bound to any driver'}, not vfio-pci: run \`userpci bind ${address}\` first or add --bind`);
  }
  checkKind(dir);
  bindToVfio(address, { sysfsRoot: sysfsRoot(), procRoot: process.env['USERPCI_PROC_ROOT'] || '/proc' });
}

/** A sysfs attribute of the function as a number ("0x010802\n" -> 0x010802). */
export function sysfsNumber(sysfsDir: string, attribute: string): number {
  return Number(fs.readFileSync(`${sysfsDir}/${attribute}`, 'utf8').trim());
}
