// A writer for the cpio "newc" format the kernel unpacks as its initramfs.
//
// Written here rather than driving GNU cpio so that the archive can carry root ownership and
// device nodes (/dev/console must exist before init runs) without the builder being root.

import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';

export type CpioEntry =
  | { kind: 'dir'; name: string; mode?: number }
  | { kind: 'file'; name: string; mode?: number; from: string }
  | { kind: 'data'; name: string; mode?: number; data: Buffer | string }
  | { kind: 'symlink'; name: string; target: string }
  | { kind: 'chardev'; name: string; mode?: number; major: number; minor: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function header(ino: number, mode: number, size: number, name: string, rmaj = 0, rmin = 0): Buffer {
  const nameBytes = Buffer.byteLength(name) + 1;
  const hex = (n: number) => n.toString(16).padStart(8, '0');
  // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
  const h =
    '070701' + hex(ino) + hex(mode) + hex(0) + hex(0) + hex(1) + hex(0) + hex(size) +
    hex(0) + hex(0) + hex(rmaj) + hex(rmin) + hex(nameBytes) + hex(0);
  const head = Buffer.concat([Buffer.from(h, 'ascii'), Buffer.from(name + '\0')]);
  return Buffer.concat([head, pad(head.length)]);
}

function pad(len: number): Buffer {
  return Buffer.alloc((4 - (len % 4)) % 4);
}

/** Yields the archive's bytes entry by entry; file contents are streamed, not loaded whole. */
export async function* cpioStream(entries: CpioEntry[]): AsyncGenerator<Buffer> {
  let ino = 1;
  for (const e of entries) {
    const name = e.name.replace(/^\/+/, '');
    switch (e.kind) {
      case 'dir':
        yield header(ino++, S_IFDIR | (e.mode ?? 0o755), 0, name);
        break;
      case 'symlink': {
        const data = Buffer.from(e.target);
        yield header(ino++, S_IFLNK | 0o777, data.length, name);
        yield data;
        yield pad(data.length);
        break;
      }
      case 'chardev':
        yield header(ino++, S_IFCHR | (e.mode ?? 0o600), 0, name, e.major, e.minor);
        break;
      case 'data': {
        const data = Buffer.isBuffer(e.data) ? e.data : Buffer.from(e.data);
        yield header(ino++, S_IFREG | (e.mode ?? 0o644), data.length, name);
        yield data;
        yield pad(data.length);
        break;
      }
      case 'file': {
        const st = await stat(e.from);
        yield header(ino++, S_IFREG | (e.mode ?? st.mode & 0o7777), st.size, name);
        let seen = 0;
        for await (const chunk of createReadStream(e.from, { highWaterMark: 1 << 20 })) {
          seen += (chunk as Buffer).length;
          yield chunk as Buffer;
        }
        if (seen !== st.size) throw new Error(`cpio: ${e.from} changed size while being archived`);
        yield pad(st.size);
        break;
      }
    }
  }
  const trailer = header(ino, 0, 0, 'TRAILER!!!');
  yield trailer;
}
