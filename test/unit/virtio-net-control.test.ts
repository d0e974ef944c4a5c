/**
 * virtio-net's control queue (VirtioNet.control(), VQ_PAIRS_SET at open) against a simulated
 * function (test/support/virtio-net-simulator.ts): the driver, transport and DMA code are the
 * real ones; the simulator walks the control ring in the driver's memory and answers as told.
 * QEMU's virtio-net through vfio-pci is the guest run 'net'.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { VirtioNet } from '../../src/drivers/virtio-net/net-device';
import * as N from '../../src/drivers/virtio-net/constants';
import { UserpciError } from '../../src/errors';
import { VirtioNetSimulator, type VirtioNetSimOptions } from '../support/virtio-net-simulator';

/** Class 0 (RX), command 0 (PROMISC): an ordinary command with one byte of data. */
const RX = 0;
const RX_PROMISC = 0;

async function openSim(options: VirtioNetSimOptions = {}, queuePairs?: number) {
  const { device, sim } = VirtioNetSimulator.open(options);
  const net = await VirtioNet.open(device, { queuePairs, interrupts: 'poll' });
  return { net, sim, device };
}

function isCode(code: string) {
  return (e: unknown) => e instanceof UserpciError && e.code === code;
}

test('VQ_PAIRS_SET goes over the control queue at open; a command the device acknowledges (VIRTIO_NET_OK) resolves, its bytes as sent', async () => {
  const { net, sim, device } = await openSim({ maxQueuePairs: 4 }, 3);
  assert.equal(net.info().controlQueue, true);
  assert.equal(net.queuePairs, 3);
  assert.deepEqual(sim.commands, [{ cls: N.CTRL_CLASS_MQ, command: N.CTRL_MQ_VQ_PAIRS_SET, data: [3, 0], writable: 1 }]);
  await net.control(RX, RX_PROMISC, Uint8Array.of(1));
  const data = Uint8Array.from({ length: 300 }, (_, i) => i & 0xff);
  await net.control(0x7e, 0x81, data);
  assert.deepEqual(sim.commands.slice(1), [
    { cls: RX, command: RX_PROMISC, data: [1], writable: 1 },
    { cls: 0x7e, command: 0x81, data: [...data], writable: 1 },
  ]);
  // Commands issued together go one after another, each acknowledged in turn.
  await Promise.all([net.control(RX, 1, Uint8Array.of(0)), net.control(RX, 2, Uint8Array.of(1)), net.control(RX, 3)]);
  assert.deepEqual(sim.commands.slice(3).map((c) => [c.command, c.data]), [[1, [0]], [2, [1]], [3, []]]);
  await net.close();
  device.close();
});

test('a command the device refuses (VIRTIO_NET_ERR) rejects with EIO; the queue goes on working; a refused VQ_PAIRS_SET fails the open', async () => {
  const { net, sim, device } = await openSim();
  sim.answer = (c) => (c.command === RX_PROMISC ? 'err' : 'ok');
  await assert.rejects(net.control(RX, RX_PROMISC, Uint8Array.of(1)), (e: unknown) => isCode('EIO')(e) && /refused control command 0\.0/.test((e as Error).message));
  await net.control(RX, 1, Uint8Array.of(1));
  assert.equal(sim.commands.length, 3);
  await net.close();
  device.close();

  const refusing = VirtioNetSimulator.open({ answer: (c) => (c.cls === N.CTRL_CLASS_MQ ? 'err' : 'ok') });
  await assert.rejects(VirtioNet.open(refusing.device, { interrupts: 'poll' }), isCode('EIO'));
  assert.equal(refusing.sim.commands.length, 1);
  refusing.device.close();
});

test('a malformed or oversized command is EINVAL and never reaches the device; the largest one does', async () => {
  const { net, sim, device } = await openSim();
  const commands = sim.commands.length;
  const doorbells = sim.controlDoorbells;
  const bad: [number, number, unknown][] = [
    [RX, 0, new Uint8Array(2047)], // no room for it before the ack byte
    [256, 0, undefined],
    [RX, -1, undefined],
    [1.5, 0, undefined],
    [RX, Number.NaN, undefined],
    [RX, 0, [1, 2]],
    [RX, 0, 'abc'],
    [RX, 0, new Uint16Array(2)],
  ];
  for (const [cls, command, data] of bad) {
    await assert.rejects(net.control(cls, command, data as Uint8Array), isCode('EINVAL'), `control(${cls}, ${command}, ${String(data)})`);
  }
  assert.equal(sim.commands.length, commands, 'nothing reached the device');
  assert.equal(sim.controlDoorbells, doorbells, 'no doorbell was rung');
  const largest = new Uint8Array(2046).fill(0xa5);
  await net.control(RX, 0, largest);
  assert.deepEqual(sim.commands.at(-1), { cls: RX, command: 0, data: [...largest], writable: 1 });
  await net.close();
  device.close();
});

test('a device that never answers: the command rejects with ETIMEDOUT, and the control queue it still holds is not reused (EIO) until the device is reset', { timeout: 120_000 }, async () => {
  const { net, sim, device } = await openSim();
  sim.answer = () => 'never';
  await assert.rejects(net.control(RX, RX_PROMISC, Uint8Array.of(1)), isCode('ETIMEDOUT'));
  const seen = sim.commands.length;
  sim.answer = () => 'ok';
  await assert.rejects(net.control(RX, 1, Uint8Array.of(1)), (e: unknown) => isCode('EIO')(e) && /did not answer/.test((e as Error).message));
  assert.equal(sim.commands.length, seen, 'the device was not given the descriptors it still holds');
  await net.close();
  // A reopen resets the device: the control queue works again.
  const again = await VirtioNet.open(device, { interrupts: 'poll' });
  await again.control(RX, 1, Uint8Array.of(1));
  await again.close();
  device.close();
});

test('closing the NIC while a command waits for the device rejects it with a typed error (no hang)', async () => {
  const { net, sim, device } = await openSim();
  sim.answer = () => 'never';
  const waiting = net.control(RX, RX_PROMISC, Uint8Array.of(1));
  const queued = net.control(RX, 1, Uint8Array.of(1));
  await new Promise((r) => setImmediate(r));
  await net.close();
  await assert.rejects(waiting, isCode('ENODEV'));
  await assert.rejects(queued, isCode('ENODEV'));
  device.close();
});

test('no control queue negotiated: control() is ENOTSUP, more than one pair is ENOTSUP, and nothing goes to the device', async () => {
  for (const options of [{ controlQueue: false }, { controlQueue: true, maxQueuePairs: 0 }] as VirtioNetSimOptions[]) {
    const { net, sim, device } = await openSim(options);
    assert.equal(net.info().controlQueue, false, JSON.stringify(options));
    assert.equal(net.queuePairs, 1);
    await assert.rejects(net.control(RX, RX_PROMISC, Uint8Array.of(1)), isCode('ENOTSUP'));
    assert.equal(sim.commands.length, 0);
    await net.close();
    await assert.rejects(VirtioNet.open(device, { queuePairs: 2, interrupts: 'poll' }), isCode('ENOTSUP'));
    device.close();
  }
});
