/**
 * NVMe over PCIe, as the NVM Express Base Specification (2.0) and the NVM Command Set
 * Specification describe it, restated here in our own words: the controller registers in BAR0,
 * the doorbells after them, the 64-byte submission and 16-byte completion queue entries, and the
 * opcodes and fields this driver uses.
 */

/** PCI class code of an NVMe controller: mass storage (01), non-volatile memory (08), NVMe (02). */
export const NVME_CLASS_CODE = 0x010802;

// ---- Controller registers (BAR0), byte offsets ----

/** Controller Capabilities, 64 bits (read as two 32-bit halves). */
export const REG_CAP = 0x00;
export const REG_CAP_HI = 0x04;
/** Version: major in bits 31:16, minor 15:8, tertiary 7:0. */
export const REG_VS = 0x08;
/** Interrupt Mask Set / Clear (pin and MSI only; not used with MSI-X). */
export const REG_INTMS = 0x0c;
export const REG_INTMC = 0x10;
/** Controller Configuration. */
export const REG_CC = 0x14;
/** Controller Status. */
export const REG_CSTS = 0x1c;
/** NVM Subsystem Reset. */
export const REG_NSSR = 0x20;
/** Admin Queue Attributes: admin SQ size in bits 11:0, admin CQ size in bits 27:16, both 0's based. */
export const REG_AQA = 0x24;
/** Admin Submission / Completion Queue base addresses, 64 bits each, page aligned. */
export const REG_ASQ = 0x28;
export const REG_ACQ = 0x30;
/** The doorbells start here; CAP.DSTRD spaces them. */
export const REG_DOORBELL_BASE = 0x1000;

// ---- CAP fields (low word / high word) ----

/** Maximum Queue Entries Supported, 0's based (low word bits 15:0). */
export const capMqes = (lo: number): number => (lo & 0xffff) + 1;
/** Contiguous Queues Required (low word bit 16). */
export const capCqr = (lo: number): boolean => ((lo >>> 16) & 1) === 1;
/** Timeout: worst-case time for CSTS.RDY to change, in 500 ms units (low word bits 31:24). */
export const capTimeoutMs = (lo: number): number => Math.max(1, lo >>> 24) * 500;
/** Doorbell stride: 4 << DSTRD bytes between doorbells (high word bits 3:0). */
export const capDoorbellStride = (hi: number): number => 4 << (hi & 0xf);
/** NVM Subsystem Reset Supported (high word bit 4). */
export const capNssrs = (hi: number): boolean => ((hi >>> 4) & 1) === 1;
/** Command Sets Supported (high word bits 12:5): bit 0 NVM, bit 6 I/O command sets, bit 7 admin only. */
export const capCss = (hi: number): number => (hi >>> 5) & 0xff;
/** Memory page size minimum / maximum: 2^(12 + MPSMIN) bytes (high word bits 19:16 / 23:20). */
export const capMpsMinBytes = (hi: number): number => 4096 << ((hi >>> 16) & 0xf);
export const capMpsMaxBytes = (hi: number): number => 4096 << ((hi >>> 20) & 0xf);

// ---- CC fields ----

export const CC_EN = 1 << 0;
/** I/O Command Set Selected (bits 6:4): 0 = NVM command set. */
export const CC_CSS_NVM = 0 << 4;
/** Memory Page Size (bits 10:7): page = 2^(12 + MPS). */
export const ccMps = (pageBytes: number): number => (Math.log2(pageBytes) - 12) << 7;
/** Arbitration Mechanism Selected (bits 13:11): 0 = round robin. */
export const CC_AMS_RR = 0 << 11;
/** Shutdown Notification (bits 15:14): 01 normal, 10 abrupt. */
export const CC_SHN_MASK = 3 << 14;
export const CC_SHN_NORMAL = 1 << 14;
export const CC_SHN_ABRUPT = 2 << 14;
/** I/O Submission / Completion Queue Entry Size as a power of two (bits 19:16 / 23:20). */
export const ccIosqes = (log2: number): number => log2 << 16;
export const ccIocqes = (log2: number): number => log2 << 20;

// ---- CSTS fields ----

export const CSTS_RDY = 1 << 0;
/** Controller Fatal Status: the controller hit an error it cannot report in a completion. */
export const CSTS_CFS = 1 << 1;
/** Shutdown Status (bits 3:2): 00 normal operation, 01 shutdown in progress, 10 shutdown complete. */
export const CSTS_SHST_MASK = 3 << 2;
export const CSTS_SHST_COMPLETE = 2 << 2;
/** A read of all ones: the device stopped answering (surprise removal, dead link). */
export const CSTS_GONE = 0xffffffff;

// ---- Queue entries ----

/** Submission queue entry: 64 bytes (2^6). */
export const SQE_SIZE = 64;
export const SQE_LOG2 = 6;
/** Completion queue entry: 16 bytes (2^4). */
export const CQE_SIZE = 16;
export const CQE_LOG2 = 4;
/** Dword 3 of a completion: command identifier in bits 15:0, phase tag bit 16, status 31:17. */
export const CQE_PHASE = 1 << 16;

// ---- Admin command opcodes ----

export const ADMIN_DELETE_IO_SQ = 0x00;
export const ADMIN_CREATE_IO_SQ = 0x01;
export const ADMIN_GET_LOG_PAGE = 0x02;
export const ADMIN_DELETE_IO_CQ = 0x04;
export const ADMIN_CREATE_IO_CQ = 0x05;
export const ADMIN_IDENTIFY = 0x06;
export const ADMIN_ABORT = 0x08;
export const ADMIN_SET_FEATURES = 0x09;
export const ADMIN_GET_FEATURES = 0x0a;

/** Identify CNS values. */
export const CNS_NAMESPACE = 0x00;
export const CNS_CONTROLLER = 0x01;
export const CNS_ACTIVE_NAMESPACES = 0x02;

/** Feature identifiers. */
export const FEAT_NUMBER_OF_QUEUES = 0x07;
export const FEAT_VOLATILE_WRITE_CACHE = 0x06;

// ---- NVM command set opcodes ----

export const NVM_FLUSH = 0x00;
export const NVM_WRITE = 0x01;
export const NVM_READ = 0x02;
export const NVM_WRITE_ZEROES = 0x08;
export const NVM_DATASET_MANAGEMENT = 0x09;

/** Read/Write dword 12: Force Unit Access (bit 30). */
export const RW_FUA = 1 << 30;
/** Dataset Management dword 11: Attribute Deallocate (bit 2). */
export const DSM_DEALLOCATE = 1 << 2;
/** One Dataset Management range: 16 bytes; at most 256 ranges per command. */
export const DSM_RANGE_SIZE = 16;
export const DSM_MAX_RANGES = 256;

/** Identify Controller ONCS (Optional NVM Command Support) bits. */
export const ONCS_DATASET_MANAGEMENT = 1 << 2;
export const ONCS_WRITE_ZEROES = 1 << 3;

/** Create I/O CQ dword 11: Physically Contiguous (bit 0), Interrupts Enabled (bit 1), vector in 31:16. */
export const CQ_PC = 1 << 0;
export const CQ_IEN = 1 << 1;
/** Create I/O SQ dword 11: Physically Contiguous (bit 0), priority (2:1), completion queue id in 31:16. */
export const SQ_PC = 1 << 0;

export function opcodeName(admin: boolean, opcode: number): string {
  const table: Record<number, string> = admin
    ? {
      0x00: 'Delete I/O Submission Queue', 0x01: 'Create I/O Submission Queue', 0x02: 'Get Log Page',
      0x04: 'Delete I/O Completion Queue', 0x05: 'Create I/O Completion Queue', 0x06: 'Identify',
      0x08: 'Abort', 0x09: 'Set Features', 0x0a: 'Get Features', 0x0c: 'Asynchronous Event Request',
    }
    : { 0x00: 'Flush', 0x01: 'Write', 0x02: 'Read', 0x08: 'Write Zeroes', 0x09: 'Dataset Management' };
  return table[opcode] ?? `opcode 0x${opcode.toString(16).padStart(2, '0')}`;
}
