/**
 * `userpci proxy ADDRESS --socket PATH [--trace FILE]`: lend a real PCI function, held through
 * kernel VFIO, to a driver in another process over vfio-user. `userpci trace FILE` prints a trace.
 */
import * as fs from 'node:fs';
import { UsageError, parseCommandLine } from '../format.js';
import type { CliCommand } from '../main.js';
import { ProxyHost } from '../../vfio-user/proxy/proxy-host.js';
import { TraceWriter, formatTrace } from '../../vfio-user/proxy/trace.js';
import { serveHost } from '../../vfio-user/server/server.js';

const USAGE = `userpci proxy ADDRESS --socket PATH [--trace FILE] [--verbose]

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
  --verbose      log connections to stderr`;

export const proxyCommand: CliCommand = {
  name: 'proxy',
  summary: 'serve a real PCI function (through VFIO) over vfio-user to a driver in another process',
  usage: USAGE,
  async run(args: string[]): Promise<number> {
    const { values, positionals } = parseCommandLine(
      args,
      { socket: { type: 'string' }, trace: { type: 'string' }, verbose: { type: 'boolean', default: false } },
      ['ADDRESS'],
    );
    if (!values.socket) throw new UsageError('--socket PATH is required');
    const log = values.verbose ? (message: string) => process.stderr.write(`userpci proxy: ${message}\n`) : undefined;
    const trace = values.trace ? new TraceWriter(values.trace) : undefined;
    const host = ProxyHost.open(positionals[0]!, { trace, log: (m) => process.stderr.write(`userpci proxy: ${m}\n`) });
    const server = serveHost(host, { socketPath: values.socket, log });
    process.stderr.write(`userpci proxy: ${host.backend.name} listening on ${values.socket}${trace ? ` (tracing to ${trace.path})` : ''}\n`);
    await new Promise<void>((resolve) => {
      process.once('SIGINT', () => resolve());
      process.once('SIGTERM', () => resolve());
    });
    await server.close();
    return 0;
  },
};

export const traceCommand: CliCommand = {
  name: 'trace',
  summary: 'pretty-print a trace written by `userpci proxy --trace`',
  usage: 'userpci trace FILE\n\nPrint a proxy trace: time since the first event, then each access, DMA map, interrupt or reset.',
  async run(args: string[]): Promise<number> {
    if (args.length !== 1) throw new UsageError('give one trace FILE');
    for (const line of formatTrace(fs.readFileSync(args[0]!, 'utf8'))) process.stdout.write(`${line}\n`);
    return 0;
  },
};
