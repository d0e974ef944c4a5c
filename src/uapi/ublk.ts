/**
 * The ublk ABI (<linux/ublk_cmd.h> as of Linux 6.12), written out here because Debian 12's
 * linux-libc-dev (6.1) has no UBLK_U_* commands nor the user-copy definitions. Checked against
 * the 6.12 headers package's ublk_cmd.h by test/unit/uapi-ublk-abi.test.ts (UBLK_ABI keys are
 * the C names). Control commands go to /dev/ublk-control, I/O commands to /dev/ublkcN, both as
 * io_uring URING_CMDs whose cmd_op is the ioctl-encoded number (UBLK_F_CMD_IOCTL_ENCODE).
 */
import { _IOR, _IOWR } from './ioctl';

const CTRL_CMD_SIZE = 32;
const IO_CMD_SIZE = 16;

/** The CPUs blk-mq maps to a queue (data[0]: the queue id; the buffer receives a cpumask). */
export const UBLK_U_CMD_GET_QUEUE_AFFINITY = _IOR('u', 0x01, CTRL_CMD_SIZE);
export const UBLK_U_CMD_GET_DEV_INFO = _IOR('u', 0x02, CTRL_CMD_SIZE);
export const UBLK_U_CMD_ADD_DEV = _IOWR('u', 0x04, CTRL_CMD_SIZE);
export const UBLK_U_CMD_DEL_DEV = _IOWR('u', 0x05, CTRL_CMD_SIZE);
export const UBLK_U_CMD_START_DEV = _IOWR('u', 0x06, CTRL_CMD_SIZE);
export const UBLK_U_CMD_STOP_DEV = _IOWR('u', 0x07, CTRL_CMD_SIZE);
export const UBLK_U_CMD_SET_PARAMS = _IOWR('u', 0x08, CTRL_CMD_SIZE);
export const UBLK_U_CMD_GET_PARAMS = _IOR('u', 0x09, CTRL_CMD_SIZE);
export const UBLK_U_CMD_GET_FEATURES = _IOR('u', 0x13, CTRL_CMD_SIZE);
export const UBLK_U_IO_FETCH_REQ = _IOWR('u', 0x20, IO_CMD_SIZE);
export const UBLK_U_IO_COMMIT_AND_FETCH_REQ = _IOWR('u', 0x21, IO_CMD_SIZE);

export const UBLK_IO_RES_OK = 0;
export const UBLK_IO_RES_NEED_GET_DATA = 1;
/** -ENODEV: the queue is being torn down; the command is not to be sent again. */
export const UBLK_IO_RES_ABORT = -19;

export const UBLKSRV_CMD_BUF_OFFSET = 0;
export const UBLKSRV_IO_BUF_OFFSET = 0x80000000;
export const UBLK_MAX_QUEUE_DEPTH = 4096;
export const UBLK_IO_BUF_BITS = 25;
export const UBLK_TAG_OFF = 25;
export const UBLK_QID_OFF = 41;
export const UBLK_MAX_NR_QUEUES = 4096;

export const UBLK_F_SUPPORT_ZERO_COPY = 1 << 0;
export const UBLK_F_URING_CMD_COMP_IN_TASK = 1 << 1;
export const UBLK_F_NEED_GET_DATA = 1 << 2;
export const UBLK_F_USER_RECOVERY = 1 << 3;
export const UBLK_F_USER_RECOVERY_REISSUE = 1 << 4;
export const UBLK_F_UNPRIVILEGED_DEV = 1 << 5;
export const UBLK_F_CMD_IOCTL_ENCODE = 1 << 6;
export const UBLK_F_USER_COPY = 1 << 7;
export const UBLK_F_ZONED = 1 << 8;

export const UBLK_S_DEV_DEAD = 0;
export const UBLK_S_DEV_LIVE = 1;
export const UBLK_S_DEV_QUIESCED = 2;

export const UBLK_IO_OP_READ = 0;
export const UBLK_IO_OP_WRITE = 1;
export const UBLK_IO_OP_FLUSH = 2;
export const UBLK_IO_OP_DISCARD = 3;
export const UBLK_IO_OP_WRITE_SAME = 4;
export const UBLK_IO_OP_WRITE_ZEROES = 5;
export const UBLK_IO_F_FUA = 1 << 13;
export const UBLK_IO_F_NOUNMAP = 1 << 15;

export const UBLK_ATTR_READ_ONLY = 1 << 0;
export const UBLK_ATTR_ROTATIONAL = 1 << 1;
export const UBLK_ATTR_VOLATILE_CACHE = 1 << 2;
export const UBLK_ATTR_FUA = 1 << 3;
export const UBLK_PARAM_TYPE_BASIC = 1 << 0;
export const UBLK_PARAM_TYPE_DISCARD = 1 << 1;
export const UBLK_PARAM_TYPE_DEVT = 1 << 2;

/** struct ublksrv_ctrl_cmd: the 32 bytes at SQE.cmd of a control command. */
export const CTRL_CMD = { dev_id: 0, queue_id: 4, len: 6, addr: 8, data: 16, dev_path_len: 24 } as const;
/** struct ublksrv_ctrl_dev_info. */
export const DEV_INFO_SIZE = 64;
export const DEV_INFO = {
  nr_hw_queues: 0, queue_depth: 2, state: 4, max_io_buf_bytes: 8, dev_id: 12, ublksrv_pid: 16, flags: 24,
  ublksrv_flags: 32, owner_uid: 40, owner_gid: 44,
} as const;
/** struct ublksrv_io_cmd: the 16 bytes at SQE.cmd of an I/O command. */
export const IO_CMD = { q_id: 0, tag: 2, result: 4, addr: 8 } as const;
/** struct ublksrv_io_desc: one per tag, in the queue's read-only descriptor area of /dev/ublkcN. */
export const IO_DESC_SIZE = 24;
export const IO_DESC = { op_flags: 0, nr_sectors: 4, start_sector: 8, addr: 16 } as const;
/** struct ublk_params and its parts. */
export const PARAMS_SIZE = 112;
export const PARAMS = { len: 0, types: 4, basic: 8, discard: 40, devt: 60, zoned: 76 } as const;
export const PARAM_BASIC = {
  attrs: 0, logical_bs_shift: 4, physical_bs_shift: 5, io_opt_shift: 6, io_min_shift: 7, max_sectors: 8,
  chunk_sectors: 12, dev_sectors: 16, virt_boundary_mask: 24,
} as const;
export const PARAM_DISCARD = {
  discard_alignment: 0, discard_granularity: 4, max_discard_sectors: 8, max_write_zeroes_sectors: 12, max_discard_segments: 16,
} as const;
export const PARAM_DEVT = { char_major: 0, char_minor: 4, disk_major: 8, disk_minor: 12 } as const;

/** Byte offset of one tag's buffer for pread/pwrite on /dev/ublkcN (UBLK_F_USER_COPY). */
export function ublkUserCopyOffset(queue: number, tag: number): number {
  return UBLKSRV_IO_BUF_OFFSET + queue * 2 ** UBLK_QID_OFF + tag * 2 ** UBLK_TAG_OFF;
}

/** Every entry above, under its C name, for the ABI test. */
export const UBLK_ABI = {
  ioctls: {
    UBLK_U_CMD_GET_QUEUE_AFFINITY, UBLK_U_CMD_GET_DEV_INFO, UBLK_U_CMD_ADD_DEV, UBLK_U_CMD_DEL_DEV, UBLK_U_CMD_START_DEV, UBLK_U_CMD_STOP_DEV,
    UBLK_U_CMD_SET_PARAMS, UBLK_U_CMD_GET_PARAMS, UBLK_U_CMD_GET_FEATURES, UBLK_U_IO_FETCH_REQ, UBLK_U_IO_COMMIT_AND_FETCH_REQ,
  } as Record<string, number>,
  constants: {
    UBLK_IO_RES_OK, UBLK_IO_RES_NEED_GET_DATA, UBLK_IO_RES_ABORT, UBLKSRV_CMD_BUF_OFFSET, UBLKSRV_IO_BUF_OFFSET,
    UBLK_MAX_QUEUE_DEPTH, UBLK_IO_BUF_BITS, UBLK_TAG_OFF, UBLK_QID_OFF, UBLK_MAX_NR_QUEUES,
    UBLK_F_SUPPORT_ZERO_COPY, UBLK_F_URING_CMD_COMP_IN_TASK, UBLK_F_NEED_GET_DATA, UBLK_F_USER_RECOVERY,
    UBLK_F_USER_RECOVERY_REISSUE, UBLK_F_UNPRIVILEGED_DEV, UBLK_F_CMD_IOCTL_ENCODE, UBLK_F_USER_COPY, UBLK_F_ZONED,
    UBLK_S_DEV_DEAD, UBLK_S_DEV_LIVE, UBLK_S_DEV_QUIESCED,
    UBLK_IO_OP_READ, UBLK_IO_OP_WRITE, UBLK_IO_OP_FLUSH, UBLK_IO_OP_DISCARD, UBLK_IO_OP_WRITE_SAME, UBLK_IO_OP_WRITE_ZEROES,
    UBLK_IO_F_FUA, UBLK_IO_F_NOUNMAP, UBLK_ATTR_READ_ONLY, UBLK_ATTR_ROTATIONAL, UBLK_ATTR_VOLATILE_CACHE, UBLK_ATTR_FUA,
    UBLK_PARAM_TYPE_BASIC, UBLK_PARAM_TYPE_DISCARD, UBLK_PARAM_TYPE_DEVT,
  } as Record<string, number>,
  sizes: {
    ublksrv_ctrl_cmd: CTRL_CMD_SIZE, ublksrv_ctrl_dev_info: DEV_INFO_SIZE, ublksrv_io_cmd: IO_CMD_SIZE,
    ublksrv_io_desc: IO_DESC_SIZE, ublk_params: PARAMS_SIZE, ublk_param_basic: 32, ublk_param_discard: 20, ublk_param_devt: 16,
  } as Record<string, number>,
  offsets: {
    ...prefixed('ublksrv_ctrl_cmd', CTRL_CMD), ...prefixed('ublksrv_ctrl_dev_info', DEV_INFO), ...prefixed('ublksrv_io_cmd', IO_CMD),
    ...prefixed('ublksrv_io_desc', IO_DESC), ...prefixed('ublk_params', PARAMS), ...prefixed('ublk_param_basic', PARAM_BASIC),
    ...prefixed('ublk_param_discard', PARAM_DISCARD), ...prefixed('ublk_param_devt', PARAM_DEVT),
  } as Record<string, number>,
};

function prefixed(struct: string, fields: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(fields).map(([k, v]) => [`${struct}.${k}`, v]));
}
