/** The proxy's trace format: JSON lines written by TraceWriter, printed by formatTrace. */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { TraceWriter, formatTrace } from '../../src/vfio-user/proxy/trace';

test('trace: each event a JSON line with a timestamp; the printer shows accesses as values', () => {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'userpci-trace-')), 't.jsonl');
  const w = new TraceWriter(file);
  w.write({ ev: 'connect' });
  w.write({ ev: 'read', region: 0, offset: 0, size: 4, data: 'ed000001' });
  w.write({ ev: 'write', region: 7, offset: 4, size: 2, data: '0701' });
  w.write({ ev: 'dma-map', iova: 0x1000, size: 0x1000, read: true, write: false, fd: true });
  w.write({ ev: 'dma-map', iova: 0x2000, size: 0x1000, read: true, write: true, fd: false, error: 'ENOTSUP' });
  w.write({ ev: 'irq', index: 2, vector: 3, count: 1 });
  w.close();
  const lines = fs.readFileSync(file, 'utf8').trim().split('\n');
  assert.equal(lines.length, 6);
  const times = lines.map((l) => JSON.parse(l).t as number);
  assert.ok(times.every((t, i) => i === 0 || t >= times[i - 1]!), 'timestamps never go back');
  const printed = formatTrace(lines.join('\n'));
  assert.match(printed[1]!, /bar0\s+read32\s+\[0x0\] = 0x010000ed/);
  assert.match(printed[2]!, /config\s+write16\s+\[0x4\] <- 0x0107/);
  assert.match(printed[3]!, /dma map\s+iova 0x1000 \+0x1000 r-$/);
  assert.match(printed[4]!, /\(no fd\)\s+-> ENOTSUP/);
  assert.match(printed[5]!, /irq\s+msix\[3\] x1/);
});
