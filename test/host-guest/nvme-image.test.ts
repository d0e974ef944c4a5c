/**
 * HOST-side test (not run inside the guest): the bytes our driver writes in the guest are the
 * bytes that land in the drive's backing file on the host.
 *
 * It creates a fresh backing file, boots one guest with QEMU's nvme on it (MDTS 5: 128 KiB per
 * command, so the writes split), runs `userpci nvme verify --seed` there (random offsets and
 * lengths, read back and compared in the guest), and after the guest has exited compares the
 * whole file with the image the same seed implies, computed here. Unwritten areas must still be
 * zero, so a stray write anywhere is caught too.
 *
 *   node --test dist/test/host-guest   (npm run test:host-guest; part of npm test)
 *
 * Without qemu-system-x86_64 it fails, saying what to install (.ci/install-deps.sh does).
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { runInGuest, scratchPath, guestsAvailable } from '../../scripts/guest/index';
import { planWrites, applyPlan } from '../../src/drivers/nvme/workload';

const SIZE = 32 << 20;
const BLOCK = 512;
const SEED = 4242;
const WRITES = 40;
const MAX_BYTES = 1 << 20;

test('the backing file on the host holds exactly the bytes the driver wrote in the guest', { timeout: 10 * 60_000 }, async () => {
  assert.ok(guestsAvailable(), 'qemu-system-x86_64 is missing: run .ci/install-deps.sh');
  const image = await scratchPath('nvme-image-host.img');
  fs.rmSync(image, { force: true });
  fs.writeFileSync(image, '');
  fs.truncateSync(image, SIZE);
  const command = [
    'A=""',
    'for d in /sys/bus/pci/devices/*; do [ "$(cat $d/class)" = 0x010802 ] && A=$(basename $d); done',
    `node dist/src/cli/commands/nvme.js verify "$A" --bind --seed ${SEED} --writes ${WRITES} --max-bytes ${MAX_BYTES} --json`,
  ].join('\n');
  const lines: string[] = [];
  const r = await runInGuest({
    devices: ['-drive', `file=${image},if=none,id=img,format=raw`, '-device', 'nvme,drive=img,serial=userpci-img,mdts=5'],
    command,
    timeoutMs: 8 * 60_000,
    onConsole: (l) => lines.push(l),
  });
  assert.equal(r.exitCode, 0, `verify in the guest failed:\n${r.stdout}\n${lines.slice(-20).join('\n')}`);
  const report = JSON.parse(r.stdout) as { writes: number; mismatches: unknown[]; bytesWritten: number };
  assert.equal(report.writes, WRITES);
  assert.deepEqual(report.mismatches, [], 'the guest read back what it wrote');

  const plan = planWrites({ seed: SEED, count: WRITES, blocks: SIZE / BLOCK, blockSize: BLOCK, maxBytes: MAX_BYTES });
  assert.ok(plan.some((w) => w.length > 128 * 1024), 'some writes were split at MDTS');
  const expected = new Uint8Array(SIZE);
  applyPlan(expected, plan, BLOCK);
  const actual = fs.readFileSync(image);
  assert.equal(actual.length, SIZE);
  if (!actual.equals(expected)) {
    let i = 0;
    while (actual[i] === expected[i]) i++;
    assert.fail(`backing file differs from the plan first at byte ${i} (LBA ${Math.floor(i / BLOCK)}): 0x${actual[i]!.toString(16)} != 0x${expected[i]!.toString(16)}`);
  }
  console.log(`# ${report.writes} writes, ${(report.bytesWritten / 1048576).toFixed(1)} MiB, checked in the ${SIZE >> 20} MiB backing file on the host; guest boot ${r.bootMs} ms, total ${r.totalMs} ms`);
  fs.rmSync(image, { force: true });
});
