/**
 * Is an MSI ever lost? The edu model over vfio-user (our own server, on a thread of this process),
 * driven as a script would: wait for an interrupt, acknowledge it, then listen with
 * once('interrupt') and start another operation that interrupts. Each sequence raises exactly two
 * MSIs, so the vector's totals say whether any went missing or came twice.
 */
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { openDevice } from '../../src/device/open';
import { EduDriver } from '../../src/drivers/edu/edu-driver';
import * as R from '../../src/drivers/edu/registers';
import { serveEduForSuite } from '../support/edu-server';

const SEQUENCES = 600;
/** 'raise-unacked': the second raise comes while the first status bit is still set (edu.c notifies on every raise). */
type Operation = 'raise' | 'raise-unacked' | 'factorial' | 'dma';

describe('MSI over vfio-user edu: wait, acknowledge, then listen and interrupt again', () => {
  const socketPath = serveEduForSuite('userpci-msi-seq-');

  it('an earlier client (as `userpci demo`) leaves nothing that eats a later one\'s interrupts', { timeout: 60_000 }, async () => {
    await using device = await openDevice(socketPath, { dmaMask: R.EDU_DEFAULT_DMA_MASK });
    const edu = new EduDriver(device);
    await edu.ready();
    const msi = edu.useInterrupts('msi')!;
    assert.equal(await edu.factorial(10), 3628800);
    await edu.copyToDevice(new Uint8Array(64).fill(7), 0);
    // Leave a completion bit, the factorial interrupt enable and a DMA with its interrupt behind.
    edu.regs.write32(R.REG_STATUS, R.STATUS_IRQ_ON_FACTORIAL);
    edu.raiseInterrupt(0x10);
    edu.startDma('to-device', 0, 0, 16, true);
    // factorial() and dma() may end on the status register before their MSI is read: that MSI
    // is not lost, it comes in after (into `pending` here, nobody listening).
    while (msi.total < 2) await msi.wait();
  });

  for (const operation of ['raise', 'raise-unacked', 'factorial', 'dma'] as Operation[]) {
    it(`${SEQUENCES} sequences, the second interrupt by ${operation}: every listener fires, no MSI lost or doubled`, { timeout: 180_000 }, async () => {
      await using device = await openDevice(socketPath, { dmaMask: R.EDU_DEFAULT_DMA_MASK });
      const edu = new EduDriver(device);
      await edu.ready();
      const msi = edu.useInterrupts('msi')!;
      const staging = device.allocDma(4096);
      let fired = 0;
      for (let i = 0; i < SEQUENCES; i++) {
        edu.raiseInterrupt(R.IRQ_FACTORIAL);
        const taken = await msi.wait();
        assert.equal(taken, 1, `sequence ${i}: the wait took ${taken} interrupts`);
        if (operation !== 'raise-unacked') assert.equal(edu.acknowledgeInterrupt(), R.IRQ_FACTORIAL, `sequence ${i}: interrupt status`);
        const heard = once(msi, 'interrupt');
        if (operation === 'raise' || operation === 'raise-unacked') edu.raiseInterrupt(R.IRQ_DMA);
        else if (operation === 'factorial') assert.equal(await edu.factorial(5), 120);
        else await edu.dma('to-device', staging.iova, 0, 64);
        const [count] = (await heard) as [number];
        assert.equal(count, 1, `sequence ${i}: the listener saw ${count}`);
        fired++;
        if (operation === 'raise') assert.equal(edu.acknowledgeInterrupt(), R.IRQ_DMA, `sequence ${i}: interrupt status after the raise`);
        if (operation === 'raise-unacked') assert.equal(edu.acknowledgeInterrupt(), R.IRQ_FACTORIAL | R.IRQ_DMA, `sequence ${i}: both bits`);
      }
      assert.equal(fired, SEQUENCES);
      assert.equal(msi.total, 2 * SEQUENCES, 'interrupts seen: two per sequence');
      assert.equal(msi.pending, 0, 'nothing left over');
      staging.free();
    });
  }

  // The symptom seen from a script: its listener "never fired". A vector keeps the process alive
  // only while a wait() is pending or after ref(): a listener alone does not, so a script whose
  // last handle is that listener ends before the interrupt is read. Documented, pinned here.
  it('a script whose only handle is an interrupt listener exits before it fires; with ref() it fires', { timeout: 120_000 }, () => {
    const script = (ref: boolean) => `
      const { openDevice } = require(${JSON.stringify(require.resolve('../../src/device/open'))});
      const { EduDriver } = require(${JSON.stringify(require.resolve('../../src/drivers/edu/edu-driver'))});
      (async () => {
        const device = await openDevice(${JSON.stringify(socketPath)}, { dmaMask: 0xfffffff });
        const edu = new EduDriver(device);
        await edu.ready();
        const msi = edu.useInterrupts('msi');
        ${ref ? 'msi.ref();' : ''}
        edu.raiseInterrupt(1);
        await msi.wait();
        edu.acknowledgeInterrupt();
        msi.once('interrupt', (n) => { console.log('fired', n); device.close(); });
        edu.raiseInterrupt(1);
        console.log('listening');
      })();`;
    const bare = spawnSync(process.execPath, ['-e', script(false)], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(bare.status, 0, bare.stderr);
    assert.equal(bare.stdout, 'listening\n', 'the process ended with the listener unfired (the eventfd was never read)');
    const referenced = spawnSync(process.execPath, ['-e', script(true)], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(referenced.status, 0, referenced.stderr);
    assert.equal(referenced.stdout, 'listening\nfired 1\n');
  });
});
