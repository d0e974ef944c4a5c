/**
 * DMA that can never land in the wrong place (issue 10), against the guest kernel's vfio-pci and
 * QEMU's edu behind the emulated Intel IOMMU. The shared suite (test/shared/dma-safety-suite.ts)
 * runs here and against the vfio-user model; the cases only VFIO has are here: hugepage memory,
 * a killed owner's DMA, and RLIMIT_MEMLOCK as the kernel charges it to a non-root user.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { openDevice } from '../../src/device/open';
import type { PciDevice } from '../../src/device/device';
import { EduDriver } from '../../src/drivers/edu/edu-driver';
import * as R from '../../src/drivers/edu/registers';
import { iommuGroupOf } from '../../src/pci/bind';
import { requireGuest, boundDevices } from './guest-env';
import { registerDmaSafetySuite } from '../shared/dma-safety-suite';

const HUGE = 2 << 20;
const KILL_ROUNDS = 3;
const NOBODY = 65534;
let edu0: string;

before(() => {
  requireGuest();
  [edu0] = boundDevices(R.EDU_VENDOR_ID, R.EDU_DEVICE_ID, 2) as [string];
  fs.writeFileSync('/proc/sys/vm/nr_hugepages', '4');
});

after(() => {
  fs.writeFileSync('/proc/sys/vm/nr_hugepages', '0');
});

registerDmaSafetySuite({
  label: 'VFIO, QEMU edu',
  open: (dmaMask) => openDevice(edu0, dmaMask === undefined ? {} : { dmaMask }),
  get target() { return edu0; },
  closeRounds: 6,
  extraKinds: [
    {
      name: 'hugepage DmaBuffer (2 MiB, at its own IOVA)', length: HUGE, coherent: true,
      make: (d, n) => {
        const b = d.allocDma(n, { hugePages: 'always' });
        return { view: Object.assign(new Uint8Array(b.buffer, 0, n), { dmaIova: b.iova }), dispose: () => b.free() };
      },
    },
    {
      name: 'view into a hugepage DmaBuffer, mapped again', length: HUGE - 8192,
      make: (d, n) => {
        const b = d.allocDma(HUGE, { hugePages: 'always' });
        return { view: new Uint8Array(b.buffer, 4096 + 7, n), dispose: () => b.free() };
      },
    },
  ],
});

/**
 * Spawns the in-flight child, waits for its transfer to start, kills it with SIGKILL, and opens
 * the device the moment the kernel has released it (EBUSY until then), so that the new owner is
 * in place while the killed owner's transfer (100 ms in QEMU's edu) may still be running.
 */
async function killMidTransferAndReopen(): Promise<{ oldIova: string; device: PciDevice }> {
  const child = spawn(process.execPath, [path.join(__dirname, 'dma-child.js'), 'inflight', edu0], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise<NodeJS.Signals | null>((r) => child.on('exit', (_c, signal) => r(signal)));
  const oldIova = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /started (0x[0-9a-f]+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.on('exit', (code) => reject(new Error(`in-flight child exited ${code} before starting: ${stderr}`)));
  });
  child.kill('SIGKILL');
  const guard = Date.now() + 60_000;
  for (;;) {
    try {
      const device = await openDevice(edu0, { dmaMask: R.EDU_DEFAULT_DMA_MASK });
      assert.equal(await exited, 'SIGKILL');
      return { oldIova, device };
    } catch (err) {
      if ((err as { code?: string }).code !== 'EBUSY' || Date.now() > guard) throw err;
      await new Promise((r) => setImmediate(r));
    }
  }
}

test(`kill -9 during a DMA, then a new owner at once: the DMA never lands in its memory (${KILL_ROUNDS} rounds)`, async () => {
  for (let round = 0; round < KILL_ROUNDS; round++) {
    const { oldIova, device } = await killMidTransferAndReopen();
    try {
      const victim = new Uint8Array(256 << 10);
      const m = device.mapDma(victim, 'bidirectional');
      const regs = device.bar(0);
      const guard = Date.now() + 30_000;
      while (regs.read32(R.REG_DMA_CMD) & R.DMA_CMD_START) {
        if (Date.now() > guard) throw new Error('the killed owner\'s DMA never ended');
        await new Promise((r) => setImmediate(r));
      }
      const hit = victim.findIndex((b) => b !== 0);
      assert.equal(hit, -1, `round ${round}: the killed owner's DMA (to ${oldIova}) landed in the new owner's buffer at IOVA 0x${(m.iova + hit).toString(16)}`);
      const edu = new EduDriver(device);
      await edu.dma('from-device', m.iova, 0, 64);
      assert.ok(victim.subarray(0, 64).every((b) => b === 0xd9), 'the new owner drives the device');
    } finally {
      device.close();
    }
  }
});

/**
 * The compiled library and the child, copied where a non-root user can read them (the checkout
 * may sit in a folder only root can enter), and the device's VFIO group handed to that user.
 */
function prepareNonRoot(): { script: string; restore: () => void } {
  const root = '/tmp/userpci-nobody';
  const repo = path.resolve(__dirname, '..', '..', '..');
  fs.rmSync(root, { recursive: true, force: true });
  fs.cpSync(path.join(repo, 'dist', 'src'), path.join(root, 'dist', 'src'), { recursive: true });
  fs.cpSync(path.join(repo, 'dist', 'test', 'guest'), path.join(root, 'dist', 'test', 'guest'), { recursive: true });
  fs.cpSync(path.join(repo, 'build', 'Release', 'userpci_native.node'), path.join(root, 'build', 'Release', 'userpci_native.node'));
  const chmod = (p: string) => {
    const st = fs.statSync(p);
    fs.chmodSync(p, st.isDirectory() ? 0o755 : 0o644 | (st.mode & 0o111 ? 0o111 : 0));
    if (st.isDirectory()) for (const e of fs.readdirSync(p)) chmod(path.join(p, e));
  };
  chmod(root);
  const group = `/dev/vfio/${iommuGroupOf(edu0)}`;
  fs.chownSync(group, NOBODY, NOBODY);
  return { script: path.join(root, 'dist', 'test', 'guest', 'dma-child.js'), restore: () => fs.chownSync(group, 0, 0) };
}

function runAsNobody(script: string, kib: number): Promise<Record<string, any>> {
  const child = spawn('/bin/sh', ['-c', `ulimit -l ${kib} && exec "$0" "$@"`, process.execPath, script, 'memlock', edu0, String(kib)], {
    uid: NOBODY, gid: NOBODY, cwd: '/tmp', stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  return new Promise((resolve, reject) => {
    child.on('exit', (code) => {
      if (code !== 0) reject(new Error(`memlock child (${kib} KiB) exited ${code}: ${err}`));
      else resolve(JSON.parse(out));
    });
  });
}

/** The three numbers an over-limit message must give: asked, already charged, the limit. */
function assertMemlockError(o: any, asked: number | number[], charged: number, limit: number, what: string): void {
  assert.equal(o.ok, false, `${what}: refused`);
  assert.equal(o.code, 'ENOMEM', `${what}: ${o.message}`);
  assert.equal(o.errno, -12, `${what}: errno is ENOMEM's, not -1 (${o.message})`);
  assert.doesNotMatch(o.message, /TypeError/);
  const pinned = Number(/pin (\d+) bytes/.exec(o.message)?.[1]);
  assert.ok((Array.isArray(asked) ? asked : [asked]).includes(pinned), `${what}, asked ${asked}: ${o.message}`);
  assert.equal(Number(/(\d+) bytes (?:are )?already charged/.exec(o.message)?.[1]), charged, `${what}, charged: ${o.message}`);
  assert.equal(Number(/limit is (\d+) bytes/.exec(o.message)?.[1]), limit, `${what}, limit: ${o.message}`);
}

test('RLIMIT_MEMLOCK as a non-root user: charged once, as the kernel does; over it, ENOMEM says asked, charged and why', async () => {
  const { script, restore } = prepareNonRoot();
  try {
    const zero = await runAsNobody(script, 0);
    assertMemlockError(zero.alloc4k, 4096, 0, 0, 'allocDma(4096) at limit 0');
    assertMemlockError(zero.map4k, [4096, 8192], 0, 0, 'mapDma(4096) at limit 0');

    const small = await runAsNobody(script, 64);
    assert.equal(small.alloc48k.ok, true, `48 KiB of DMA memory under a 64 KiB limit: ${small.alloc48k.message}`);
    assert.equal(small.map1m.ok, false, 'a never-written 1 MiB to-device map is charged, not slipped through as zero pages');
    assertMemlockError(small.map1m, [256 * 4096, 257 * 4096], 48 << 10, 64 << 10, 'mapDma(1 MiB) at 64 KiB');
    assert.equal(small.alloc16k.ok, true, `the last 16 KiB fit exactly: ${small.alloc16k.message}`);
    assertMemlockError(small.map1b, 4096, 64 << 10, 64 << 10, 'one more byte at 64 KiB');

    const mib = await runAsNobody(script, 1024);
    assert.equal(mib.alloc1m.ok, true, `1 MiB of DMA memory under a 1 MiB limit: ${mib.alloc1m.message}`);
    assertMemlockError(mib.map4k, [4096, 8192], 1 << 20, 1 << 20, 'a page more at 1 MiB');
    assert.equal(mib.map512kAfterFree.ok, true, `freeing returns the charge: ${mib.map512kAfterFree.message}`);
  } finally {
    restore();
  }
});
