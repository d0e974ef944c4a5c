/** Ethernet/ARP/IPv4/ICMP/UDP frames built and parsed by hand for the virtio-net tests. */

export const ETH_P_IP = 0x0800;
export const ETH_P_ARP = 0x0806;

export function macBytes(mac: string): Uint8Array {
  return Uint8Array.from(mac.split(':').map((h) => parseInt(h, 16)));
}

export function ipBytes(ip: string): Uint8Array {
  return Uint8Array.from(ip.split('.').map(Number));
}

/** The Internet checksum (RFC 1071) of bytes [start, end). */
export function inetChecksum(b: Uint8Array, start: number, end: number, initial = 0): number {
  let sum = initial;
  for (let i = start; i + 1 < end; i += 2) sum += (b[i]! << 8) | b[i + 1]!;
  if ((end - start) & 1) sum += b[end - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

function ethernet(frame: Uint8Array, dst: Uint8Array, src: Uint8Array, type: number): void {
  frame.set(dst, 0);
  frame.set(src, 6);
  frame[12] = type >> 8;
  frame[13] = type & 0xff;
}

export function arpRequest(srcMac: Uint8Array, srcIp: Uint8Array, targetIp: Uint8Array): Uint8Array {
  const f = new Uint8Array(60); // padded to the Ethernet minimum
  ethernet(f, new Uint8Array(6).fill(0xff), srcMac, ETH_P_ARP);
  f.set([0, 1, 8, 0, 6, 4, 0, 1], 14); // Ethernet/IPv4, request
  f.set(srcMac, 22);
  f.set(srcIp, 28);
  f.set(targetIp, 38);
  return f;
}

export function arpReply(srcMac: Uint8Array, srcIp: Uint8Array, dstMac: Uint8Array, dstIp: Uint8Array): Uint8Array {
  const f = new Uint8Array(60);
  ethernet(f, dstMac, srcMac, ETH_P_ARP);
  f.set([0, 1, 8, 0, 6, 4, 0, 2], 14);
  f.set(srcMac, 22);
  f.set(srcIp, 28);
  f.set(dstMac, 32);
  f.set(dstIp, 38);
  return f;
}

export interface Arp {
  op: number;
  senderMac: Uint8Array;
  senderIp: string;
  targetIp: string;
}

export function parseArp(f: Uint8Array): Arp | undefined {
  if (f.length < 42 || ((f[12]! << 8) | f[13]!) !== ETH_P_ARP) return undefined;
  return {
    op: (f[20]! << 8) | f[21]!,
    senderMac: f.slice(22, 28),
    senderIp: [...f.subarray(28, 32)].join('.'),
    targetIp: [...f.subarray(38, 42)].join('.'),
  };
}

function ipv4(f: Uint8Array, proto: number, src: Uint8Array, dst: Uint8Array, payloadLength: number, id: number): void {
  const total = 20 + payloadLength;
  f.set([0x45, 0, total >> 8, total & 0xff, id >> 8, id & 0xff, 0x40, 0, 64, proto, 0, 0], 14);
  f.set(src, 26);
  f.set(dst, 30);
  const c = inetChecksum(f, 14, 34);
  f[24] = c >> 8;
  f[25] = c & 0xff;
}

/** A UDP datagram in a frame of exactly `frameSize` bytes (>= 42); the payload is pattern(i). */
export function udpFrame(
  dstMac: Uint8Array, srcMac: Uint8Array, src: Uint8Array, dst: Uint8Array,
  srcPort: number, dstPort: number, frameSize: number, pattern: (i: number) => number,
): Uint8Array {
  const f = new Uint8Array(frameSize);
  const payload = frameSize - 42;
  ethernet(f, dstMac, srcMac, ETH_P_IP);
  ipv4(f, 17, src, dst, 8 + payload, frameSize);
  const u = 34;
  const len = 8 + payload;
  f.set([srcPort >> 8, srcPort & 0xff, dstPort >> 8, dstPort & 0xff, len >> 8, len & 0xff, 0, 0], u);
  for (let i = 0; i < payload; i++) f[42 + i] = pattern(i);
  // Pseudo-header: addresses, protocol, length.
  let pseudo = 0;
  for (const a of [src, dst]) pseudo += ((a[0]! << 8) | a[1]!) + ((a[2]! << 8) | a[3]!);
  pseudo += 17 + len;
  const c = inetChecksum(f, u, u + len, pseudo) || 0xffff;
  f[u + 6] = c >> 8;
  f[u + 7] = c & 0xff;
  return f;
}

export function icmpEcho(dstMac: Uint8Array, srcMac: Uint8Array, src: Uint8Array, dst: Uint8Array, id: number, seq: number, data: Uint8Array): Uint8Array {
  const f = new Uint8Array(42 + data.length);
  ethernet(f, dstMac, srcMac, ETH_P_IP);
  ipv4(f, 1, src, dst, 8 + data.length, seq);
  f.set([8, 0, 0, 0, id >> 8, id & 0xff, seq >> 8, seq & 0xff], 34);
  f.set(data, 42);
  const c = inetChecksum(f, 34, f.length);
  f[36] = c >> 8;
  f[37] = c & 0xff;
  return f;
}

export interface Ipv4 {
  proto: number;
  src: string;
  dst: string;
  headerOk: boolean;
  /** Offset of the IP payload in the frame, and its length. */
  offset: number;
  length: number;
}

export function parseIpv4(f: Uint8Array): Ipv4 | undefined {
  if (f.length < 34 || ((f[12]! << 8) | f[13]!) !== ETH_P_IP || f[14]! >> 4 !== 4) return undefined;
  const ihl = (f[14]! & 0xf) * 4;
  const total = (f[16]! << 8) | f[17]!;
  return {
    proto: f[23]!,
    src: [...f.subarray(26, 30)].join('.'),
    dst: [...f.subarray(30, 34)].join('.'),
    headerOk: inetChecksum(f, 14, 14 + ihl) === 0,
    offset: 14 + ihl,
    length: total - ihl,
  };
}
