/**
 * `userpci serve MODEL --socket PATH`: serve a device model over vfio-user until SIGINT/SIGTERM.
 * Also accepts the vfio-user backend-program conventions (--socket-path=PATH, --fd=N).
 */
import { UsageError, parseCommandLine, parseCount, print } from '../format.js';
import { stopSignal } from '../stop-signal.js';
import type { CliCommand } from '../main.js';
import { createModel, modelNames } from '../../models/index.js';
import { serveVfioUser } from '../../vfio-user/server/server.js';

const USAGE = `userpci serve MODEL --socket PATH [options]

Serve an emulated PCI device over the vfio-user protocol, one client at a time, until SIGINT or
SIGTERM. A client that disconnects leaves the device's state as it was; the next one is served.
Drivers reach it with openDevice(PATH).

MODEL: ${modelNames().join(', ')}

Options:
  --socket PATH, --socket-path PATH   UNIX socket to listen on (a stale one is replaced)
  --fd N                              serve this already-connected socket instead, then exit
  --dma-mask MASK                     edu: DMA address mask (default 0xfffffff, 28 bits)
  --dma-delay-ms MS                   edu: delay before a DMA runs (QEMU uses 100; default 0)
  --no-twin-socket                    do not offer twin-socket mode
  --max-data-xfer-size BYTES          largest transfer per message we accept (default 1048576)
  --verbose                           log connections and device messages to stderr
  --json                              report on stdout as JSON lines instead:
                                      {"event":"listening","model","socket","pid"} when ready,
                                      {"event":"stopped","clientsServed"} at the end; a failure is
                                      {"error":{"code","message"}}`;

export const serveCommand: CliCommand = {
  name: 'serve',
  summary: 'serve an emulated device (edu) over vfio-user on a UNIX socket',
  usage: USAGE,
  async run(args: string[]): Promise<number> {
    const { values, positionals } = parseCommandLine(
      args,
      {
        socket: { type: 'string' },
        'socket-path': { type: 'string' },
        fd: { type: 'string' },
        'dma-mask': { type: 'string' },
        'dma-delay-ms': { type: 'string' },
        'no-twin-socket': { type: 'boolean', default: false },
        'max-data-xfer-size': { type: 'string' },
        verbose: { type: 'boolean', default: false },
        json: { type: 'boolean', default: false },
      },
      ['MODEL'],
    );
    const socketPath = values.socket ?? values['socket-path'];
    const fd = parseCount(values.fd, '--fd');
    if ((socketPath === undefined) === (fd === undefined)) throw new UsageError('give exactly one of --socket PATH and --fd N');
    let dmaMask: bigint | undefined;
    if (values['dma-mask'] !== undefined) {
      try {
        dmaMask = BigInt(values['dma-mask']);
      } catch {
        throw new UsageError(`--dma-mask must be a number such as 0xffffffff, got "${values['dma-mask']}"`);
      }
    }
    const model = createModel(positionals[0]!, { dmaMask, dmaDelayMs: parseCount(values['dma-delay-ms'], '--dma-delay-ms') });
    const log = values.verbose ? (message: string) => process.stderr.write(`userpci serve: ${message}\n`) : undefined;
    const server = await serveVfioUser(model, {
      ...(socketPath !== undefined ? { socketPath } : { connectedFd: fd! }),
      twinSocket: !values['no-twin-socket'],
      maxDataXferSize: parseCount(values['max-data-xfer-size'], '--max-data-xfer-size'),
      log,
    });
    const stop = stopSignal();
    if (values.json) print(JSON.stringify({ event: 'listening', model: model.name, socket: socketPath ?? null, pid: process.pid }));
    else if (socketPath !== undefined) process.stderr.write(`userpci serve: ${model.name} listening on ${socketPath}\n`);
    await new Promise<void>((resolve) => {
      void stop.then(() => resolve());
      if (fd !== undefined) void server.whenIdle().then(() => server.clientsServed > 0 && resolve());
    });
    // Ask a connected client to let go first (its request notifier), then close.
    server.requestRelease();
    await server.close();
    if (values.json) print(JSON.stringify({ event: 'stopped', clientsServed: server.clientsServed }));
    return 0;
  },
};

export default serveCommand;
