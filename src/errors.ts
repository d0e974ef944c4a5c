/**
 * Every `code` a UserpciError can carry: Linux's errno names (a failed system call passes its own
 * through; userpci's own failures use the closest one), ENOTSUP as glibc spells EOPNOTSUPP, and
 * EUNKNOWN for an errno the C library has no name for.
 */
export const ERROR_CODES = [
  'E2BIG', 'EACCES', 'EADDRINUSE', 'EADDRNOTAVAIL', 'EADV', 'EAFNOSUPPORT', 'EAGAIN', 'EALREADY', 'EBADE',
  'EBADF', 'EBADFD', 'EBADMSG', 'EBADR', 'EBADRQC', 'EBADSLT', 'EBFONT', 'EBUSY', 'ECANCELED', 'ECHILD',
  'ECHRNG', 'ECOMM', 'ECONNABORTED', 'ECONNREFUSED', 'ECONNRESET', 'EDEADLK', 'EDEADLOCK', 'EDESTADDRREQ',
  'EDOM', 'EDOTDOT', 'EDQUOT', 'EEXIST', 'EFAULT', 'EFBIG', 'EHOSTDOWN', 'EHOSTUNREACH', 'EHWPOISON',
  'EIDRM', 'EILSEQ', 'EINPROGRESS', 'EINTR', 'EINVAL', 'EIO', 'EISCONN', 'EISDIR', 'EISNAM', 'EKEYEXPIRED',
  'EKEYREJECTED', 'EKEYREVOKED', 'EL2HLT', 'EL2NSYNC', 'EL3HLT', 'EL3RST', 'ELIBACC', 'ELIBBAD', 'ELIBEXEC',
  'ELIBMAX', 'ELIBSCN', 'ELNRNG', 'ELOOP', 'EMEDIUMTYPE', 'EMFILE', 'EMLINK', 'EMSGSIZE', 'EMULTIHOP',
  'ENAMETOOLONG', 'ENAVAIL', 'ENETDOWN', 'ENETRESET', 'ENETUNREACH', 'ENFILE', 'ENOANO', 'ENOBUFS', 'ENOCSI',
  'ENODATA', 'ENODEV', 'ENOENT', 'ENOEXEC', 'ENOKEY', 'ENOLCK', 'ENOLINK', 'ENOMEDIUM', 'ENOMEM', 'ENOMSG',
  'ENONET', 'ENOPKG', 'ENOPROTOOPT', 'ENOSPC', 'ENOSR', 'ENOSTR', 'ENOSYS', 'ENOTBLK', 'ENOTCONN', 'ENOTDIR',
  'ENOTEMPTY', 'ENOTNAM', 'ENOTRECOVERABLE', 'ENOTSOCK', 'ENOTSUP', 'ENOTTY', 'ENOTUNIQ', 'ENXIO',
  'EOPNOTSUPP', 'EOVERFLOW', 'EOWNERDEAD', 'EPERM', 'EPFNOSUPPORT', 'EPIPE', 'EPROTO', 'EPROTONOSUPPORT',
  'EPROTOTYPE', 'ERANGE', 'EREMCHG', 'EREMOTE', 'EREMOTEIO', 'ERESTART', 'ERFKILL', 'EROFS', 'ESHUTDOWN',
  'ESOCKTNOSUPPORT', 'ESPIPE', 'ESRCH', 'ESRMNT', 'ESTALE', 'ESTRPIPE', 'ETIME', 'ETIMEDOUT', 'ETOOMANYREFS',
  'ETXTBSY', 'EUCLEAN', 'EUNATCH', 'EUNKNOWN', 'EUSERS', 'EWOULDBLOCK', 'EXDEV', 'EXFULL',
] as const;

export type UserpciErrorCode = (typeof ERROR_CODES)[number];

const KNOWN_CODES: ReadonlySet<string> = new Set(ERROR_CODES);

/** `code` if it is an errno name, else EIO (a failure we cannot classify is an I/O error). */
export function toErrorCode(code: string | undefined): UserpciErrorCode {
  return code !== undefined && KNOWN_CODES.has(code) ? (code as UserpciErrorCode) : 'EIO';
}

/**
 * Every failure userpci reports is a UserpciError: a plain Error with an errno-style `code`
 * ("EBUSY", "EINVAL", ...), so callers can branch on it the same way they branch on Node's own
 * fs errors.
 */
export class UserpciError extends Error {
  readonly code: UserpciErrorCode;
  readonly errno: number | undefined;
  readonly syscall: string | undefined;

  constructor(code: UserpciErrorCode, message: string, options?: { cause?: unknown; errno?: number; syscall?: string }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'UserpciError';
    this.code = code;
    this.errno = options?.errno;
    this.syscall = options?.syscall;
  }
}

/** A malformed argument: an address, a size, an offset or an alignment the call cannot accept. */
export class InvalidArgumentError extends UserpciError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('EINVAL', message, options);
    this.name = 'InvalidArgumentError';
  }
}

/** An access outside the bounds of a region, a buffer or config space. */
export class RangeAccessError extends UserpciError {
  constructor(message: string) {
    super('ERANGE', message);
    this.name = 'RangeAccessError';
  }
}

/** The device, a region or an object no longer exists: closed, unmapped or hot-unplugged. */
export class DeviceGoneError extends UserpciError {
  constructor(message: string, code: 'ENODEV' | 'EBADF' = 'ENODEV') {
    super(code, message);
    this.name = 'DeviceGoneError';
  }
}

/** Config space or a capability list that is malformed (loops, pointers out of range, truncation). */
export class MalformedConfigError extends UserpciError {
  constructor(message: string) {
    super('EILSEQ', message);
    this.name = 'MalformedConfigError';
  }
}

/** Shape of the errors the native layer throws (like Node's fs errors). */
export interface SystemError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

export function isSystemError(err: unknown): err is SystemError {
  return err instanceof Error && typeof (err as SystemError).code === 'string' && typeof (err as SystemError).errno === 'number';
}

/**
 * Re-throw a native error as a UserpciError with the same code, adding what the caller was doing,
 * so a message reads "opening VFIO group 5: EBUSY ..." rather than a bare syscall name.
 */
export function wrapSystemError(err: unknown, doing: string, codeMessages?: Record<string, string>): UserpciError {
  if (err instanceof UserpciError) return err;
  if (isSystemError(err)) {
    const hint = codeMessages?.[err.code];
    const message = `${doing}: ${err.code} (${err.syscall})${hint ? `: ${hint}` : ''}`;
    return new UserpciError(toErrorCode(err.code), message, { cause: err, errno: err.errno, syscall: err.syscall });
  }
  return new UserpciError('EIO', `${doing}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
}
