/**
 * The vfio-user server side: serve a device model written in TypeScript to any vfio-user client.
 *
 *   const server = await serveVfioUser(new EduModel(), { socketPath: '/tmp/edu.sock' });
 *   ...            // clients connect one at a time; state survives their disconnects
 *   await server.close();
 *
 * A client that blocks its thread (this project's own Backend does) cannot share a thread with
 * the server: use startServerThread (a worker) or `userpci serve` (another process).
 */
export { serveVfioUser, VfioUserServer, type ServeOptions } from './server';
export { startServerThread, type ServerThread, type ServerThreadOptions } from './thread';
export type { DeviceModel, DeviceContext, DeviceIrq, DeviceDma, BarDefinition, BarHandlers, SharedBarMemory, SharedArea } from '../../models/device-model';
export {
  ConfigSpace,
  ConfigReg,
  Command as PciCommand,
  Status as PciStatus,
  CapabilityId,
  addMsiCapability,
  addMsixCapability,
  findMsi,
  findMsix,
  type HeaderFields,
  type MsiLayout,
  type MsixLayout,
} from '../../models/config-space';
export { createModel, modelNames, type ModelOptions } from '../../models/index';
export { EduModel, createEduModel, type EduOptions } from '../../models/edu';
export { TestDeviceModel } from '../../models/testdev';
