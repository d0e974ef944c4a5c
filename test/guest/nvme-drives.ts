import * as fs from 'node:fs';
import * as path from 'node:path';

const SYS = '/sys/bus/pci/devices';

/** NVMe functions by the serial QEMU was given (read while the kernel driver holds them). */
export function nvmeBySerial(): Map<string, string> {
  const out = new Map<string, string>();
  for (const addr of fs.readdirSync(SYS).sort()) {
    if (fs.readFileSync(path.join(SYS, addr, 'class'), 'utf8').trim() !== '0x010802') continue;
    let serial = '';
    try {
      const ctrl = fs.readdirSync(path.join(SYS, addr, 'nvme'))[0]!;
      serial = fs.readFileSync(path.join(SYS, addr, 'nvme', ctrl, 'serial'), 'utf8').trim();
    } catch {
      serial = `unbound-${addr}`;
    }
    out.set(serial, addr);
  }
  return out;
}
