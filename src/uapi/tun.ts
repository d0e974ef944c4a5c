/**
 * The parts of <linux/if_tun.h>, <linux/if.h> and <linux/sockios.h> a TAP interface needs:
 * TUNSETIFF with a struct ifreq (name, flags), the interface's MAC (SIOCSIFHWADDR, which the tun
 * file answers itself) and its carrier (TUNSETCARRIER). Checked against the C compiler by
 * test/unit/uapi-tun-abi.test.ts (TUN_ABI keys are the C names).
 */
import { _IOW } from './ioctl';

export const TUN_DEVICE = '/dev/net/tun';
export const IFNAMSIZ = 16;
export const IFF_TAP = 0x0002;
export const IFF_NO_PI = 0x1000;
export const TUNSETIFF = _IOW('T', 202, 4);
export const TUNSETCARRIER = _IOW('T', 226, 4);
export const SIOCSIFHWADDR = 0x8924;
export const ARPHRD_ETHER = 1;

/** struct ifreq: the name, then a union (flags: short; hwaddr: struct sockaddr). */
export const IFREQ_SIZE = 40;
export const IFREQ = { ifr_name: 0, ifr_flags: 16, ifr_hwaddr: 16 } as const;
/** struct sockaddr: sa_family, then the address bytes. */
export const SOCKADDR = { sa_family: 0, sa_data: 2 } as const;

/** Every entry above, under its C name, for the ABI test. */
export const TUN_ABI = {
  constants: { IFNAMSIZ, IFF_TAP, IFF_NO_PI, TUNSETIFF, TUNSETCARRIER, SIOCSIFHWADDR, ARPHRD_ETHER },
  sizes: { ifreq: IFREQ_SIZE },
  offsets: { 'ifreq.ifr_name': IFREQ.ifr_name, 'ifreq.ifr_flags': IFREQ.ifr_flags, 'ifreq.ifr_hwaddr': IFREQ.ifr_hwaddr, 'sockaddr.sa_family': SOCKADDR.sa_family, 'sockaddr.sa_data': SOCKADDR.sa_data },
} as const;

/** A struct ifreq naming `name` (at most IFNAMSIZ - 1 bytes; empty: the kernel picks tapN). */
export function ifreq(name: string): Uint8Array {
  const b = new Uint8Array(IFREQ_SIZE);
  const bytes = Buffer.from(name, 'utf8');
  b.set(bytes.subarray(0, IFNAMSIZ - 1), IFREQ.ifr_name);
  return b;
}

/** The interface name a struct ifreq holds (the kernel writes the one it chose back). */
export function ifreqName(b: Uint8Array): string {
  const end = b.indexOf(0, IFREQ.ifr_name);
  return Buffer.from(b.subarray(IFREQ.ifr_name, end < 0 || end > IFNAMSIZ ? IFNAMSIZ : end)).toString('utf8');
}
