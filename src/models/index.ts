/**
 * Device models by name, so a server can be started from a CLI argument or inside a worker
 * thread, where only plain data crosses over.
 */
import { optionsObject } from '../arguments';
import { InvalidArgumentError } from '../errors';
import type { DeviceModel } from './device-model';
import { EduModel } from './edu';
import { TestDeviceModel } from './testdev';

export type ModelOptions = Record<string, unknown>;

const factories: Record<string, (options: ModelOptions) => DeviceModel> = {
  edu: (options) => {
    const dmaMask = options.dmaMask;
    if (typeof dmaMask === 'string' && !/^(0x[0-9a-f]+|\d+)$/i.test(dmaMask)) throw new InvalidArgumentError(`edu dmaMask must be an integer (decimal or 0x hex), got "${dmaMask}"`);
    return new EduModel({
      dmaMask: typeof dmaMask === 'string' ? BigInt(dmaMask) : (dmaMask as bigint | number | undefined),
      dmaDelayMs: options.dmaDelayMs as number | undefined,
    });
  },
  testdev: () => new TestDeviceModel(),
};

export function modelNames(): string[] {
  return Object.keys(factories);
}

export function createModel(name: string, options: ModelOptions = {}): DeviceModel {
  // Own keys only: 'toString' or 'constructor' name no model.
  options = optionsObject(options, 'model options');
  const factory = typeof name === 'string' && Object.hasOwn(factories, name) ? factories[name] : undefined;
  if (!factory) throw new InvalidArgumentError(`unknown device model "${name}"; known: ${modelNames().join(', ')}`);
  return factory(options);
}
