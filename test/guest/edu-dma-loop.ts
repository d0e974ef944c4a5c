/**
 * Child process for the kill -9 test: opens the edu device and runs DMA in both directions
 * forever, saying "running" once the first transfer completed.
 */
import { openDevice } from '../../src/device/open';
import { EduDriver } from '../../src/drivers/edu/edu-driver';

async function main(): Promise<void> {
  const device = await openDevice(process.argv[2]!, { dmaMask: 0xfffffff });
  const edu = new EduDriver(device);
  const buf = device.allocDma(4096);
  const bytes = new Uint8Array(buf.buffer);
  for (let i = 0; ; i++) {
    bytes.fill(i & 0xff);
    await edu.dma('to-device', buf.iova, 0, 4095);
    await edu.dma('from-device', buf.iova, 0, 4095);
    if (i === 0) process.stdout.write('running\n');
  }
}

main().catch((err) => {
  process.stderr.write(`${err.code ?? ''} ${err.message}\n`);
  process.exit(1);
});
