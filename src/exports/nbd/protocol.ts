/**
 * The NBD protocol's wire constants (doc/proto.md in the NBD project): fixed newstyle handshake,
 * option haggling, simple replies. All integers are big endian.
 */

/** "NBDMAGIC": the first 8 bytes the server sends. */
export const NBD_MAGIC = Buffer.from('NBDMAGIC', 'ascii');
/** "IHAVEOPT": newstyle greeting, and the prefix of every client option. */
export const IHAVEOPT = Buffer.from('IHAVEOPT', 'ascii');
/** Prefix of every option reply (0x0003e889045565a9). */
export const OPTION_REPLY_MAGIC = Buffer.from([0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9]);
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;

// Handshake flags (server) and client flags.
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const CLIENT_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const CLIENT_FLAG_NO_ZEROES = 1 << 1;

// Options.
export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_LIST = 3;
export const OPT_STARTTLS = 5;
export const OPT_INFO = 6;
export const OPT_GO = 7;
export const OPT_STRUCTURED_REPLY = 8;
export const OPT_LIST_META_CONTEXT = 9;
export const OPT_SET_META_CONTEXT = 10;

// Option replies.
export const REP_ACK = 1;
export const REP_SERVER = 2;
export const REP_INFO = 3;
const ERR = 0x80000000;
export const REP_ERR_UNSUP = (ERR | 1) >>> 0;
export const REP_ERR_POLICY = (ERR | 2) >>> 0;
export const REP_ERR_INVALID = (ERR | 3) >>> 0;
export const REP_ERR_PLATFORM = (ERR | 4) >>> 0;
export const REP_ERR_TLS_REQD = (ERR | 5) >>> 0;
export const REP_ERR_UNKNOWN = (ERR | 6) >>> 0;
export const REP_ERR_SHUTDOWN = (ERR | 7) >>> 0;
export const REP_ERR_BLOCK_SIZE_REQD = (ERR | 8) >>> 0;
export const REP_ERR_TOO_BIG = (ERR | 9) >>> 0;

// Info types (NBD_OPT_INFO / NBD_OPT_GO).
export const INFO_EXPORT = 0;
export const INFO_NAME = 1;
export const INFO_DESCRIPTION = 2;
export const INFO_BLOCK_SIZE = 3;

// Transmission flags.
export const TFLAG_HAS_FLAGS = 1 << 0;
export const TFLAG_READ_ONLY = 1 << 1;
export const TFLAG_SEND_FLUSH = 1 << 2;
export const TFLAG_SEND_FUA = 1 << 3;
export const TFLAG_ROTATIONAL = 1 << 4;
export const TFLAG_SEND_TRIM = 1 << 5;
export const TFLAG_SEND_WRITE_ZEROES = 1 << 6;
export const TFLAG_SEND_DF = 1 << 7;
export const TFLAG_CAN_MULTI_CONN = 1 << 8;
export const TFLAG_SEND_CACHE = 1 << 10;

// Commands and their flags.
export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_TRIM = 4;
export const CMD_CACHE = 5;
export const CMD_WRITE_ZEROES = 6;
export const CMD_BLOCK_STATUS = 7;
export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;
export const CMD_FLAG_DF = 1 << 2;
export const CMD_FLAG_REQ_ONE = 1 << 3;
export const CMD_FLAG_FAST_ZERO = 1 << 4;

// Error values in replies (errno numbers, fixed by the protocol).
export const EPERM = 1;
export const EIO = 5;
export const ENOMEM = 12;
export const EINVAL = 22;
export const ENOSPC = 28;
export const EOVERFLOW = 75;
export const ENOTSUP = 95;
export const ESHUTDOWN = 108;

export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;

export interface RequestHeader {
  flags: number;
  type: number;
  /** The client's 8-byte handle, echoed in the reply. */
  handle: Buffer;
  offset: number;
  length: number;
}

/** Decode a 28-byte request header; null when the magic is wrong (the connection is then dropped). */
export function decodeRequestHeader(b: Buffer): RequestHeader | null {
  if (b.length < REQUEST_HEADER_SIZE || b.readUInt32BE(0) !== REQUEST_MAGIC) return null;
  const hi = b.readUInt32BE(16);
  const lo = b.readUInt32BE(20);
  return {
    flags: b.readUInt16BE(4),
    type: b.readUInt16BE(6),
    handle: Buffer.from(b.subarray(8, 16)),
    // Offsets past 2^53 are not exact, but they are far beyond any export anyway.
    offset: hi * 0x1_0000_0000 + lo,
    length: b.readUInt32BE(24),
  };
}

export function encodeRequestHeader(h: { flags?: number; type: number; handle: Buffer | bigint; offset: number; length: number }): Buffer {
  const b = Buffer.alloc(REQUEST_HEADER_SIZE);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(h.flags ?? 0, 4);
  b.writeUInt16BE(h.type, 6);
  if (typeof h.handle === 'bigint') b.writeBigUInt64BE(h.handle, 8);
  else h.handle.copy(b, 8, 0, 8);
  b.writeBigUInt64BE(BigInt(h.offset), 16);
  b.writeUInt32BE(h.length, 24);
  return b;
}

export function encodeSimpleReply(error: number, handle: Buffer): Buffer {
  const b = Buffer.alloc(SIMPLE_REPLY_SIZE);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  handle.copy(b, 8, 0, 8);
  return b;
}

export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(20 + data.length);
  OPTION_REPLY_MAGIC.copy(b, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, 20);
  return b;
}

export function commandName(type: number): string {
  return ['READ', 'WRITE', 'DISC', 'FLUSH', 'TRIM', 'CACHE', 'WRITE_ZEROES', 'BLOCK_STATUS'][type] ?? `command ${type}`;
}
