/**
 * The user-space virtio-net driver against QEMU's virtio-net-pci, in the guest: two modern NICs
 * on one QEMU hub (ours through vfio-pci, the other with the kernel's virtio_net and an IPv4
 * address), plus a third NIC without iommu_platform=on that the driver must refuse. The kernel's
 * network stack is the peer nobody here wrote: it answers ARP and ping to frames we build, takes
 * UDP datagrams of every frame size from 60 to 1514 bytes from us, and sends the same back.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as dgram from 'node:dgram';
import * as net from 'node:net';
import * as crypto from 'node:crypto';
import { execFileSync, spawn } from 'node:child_process';
import { VirtioNet } from '../../src/drivers/virtio-net/net-device';
import { UserpciError } from '../../src/errors';
import { bindToVfio } from '../../src/pci/bind';
import { requireGuest, findDevices } from './guest-env';
import * as F from './net-frames';
import { ALL_SIZES, CLI, MERGE_SIZES, badInput, cli, eventIdxNegotiation, extraMergeBuffers, interfaceOf, kernelToUs, kernelToUsListening, receive as receiveFrom, sendFrame, usToKernel, type NetPeers } from './net-peer';

const OUR_IP = '10.77.0.2';
const KERNEL_IP = '10.77.0.1';
const OUR_MAC = '52:54:00:00:77:02';
const KERNEL_MAC = '52:54:00:00:77:01';
const NO_IOMMU_MAC = '52:54:00:00:77:03';

let ours: string;
let noIommu: string;
let kernelIf: string;
let kernelMac: Uint8Array;

before(() => {
  requireGuest();
  const nics = findDevices(0x1af4, 0x1041);
  assert.equal(nics.length, 5, `five modern virtio-net functions (two of them packed, for virtio-net-packed.test), found ${nics.join(', ')}`);
  // Ours start on virtio_net (the packed pair's test may have taken its own already): tell them
  // apart by the MACs QEMU gave them.
  const byMac = new Map<string, { address: string; ifname: string }>();
  for (const a of nics) {
    const m = interfaceOf(a);
    if (m) byMac.set(m.mac, { address: a, ifname: m.ifname });
  }
  for (const m of [OUR_MAC, KERNEL_MAC, NO_IOMMU_MAC]) assert.ok(byMac.has(m), `the NIC with MAC ${m} is bound to virtio_net at boot`);
  ours = byMac.get(OUR_MAC)!.address;
  noIommu = byMac.get(NO_IOMMU_MAC)!.address;
  kernelIf = byMac.get(KERNEL_MAC)!.ifname;
  kernelMac = F.macBytes(KERNEL_MAC);
  execFileSync('ip', ['addr', 'add', `${KERNEL_IP}/24`, 'dev', kernelIf]);
  execFileSync('ip', ['link', 'set', kernelIf, 'up']);
  bindToVfio(ours);
  bindToVfio(noIommu);
});

const mac = () => F.macBytes(OUR_MAC);
const ourIp = F.ipBytes(OUR_IP);
const kernelIp = F.ipBytes(KERNEL_IP);

const peers = (): NetPeers => ({ ourMac: mac(), ourIp: OUR_IP, kernelMac, kernelIp: KERNEL_IP });
const receive = (net: VirtioNet, want: (f: Uint8Array) => boolean, count = 1) => receiveFrom(net, peers(), want, count);

test('bring-up: VERSION_1 and ACCESS_PLATFORM negotiated, MAC and link from the device', async () => {
  await using net = await VirtioNet.open(ours);
  const info = net.info();
  assert.ok(info.negotiated.includes('VERSION_1'), info.negotiated.join(' '));
  assert.ok(info.negotiated.includes('ACCESS_PLATFORM'), info.negotiated.join(' '));
  assert.equal(info.mac, OUR_MAC);
  assert.equal(info.linkUp, true);
  assert.equal(info.maxFrameSize, 1514);
  assert.ok(info.queueSize >= 64, `queue size ${info.queueSize}`);
  assert.equal(info.ring, 'split', 'this NIC offers no RING_PACKED');
  assert.equal(info.controlQueue, false, 'nor MQ: no control queue');
  assert.equal(info.eventIdx, true, 'RING_EVENT_IDX taken (QEMU offers it by default)');
  await net.close();
  await assert.rejects(VirtioNet.open(ours, { queuePairs: 2 }), (e: UserpciError) => e.code === 'ENOTSUP' && /no MQ/.test(e.message));
  await assert.rejects(net.control(4, 0), (e: UserpciError) => e.code === 'ENODEV');
});

test('a NIC without iommu_platform=on (no ACCESS_PLATFORM) is refused with ENOTSUP, and left usable', async () => {
  await assert.rejects(VirtioNet.open(noIommu), (e: UserpciError) => e.code === 'ENOTSUP' && /ACCESS_PLATFORM/.test(e.message));
  await assert.rejects(VirtioNet.open(noIommu), (e: UserpciError) => e.code === 'ENOTSUP');
});

test('ARP and ICMP echo: the kernel answers frames we build', async () => {
  await using net = await VirtioNet.open(ours);
  sendFrame(net, F.arpRequest(mac(), ourIp, kernelIp));
  const [arpReply] = await receive(net, (f) => F.parseArp(f)?.op === 2 && F.parseArp(f)?.senderIp === KERNEL_IP);
  const arp = F.parseArp(arpReply!)!;
  assert.deepEqual([...arp.senderMac], [...kernelMac]);
  assert.deepEqual([...arpReply!.subarray(0, 6)], [...mac()], 'the reply is addressed to us');

  for (let seq = 1; seq <= 3; seq++) {
    const data = Uint8Array.from({ length: 56 + seq * 100 }, (_, i) => (i * 7 + seq) & 0xff);
    sendFrame(net, F.icmpEcho(kernelMac, mac(), ourIp, kernelIp, 0x77, seq, data));
    const [reply] = await receive(net, (f) => {
      const ip = F.parseIpv4(f);
      return ip?.proto === 1 && f[ip.offset] === 0 && ((f[ip.offset + 6]! << 8) | f[ip.offset + 7]!) === seq;
    });
    const ip = F.parseIpv4(reply!)!;
    assert.equal(ip.src, KERNEL_IP);
    assert.equal(ip.dst, OUR_IP);
    assert.ok(ip.headerOk, 'IP header checksum');
    assert.equal(F.inetChecksum(reply!, ip.offset, ip.offset + ip.length), 0, 'ICMP checksum');
    assert.deepEqual([...reply!.subarray(ip.offset + 8, ip.offset + ip.length)], [...data], 'echoed data');
  }
});

test('every frame size 60..1514 from us to the kernel arrives intact (UDP, the kernel checks every checksum)', async () => {
  await using net = await VirtioNet.open(ours);
  await usToKernel(net, peers());
});

test('every frame size 60..1514 from the kernel to us arrives intact', async () => {
  await using net = await VirtioNet.open(ours);
  await kernelToUs(net, peers(), ALL_SIZES);
});

test('mergeable receive buffers: with 256-byte buffers, large frames span several and arrive whole', async () => {
  await using net = await VirtioNet.open(ours, { rxBufferSize: 256 });
  assert.ok(net.info().negotiated.includes('MRG_RXBUF'));
  await kernelToUs(net, peers(), MERGE_SIZES);
  const rx = net.stats().rx;
  // The first buffer holds the 12-byte header and 240 bytes of frame (256 less 4 of padding),
  // each further one 252. The ARP exchange before the sizes took one buffer.
  assert.equal(rx.buffers - rx.packets, extraMergeBuffers(MERGE_SIZES), JSON.stringify(rx));
});

test('EVENT_IDX (split ring): negotiated by default and named by info and `userpci net info`; declined with eventIdx: false / --no-event-idx', async () => {
  await eventIdxNegotiation(ours, peers(), (o) => VirtioNet.open(ours, o));
});

test('EVENT_IDX (split ring): every frame size 60..1514 from the kernel arrives intact on the receive interrupt, re-armed by used_event after each drain', async (t) => {
  await using net = await VirtioNet.open(ours);
  assert.equal(net.info().eventIdx, true);
  const rx = await kernelToUsListening(net, peers(), ALL_SIZES);
  t.diagnostic(`receive interrupts ${rx.interrupts} for ${rx.packets} frames`);
  assert.ok(rx.interrupts >= 1 && rx.interrupts <= rx.packets, JSON.stringify(rx));
});

test('bad input: oversized and short frames, empty batches, a closed device: UserpciErrors, nothing sent', async () => {
  await badInput(await VirtioNet.open(ours), peers());
});

test('event API: listen() delivers frames on the receive interrupt; send() sends', async () => {
  await using net = await VirtioNet.open(ours);
  assert.equal(net.info().interrupts, 'msix');
  const replies: Buffer[] = [];
  let done: () => void;
  const got = new Promise<void>((r) => (done = r));
  net.on('frame', (f: Buffer) => {
    if (F.parseArp(f)?.op === 2) {
      replies.push(f);
      done();
    }
  });
  net.listen();
  await net.send(F.arpRequest(mac(), ourIp, kernelIp));
  await got;
  net.stopListening();
  assert.deepEqual([...F.parseArp(replies[0]!)!.senderMac], [...kernelMac]);
});


test('userpci net info|send|recv against the kernel NIC', async (t) => {
  const t0 = Date.now();
  const infoRun = await cli(['net', 'info', ours, '--json']);
  t.diagnostic(`net info took ${Date.now() - t0} ms`);
  assert.equal(infoRun.code, 0, infoRun.stderr);
  const info = JSON.parse(infoRun.stdout) as { mac: string; negotiated: string[] };
  assert.equal(info.mac, OUR_MAC);
  assert.ok(info.negotiated.includes('ACCESS_PLATFORM'));

  const rxPackets = () => Number(fs.readFileSync(`/sys/class/net/${kernelIf}/statistics/rx_packets`, 'utf8'));
  const before = rxPackets();
  const t1 = Date.now();
  const sendRun = await cli(['net', 'send', ours, '--dst', KERNEL_MAC, '--count', '50', '--size', '100']);
  t.diagnostic(`net send took ${Date.now() - t1} ms`);
  assert.equal(sendRun.code, 0, sendRun.stderr);
  assert.match(sendRun.stdout, /sent 50 frame\(s\) of 100 bytes/);
  assert.ok(rxPackets() - before >= 50, `the kernel NIC counted ${rxPackets() - before} frames`);

  const bad = await cli(['net', 'send', ours, '--size', '1515']);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /1515 bytes/);

  // Broadcast datagrams from the kernel until recv has its frames (it drops nothing it is not yet up for: the hub does).
  const sock = dgram.createSocket('udp4');
  await new Promise<void>((r) => sock.bind(0, KERNEL_IP, () => r()));
  sock.setBroadcast(true);
  const timer = setInterval(() => sock.send(Buffer.alloc(100, 0x5a), 7000, '10.77.0.255'), 50);
  try {
    const t2 = Date.now();
    const recvRun = await cli(['net', 'recv', ours, '--count', '3', '--json', '--timeout-ms', '60000']);
    t.diagnostic(`net recv took ${Date.now() - t2} ms`);
    assert.equal(recvRun.code, 0, recvRun.stderr);
    const frames = recvRun.stdout.trim().split('\n').map((l) => JSON.parse(l) as { src: string; dst: string; ethertype: number; length: number });
    assert.equal(frames.length, 3);
    const udp = frames.filter((f) => f.ethertype === 0x0800);
    assert.ok(udp.length >= 1, recvRun.stdout);
    for (const f of udp) assert.deepEqual([f.src, f.dst, f.length], [KERNEL_MAC, 'ff:ff:ff:ff:ff:ff', 142]);
  } finally {
    clearInterval(timer);
    sock.close();
  }
});

/** Runs a command to its end: exit code and output. */
function run(cmd: string, args: string[], timeoutMs = 120_000): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const guard = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('exit', (code) => {
      clearTimeout(guard);
      resolve({ code, out });
    });
  });
}

// The TCP peer in the TAP's namespace: sends BYTES of a seeded pattern, then prints the SHA-256 of
// what it sent and of what came back.
const TCP_CLIENT = `
const net = require('node:net'), crypto = require('node:crypto');
const [host, port, bytes] = process.argv.slice(1);
const data = Buffer.alloc(Number(bytes));
let x = 12345;
for (let i = 0; i < data.length; i++) { x = (x * 1103515245 + 12345) >>> 0; data[i] = x >>> 24; }
const back = crypto.createHash('sha256');
const s = net.connect(Number(port), host, () => s.end(data));
s.on('data', (d) => back.update(d));
s.on('end', () => console.log(JSON.stringify({ sent: crypto.createHash('sha256').update(data).digest('hex'), back: back.digest('hex') })));
s.on('error', (e) => { console.error(e.message); process.exit(1); });
`;

test('userpci net tap: the kernel in its own network namespace reaches the other NIC through our driver (ping; TCP both ways, SHA-256 compared)', { timeout: 600_000 }, async () => {
  execFileSync('modprobe', ['tun']);
  fs.mkdirSync('/var/run/netns', { recursive: true });
  execFileSync('ip', ['netns', 'add', 'tapns']);
  const tap = spawn(process.execPath, [CLI, 'net', 'tap', ours, '--name', 'utap0', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  tap.stdout.on('data', (d: Buffer) => (out += d.toString()));
  tap.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((r) => tap.on('exit', (code) => r(code)));
  const server = net.createServer();
  try {
    await new Promise<void>((resolve, reject) => {
      const check = () => (out.includes('\n') ? resolve() : undefined);
      tap.stdout.on('data', check);
      void exited.then((code) => reject(new Error(`net tap exited ${code}: ${err}`)));
    });
    const first = JSON.parse(out.split('\n')[0]!) as { interface: string; mac: string };
    assert.equal(first.interface, 'utap0');
    assert.equal(first.mac, OUR_MAC);
    assert.equal(fs.readFileSync('/sys/class/net/utap0/address', 'utf8').trim(), OUR_MAC, "the TAP carries the NIC's MAC");
    const ipns = (...a: string[]) => execFileSync('ip', ['-n', 'tapns', ...a]);
    execFileSync('ip', ['link', 'set', 'utap0', 'netns', 'tapns']);
    ipns('addr', 'add', `${OUR_IP}/24`, 'dev', 'utap0');
    ipns('link', 'set', 'lo', 'up');
    ipns('link', 'set', 'utap0', 'up');
    assert.ok(!fs.existsSync('/sys/class/net/utap0'), 'utap0 left the root namespace');

    const ping = await run('ip', ['netns', 'exec', 'tapns', 'ping', '-c', '3', '-W', '30', KERNEL_IP]);
    assert.equal(ping.code, 0, ping.out);
    assert.match(ping.out, /3 packets received/);

    // TCP: 1 MiB from the namespace to the kernel NIC's address, 256 KiB back.
    const BYTES = 1 << 20;
    const got = crypto.createHash('sha256');
    let received = 0;
    const reply = Buffer.alloc(256 << 10, 0x5a);
    for (let i = 0; i < reply.length; i++) reply[i] = (i * 13 + (i >> 9)) & 0xff;
    server.on('connection', (s) => {
      s.on('data', (d: Buffer) => {
        got.update(d);
        received += d.length;
      });
      s.on('end', () => s.end(reply));
    });
    await new Promise<void>((r) => server.listen(5002, KERNEL_IP, () => r()));
    const client = await run('ip', ['netns', 'exec', 'tapns', process.execPath, '-e', TCP_CLIENT, KERNEL_IP, '5002', String(BYTES)], 480_000);
    assert.equal(client.code, 0, client.out);
    const sums = JSON.parse(client.out.trim().split('\n').pop()!) as { sent: string; back: string };
    assert.equal(received, BYTES);
    assert.equal(got.digest('hex'), sums.sent, 'what the kernel NIC received is what the namespace sent');
    assert.equal(sums.back, crypto.createHash('sha256').update(reply).digest('hex'), 'what came back through our driver is what was sent');
  } finally {
    server.close();
    tap.kill('SIGTERM');
  }
  assert.equal(await exited, 0, err);
  const last = JSON.parse(out.trim().split('\n').pop()!) as Record<string, number>;
  assert.ok(last.toWire > 0 && last.toKernel > 0, out);
  execFileSync('ip', ['netns', 'del', 'tapns']);
});

function child(mode: string): { proc: ReturnType<typeof spawn>; lines: Record<string, unknown>[]; waitFor: (event: string, ms: number) => Promise<Record<string, unknown>> } {
  const proc = spawn(process.execPath, [path.join(__dirname, 'net-traffic.js'), ours, mode], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: Record<string, unknown>[] = [];
  let buf = '';
  const waiters: (() => void)[] = [];
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      lines.push(JSON.parse(buf.slice(0, nl)) as Record<string, unknown>);
      buf = buf.slice(nl + 1);
      for (const w of waiters.splice(0)) w();
    }
  });
  const waitFor = async (event: string, ms: number) => {
    const deadline = Date.now() + ms;
    for (;;) {
      const hit = lines.find((l) => l.event === event);
      if (hit) return hit;
      if (Date.now() > deadline) throw new Error(`child never reported "${event}": ${JSON.stringify(lines)}`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 200);
      });
    }
  };
  return { proc, lines, waitFor };
}

test('kill -9 in the middle of bursts, then reopen: the NIC comes back and works', async () => {
  const c = child('blast');
  await c.waitFor('sending', 60_000);
  const exited = new Promise((r) => c.proc.on('exit', r));
  c.proc.kill('SIGKILL');
  await exited;
  await using net = await VirtioNet.open(ours);
  sendFrame(net, F.arpRequest(mac(), ourIp, kernelIp));
  const [reply] = await receive(net, (f) => F.parseArp(f)?.op === 2);
  assert.deepEqual([...F.parseArp(reply!)!.senderMac], [...kernelMac]);
});

test('unplug under traffic: the sender gets removed and ENODEV, the removal completes; rescan brings the NIC back', async () => {
  const c = child('unplug');
  await c.waitFor('sending', 60_000);
  const exited = new Promise<number | null>((r) => c.proc.on('exit', (code) => r(code)));
  fs.writeFileSync(`/sys/bus/pci/devices/${ours}/remove`, '1'); // returns once the driver let go
  const gone = await c.waitFor('stopped', 20_000);
  assert.equal(gone.removed, true);
  assert.equal(gone.code, 'ENODEV');
  assert.ok((gone.sent as number) > 0, 'it was sending');
  assert.equal(await exited, 0);
  fs.writeFileSync('/sys/bus/pci/rescan', '1');
  assert.ok(fs.existsSync(`/sys/bus/pci/devices/${ours}`), 'rescan brought the NIC back');
});

after(() => {
  try {
    execFileSync('ip', ['link', 'set', kernelIf, 'down']);
  } catch {
    // best effort
  }
});
