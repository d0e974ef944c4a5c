/**
 * The user-space virtio-net driver on packed virtqueues (virtio 1.1, RING_PACKED) against QEMU's
 * virtio-net-pci with packed=on, in the guest: a second hub with two packed NICs, ours through
 * vfio-pci and the other on the kernel's virtio_net (which runs packed rings too). The same
 * exchanges as on split rings: every frame size 60..1514 both ways compared byte for byte,
 * merged receive buffers, the receive interrupt, bad input; and a user declining packed rings.
 * Our NIC also has mq=on: behind a hubport that offers MQ with max_virtqueue_pairs 1, so every
 * open goes through the control queue (a two-descriptor chain) and VQ_PAIRS_SET.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { VirtioNet } from '../../src/drivers/virtio-net/net-device';
import { F_RING_PACKED } from '../../src/drivers/virtio/constants';
import { CTRL_CLASS_MQ, CTRL_MQ_VQ_PAIRS_SET } from '../../src/drivers/virtio-net/constants';
import { UserpciError } from '../../src/errors';
import { bindToVfio } from '../../src/pci/bind';
import { requireGuest, findDevices } from './guest-env';
import * as F from './net-frames';
import { ALL_SIZES, MERGE_SIZES, badInput, cli, eventIdxNegotiation, extraMergeBuffers, interfaceOf, kernelToUs, kernelToUsListening, receive, sendFrame, usToKernel, type NetPeers } from './net-peer';

const OUR_MAC = '52:54:00:00:78:02';
const KERNEL_MAC = '52:54:00:00:78:01';
const peers: NetPeers = { ourMac: F.macBytes(OUR_MAC), ourIp: '10.78.0.2', kernelMac: F.macBytes(KERNEL_MAC), kernelIp: '10.78.0.1' };

let ours: string;
let kernelIf: string;
let kernelFeatures: string;

before(() => {
  requireGuest();
  const byMac = new Map<string, { address: string; ifname: string }>();
  for (const a of findDevices(0x1af4, 0x1041)) {
    const m = interfaceOf(a);
    if (m) byMac.set(m.mac, { address: a, ifname: m.ifname });
  }
  const o = byMac.get(OUR_MAC);
  const k = byMac.get(KERNEL_MAC);
  assert.ok(o && k, `the two packed NICs (${OUR_MAC}, ${KERNEL_MAC}) on virtio_net at boot; found ${[...byMac.keys()].join(', ')}`);
  ours = o.address;
  kernelIf = k.ifname;
  // The kernel's own view of what it negotiated with its NIC: one character per feature bit.
  const virtioDir = fs.readdirSync(`/sys/bus/pci/devices/${k.address}`).find((d) => d.startsWith('virtio'))!;
  kernelFeatures = fs.readFileSync(path.join(`/sys/bus/pci/devices/${k.address}`, virtioDir, 'features'), 'utf8').trim();
  execFileSync('ip', ['addr', 'add', `${peers.kernelIp}/24`, 'dev', kernelIf]);
  execFileSync('ip', ['link', 'set', kernelIf, 'up']);
  bindToVfio(ours);
});

test('bring-up: RING_PACKED offered and negotiated, info says packed; the kernel peer runs packed rings too', async () => {
  assert.equal(kernelFeatures[F_RING_PACKED], '1', `the kernel's virtio_net negotiated RING_PACKED (features ${kernelFeatures})`);
  await using net = await VirtioNet.open(ours);
  const info = net.info();
  assert.equal(info.ring, 'packed');
  assert.ok(info.offered.includes('RING_PACKED') && info.negotiated.includes('RING_PACKED'), info.negotiated.join(' '));
  assert.ok(info.negotiated.includes('ACCESS_PLATFORM'));
  assert.equal(info.eventIdx, true, 'RING_EVENT_IDX taken: event offsets on the packed ring');
  assert.equal(info.mac, OUR_MAC);
  assert.equal(info.interrupts, 'msix');
  assert.ok(info.queueSize >= 64, `queue size ${info.queueSize}`);
});

test('packed ring: every frame size 60..1514 from us to the kernel arrives intact', async () => {
  await using net = await VirtioNet.open(ours);
  await usToKernel(net, peers);
});

test('packed ring: every frame size 60..1514 from the kernel to us arrives intact', async () => {
  await using net = await VirtioNet.open(ours);
  await kernelToUs(net, peers, ALL_SIZES);
  // 256 entries per ring and 1455 frames plus ARP: the receive and transmit rings wrapped several times.
  assert.ok(net.stats().rx.buffers > 4 * net.info().queueSize, JSON.stringify(net.stats()));
});

test('packed ring: mergeable receive buffers (256 bytes): large frames span several and arrive whole', async () => {
  await using net = await VirtioNet.open(ours, { rxBufferSize: 256 });
  assert.equal(net.info().ring, 'packed');
  assert.ok(net.info().negotiated.includes('MRG_RXBUF'));
  await kernelToUs(net, peers, MERGE_SIZES);
  const rx = net.stats().rx;
  assert.equal(rx.buffers - rx.packets, extraMergeBuffers(MERGE_SIZES), JSON.stringify(rx));
});

test('packed ring: listen() wakes on the receive interrupt (driver event suppression ENABLE)', async () => {
  await using net = await VirtioNet.open(ours);
  let done: (f: Buffer) => void;
  const got = new Promise<Buffer>((r) => (done = r));
  net.on('frame', (f: Buffer) => {
    if (F.parseArp(f)?.op === 2) done(f);
  });
  net.listen();
  await net.send(F.arpRequest(peers.ourMac, F.ipBytes(peers.ourIp), F.ipBytes(peers.kernelIp)));
  const reply = await got;
  net.stopListening();
  assert.deepEqual([...F.parseArp(reply)!.senderMac], [...peers.kernelMac]);
});

test('EVENT_IDX (packed ring): negotiated by default and named by info and `userpci net info`; declined with eventIdx: false / --no-event-idx', async () => {
  await eventIdxNegotiation(ours, peers, (o) => VirtioNet.open(ours, o));
});

test('EVENT_IDX (packed ring): every frame size 60..1514 from the kernel arrives intact on the receive interrupt, re-armed by the event offset and wrap counter after each drain', async (t) => {
  await using net = await VirtioNet.open(ours);
  assert.deepEqual([net.info().ring, net.info().eventIdx], ['packed', true]);
  const rx = await kernelToUsListening(net, peers, ALL_SIZES);
  t.diagnostic(`receive interrupts ${rx.interrupts} for ${rx.packets} frames`);
  assert.ok(rx.interrupts >= 1 && rx.interrupts <= rx.packets, JSON.stringify(rx));
});

test('packed ring: bad input gives UserpciErrors and sends nothing; a closed NIC is ENODEV', async () => {
  const net = await VirtioNet.open(ours);
  assert.equal(net.info().ring, 'packed');
  await badInput(net, peers);
});

test('declining packed rings ({ packedRing: false }) on the same NIC: split rings, frames still flow', async () => {
  await using net = await VirtioNet.open(ours, { packedRing: false });
  const info = net.info();
  assert.equal(info.ring, 'split');
  assert.ok(info.offered.includes('RING_PACKED') && !info.negotiated.includes('RING_PACKED'), info.negotiated.join(' '));
  assert.equal(info.controlQueue, true, 'VQ_PAIRS_SET went over a split control queue');
  sendFrame(net, F.arpRequest(peers.ourMac, F.ipBytes(peers.ourIp), F.ipBytes(peers.kernelIp)));
  const [reply] = await receive(net, peers, (f) => F.parseArp(f)?.op === 2);
  assert.deepEqual([...F.parseArp(reply!)!.senderMac], [...peers.kernelMac]);
});

test('multiqueue behind a hubport (max_virtqueue_pairs 1): MQ and CTRL_VQ negotiated, VQ_PAIRS_SET acknowledged, more pairs refused by us and by the device', async () => {
  {
    await using net = await VirtioNet.open(ours, { queuePairs: 'max' });
    const info = net.info();
    assert.ok(info.offered.includes('MQ') && info.negotiated.includes('MQ') && info.negotiated.includes('CTRL_VQ'), info.negotiated.join(' '));
    assert.deepEqual([info.maxQueuePairs, info.queuePairs, info.controlQueue, info.ring], [1, 1, true, 'packed']);
    // The command open sent, again by hand: acknowledged.
    await net.control(CTRL_CLASS_MQ, CTRL_MQ_VQ_PAIRS_SET, Uint8Array.of(1, 0));
    // Two pairs, past what the device offers: its own answer is VIRTIO_NET_ERR.
    await assert.rejects(net.control(CTRL_CLASS_MQ, CTRL_MQ_VQ_PAIRS_SET, Uint8Array.of(2, 0)), (e: UserpciError) => e.code === 'EIO' && /refused/.test(e.message));
    // Pair 0 still carries frames after the refused command.
    sendFrame(net, F.arpRequest(peers.ourMac, F.ipBytes(peers.ourIp), F.ipBytes(peers.kernelIp)));
    const [reply] = await receive(net, peers, (f) => F.parseArp(f)?.op === 2);
    assert.deepEqual([...F.parseArp(reply!)!.senderMac], [...peers.kernelMac]);
  }
  await assert.rejects(VirtioNet.open(ours, { queuePairs: 2 }), (e: UserpciError) => e.code === 'EINVAL' && /offers 1 queue pair/.test(e.message));
  await assert.rejects(VirtioNet.open(ours, { queuePairs: 0 }), (e: UserpciError) => e.code === 'EINVAL');
  // The NIC is usable after the refusals.
  await using net = await VirtioNet.open(ours);
  assert.equal(net.info().queuePairs, 1);
});


test('userpci net info says which ring format is in use; --split-ring declines packed', async () => {
  const text = await cli(['net', 'info', ours]);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /packed rings of \d+ entries/);
  assert.match(text.stdout, /queue pairs 1 of 1 \(control queue\)/);
  const split = await cli(['net', 'info', ours, '--split-ring', '--json']);
  assert.equal(split.code, 0, split.stderr);
  const info = JSON.parse(split.stdout) as { ring: string; negotiated: string[] };
  assert.equal(info.ring, 'split');
  assert.ok(!info.negotiated.includes('RING_PACKED'));
});

after(() => {
  try {
    execFileSync('ip', ['link', 'set', kernelIf, 'down']);
  } catch {
    // best effort
  }
});
