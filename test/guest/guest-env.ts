/** Helpers for tests that run inside the QEMU guest (the harness sets USERPCI_GUEST=1). */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bindToVfio } from '../../src/pci/bind';

export function requireGuest(): void {
  if (process.env.USERPCI_GUEST !== '1') {
    throw new Error('this suite drives real devices through VFIO and runs only inside the QEMU guest: npm run test:guest');
  }
}

/** Addresses of every function with these ids, in address order. */
export function findDevices(vendor: number, device: number): string[] {
  const root = '/sys/bus/pci/devices';
  return fs.readdirSync(root).sort().filter((name) => {
    const read = (f: string) => parseInt(fs.readFileSync(path.join(root, name, f), 'utf8'), 16);
    return read('vendor') === vendor && read('device') === device;
  });
}

/** The devices the run needs, bound to vfio-pci. Fails (never skips) when they are absent. */
export function boundDevices(vendor: number, device: number, count: number): string[] {
  const found = findDevices(vendor, device);
  if (found.length < count) throw new Error(`expected ${count} device(s) ${vendor.toString(16)}:${device.toString(16)} in the guest, found ${found.length}`);
  for (const address of found) bindToVfio(address);
  return found;
}

/** A function bound to some driver other than vfio-pci (to test refusal). */
export function deviceOnHostDriver(): { address: string; driver: string } {
  const root = '/sys/bus/pci/devices';
  for (const name of fs.readdirSync(root).sort()) {
    try {
      const driver = path.basename(fs.readlinkSync(path.join(root, name, 'driver')));
      if (driver !== 'vfio-pci' && driver !== 'pcieport') return { address: name, driver };
    } catch {
      // unbound
    }
  }
  throw new Error('no device bound to a host driver in the guest');
}
