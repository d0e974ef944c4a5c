/**
 * `userpci proxy ADDRESS --socket PATH [--trace FILE]`: lend a real PCI function, held through
 * kernel VFIO, to a driver in another process over vfio-user. `userpci trace FILE` prints a trace.
 */
import * as fs from 'node:fs';
import { UserpciError, toErrorCode } from '../../errors.js';
import { UsageError, parseCommandLine, print } from '../format.js';
import { stopSignal } from '../stop-signal.js';
import type { CliCommand } from '../main.js';
import { ProxyHost } from '../../vfio-user/proxy/proxy-host.js';
import { TraceWriter, formatTrace } from '../../vfio-user/proxy/trace.js';
import { serveHost } from '../../vfio-user/server/server.js';

const USAGE = `userpci proxy ADDRESS --socket PATH [--trace FILE] [--verbose] [--json]

Hold the PCI function ADDRESS (bound to vfio-pci) through kernel VFIO and serve it over vfio-user
on PATH, one client at a time, until SIGINT or SIGTERM. A driver runs against it with
openDevice(PATH) in another process, where it can be debugged, traced and allowed to crash.

BARs VFIO lets us mmap are mapped by the client itself; DMA maps with an fd (allocDma memory)
go into the real IOMMU at the client's IOVA (maps without fd are refused); interrupts go from
VFIO straight to the client's eventfds; reset passes through. When a client dies, bus mastering
is turned off, every map leaves the IOMMU, and the next client is served.

  --trace FILE   append every config/BAR access, DMA map/unmap, interrupt and reset to FILE as
                 JSON lines (BARs are then never mapped by the client, so every access is seen);
                 read it with \`userpci trace FILE\`
  --verbose      log connections to stderr
  --json         report on stdout as JSON lines: {"event":"listening","device","socket","trace","pid"}
                 when ready, {"event":"stopped"} at the end; a failure is {"error":{"code","message"}}`;

export const proxyCommand: CliCommand = {
  name: 'proxy',
  summary: 'serve a real PCI function (through VFIO) over vfio-user to a driver in another process',
  usage: USAGE,
  async run(args: string[]): Promise<number> {
    const { values, positionals } = parseCommandLine(
      args,
      { socket: { type: 'string' }, trace: { type: 'string' }, verbose: { type: 'boolean', default: false }, json: { type: 'boolean', default: false } },
      ['ADDRESS'],
    );
    if (!values.socket) throw new UsageError('--socket PATH is required');
    const log = values.verbose ? (message: string) => process.stderr.write(`userpci proxy: ${message}\n`) : undefined;
    const trace = values.trace ? new TraceWriter(values.trace) : undefined;
    const host = ProxyHost.open(positionals[0]!, { trace, log: (m) => process.stderr.write(`userpci proxy: ${m}\n`) });
    const server = serveHost(host, { socketPath: values.socket, log });
    const stop = stopSignal();
    if (values.json) print(JSON.stringify({ event: 'listening', device: host.backend.name, socket: values.socket, trace: trace?.path ?? null, pid: process.pid }));
    else process.stderr.write(`userpci proxy: ${host.backend.name} listening on ${values.socket}${trace ? ` (tracing to ${trace.path})` : ''}\n`);
    await stop;
    await server.close();
    if (values.json) print(JSON.stringify({ event: 'stopped' }));
    return 0;
  },
};

export const traceCommand: CliCommand = {
  name: 'trace',
  summary: 'pretty-print a trace written by `userpci proxy --trace`',
  usage:
    'userpci trace FILE [--json]\n\nPrint a proxy trace: time since the first event, then each access, DMA map, interrupt or reset.\n' +
    'With --json, the events as one JSON array (the file holds one JSON object a line).',
  async run(args: string[]): Promise<number> {
    const { values, positionals } = parseCommandLine(args, { json: { type: 'boolean', default: false } }, ['FILE']);
    const text = readTrace(positionals[0]!);
    if (values.json) print(JSON.stringify(parseTrace(text, positionals[0]!)));
    else for (const line of formatTrace(text)) process.stdout.write(`${line}\n`);
    return 0;
  },
};

function readTrace(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (error) {
    throw new UserpciError(toErrorCode((error as NodeJS.ErrnoException).code), `cannot read ${file}: ${(error as Error).message}`, { cause: error });
  }
}

function parseTrace(text: string, file: string): unknown[] {
  return text
    .split('\n')
    .filter((line) => line.trim().length > 0)
    .map((line, index) => {
      try {
        return JSON.parse(line) as unknown;
      } catch {
        throw new UserpciError('EINVAL', `${file} line ${index + 1} is not JSON: not a proxy trace`);
      }
    });
}
