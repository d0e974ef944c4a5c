/**
 * Child process for the removal test: opens edu with DMA mapped and MSI armed, waits on the
 * interrupt, and reports (as JSON lines) what happens when the kernel takes the device away.
 */
import { openDevice } from '../../src/device/open';
import { EduDriver } from '../../src/drivers/edu/edu-driver';

function say(event: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

async function main(): Promise<void> {
  const device = await openDevice(process.argv[2]!);
  const edu = new EduDriver(device);
  const buffer = device.allocDma(1 << 20);
  const view = new Uint32Array(buffer.buffer);
  const bar = edu.regs;
  const vector = edu.useInterrupts('msi')!;
  device.on('removed', () => say({ event: 'removed' }));
  say({ event: 'ready' });
  const started = Date.now();
  try {
    await vector.wait({ timeoutMs: 60_000 });
    say({ event: 'interrupt' });
  } catch (err) {
    const e = err as { code?: string; message: string };
    say({ event: 'wait-rejected', code: e.code, message: e.message, afterMs: Date.now() - started });
  }
  // Every later use is a typed error, and no access can fault.
  const after: Record<string, string | undefined> = {};
  for (const [name, fn] of Object.entries({
    bar: () => bar.read32(0),
    alloc: () => device.allocDma(4096),
    irq: () => device.enableInterrupts('msi'),
  })) {
    try {
      fn();
      after[name] = 'no error';
    } catch (err) {
      after[name] = (err as { code?: string }).code;
    }
  }
  say({ event: 'after', ...after, dmaViewLength: view.length, removed: device.wasRemoved });
  await new Promise((r) => setTimeout(r, 200));
  say({ event: 'still-running' });
}

main().catch((err) => {
  say({ event: 'crash', message: String(err?.stack ?? err) });
  process.exit(1);
});
