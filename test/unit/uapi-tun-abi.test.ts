import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, it } from 'node:test';

import { TUN_ABI, ifreq, ifreqName, IFNAMSIZ } from '../../src/uapi/tun';

// dist/test/unit -> repository root
const fixture = resolve(__dirname, '../../../test/fixtures/abi/tun-abi.c');

type Section = Record<string, number>;

function compileAndRun(): Record<string, Section> {
  const dir = mkdtempSync(join(tmpdir(), 'userpci-tun-abi-'));
  try {
    const program = join(dir, 'tun-abi');
    execFileSync('cc', ['-std=gnu11', '-Wall', '-Wextra', '-o', program, fixture], { stdio: ['ignore', 'pipe', 'pipe'] });
    return JSON.parse(execFileSync(program, { encoding: 'utf8' })) as Record<string, Section>;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('TAP ABI against the C compiler and <linux/if_tun.h>, <net/if.h>, <linux/sockios.h>', () => {
  const fromC = compileAndRun();
  for (const section of ['constants', 'sizes', 'offsets'] as const) {
    it(`${section} match`, () => {
      const c = fromC[section];
      assert.ok(c, `no "${section}" section from the C program`);
      assert.deepEqual(Object.keys(c).sort(), Object.keys(TUN_ABI[section]).sort());
      for (const [k, v] of Object.entries(TUN_ABI[section])) assert.equal(v, c[k], k);
    });
  }
  it('ifreq names: written NUL-terminated, cut to IFNAMSIZ - 1 bytes, read back', () => {
    assert.equal(ifreqName(ifreq('utap0')), 'utap0');
    assert.equal(ifreqName(ifreq('')), '');
    const long = ifreq('a'.repeat(40));
    assert.equal(ifreqName(long), 'a'.repeat(IFNAMSIZ - 1));
    assert.equal(long[IFNAMSIZ - 1], 0);
  });
});
