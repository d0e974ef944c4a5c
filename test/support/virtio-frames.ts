/**
 * Frames a simulated virtio-net device writes into receive buffers, and the check of a receive
 * burst, shared by the split- and packed-ring unit tests: frame `seq` is 60-1514 bytes of a
 * pattern after a zeroed 12-byte virtio-net header.
 */
import * as assert from 'node:assert/strict';
import type { PacketBatch } from '../../src/drivers/virtio-net/packet-batch';

const HEADER = 12;

function frameLength(seq: number): number {
  return 60 + ((seq * 37) % 1455);
}

/** Writes frame `seq` with its header into `buffer`; returns the bytes written (the used length). */
export function writeFrame(buffer: Uint8Array, seq: number): number {
  const len = frameLength(seq);
  buffer.fill(0, 0, HEADER);
  for (let i = 0; i < len; i++) buffer[HEADER + i] = (seq + i) & 0xff;
  return HEADER + len;
}

/** Asserts that `batch` holds `n` frames, from `firstSeq` on, each with its length and end bytes intact. */
export function assertFrames(batch: PacketBatch, n: number, firstSeq: number): void {
  for (let k = 0; k < n; k++) {
    const seq = firstSeq + k;
    const len = frameLength(seq);
    assert.equal(batch.lengths[k], len);
    const o = batch.offset(k);
    if (batch.data[o] !== (seq & 0xff) || batch.data[o + len - 1] !== ((seq + len - 1) & 0xff)) assert.fail(`frame ${seq} corrupted`);
  }
}
