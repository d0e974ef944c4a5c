import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidArgumentError } from '../../src/errors.js';
import {
  comparePciAddresses,
  formatPciAddress,
  isValidPciAddress,
  parsePciAddress,
  toPciAddress,
} from '../../src/pci/address.js';

describe('PCI addresses', () => {
  it('parses the long form with its domain', () => {
    assert.deepEqual(parsePciAddress('0000:00:03.0'), { domain: 0, bus: 0, device: 3, function: 0 });
    assert.deepEqual(parsePciAddress('0001:af:1f.7'), { domain: 1, bus: 0xaf, device: 0x1f, function: 7 });
    // VMD and some hypervisors use domains above 0xffff.
    assert.deepEqual(parsePciAddress('10000:e1:00.0'), { domain: 0x10000, bus: 0xe1, device: 0, function: 0 });
  });

  it('parses the short form as domain 0', () => {
    assert.deepEqual(parsePciAddress('00:03.0'), { domain: 0, bus: 0, device: 3, function: 0 });
    assert.deepEqual(parsePciAddress('AF:00.1'), { domain: 0, bus: 0xaf, device: 0, function: 1 });
  });

  it('always formats the long form', () => {
    assert.equal(formatPciAddress(parsePciAddress('00:03.0')), '0000:00:03.0');
    assert.equal(formatPciAddress(parsePciAddress(' 0000:AF:1F.7 ')), '0000:af:1f.7');
    assert.equal(formatPciAddress({ domain: 0x10000, bus: 1, device: 2, function: 3 }), '10000:01:02.3');
  });

  it('rejects malformed addresses with an InvalidArgumentError that shows the expected form', () => {
    for (const text of ['', '3', '00:03', '00:03.8', '00:20.0', '0000:00:03:0', 'g0:00.0', '0000:100:00.0', '00:03.0.1']) {
      assert.throws(
        () => parsePciAddress(text),
        (error: unknown) =>
          error instanceof InvalidArgumentError &&
          error.code === 'EINVAL' &&
          error.message.includes('DDDD:BB:DD.F') &&
          error.message.includes('0000:00:03.0'),
        text,
      );
    }
    assert.equal(isValidPciAddress('00:03.0'), true);
    assert.equal(isValidPciAddress('00:3'), false);
  });

  it('validates address objects too', () => {
    assert.deepEqual(toPciAddress({ domain: 0, bus: 1, device: 2, function: 3 }), { domain: 0, bus: 1, device: 2, function: 3 });
    assert.throws(() => toPciAddress({ domain: 0, bus: 256, device: 0, function: 0 }), InvalidArgumentError);
    assert.throws(() => toPciAddress({ domain: 0, bus: 0, device: 0, function: 8 }), InvalidArgumentError);
  });

  it('orders like a bus scan', () => {
    const sorted = ['0001:00:00.0', '0000:01:00.0', '0000:00:1f.3', '0000:00:03.0', '0000:00:03.1']
      .map(parsePciAddress)
      .sort(comparePciAddresses)
      .map(formatPciAddress);
    assert.deepEqual(sorted, ['0000:00:03.0', '0000:00:03.1', '0000:00:1f.3', '0000:01:00.0', '0001:00:00.0']);
  });
});
