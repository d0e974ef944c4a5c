/**
 * The virtio-net guest tests' exchanges with the kernel's network stack, for any pair of NICs on
 * one hub (ours through vfio-pci, the kernel's virtio_net with an address): frames of every size
 * both ways compared byte for byte, ARP answered on the way. Used by the split-ring and the
 * packed-ring test files alike.
 */
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { VirtioNet } from '../../src/drivers/virtio-net/net-device';
import { PacketBatch } from '../../src/drivers/virtio-net/packet-batch';
import { UserpciError } from '../../src/errors';
import * as F from './net-frames';

export interface NetPeers {
  /** Our NIC's MAC (QEMU's mac=) and the IPv4 address we answer ARP for. */
  ourMac: Uint8Array;
  ourIp: string;
  /** The kernel NIC's MAC and address on the same hub. */
  kernelMac: Uint8Array;
  kernelIp: string;
}

/** A function's network interface and MAC as virtio_net shows them, or undefined when it has none. */
export function interfaceOf(address: string): { ifname: string; mac: string } | undefined {
  const dir = `/sys/bus/pci/devices/${address}`;
  for (const v of fs.readdirSync(dir).filter((d) => d.startsWith('virtio'))) {
    const netDir = path.join(dir, v, 'net');
    if (!fs.existsSync(netDir)) continue;
    const ifname = fs.readdirSync(netDir)[0]!;
    return { ifname, mac: fs.readFileSync(`/sys/class/net/${ifname}/address`, 'utf8').trim() };
  }
  return undefined;
}

/** Sends one frame through a 1-slot batch. */
export function sendFrame(net: VirtioNet, frame: Uint8Array, batch = new PacketBatch(1)): void {
  batch.clear();
  batch.add(frame);
  assert.equal(net.txBurst(0, batch), 1);
}

/**
 * Polls for frames (answering the kernel's ARP requests for our address on the way) until
 * `want` returns true for `count` of them; resolves with copies of those.
 */
export async function receive(net: VirtioNet, peers: NetPeers, want: (f: Uint8Array) => boolean, count = 1, timeoutMs = 20_000): Promise<Uint8Array[]> {
  const batch = new PacketBatch(64);
  const reply = new PacketBatch(1);
  const got: Uint8Array[] = [];
  const deadline = Date.now() + timeoutMs;
  while (got.length < count) {
    const n = net.rxBurst(0, batch);
    for (let i = 0; i < n; i++) {
      const f = batch.frame(i);
      const arp = F.parseArp(f);
      if (arp && arp.op === 1 && arp.targetIp === peers.ourIp) {
        sendFrame(net, F.arpReply(peers.ourMac, F.ipBytes(peers.ourIp), arp.senderMac, F.ipBytes(arp.senderIp)), reply);
        continue;
      }
      if (want(f)) got.push(f.slice());
    }
    if (n === 0) {
      if (Date.now() > deadline) throw new Error(`timed out: ${got.length} of ${count} frames received`);
      await new Promise((r) => setImmediate(r));
    }
  }
  return got;
}

export const pattern = (size: number) => (i: number) => (i * 31 + size) & 0xff;

/** Our NIC sends a UDP datagram of every frame size 60..1514 to the kernel's port 5001; each payload is compared. */
export async function usToKernel(net: VirtioNet, peers: NetPeers): Promise<void> {
  const sock = dgram.createSocket('udp4');
  await new Promise<void>((r) => sock.bind(5001, peers.kernelIp, () => r()));
  const received = new Map<number, Buffer>();
  let wake: (() => void) | undefined;
  sock.on('message', (msg) => {
    received.set(msg.length + 42, msg);
    wake?.();
  });
  const ourIp = F.ipBytes(peers.ourIp);
  const kernelIp = F.ipBytes(peers.kernelIp);
  try {
    const batch = new PacketBatch(64);
    for (let size = 60; size <= 1514; ) {
      batch.clear();
      const first = size;
      for (; size <= 1514 && batch.count < batch.capacity; size++) {
        batch.add(F.udpFrame(peers.kernelMac, peers.ourMac, ourIp, kernelIp, 4000, 5001, size, pattern(size)));
      }
      let sent = 0;
      while (sent < batch.count) {
        sent += net.txBurst(0, batch, sent);
        if (sent < batch.count) await new Promise((r) => setImmediate(r));
      }
      // The hub drops what the receiver has no room for: pace by what the kernel delivered.
      const deadline = Date.now() + 20_000;
      while ([...Array(size - first).keys()].some((k) => !received.has(first + k))) {
        if (Date.now() > deadline) throw new Error(`sizes ${first}..${size - 1}: the kernel received only ${[...received.keys()].filter((s) => s >= first).length}`);
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 100);
        });
      }
    }
    for (let size = 60; size <= 1514; size++) {
      const msg = received.get(size)!;
      const expect = Uint8Array.from({ length: size - 42 }, (_, i) => pattern(size)(i));
      assert.ok(Buffer.from(expect).equals(msg), `payload of the ${size}-byte frame`);
    }
    assert.equal(received.size, 1514 - 60 + 1);
  } finally {
    sock.close();
  }
}

/** The kernel sends a UDP datagram per frame size to us; we check each whole frame. */
export async function kernelToUs(net: VirtioNet, peers: NetPeers, sizes: number[]): Promise<void> {
  const ourIp = F.ipBytes(peers.ourIp);
  // Announce ourselves so the kernel knows our MAC without asking first.
  sendFrame(net, F.arpRequest(peers.ourMac, ourIp, F.ipBytes(peers.kernelIp)));
  await receive(net, peers, (f) => F.parseArp(f)?.op === 2);
  const sock = dgram.createSocket('udp4');
  await new Promise<void>((r) => sock.bind(5002, peers.kernelIp, () => r()));
  try {
    for (let i = 0; i < sizes.length; i += 32) {
      const chunk = sizes.slice(i, i + 32);
      for (const size of chunk) {
        const payload = Buffer.from(Uint8Array.from({ length: size - 42 }, (_, k) => pattern(size)(k)));
        sock.send(payload, 6000, peers.ourIp);
      }
      const frames = await receive(net, peers, (f) => F.parseIpv4(f)?.proto === 17, chunk.length);
      for (const f of frames) {
        const ip = F.parseIpv4(f)!;
        const size = f.length;
        assert.ok(chunk.includes(size), `a ${size}-byte frame, sent ${chunk.join(',')}`);
        assert.deepEqual([...f.subarray(0, 6)], [...peers.ourMac], 'destination MAC');
        assert.deepEqual([...f.subarray(6, 12)], [...peers.kernelMac], 'source MAC');
        assert.equal(ip.src, peers.kernelIp);
        assert.equal(ip.dst, peers.ourIp);
        assert.ok(ip.headerOk, 'IP header checksum');
        assert.equal(ip.length, size - 34, 'IP length matches the frame');
        const udp = ip.offset;
        assert.equal((f[udp + 2]! << 8) | f[udp + 3]!, 6000, 'UDP port');
        const expect = Uint8Array.from({ length: size - 42 }, (_, k) => pattern(size)(k));
        assert.ok(Buffer.from(expect).equals(f.subarray(42)), `payload of the ${size}-byte frame`);
      }
    }
  } finally {
    sock.close();
  }
}

/** Every frame size 60..1514. */
export const ALL_SIZES = Array.from({ length: 1514 - 60 + 1 }, (_, i) => 60 + i);

/** Sizes around the 256-byte buffers' boundaries (240 bytes of frame in the first, 252 in each further one). */
export const MERGE_SIZES = [60, 239, 240, 241, 492, 493, 1000, 1400, 1513, 1514];

/** Receive buffers the MERGE_SIZES frames take beyond one each, with 256-byte buffers. */
export function extraMergeBuffers(sizes: number[]): number {
  return sizes.reduce((n, s) => n + Math.max(0, Math.ceil((s - 240) / 252)), 0);
}

/**
 * Bad input on an open NIC, then closed: oversized, short and zero-length frames, empty batches,
 * a queue that does not exist; after close, ENODEV everywhere. Nothing of a refused batch is sent.
 */
export async function badInput(net: VirtioNet, peers: NetPeers): Promise<void> {
  const ourIp = F.ipBytes(peers.ourIp);
  const kernelIp = F.ipBytes(peers.kernelIp);
  const code = (c: string) => (e: unknown) => e instanceof UserpciError && e.code === c;
  const batch = new PacketBatch(4);
  batch.add(new Uint8Array(1515));
  assert.throws(() => net.txBurst(0, batch), code('EMSGSIZE'));
  batch.clear();
  batch.add(F.arpRequest(peers.ourMac, ourIp, kernelIp));
  batch.add(new Uint8Array(0));
  assert.throws(() => net.txBurst(0, batch), code('EINVAL'), 'a zero-length frame');
  assert.equal(net.stats().tx.packets, 0, 'the valid frame before it was not sent either');
  batch.clear();
  assert.throws(() => net.txBurst(0, batch), code('EINVAL'), 'an empty batch');
  assert.throws(() => new PacketBatch(0), code('EINVAL'));
  assert.throws(() => net.rxBurst(1, batch), code('EINVAL'), 'no queue pair 1');
  await assert.rejects(net.send(new Uint8Array(2000)), code('EMSGSIZE'));
  await net.close();
  batch.add(F.arpRequest(peers.ourMac, ourIp, kernelIp));
  assert.throws(() => net.txBurst(0, batch), code('ENODEV'));
  assert.throws(() => net.rxBurst(0, batch), code('ENODEV'));
  await assert.rejects(net.send(batch.frame(0)), code('ENODEV'));
}

export const CLI = path.join(__dirname, '..', '..', '..', 'bin', 'userpci.js');

/** Runs the userpci CLI without blocking the event loop (a listening NIC keeps being served). */
export function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * EVENT_IDX on the receive interrupt: the kernel sends datagrams of `sizes` in bursts of 32 while
 * we listen(); every frame is checked whole. The interrupt is asked for again after each drain
 * (armInterrupt): a lost wake-up would leave frames in the ring and time out here.
 * Returns the receive queue's counters.
 */
export async function kernelToUsListening(net: VirtioNet, peers: NetPeers, sizes: number[]): Promise<{ packets: number; interrupts: number }> {
  const ourIp = F.ipBytes(peers.ourIp);
  sendFrame(net, F.arpRequest(peers.ourMac, ourIp, F.ipBytes(peers.kernelIp)));
  await receive(net, peers, (f) => F.parseArp(f)?.op === 2);
  const got = new Map<number, Buffer>();
  let wake: (() => void) | undefined;
  net.on('frame', (f: Buffer) => {
    // The kernel re-checks our address now and then (its neighbour entry goes stale): answer.
    const arp = F.parseArp(f);
    if (arp && arp.op === 1 && arp.targetIp === peers.ourIp) {
      void net.send(F.arpReply(peers.ourMac, ourIp, arp.senderMac, F.ipBytes(arp.senderIp)));
      return;
    }
    const ip = F.parseIpv4(f);
    if (ip?.proto === 17 && ip.src === peers.kernelIp) {
      got.set(f.length, f);
      wake?.();
    }
  });
  net.listen();
  const sock = dgram.createSocket('udp4');
  await new Promise<void>((r) => sock.bind(5003, peers.kernelIp, () => r()));
  try {
    for (let i = 0; i < sizes.length; i += 32) {
      const chunk = sizes.slice(i, i + 32);
      for (const size of chunk) sock.send(Buffer.from(Uint8Array.from({ length: size - 42 }, (_, k) => pattern(size)(k))), 6000, peers.ourIp);
      const deadline = Date.now() + 20_000; // a hang guard: the wait is for the frames
      while (chunk.some((s) => !got.has(s))) {
        if (Date.now() > deadline) throw new Error(`sizes ${chunk[0]}..${chunk[chunk.length - 1]}: received ${chunk.filter((s) => got.has(s)).length} of ${chunk.length} on the interrupt`);
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 100);
        });
      }
    }
  } finally {
    net.stopListening();
    sock.close();
  }
  for (const size of sizes) {
    const f = got.get(size)!;
    assert.deepEqual([...f.subarray(0, 6)], [...peers.ourMac], 'destination MAC');
    const expect = Uint8Array.from({ length: size - 42 }, (_, k) => pattern(size)(k));
    assert.ok(Buffer.from(expect).equals(f.subarray(42)), `payload of the ${size}-byte frame`);
  }
  const rx = net.stats().rx;
  return { packets: rx.packets, interrupts: rx.interrupts };
}

/**
 * RING_EVENT_IDX, offered by QEMU's virtio-net by default: taken unless declined, said by info()
 * and `userpci net info`; declined ({ eventIdx: false }, --no-event-idx), frames still flow.
 */
export async function eventIdxNegotiation(address: string, peers: NetPeers, open: (options: { eventIdx?: boolean }) => Promise<VirtioNet>): Promise<void> {
  {
    await using net = await open({});
    const info = net.info();
    assert.equal(info.eventIdx, true);
    assert.ok(info.offered.includes('RING_EVENT_IDX') && info.negotiated.includes('RING_EVENT_IDX'), info.negotiated.join(' '));
  }
  {
    await using net = await open({ eventIdx: false });
    const info = net.info();
    assert.equal(info.eventIdx, false);
    assert.ok(info.offered.includes('RING_EVENT_IDX') && !info.negotiated.includes('RING_EVENT_IDX'), info.negotiated.join(' '));
    sendFrame(net, F.arpRequest(peers.ourMac, F.ipBytes(peers.ourIp), F.ipBytes(peers.kernelIp)));
    const [reply] = await receive(net, peers, (f) => F.parseArp(f)?.op === 2);
    assert.deepEqual([...F.parseArp(reply!)!.senderMac], [...peers.kernelMac]);
  }
  const text = await cli(['net', 'info', address]);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /rings of \d+ entries with event index \(RING_EVENT_IDX\)/);
  assert.match(text.stdout, /negotiated: .*\bRING_EVENT_IDX\b/);
  const declined = await cli(['net', 'info', address, '--no-event-idx', '--json']);
  assert.equal(declined.code, 0, declined.stderr);
  const info = JSON.parse(declined.stdout) as { eventIdx: boolean; negotiated: string[] };
  assert.equal(info.eventIdx, false);
  assert.ok(!info.negotiated.includes('RING_EVENT_IDX'));
}
