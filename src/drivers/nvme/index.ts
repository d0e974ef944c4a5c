/** The user-space NVMe driver: controller, namespaces, queue pairs, status errors. */
export { NvmeController, type NvmeControllerOptions, type QueuePairOptions, type ControllerCapabilities } from './controller';
export { NvmeNamespace, type WriteOptions } from './namespace';
export { NvmeQueue, type QueueTuning, type CompletionCallback } from './queue';
export { NvmeStatusError, decodeStatus, type DecodedStatus } from './errors';
export type { ControllerIdentity, NamespaceIdentity, LbaFormat } from './identify';
export * as nvmeRegisters from './registers';
