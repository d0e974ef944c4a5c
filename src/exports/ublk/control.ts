/**
 * /dev/ublk-control: adding, configuring, starting, stopping and deleting ublk devices. Every
 * command is an io_uring URING_CMD; the kernel runs control commands on an io_uring worker
 * thread (they may sleep: START_DEV waits for every queue to fetch, and its partition scan
 * reads the disk through our own queues), so each is a promise settled on the event loop while
 * the queues keep serving.
 */
import { UserpciError, wrapSystemError, type UserpciErrorCode } from '../../errors';
import { IoUring } from '../../io-uring/io-uring';
import { constants as C, native } from '../../native';
import * as U from '../../uapi/ublk';

const CONTROL_PATH = '/dev/ublk-control';

/** struct ublksrv_ctrl_dev_info, decoded. */
export interface UblkDeviceInfo {
  devId: number;
  queues: number;
  depth: number;
  state: number;
  maxIoBytes: number;
  serverPid: number;
  flags: number;
  /**
   * ublksrv_flags, the 64 bits the driver keeps for the server's own use, as two 32-bit halves:
   * UblkServer puts its mark in the high half and the adding process's pid in the low one.
   */
  serverFlagsHigh: number;
  serverFlagsLow: number;
}

/** struct ublk_params (basic, discard), in bytes and flags. */
export interface UblkParams {
  logicalBlockSize: number;
  physicalBlockSize: number;
  /** Bytes. */
  size: number;
  maxIoBytes: number;
  readOnly: boolean;
  volatileCache: boolean;
  fua: boolean;
  /** 0 for none. */
  maxDiscardBytes: number;
  maxWriteZeroesBytes: number;
  discardGranularity: number;
}

interface Pending {
  resolve: (res: number) => void;
  reject: (e: Error) => void;
  /** Keeps the command's buffer alive until the kernel is done with it. */
  buffer: Uint8Array | null;
  what: string;
}

export class UblkControl {
  private readonly fd: number;
  private readonly ring: IoUring;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closed = false;

  private constructor(fd: number) {
    this.fd = fd;
    this.ring = new IoUring(16);
    this.ring.onCompletion((userData, res) => this.complete(userData, res), false);
  }

  static open(): UblkControl {
    let fd: number;
    try {
      fd = native.open(CONTROL_PATH, C.O_RDWR);
    } catch (e) {
      throw wrapSystemError(e, `opening ${CONTROL_PATH}`, {
        ENOENT: 'no ublk driver: Linux 6.0 or later with ublk_drv (modprobe ublk_drv)',
        EACCES: 'ublk devices need root (or an unprivileged-device setup)',
      });
    }
    try {
      return new UblkControl(fd);
    } catch (e) {
      native.close(fd);
      throw e;
    }
  }

  /** UBLK_F_* the driver offers. */
  async features(): Promise<number> {
    const buf = new Uint8Array(8);
    await this.command(U.UBLK_U_CMD_GET_FEATURES, 0xffffffff, buf, 0, 'GET_FEATURES');
    return new DataView(buf.buffer).getUint32(0, true);
  }

  /** ADD_DEV: devId -1 lets the driver pick. Resolves with what the driver made of the request. */
  async add(req: { devId: number; queues: number; depth: number; maxIoBytes: number; flags: number; serverFlagsHigh?: number; serverFlagsLow?: number }): Promise<UblkDeviceInfo> {
    const buf = new Uint8Array(U.DEV_INFO_SIZE);
    const v = new DataView(buf.buffer);
    v.setUint16(U.DEV_INFO.nr_hw_queues, req.queues, true);
    v.setUint16(U.DEV_INFO.queue_depth, req.depth, true);
    v.setUint32(U.DEV_INFO.max_io_buf_bytes, req.maxIoBytes, true);
    v.setUint32(U.DEV_INFO.dev_id, req.devId >>> 0, true);
    v.setUint32(U.DEV_INFO.flags, req.flags, true);
    v.setUint32(U.DEV_INFO.ublksrv_flags, (req.serverFlagsLow ?? 0) >>> 0, true);
    v.setUint32(U.DEV_INFO.ublksrv_flags + 4, (req.serverFlagsHigh ?? 0) >>> 0, true);
    await this.command(U.UBLK_U_CMD_ADD_DEV, req.devId >>> 0, buf, 0, 'ADD_DEV');
    return decodeInfo(v);
  }

  async info(devId: number): Promise<UblkDeviceInfo> {
    const buf = new Uint8Array(U.DEV_INFO_SIZE);
    await this.command(U.UBLK_U_CMD_GET_DEV_INFO, devId, buf, 0, 'GET_DEV_INFO');
    return decodeInfo(new DataView(buf.buffer));
  }

  async setParams(devId: number, p: UblkParams): Promise<void> {
    await this.command(U.UBLK_U_CMD_SET_PARAMS, devId, encodeParams(p), 0, 'SET_PARAMS');
  }

  /** Disk major/minor and char major/minor (the driver's DEVT parameters). */
  async devt(devId: number): Promise<{ diskMajor: number; diskMinor: number }> {
    const buf = new Uint8Array(U.PARAMS_SIZE);
    const v = new DataView(buf.buffer);
    v.setUint32(U.PARAMS.len, U.PARAMS_SIZE, true);
    v.setUint32(U.PARAMS.types, U.UBLK_PARAM_TYPE_DEVT, true);
    await this.command(U.UBLK_U_CMD_GET_PARAMS, devId, buf, 0, 'GET_PARAMS');
    return { diskMajor: v.getUint32(U.PARAMS.devt + U.PARAM_DEVT.disk_major, true), diskMinor: v.getUint32(U.PARAMS.devt + U.PARAM_DEVT.disk_minor, true) };
  }

  /**
   * GET_QUEUE_AFFINITY: the CPUs blk-mq maps to queue `qid` (a request submitted on one of them
   * is queued there). The kernel wants a cpumask of whole longs covering nr_cpu_ids: 1024 CPUs here.
   */
  async queueAffinity(devId: number, qid: number): Promise<number[]> {
    const buf = new Uint8Array(128);
    await this.command(U.UBLK_U_CMD_GET_QUEUE_AFFINITY, devId, buf, qid, 'GET_QUEUE_AFFINITY');
    const cpus: number[] = [];
    for (let i = 0; i < buf.length * 8; i++) if (buf[i >> 3]! & (1 << (i & 7))) cpus.push(i);
    return cpus;
  }

  /** START_DEV: settles once every queue has fetched and the disk is added (partitions scanned). */
  async start(devId: number, serverPid: number): Promise<void> {
    await this.command(U.UBLK_U_CMD_START_DEV, devId, null, serverPid, 'START_DEV');
  }

  /** STOP_DEV: removes the disk (in-flight requests still complete); fetches are aborted. */
  async stop(devId: number): Promise<void> {
    await this.command(U.UBLK_U_CMD_STOP_DEV, devId, null, 0, 'STOP_DEV');
  }

  /** DEL_DEV: settles once /dev/ublkcN is closed by its server and the device is gone. */
  async delete(devId: number): Promise<void> {
    await this.command(U.UBLK_U_CMD_DEL_DEV, devId, null, 0, 'DEL_DEV');
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.ring.close();
    native.close(this.fd);
    for (const p of this.pending.values()) p.reject(new UserpciError('ECANCELED', `ublk ${p.what}: control closed`));
    this.pending.clear();
  }

  private command(op: number, devId: number, buffer: Uint8Array | null, data: number, what: string): Promise<number> {
    if (this.closed) return Promise.reject(new UserpciError('EBADF', 'ublk control is closed'));
    const id = this.nextId++ >>> 0;
    const cmd = this.ring.prepUringCmd(this.fd, op, id);
    const v = this.ring.sqeView;
    v.setUint32(cmd + U.CTRL_CMD.dev_id, devId >>> 0, true);
    v.setUint16(cmd + U.CTRL_CMD.queue_id, 0xffff, true);
    if (buffer) {
      v.setUint16(cmd + U.CTRL_CMD.len, buffer.byteLength, true);
      const addr = native.addressOf(buffer);
      v.setUint32(cmd + U.CTRL_CMD.addr, addr % 2 ** 32, true);
      v.setUint32(cmd + U.CTRL_CMD.addr + 4, Math.floor(addr / 2 ** 32), true);
    }
    v.setUint32(cmd + U.CTRL_CMD.data, data >>> 0, true);
    return new Promise<number>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, buffer, what });
      // A command in flight keeps the process alive (its completion is all that is left to wait for).
      if (this.pending.size === 1) this.ring.setKeepAlive(true);
      try {
        this.ring.submit();
      } catch (e) {
        this.pending.delete(id);
        if (this.pending.size === 0) this.ring.setKeepAlive(false);
        reject(e as Error);
      }
    });
  }

  private complete(id: number, res: number): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (this.pending.size === 0) this.ring.setKeepAlive(false);
    if (res >= 0) p.resolve(res);
    else p.reject(errnoError(-res, `ublk ${p.what}`));
  }
}

function decodeInfo(v: DataView): UblkDeviceInfo {
  return {
    devId: v.getUint32(U.DEV_INFO.dev_id, true),
    queues: v.getUint16(U.DEV_INFO.nr_hw_queues, true),
    depth: v.getUint16(U.DEV_INFO.queue_depth, true),
    state: v.getUint16(U.DEV_INFO.state, true),
    maxIoBytes: v.getUint32(U.DEV_INFO.max_io_buf_bytes, true),
    serverPid: v.getInt32(U.DEV_INFO.ublksrv_pid, true),
    flags: v.getUint32(U.DEV_INFO.flags, true),
    serverFlagsLow: v.getUint32(U.DEV_INFO.ublksrv_flags, true),
    serverFlagsHigh: v.getUint32(U.DEV_INFO.ublksrv_flags + 4, true),
  };
}

export function encodeParams(p: UblkParams): Uint8Array {
  const buf = new Uint8Array(U.PARAMS_SIZE);
  const v = new DataView(buf.buffer);
  const shift = (n: number) => Math.log2(n);
  let types = U.UBLK_PARAM_TYPE_BASIC;
  const b = U.PARAMS.basic;
  const attrs = (p.readOnly ? U.UBLK_ATTR_READ_ONLY : 0) | (p.volatileCache ? U.UBLK_ATTR_VOLATILE_CACHE : 0) | (p.fua ? U.UBLK_ATTR_FUA : 0);
  v.setUint32(b + U.PARAM_BASIC.attrs, attrs, true);
  v.setUint8(b + U.PARAM_BASIC.logical_bs_shift, shift(p.logicalBlockSize));
  v.setUint8(b + U.PARAM_BASIC.physical_bs_shift, shift(p.physicalBlockSize));
  v.setUint8(b + U.PARAM_BASIC.io_min_shift, shift(p.logicalBlockSize));
  v.setUint8(b + U.PARAM_BASIC.io_opt_shift, shift(p.physicalBlockSize));
  v.setUint32(b + U.PARAM_BASIC.max_sectors, p.maxIoBytes / 512, true);
  const sectors = p.size / 512;
  v.setUint32(b + U.PARAM_BASIC.dev_sectors, sectors % 2 ** 32, true);
  v.setUint32(b + U.PARAM_BASIC.dev_sectors + 4, Math.floor(sectors / 2 ** 32), true);
  if (p.maxDiscardBytes > 0 || p.maxWriteZeroesBytes > 0) {
    types |= U.UBLK_PARAM_TYPE_DISCARD;
    const d = U.PARAMS.discard;
    v.setUint32(d + U.PARAM_DISCARD.discard_granularity, p.discardGranularity, true);
    v.setUint32(d + U.PARAM_DISCARD.max_discard_sectors, p.maxDiscardBytes / 512, true);
    v.setUint32(d + U.PARAM_DISCARD.max_write_zeroes_sectors, p.maxWriteZeroesBytes / 512, true);
    v.setUint16(d + U.PARAM_DISCARD.max_discard_segments, 1, true);
  }
  v.setUint32(U.PARAMS.len, U.PARAMS_SIZE, true);
  v.setUint32(U.PARAMS.types, types, true);
  return buf;
}

const ERRNO_NAMES: Record<number, UserpciErrorCode> = { 1: 'EPERM', 2: 'ENOENT', 4: 'EINTR', 5: 'EIO', 11: 'EAGAIN', 12: 'ENOMEM', 13: 'EACCES', 16: 'EBUSY', 17: 'EEXIST', 19: 'ENODEV', 22: 'EINVAL', 95: 'EOPNOTSUPP', 125: 'ECANCELED' };

export function errnoError(errno: number, doing: string): UserpciError {
  const code = ERRNO_NAMES[errno] ?? 'EIO';
  return new UserpciError(code, `${doing}: ${code} (errno ${errno})`, { errno: -errno });
}
