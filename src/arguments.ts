/**
 * Checks of a caller's arguments at the public entry points, each failing with an
 * InvalidArgumentError that names the argument, so that a wrong value never gets as far as a
 * TypeError deep inside (or, worse, a timer or a poll pass that throws later). Setup and slow
 * paths only: per-I/O paths keep their own one-expression checks.
 */
import { InvalidArgumentError } from './errors';

/** Node's timers take at most 2^31 - 1 ms; a longer delay fires after 1 ms instead. */
export const MAX_TIMEOUT_MS = 0x7fffffff;

/** What a value is, for a message: "null", "number 1.5", "Array", "string". */
export function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'object') return value.constructor?.name ?? 'an object';
  if (typeof value === 'number' || typeof value === 'bigint') return `${typeof value} ${String(value)}${typeof value === 'bigint' ? 'n' : ''}`;
  return typeof value;
}

/** An options argument: undefined stands for {}; anything but an object is refused. */
export function optionsObject<T extends object>(options: T | undefined, what: string): Partial<T> {
  if (options === undefined) return {};
  if (options === null || typeof options !== 'object') throw new InvalidArgumentError(`${what} must be an object, got ${describeValue(options)}`);
  return options;
}

/** A timeout in ms: undefined (none), or a number from 0 to 2^31 - 1. */
export function checkTimeoutMs(ms: unknown, what: string): number | undefined {
  if (ms === undefined) return undefined;
  if (typeof ms !== 'number' || !(ms >= 0 && ms <= MAX_TIMEOUT_MS)) {
    throw new InvalidArgumentError(`${what} must be a number of milliseconds from 0 to ${MAX_TIMEOUT_MS} (omit it to wait without one), got ${describeValue(ms)}`);
  }
  return ms;
}

export function checkFunction(fn: unknown, what: string): void {
  if (typeof fn !== 'function') throw new InvalidArgumentError(`${what} must be a function, got ${describeValue(fn)}`);
}

export function checkBytes(bytes: unknown, what: string): asserts bytes is Uint8Array {
  if (!(bytes instanceof Uint8Array)) throw new InvalidArgumentError(`${what} must be a Uint8Array (or a Buffer), got ${describeValue(bytes)}`);
}

export function checkString(value: unknown, what: string): asserts value is string {
  if (typeof value !== 'string') throw new InvalidArgumentError(`${what} must be a string, got ${describeValue(value)}`);
}

/** An integer in min..max (a bigint or a fraction is refused, not converted). */
export function checkInteger(value: unknown, min: number, max: number, what: string): asserts value is number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(`${what} must be an integer from ${min} to ${max}, got ${describeValue(value)}`);
  }
}
