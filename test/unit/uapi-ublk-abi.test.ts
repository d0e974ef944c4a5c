import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, it } from 'node:test';

import { IO_URING_ABI } from '../../src/uapi/io-uring';
import { UBLK_ABI, ublkUserCopyOffset } from '../../src/uapi/ublk';

// dist/test/unit -> repository root
const fixture = resolve(__dirname, '../../../test/fixtures/abi/ublk-abi.c');

/**
 * ublk_cmd.h of the newest 6.12 headers package installed (.ci/install-deps.sh installs
 * linux-headers-6.12.*-common): Debian 12's linux-libc-dev (6.1) lacks the UBLK_U_* commands.
 */
function ublkHeader(): string {
  const dirs = readdirSync('/usr/src')
    .filter((d) => /^linux-headers-6\.12\.\d+.*-common$/.test(d))
    .sort((a, b) => Number(/6\.12\.(\d+)/.exec(a)![1]) - Number(/6\.12\.(\d+)/.exec(b)![1]));
  const header = dirs.length > 0 ? join('/usr/src', dirs[dirs.length - 1]!, 'include/uapi/linux/ublk_cmd.h') : '';
  assert.ok(header && existsSync(header), 'no /usr/src/linux-headers-6.12.*-common/include/uapi/linux/ublk_cmd.h: run .ci/install-deps.sh');
  return header;
}

type Section = Record<string, number>;

function compileAndRun(): Record<string, Section> {
  const dir = mkdtempSync(join(tmpdir(), 'userpci-ublk-abi-'));
  try {
    const program = join(dir, 'ublk-abi');
    execFileSync('cc', ['-std=gnu11', '-Wall', '-Wextra', `-DUBLK_CMD_H="${ublkHeader()}"`, '-o', program, fixture], { stdio: ['ignore', 'pipe', 'pipe'] });
    return JSON.parse(execFileSync(program, { encoding: 'utf8' })) as Record<string, Section>;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function assertSameSection(name: string, fromC: Section | undefined, fromTs: Readonly<Section>): void {
  assert.ok(fromC, `C program printed no "${name}" section`);
  assert.deepEqual(Object.keys(fromTs).filter((k) => !(k in fromC)), [], `${name}: entries in the TS table that the C program does not check`);
  assert.deepEqual(Object.keys(fromC).filter((k) => !(k in fromTs)), [], `${name}: entries the C program prints that the TS table lacks`);
  for (const key of Object.keys(fromTs)) assert.equal(fromTs[key], fromC[key], `${name}: ${key}`);
}

describe('ublk and io_uring ABI against the C compiler, ublk_cmd.h (6.12) and linux/io_uring.h', () => {
  const fromC = compileAndRun();
  for (const section of ['ioctls', 'constants', 'sizes', 'offsets'] as const) {
    it(`ublk ${section} match`, () => assertSameSection(`ublk.${section}`, fromC[`ublk.${section}`], UBLK_ABI[section]));
  }
  for (const section of ['constants', 'sizes', 'offsets'] as const) {
    it(`io_uring ${section} match`, () => assertSameSection(`io_uring.${section}`, fromC[`io_uring.${section}`], IO_URING_ABI[section]));
  }
  it('prints nothing the test does not look at', () => {
    assert.deepEqual(Object.keys(fromC).sort(), [
      'io_uring.constants', 'io_uring.offsets', 'io_uring.sizes', 'ublk.constants', 'ublk.ioctls', 'ublk.offsets', 'ublk.sizes',
    ]);
  });
  it('user-copy offsets: queue and tag in their bit fields above the 2 GiB base', () => {
    assert.equal(ublkUserCopyOffset(0, 0), 0x80000000);
    assert.equal(ublkUserCopyOffset(0, 1), 0x80000000 + 2 ** 25);
    assert.equal(ublkUserCopyOffset(3, 5), 0x80000000 + 3 * 2 ** 41 + 5 * 2 ** 25);
  });
});
