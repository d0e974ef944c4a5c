/**
 * Worker-thread entry for startServerThread: builds the model named in workerData, serves it,
 * and answers 'close' from the parent. Runs only inside a worker.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { createModel, type ModelOptions } from '../../models/index';
import { serveVfioUser } from './server';

interface WorkerConfig {
  model: string;
  modelOptions: ModelOptions;
  /** A module exporting `createModel(options)`, for models outside the registry (tests). */
  modelModule?: string;
  socketPath: string;
  twinSocket?: boolean;
  maxDataXferSize?: number;
  maxMsgFds?: number;
  log?: boolean;
}

async function main(): Promise<void> {
  const config = workerData as WorkerConfig;
  const port = parentPort!;
  try {
    const model = config.modelModule
      ? (require(config.modelModule) as { createModel(o: ModelOptions): import('../../models/device-model').DeviceModel }).createModel(config.modelOptions)
      : createModel(config.model, config.modelOptions);
    const server = await serveVfioUser(model, {
      socketPath: config.socketPath,
      twinSocket: config.twinSocket,
      maxDataXferSize: config.maxDataXferSize,
      maxMsgFds: config.maxMsgFds,
      log: config.log ? (m) => port.postMessage({ type: 'log', message: m }) : undefined,
      onClientConnected: () => port.postMessage({ type: 'connected' }),
      onClientDisconnected: (reason) => port.postMessage({ type: 'disconnected', reason: reason.message }),
    });
    port.on('message', (message: { type: string }) => {
      if (message.type === 'close') {
        void server.close().then(() => {
          port.postMessage({ type: 'closed' });
          port.close();
        });
      }
    });
    port.postMessage({ type: 'ready' });
  } catch (err) {
    port.postMessage({ type: 'error', message: (err as Error).message, code: (err as { code?: string }).code });
  }
}

void main();
