/**
 * Linux ioctl request numbers, encoded the way <asm-generic/ioctl.h> does on x86_64 (and every
 * architecture using the generic layout): nr in bits 0-7, type in 8-15, argument size in 16-29,
 * direction in 30-31. Values are plain unsigned JS numbers so they can be handed to the native
 * ioctl wrapper without BigInt.
 */
import { InvalidArgumentError } from '../errors';

export const IOC_NRBITS = 8;
export const IOC_TYPEBITS = 8;
export const IOC_SIZEBITS = 14;
export const IOC_DIRBITS = 2;

export const IOC_NRSHIFT = 0;
export const IOC_TYPESHIFT = IOC_NRSHIFT + IOC_NRBITS;
export const IOC_SIZESHIFT = IOC_TYPESHIFT + IOC_TYPEBITS;
export const IOC_DIRSHIFT = IOC_SIZESHIFT + IOC_SIZEBITS;

/** Direction bits, seen from user space: WRITE means the kernel reads the argument. */
export const IOC_NONE = 0;
export const IOC_WRITE = 1;
export const IOC_READ = 2;

/** An ioctl "type" (magic) is one byte; C headers usually spell it as a character like ';'. */
export type IoctlType = number | string;

function fieldValue(name: string, value: number, bits: number): number {
  const max = 2 ** bits - 1;
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new InvalidArgumentError(`ioctl ${name} must be an integer in 0..${max}, got ${value}`);
  }
  return value;
}

function typeValue(type: IoctlType): number {
  if (typeof type === 'string') {
    if (type.length !== 1) throw new InvalidArgumentError(`ioctl type must be a single character, got ${JSON.stringify(type)}`);
    return fieldValue('type', type.charCodeAt(0), IOC_TYPEBITS);
  }
  return fieldValue('type', type, IOC_TYPEBITS);
}

/** The general form; `size` is the argument's size in bytes (C passes sizeof(type) here). */
export function _IOC(dir: number, type: IoctlType, nr: number, size: number): number {
  // Multiplication instead of << for the direction: bit 31 would otherwise make the result negative.
  return (
    fieldValue('direction', dir, IOC_DIRBITS) * 2 ** IOC_DIRSHIFT +
    ((fieldValue('size', size, IOC_SIZEBITS) << IOC_SIZESHIFT) |
      (typeValue(type) << IOC_TYPESHIFT) |
      (fieldValue('nr', nr, IOC_NRBITS) << IOC_NRSHIFT))
  ) >>> 0;
}

export function _IO(type: IoctlType, nr: number): number {
  return _IOC(IOC_NONE, type, nr, 0);
}

export function _IOR(type: IoctlType, nr: number, size: number): number {
  return _IOC(IOC_READ, type, nr, size);
}

export function _IOW(type: IoctlType, nr: number, size: number): number {
  return _IOC(IOC_WRITE, type, nr, size);
}

export function _IOWR(type: IoctlType, nr: number, size: number): number {
  return _IOC(IOC_READ | IOC_WRITE, type, nr, size);
}

export interface IoctlFields {
  dir: number;
  type: number;
  nr: number;
  size: number;
}

/** Split a request number back into its fields, for error messages and tracing. */
export function decodeIoctl(request: number): IoctlFields {
  if (!Number.isInteger(request) || request < 0 || request > 0xffffffff) {
    throw new InvalidArgumentError(`ioctl request must be a 32-bit unsigned integer, got ${request}`);
  }
  return {
    dir: Math.floor(request / 2 ** IOC_DIRSHIFT) & (2 ** IOC_DIRBITS - 1),
    type: (request >>> IOC_TYPESHIFT) & (2 ** IOC_TYPEBITS - 1),
    nr: (request >>> IOC_NRSHIFT) & (2 ** IOC_NRBITS - 1),
    size: (request >>> IOC_SIZESHIFT) & (2 ** IOC_SIZEBITS - 1),
  };
}
