/**
 * Run a vfio-user server on a worker thread of this process. The client backend blocks its
 * thread while it waits for replies (Backend methods are synchronous), so a server on the same
 * thread could never answer; a worker has its own event loop and answers at once.
 */
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { describeValue } from '../../arguments';
import { InvalidArgumentError, UserpciError, toErrorCode } from '../../errors';
import type { ModelOptions } from '../../models/index';

export interface ServerThreadOptions {
  /** Registry name ('edu'), or any label when modelModule is given. */
  model: string;
  modelOptions?: ModelOptions;
  /** Absolute path of a module exporting createModel(options) (models outside the registry). */
  modelModule?: string;
  socketPath: string;
  twinSocket?: boolean;
  maxDataXferSize?: number;
  maxMsgFds?: number;
  /** Print the server's log lines to stderr. */
  log?: boolean;
}

export interface ServerThread {
  readonly socketPath: string;
  readonly worker: Worker;
  /** Client connect/disconnect events seen so far, in order. */
  readonly events: string[];
  /** Resolves at the next client disconnect. */
  nextDisconnect(): Promise<string>;
  stop(): Promise<void>;
}

export function startServerThread(options: ServerThreadOptions): Promise<ServerThread> {
  if (options === null || typeof options !== 'object' || typeof options.model !== 'string' || typeof options.socketPath !== 'string') {
    return Promise.reject(new InvalidArgumentError(`startServerThread takes { model, socketPath } (strings), got ${describeValue(options)}`));
  }
  const worker = new Worker(path.join(__dirname, 'worker.js'), {
    workerData: {
      model: options.model,
      modelOptions: options.modelOptions ?? {},
      modelModule: options.modelModule,
      socketPath: options.socketPath,
      twinSocket: options.twinSocket,
      maxDataXferSize: options.maxDataXferSize,
      maxMsgFds: options.maxMsgFds,
      log: options.log ?? false,
    },
  });
  const events: string[] = [];
  let disconnectWaiters: ((reason: string) => void)[] = [];
  return new Promise((resolve, reject) => {
    worker.on('error', reject);
    worker.on('message', (m: { type: string; message?: string; reason?: string; code?: string }) => {
      switch (m.type) {
        case 'ready':
          resolve({
            socketPath: options.socketPath,
            worker,
            events,
            nextDisconnect: () => new Promise((r) => disconnectWaiters.push(r)),
            stop: () =>
              new Promise<void>((done) => {
                worker.once('exit', () => done());
                worker.postMessage({ type: 'close' });
              }),
          });
          break;
        case 'error':
          reject(new UserpciError(toErrorCode(m.code), `vfio-user server thread: ${m.message}`));
          void worker.terminate();
          break;
        case 'connected':
          events.push('connected');
          break;
        case 'disconnected':
          events.push('disconnected');
          for (const w of disconnectWaiters) w(m.reason ?? '');
          disconnectWaiters = [];
          break;
        case 'log':
          if (options.log) process.stderr.write(`[vfio-user server] ${m.message}\n`);
          break;
      }
    });
  });
}
