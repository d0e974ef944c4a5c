// Running a table of guest runs one after another, with a summary; shared by run-suites and run.

import { ensureGuestAssets, GuestAssets, GuestKernel } from './assets';
import { GuestRun, GuestTestResult, runGuestTests } from './index';
import { fmtMs } from './util';
import { guestsAvailable, killAllGuests } from './vm';

/** Kills our QEMUs when the user interrupts, so no guest outlives the harness. */
export function installSignalHandlers(): void {
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      killAllGuests();
      process.exit(130);
    });
  }
}

function describeCounts(r: GuestTestResult): string {
  if (!r.counts) return '-';
  const c = r.counts;
  const extra = [c.skipped && `${c.skipped} skipped`, c.todo && `${c.todo} todo`, c.cancelled && `${c.cancelled} cancelled`].filter(Boolean);
  return `${c.pass}/${c.tests} passed${c.fail ? `, ${c.fail} failed` : ''}${extra.length ? `, ${extra.join(', ')}` : ''}`;
}

/**
 * Runs each guest run in turn, on its own kernel (run.kernel); resolves true when all passed.
 * Prints progress and a summary. opts.assets serves runs of its line.
 */
export async function runSuites(runs: GuestRun[], opts: { assets?: GuestAssets } = {}): Promise<boolean> {
  if (process.env.USERPCI_SKIP_GUEST === '1') {
    console.log('guest tests skipped (USERPCI_SKIP_GUEST=1)');
    return true;
  }
  if (!guestsAvailable()) {
    console.error('guest tests need qemu-system-x86_64: run .ci/install-guest-deps.sh (or set USERPCI_SKIP_GUEST=1)');
    return false;
  }
  const t0 = Date.now();
  const byLine = new Map<GuestKernel, GuestAssets>();
  if (opts.assets) byLine.set(opts.assets.line, opts.assets);
  const assetsFor = async (line: GuestKernel): Promise<GuestAssets> => {
    let assets = byLine.get(line);
    if (!assets) {
      assets = await ensureGuestAssets({ kernel: line });
      byLine.set(line, assets);
      console.log(
        `guest assets ${assets.key}: ${assets.kernelPackage}, node ${process.version}` +
          (assets.built ? ` (built in ${fmtMs(assets.buildMs)})` : ' (cached)'),
      );
    }
    return assets;
  };
  const results: GuestTestResult[] = [];
  for (const run of runs) {
    console.log(`\n=== guest run "${run.name}"${run.kernel && run.kernel !== 'default' ? ` (kernel ${run.kernel})` : ''}: ${run.qemuDevices.join(' ') || '(no devices)'}; ${run.tests.join(' ')}`);
    let r: GuestTestResult;
    try {
      r = await runGuestTests(run, { assets: await assetsFor(run.kernel ?? 'default') });
    } catch (e) {
      // A host-side error (setup, QEMU spawn) fails this run, not the whole table.
      r = {
        name: run.name, ok: false, failure: `host error: ${(e as Error).message}`, exitCode: null, counts: null,
        bootMs: null, totalMs: 0, consoleLog: '', consoleTail: [],
      };
    }
    results.push(r);
    if (r.ok) {
      console.log(`=== "${run.name}" passed (${describeCounts(r)}; boot ${r.bootMs === null ? '-' : fmtMs(r.bootMs)}, total ${fmtMs(r.totalMs)})`);
    } else {
      console.log(`=== "${run.name}" FAILED: ${r.failure}`);
      // Test failures are already in the streamed output; anything else needs the console's end.
      if (r.exitCode === null && r.consoleTail.length > 0) {
        console.log(`--- last ${r.consoleTail.length} console lines (full log: ${r.consoleLog}) ---`);
        for (const l of r.consoleTail) console.log(l);
        console.log('--- end of console ---');
      }
    }
  }
  console.log('\nguest runs:');
  const w = Math.max(...results.map((r) => r.name.length), 4);
  for (const r of results) {
    const boot = r.bootMs === null ? '-' : fmtMs(r.bootMs);
    console.log(`  ${r.ok ? 'ok  ' : 'FAIL'} ${r.name.padEnd(w)}  ${describeCounts(r).padEnd(24)} boot ${boot.padStart(6)}  total ${fmtMs(r.totalMs).padStart(6)}${r.ok ? '' : `  ${(r.failure ?? '').split('\n')[0]}`}`);
  }
  const failed = results.filter((r) => !r.ok).length;
  console.log(`${results.length - failed}/${results.length} guest runs passed in ${fmtMs(Date.now() - t0)}`);
  return failed === 0;
}
