/**
 * Child process for the virtio-net kill and unplug tests: opens the NIC and sends bursts of
 * broadcast frames as fast as it can, reporting JSON lines ('sending' once under way). In
 * 'unplug' mode it reports how the removal reached it and exits 0; in 'blast' mode it is killed.
 */
import { VirtioNet } from '../../src/drivers/virtio-net/net-device';
import { PacketBatch } from '../../src/drivers/virtio-net/packet-batch';

function say(event: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

async function main(): Promise<void> {
  const [address, mode] = process.argv.slice(2);
  const net = await VirtioNet.open(address!);
  let removed = false;
  net.on('removed', () => (removed = true));
  const batch = new PacketBatch(32);
  const rx = new PacketBatch(32);
  const frame = new Uint8Array(1000).fill(0xab);
  frame.fill(0xff, 0, 6); // broadcast, from 02:00:00:00:00:01, ethertype 0x88b5 (local experimental)
  frame.set([2, 0, 0, 0, 0, 1, 0x88, 0xb5], 6);
  for (let i = 0; i < batch.capacity; i++) batch.add(frame);
  let sent = 0;
  let announced = false;
  for (;;) {
    try {
      sent += net.txBurst(0, batch);
      net.rxBurst(0, rx);
    } catch (err) {
      say({ event: 'stopped', code: (err as { code?: string }).code, removed, sent, mode });
      break;
    }
    if (!announced && sent > 0) {
      say({ event: 'sending' });
      announced = true;
    }
    await new Promise((r) => setImmediate(r));
  }
}

main().catch((err: Error) => {
  say({ event: 'error', message: err.stack ?? err.message });
  process.exitCode = 1;
});
