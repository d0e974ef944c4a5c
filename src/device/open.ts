/**
 * openDevice: one entry point for both backends. A PCI address opens the device through the
 * kernel's VFIO; anything that looks like a path opens a vfio-user socket. The driver above
 * gets the same PciDevice either way.
 */
import { InvalidArgumentError } from '../errors';
import { isValidPciAddress } from '../pci/address';
import { VfioBackend } from '../backends/vfio/vfio-backend';
import type { Backend } from './backend';
import { PciDevice, checkOpenOptions, type OpenOptions } from './device';

export function isSocketTarget(target: string): boolean {
  return target.includes('/') || target.endsWith('.sock');
}

/**
 * Opens a device for a driver: decoding on, bus mastering off (the driver turns it on with
 * `enableBusMaster()` once it has quiesced the device), and reset first when the backend can
 * reset it, so nothing a previous owner left running survives into this one. `dmaMask` is the
 * caller's promise of how many address bits the device drives (see OpenOptions).
 */
export async function openDevice(target: string, options: OpenOptions = {}): Promise<PciDevice> {
  if (typeof target !== 'string' || target.length === 0) throw new InvalidArgumentError('openDevice needs a PCI address (0000:00:03.0) or a vfio-user socket path');
  options = checkOpenOptions(options); // reject bad options before touching the device
  const wait = options.connectTimeoutMs;
  if (wait !== undefined && !(Number.isFinite(wait) && wait > 0)) throw new InvalidArgumentError(`connectTimeoutMs must be a positive number of ms, got ${String(wait)}`);
  let backend: Backend;
  if (isValidPciAddress(target)) backend = VfioBackend.open(target);
  else if (isSocketTarget(target)) backend = await openVfioUserBackend(target, options.connectTimeoutMs);
  else throw new InvalidArgumentError(`"${target}" is neither a PCI address (expected DDDD:BB:DD.F, e.g. 0000:00:03.0) nor a socket path`);
  try {
    const device = new PciDevice(backend, options);
    device.disableBusMaster(); // whatever state the device was left in: no DMA until the driver says so
    if (backend.deviceInfo().canReset) device.reset();
    device.enable();
    return device;
  } catch (err) {
    backend.close();
    throw err;
  }
}

async function openVfioUserBackend(socketPath: string, connectTimeoutMs: number | undefined): Promise<Backend> {
  const { connectVfioUser } = await import('../vfio-user/client/client.js');
  return connectVfioUser(socketPath, connectTimeoutMs === undefined ? {} : { connectTimeoutMs });
}
