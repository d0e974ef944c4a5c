/** The vfio-user client backend and the protocol pieces shared with the server. */
export { connectVfioUser, connectVfioUserFd, VfioUserClient, type VfioUserClientOptions } from './client';
export { ProtocolError, RemoteError, PROTOCOL_MAJOR, PROTOCOL_MINOR } from '../protocol/codec';
export { ConnectionClosedError } from '../protocol/transport';
