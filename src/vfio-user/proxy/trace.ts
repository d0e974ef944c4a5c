/**
 * The proxy's trace: one JSON object per line, each with a timestamp (`t`, ms since the Unix
 * epoch with microsecond digits) and an event name (`ev`). Written synchronously so a crash of
 * the driver (or of the proxy) loses nothing already done. `formatTrace` pretty-prints a file.
 */
import * as fs from 'node:fs';

export type TraceEvent =
  | { ev: 'connect' | 'disconnect'; reason?: string }
  | { ev: 'read' | 'write'; region: number; offset: number; size: number; data: string }
  | { ev: 'dma-map'; iova: number; size: number; read: boolean; write: boolean; fd: boolean; error?: string }
  | { ev: 'dma-unmap'; iova: number; size: number; all?: boolean; error?: string }
  | { ev: 'irq'; index: number; vector: number; count: number }
  | { ev: 'set-irqs'; index: number; start: number; count: number; flags: number; fds: number; error?: string }
  | { ev: 'reset'; error?: string }
  | { ev: 'stop-dma'; note: string };

export class TraceWriter {
  private readonly fd: number;

  constructor(readonly path: string) {
    this.fd = fs.openSync(path, 'a');
  }

  write(event: TraceEvent): void {
    const t = Math.round((performance.timeOrigin + performance.now()) * 1000) / 1000;
    fs.writeSync(this.fd, JSON.stringify({ t, ...event }) + '\n');
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

const REGION_NAMES: Record<number, string> = { 6: 'rom', 7: 'config', 8: 'vga' };
const IRQ_NAMES = ['intx', 'msi', 'msix', 'err', 'req'];

function regionName(index: number): string {
  return REGION_NAMES[index] ?? `bar${index}`;
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/** Little-endian hex bytes as the value they hold, for accesses of 1, 2, 4 or 8 bytes. */
function value(data: string, size: number): string {
  if (![1, 2, 4, 8].includes(size) || data.length !== size * 2) return data.length > 64 ? `${data.slice(0, 64)}...` : data;
  let out = '';
  for (let i = size - 1; i >= 0; i--) out += data.slice(2 * i, 2 * i + 2);
  return `0x${out}`;
}

/** One line of a trace file, readable. */
export function formatTraceLine(line: string, start: number): string {
  let e: Record<string, any>;
  try {
    e = JSON.parse(line);
  } catch {
    return `?? ${line}`;
  }
  const at = `${(((e.t as number) - start) / 1000).toFixed(6).padStart(12)}s`;
  const err = e.error ? `  -> ${e.error}` : '';
  switch (e.ev) {
    case 'read':
    case 'write':
      return `${at}  ${regionName(e.region).padEnd(6)} ${`${e.ev}${e.size * 8}`.padEnd(8)} [${hex(e.offset)}] ${e.ev === 'read' ? '=' : '<-'} ${value(e.data, e.size)}`;
    case 'dma-map':
      return `${at}  dma map   iova ${hex(e.iova)} +${hex(e.size)} ${e.read ? 'r' : '-'}${e.write ? 'w' : '-'}${e.fd ? '' : ' (no fd)'}${err}`;
    case 'dma-unmap':
      return `${at}  dma unmap ${e.all ? 'all' : `iova ${hex(e.iova)} +${hex(e.size)}`}${err}`;
    case 'irq':
      return `${at}  irq       ${IRQ_NAMES[e.index] ?? e.index}[${e.vector}] x${e.count}`;
    case 'set-irqs':
      return `${at}  set-irqs  ${IRQ_NAMES[e.index] ?? e.index} [${e.start}, +${e.count}) flags ${hex(e.flags)} fds ${e.fds}${err}`;
    case 'reset':
      return `${at}  reset${err}`;
    case 'stop-dma':
      return `${at}  stop-dma  ${e.note}`;
    default:
      return `${at}  ${e.ev}${e.reason ? ` (${e.reason})` : ''}`;
  }
}

export function formatTrace(text: string): string[] {
  const lines = text.split('\n').filter((l) => l.trim().length > 0);
  let start = 0;
  try {
    start = JSON.parse(lines[0] ?? '{}').t ?? 0;
  } catch {
    // an unparsable first line: times are absolute then
  }
  return lines.map((l) => formatTraceLine(l, start));
}
