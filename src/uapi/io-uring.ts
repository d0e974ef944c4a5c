/**
 * The parts of <linux/io_uring.h> userpci uses (for ublk): io_uring_params and its ring offset
 * blocks, the SQE fields a URING_CMD needs (128-byte SQEs: IORING_SETUP_SQE128), the CQE, the
 * mmap offsets and the register opcode for an eventfd. Checked against the C compiler by
 * test/unit/uapi-ublk-abi.test.ts (IO_URING_ABI keys are the C names).
 */

export const IORING_SETUP_SQE128 = 1 << 10;
export const IORING_SETUP_CQSIZE = 1 << 3;
export const IORING_SETUP_TASKRUN_FLAG = 1 << 9;
export const IORING_SETUP_SINGLE_ISSUER = 1 << 12;
export const IORING_SETUP_DEFER_TASKRUN = 1 << 13;
/** In the SQ ring's flags: task work is pending (IORING_SETUP_TASKRUN_FLAG); enter with GETEVENTS to run it. */
export const IORING_SQ_TASKRUN = 1 << 2;
export const IORING_OP_URING_CMD = 46;
export const IORING_ENTER_GETEVENTS = 1 << 0;
export const IORING_REGISTER_EVENTFD = 4;
export const IORING_FEAT_SINGLE_MMAP = 1 << 0;
export const IORING_OFF_SQ_RING = 0;
export const IORING_OFF_CQ_RING = 0x8000000;
export const IORING_OFF_SQES = 0x10000000;

export const IO_URING_PARAMS_SIZE = 120;
/** Offsets inside struct io_uring_params. */
export const PARAMS = {
  sq_entries: 0, cq_entries: 4, flags: 8, sq_thread_cpu: 12, sq_thread_idle: 16, features: 20, wq_fd: 24,
  sq_off: 40, cq_off: 80,
} as const;
/** Offsets inside struct io_sqring_offsets (at PARAMS.sq_off). */
export const SQ_OFF = { head: 0, tail: 4, ring_mask: 8, ring_entries: 12, flags: 16, dropped: 20, array: 24 } as const;
/** Offsets inside struct io_cqring_offsets (at PARAMS.cq_off). */
export const CQ_OFF = { head: 0, tail: 4, ring_mask: 8, ring_entries: 12, overflow: 16, cqes: 20, flags: 24 } as const;

/** A 128-byte SQE (IORING_SETUP_SQE128): the 64-byte SQE, then 80 bytes of command from +48. */
export const SQE128_SIZE = 128;
export const SQE = { opcode: 0, flags: 1, ioprio: 2, fd: 4, cmd_op: 8, user_data: 32, cmd: 48 } as const;
export const SQE_CMD_SIZE = 80;
export const CQE_SIZE = 16;
export const CQE = { user_data: 0, res: 8, flags: 12 } as const;

/** Every entry above, under its C name, for the ABI test. */
export const IO_URING_ABI = {
  constants: {
    IORING_SETUP_SQE128, IORING_SETUP_CQSIZE, IORING_SETUP_TASKRUN_FLAG, IORING_SETUP_SINGLE_ISSUER, IORING_SETUP_DEFER_TASKRUN,
    IORING_SQ_TASKRUN, IORING_OP_URING_CMD, IORING_ENTER_GETEVENTS, IORING_REGISTER_EVENTFD,
    IORING_FEAT_SINGLE_MMAP, IORING_OFF_SQ_RING, IORING_OFF_CQ_RING, IORING_OFF_SQES,
  } as Record<string, number>,
  sizes: { io_uring_params: IO_URING_PARAMS_SIZE, io_uring_sqe: 64, io_uring_cqe: CQE_SIZE } as Record<string, number>,
  offsets: {
    ...Object.fromEntries(Object.entries(PARAMS).map(([k, v]) => [`io_uring_params.${k}`, v])),
    ...Object.fromEntries(Object.entries(SQ_OFF).map(([k, v]) => [`io_sqring_offsets.${k}`, v])),
    ...Object.fromEntries(Object.entries(CQ_OFF).map(([k, v]) => [`io_cqring_offsets.${k}`, v])),
    ...Object.fromEntries(Object.entries(SQE).map(([k, v]) => [`io_uring_sqe.${k}`, v])),
    ...Object.fromEntries(Object.entries(CQE).map(([k, v]) => [`io_uring_cqe.${k}`, v])),
  } as Record<string, number>,
};
