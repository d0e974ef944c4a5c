/**
 * `userpci net info|send|recv|tap ADDRESS`: a quick look at a virtio-net NIC through the user-space
 * driver, and a TAP interface that lends it to the kernel's network stack. ADDRESS is the PCI
 * address of a function bound to vfio-pci (--bind binds it first).
 */
import { isValidPciAddress } from '../../pci/address.js';
import { UserpciError, InvalidArgumentError } from '../../errors.js';
import { VirtioNet } from '../../drivers/virtio-net/net-device.js';
import { virtioDeviceType } from '../../drivers/virtio/transport.js';
import { VIRTIO_VENDOR_ID } from '../../drivers/virtio/constants.js';
import { VIRTIO_NET_DEVICE_TYPE } from '../../drivers/virtio-net/constants.js';
import { PacketBatch } from '../../drivers/virtio-net/packet-batch.js';
import { NetTap } from '../../exports/tap/tap.js';
import { UsageError, hex, parseCommandLine, parseCount, print, toJson } from '../format.js';
import { stopSignal } from '../stop-signal.js';
import type { CliCommand } from '../main.js';
import { requireVfioBinding, sysfsNumber } from '../vfio-target.js';

const USAGE = `userpci net info|send|recv|tap ADDRESS [options]

Drive a virtio-net NIC (virtio 1.x, with VIRTIO_F_ACCESS_PLATFORM: QEMU's iommu_platform=on)
from user space. The device must be bound to vfio-pci; --bind does that first and leaves it
bound (\`userpci unbind ADDRESS\` gives it back to the kernel).

  info ADDRESS [--json]
      MAC, link, MTU, queues and their ring format (split or packed, with or without event
      index), and the features offered
      and negotiated
  send ADDRESS [--dst MAC] [--ethertype N] [--size BYTES] [--count N] [--frame HEX]
      send --count frames (default 1) of --size bytes (default 60; 14..1514) from the NIC's
      MAC to --dst (default broadcast) with --ethertype (default 0x88b5, local experimental);
      the payload counts up and starts with the frame's sequence number. --frame sends HEX
      (a whole Ethernet frame without FCS) instead.
  recv ADDRESS [--count N] [--timeout-ms N] [--hex] [--json]
      print each frame received (source, destination, ethertype, length; --hex: the bytes)
      until --count frames (default 10) or --timeout-ms (default 10000) passed; exit 1 on timeout
      with fewer frames
  tap ADDRESS [--name IFNAME] [--json]
      create the TAP interface IFNAME (default utapN) with the NIC's MAC and carry every frame
      between it and the NIC until SIGINT/SIGTERM (exit 0) or the NIC's removal (exit 3): the
      kernel's network stack sends and receives through the user-space driver. Configure the
      interface as any other (ip addr add ... dev IFNAME; ip link set IFNAME up; or move it
      into a namespace). The first line says the interface's name; the last, frames moved.

Common options:
  --bind          bind ADDRESS to vfio-pci first
  --split-ring    use split virtqueues even when the device offers packed ones (RING_PACKED)
  --no-event-idx  suppress doorbells and interrupts with the ring flags even when the device
                  offers event indices (RING_EVENT_IDX)`;

const OPTIONS = {
  json: { type: 'boolean', default: false },
  bind: { type: 'boolean', default: false },
  dst: { type: 'string' },
  ethertype: { type: 'string' },
  size: { type: 'string' },
  count: { type: 'string' },
  hex: { type: 'boolean', default: false },
  frame: { type: 'string' },
  'timeout-ms': { type: 'string' },
  name: { type: 'string' },
  'split-ring': { type: 'boolean', default: false },
  'no-event-idx': { type: 'boolean', default: false },
} as const;

type Values = ReturnType<typeof parse>['values'];

function parse(args: string[]) {
  return parseCommandLine(args, OPTIONS, ['info|send|recv|tap', 'ADDRESS']);
}

async function openNic(address: string, values: Values): Promise<VirtioNet> {
  if (!isValidPciAddress(address)) throw new InvalidArgumentError(`"${address}" is not a PCI address (DDDD:BB:DD.F)`);
  requireVfioBinding(address, values.bind, (dir) => {
    const vendor = sysfsNumber(dir, 'vendor');
    const device = sysfsNumber(dir, 'device');
    // The subsystem id matters (and exists) only for virtio's transitional ids.
    const type = vendor === VIRTIO_VENDOR_ID ? virtioDeviceType(vendor, device, sysfsNumber(dir, 'subsystem_device')) : undefined;
    if (type !== VIRTIO_NET_DEVICE_TYPE) {
      throw new UserpciError('EINVAL', `${address} is not a virtio network card (${hex(vendor, 4)}:${hex(device, 4)}, virtio-net is 1af4:1041): not binding it; find one with \`userpci list --vendor 1af4 --device 1041\``);
    }
  });
  return VirtioNet.open(address, { packedRing: !values['split-ring'], eventIdx: !values['no-event-idx'] });
}

function parseMac(text: string): Uint8Array {
  const m = /^([0-9a-f]{2})([:-][0-9a-f]{2}){5}$/i.exec(text);
  if (!m) throw new UsageError(`--dst must be a MAC address like 52:54:00:12:34:56, got "${text}"`);
  return Uint8Array.from(text.split(/[:-]/).map((h) => parseInt(h, 16)));
}

function macString(b: Uint8Array, at: number): string {
  return [...b.subarray(at, at + 6)].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

async function info(address: string, values: Values): Promise<number> {
  const net = await openNic(address, values);
  try {
    const i = net.info();
    if (values.json) print(toJson(i));
    else {
      print([
        `${i.address}: virtio-net ${i.mac}, link ${i.linkUp ? 'up' : 'down'}, MTU ${i.mtu} (frames up to ${i.maxFrameSize} bytes)`,
        `  queue pairs ${i.queuePairs} of ${i.maxQueuePairs}${i.controlQueue ? ' (control queue)' : ''}, ${i.ring} rings of ${i.queueSize} entries${i.eventIdx ? ' with event index (RING_EVENT_IDX)' : ''}, receive buffers of ${i.rxBufferSize} bytes, interrupts: ${i.interrupts}`,
        `  offered:    ${i.offered.join(' ')}`,
        `  negotiated: ${i.negotiated.join(' ')}`,
      ].join('\n'));
    }
    return 0;
  } finally {
    await net.close();
  }
}

async function send(address: string, frameHex: string | undefined, values: Values): Promise<number> {
  const count = parseCount(values.count, '--count') ?? 1;
  if (count < 1) throw new UsageError('--count must be at least 1');
  let template: Uint8Array | undefined;
  if (frameHex !== undefined) {
    if (!/^([0-9a-f]{2})+$/i.test(frameHex)) throw new UsageError('the frame must be an even number of hex digits');
    template = Buffer.from(frameHex, 'hex');
  }
  const net = await openNic(address, values);
  try {
    const size = template?.length ?? parseCount(values.size, '--size') ?? 60;
    const ethertype = parseCount(values.ethertype, '--ethertype') ?? 0x88b5;
    if (ethertype > 0xffff) throw new UsageError('--ethertype must be 0..0xffff');
    const dst = values.dst ? parseMac(values.dst) : new Uint8Array(6).fill(0xff);
    const batch = new PacketBatch(32);
    const frame = new Uint8Array(Math.max(size, 14));
    let sent = 0;
    while (sent < count) {
      batch.clear();
      for (let i = 0; i < batch.capacity && sent + batch.count < count; i++) {
        if (template) frame.set(template);
        else {
          frame.set(dst, 0);
          frame.set(net.mac, 6);
          frame[12] = ethertype >> 8;
          frame[13] = ethertype & 0xff;
          const seq = sent + batch.count;
          for (let k = 14; k < size; k++) frame[k] = (k - 14) & 0xff;
          if (size >= 18) new DataView(frame.buffer).setUint32(14, seq);
        }
        batch.add(frame.subarray(0, size));
      }
      // Size and emptiness are checked by the driver (EMSGSIZE, EINVAL).
      let done = 0;
      while (done < batch.count) {
        done += net.txBurst(0, batch, done);
        if (done < batch.count) await new Promise((r) => setImmediate(r));
      }
      sent += done;
    }
    // Let the device finish before the reset in close() (it would drop what is still queued).
    for (let i = 0; i < 1000 && net.txSpace() < net.info().queueSize; i++) await new Promise((r) => setTimeout(r, 1));
    if (values.json) print(toJson({ sent, size }));
    else print(`sent ${sent} frame(s) of ${size} bytes from ${net.macString}`);
    return 0;
  } finally {
    await net.close();
  }
}

async function recv(address: string, values: Values): Promise<number> {
  const count = parseCount(values.count, '--count') ?? 10;
  const timeoutMs = parseCount(values['timeout-ms'], '--timeout-ms') ?? 10_000;
  const net = await openNic(address, values);
  try {
    const batch = new PacketBatch(32);
    const deadline = Date.now() + timeoutMs;
    let got = 0;
    while (got < count) {
      const n = net.rxBurst(0, batch);
      for (let i = 0; i < n && got < count; i++, got++) {
        const f = batch.frame(i);
        const type = (f[12]! << 8) | f[13]!;
        if (values.json) print(toJson({ src: macString(f, 6), dst: macString(f, 0), ethertype: type, length: f.length, ...(values.hex ? { hex: Buffer.from(f).toString('hex') } : {}) }).replace(/\n\s*/g, ' '));
        else print(`${macString(f, 6)} > ${macString(f, 0)} type 0x${type.toString(16).padStart(4, '0')} length ${f.length}${values.hex ? `\n  ${Buffer.from(f).toString('hex')}` : ''}`);
      }
      if (n === 0) {
        if (Date.now() > deadline) {
          process.stderr.write(`userpci net recv: ${got} of ${count} frame(s) in ${timeoutMs} ms\n`);
          return 1;
        }
        await new Promise((r) => setTimeout(r, 1));
      }
    }
    return 0;
  } finally {
    await net.close();
  }
}

async function tap(address: string, values: Values): Promise<number> {
  const net = await openNic(address, values);
  try {
    const bridge = NetTap.attach(net, { name: values.name });
    const stop = stopSignal();
    const line = { interface: bridge.name, address: net.name, mac: net.macString, link: net.linkUp };
    if (values.json) print(toJson(line).replace(/\n\s*/g, ' '));
    else print(`tap: ${bridge.name} carries ${net.name} (${net.macString}, link ${net.linkUp ? 'up' : 'down'}) through the user-space driver`);
    const why = await new Promise<string>((resolve) => {
      void stop.then(resolve);
      bridge.once('closed', (reason: string) => resolve(reason));
    });
    const lost = bridge.closed;
    bridge.close();
    const s = bridge.stats;
    const counts = `${s.toWire} frame(s) to the wire, ${s.toKernel} to the kernel, dropped ${s.droppedToWire} + ${s.droppedToKernel}`;
    if (lost) process.stderr.write(`userpci net tap: ${why}; ${bridge.name} removed\n`);
    if (values.json) print(toJson({ stopped: why, deviceLost: lost, ...s }).replace(/\n\s*/g, ' '));
    else print(lost ? `tap: stopped, device lost (${counts})` : `tap: ${why}: ${bridge.name} removed (${counts})`);
    return lost ? 3 : 0;
  } finally {
    await net.close();
  }
}

export const netCommand: CliCommand = {
  name: 'net',
  summary: 'virtio-net through the user-space driver: info, send, recv, tap',
  usage: USAGE,
  async run(args: string[]): Promise<number> {
    const { values, positionals } = parse(args);
    const [action, address] = positionals as [string, string];
    const frame = values.frame;
    switch (action) {
      case 'info': return info(address, values);
      case 'send': return send(address, frame, values);
      case 'recv': return recv(address, values);
      case 'tap': return tap(address, values);
      default: throw new UsageError(`unknown action "${action}" (info, send, recv, tap)`);
    }
  },
};
