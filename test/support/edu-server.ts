/**
 * The emulated edu device served over vfio-user from a worker thread for the duration of a
 * node:test suite (the client blocks its thread on requests, so the server needs another).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { startServerThread, type ServerThread } from '../../src/vfio-user/server/thread';

/** Call inside describe(): serves edu from before() to after(); returns the socket path. */
export function serveEduForSuite(prefix: string): string {
  const directory = mkdtempSync(join(tmpdir(), prefix));
  const socketPath = join(directory, 'edu.sock');
  let thread: ServerThread | undefined;
  before(async () => {
    thread = await startServerThread({ model: 'edu', socketPath });
  });
  after(async () => {
    await thread?.stop();
    rmSync(directory, { recursive: true, force: true });
  });
  return socketPath;
}
