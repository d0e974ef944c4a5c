/**
 * NVMe completion status, decoded: the 15-bit status field of a completion (dword 3 bits 31:17)
 * holds the Status Code (bits 7:0), the Status Code Type (10:8), Command Retry Delay (12:11),
 * More (13) and Do Not Retry (14).
 */
import { UserpciError, type UserpciErrorCode } from '../../errors';

const GENERIC: Record<number, string> = {
  0x00: 'Successful Completion',
  0x01: 'Invalid Command Opcode',
  0x02: 'Invalid Field in Command',
  0x03: 'Command ID Conflict',
  0x04: 'Data Transfer Error',
  0x05: 'Commands Aborted due to Power Loss Notification',
  0x06: 'Internal Error',
  0x07: 'Command Abort Requested',
  0x08: 'Command Aborted due to SQ Deletion',
  0x09: 'Command Aborted due to Failed Fused Command',
  0x0a: 'Command Aborted due to Missing Fused Command',
  0x0b: 'Invalid Namespace or Format',
  0x0c: 'Command Sequence Error',
  0x0d: 'Invalid SGL Segment Descriptor',
  0x0e: 'Invalid Number of SGL Descriptors',
  0x0f: 'Data SGL Length Invalid',
  0x10: 'Metadata SGL Length Invalid',
  0x11: 'SGL Descriptor Type Invalid',
  0x12: 'Invalid Use of Controller Memory Buffer',
  0x13: 'PRP Offset Invalid',
  0x14: 'Atomic Write Unit Exceeded',
  0x15: 'Operation Denied',
  0x16: 'SGL Offset Invalid',
  0x18: 'Host Identifier Inconsistent Format',
  0x19: 'Keep Alive Timer Expired',
  0x1a: 'Keep Alive Timeout Invalid',
  0x1b: 'Command Aborted due to Preempt and Abort',
  0x1c: 'Sanitize Failed',
  0x1d: 'Sanitize In Progress',
  0x1e: 'SGL Data Block Granularity Invalid',
  0x1f: 'Command Not Supported for Queue in CMB',
  0x20: 'Namespace is Write Protected',
  0x21: 'Command Interrupted',
  0x22: 'Transient Transport Error',
  0x80: 'LBA Out of Range',
  0x81: 'Capacity Exceeded',
  0x82: 'Namespace Not Ready',
  0x83: 'Reservation Conflict',
  0x84: 'Format In Progress',
};

const COMMAND_SPECIFIC: Record<number, string> = {
  0x00: 'Completion Queue Invalid',
  0x01: 'Invalid Queue Identifier',
  0x02: 'Invalid Queue Size',
  0x03: 'Abort Command Limit Exceeded',
  0x05: 'Asynchronous Event Request Limit Exceeded',
  0x06: 'Invalid Firmware Slot',
  0x07: 'Invalid Firmware Image',
  0x08: 'Invalid Interrupt Vector',
  0x09: 'Invalid Log Page',
  0x0a: 'Invalid Format',
  0x0b: 'Firmware Activation Requires Conventional Reset',
  0x0c: 'Invalid Queue Deletion',
  0x0d: 'Feature Identifier Not Saveable',
  0x0e: 'Feature Not Changeable',
  0x0f: 'Feature Not Namespace Specific',
  0x10: 'Firmware Activation Requires NVM Subsystem Reset',
  0x11: 'Firmware Activation Requires Controller Level Reset',
  0x12: 'Firmware Activation Requires Maximum Time Violation',
  0x13: 'Firmware Activation Prohibited',
  0x14: 'Overlapping Range',
  0x15: 'Namespace Insufficient Capacity',
  0x16: 'Namespace Identifier Unavailable',
  0x18: 'Namespace Already Attached',
  0x19: 'Namespace Is Private',
  0x1a: 'Namespace Not Attached',
  0x1b: 'Thin Provisioning Not Supported',
  0x1c: 'Controller List Invalid',
  0x80: 'Conflicting Attributes',
  0x81: 'Invalid Protection Information',
  0x82: 'Attempted Write to Read Only Range',
};

const MEDIA: Record<number, string> = {
  0x80: 'Write Fault',
  0x81: 'Unrecovered Read Error',
  0x82: 'End-to-end Guard Check Error',
  0x83: 'End-to-end Application Tag Check Error',
  0x84: 'End-to-end Reference Tag Check Error',
  0x85: 'Compare Failure',
  0x86: 'Access Denied',
  0x87: 'Deallocated or Unwritten Logical Block',
};

const PATH: Record<number, string> = {
  0x00: 'Internal Path Error',
  0x01: 'Asymmetric Access Persistent Loss',
  0x02: 'Asymmetric Access Inaccessible',
  0x03: 'Asymmetric Access Transition',
  0x60: 'Controller Pathing Error',
  0x70: 'Host Pathing Error',
  0x71: 'Command Aborted By Host',
};

const TYPES = ['Generic Command Status', 'Command Specific Status', 'Media and Data Integrity Errors', 'Path Related Status'];

export interface DecodedStatus {
  /** Status Code Type (0 generic, 1 command specific, 2 media, 3 path, 7 vendor specific). */
  sct: number;
  /** Status Code. */
  sc: number;
  /** Do Not Retry: the same command would fail again. */
  dnr: boolean;
  /** More status information is in the Error Information log page. */
  more: boolean;
  /** Command Retry Delay index (0 = retry at once). */
  crd: number;
  /** The specification's name for the status. */
  text: string;
}

/** Decode the 15-bit status field (completion dword 3 >>> 17). */
export function decodeStatus(status: number): DecodedStatus {
  const sc = status & 0xff;
  const sct = (status >>> 8) & 0x7;
  const table = sct === 0 ? GENERIC : sct === 1 ? COMMAND_SPECIFIC : sct === 2 ? MEDIA : sct === 3 ? PATH : undefined;
  const typeName = sct === 7 ? 'Vendor Specific' : TYPES[sct] ?? `status code type ${sct}`;
  const text = table?.[sc] ?? `${typeName} 0x${sc.toString(16).padStart(2, '0')}`;
  return { sct, sc, crd: (status >>> 11) & 3, more: ((status >>> 13) & 1) === 1, dnr: ((status >>> 14) & 1) === 1, text };
}

/**
 * A command the controller completed with a non-zero status. `code` is EIO, except the statuses
 * that have a closer errno: ERANGE for LBA Out of Range / Capacity Exceeded, EINVAL for invalid
 * fields and opcodes, EROFS for write-protected namespaces, ECANCELED for aborts.
 */
export class NvmeStatusError extends UserpciError {
  readonly status: number;
  readonly sct: number;
  readonly sc: number;
  readonly dnr: boolean;
  readonly statusText: string;

  constructor(readonly command: string, status: number, where: string) {
    const d = decodeStatus(status);
    super(codeFor(d), `${where}: ${command} failed: ${d.text} (SCT 0x${d.sct.toString(16)}, SC 0x${d.sc.toString(16).padStart(2, '0')}${d.dnr ? ', do not retry' : ''})`);
    this.name = 'NvmeStatusError';
    this.status = status;
    this.sct = d.sct;
    this.sc = d.sc;
    this.dnr = d.dnr;
    this.statusText = d.text;
  }
}

function codeFor(d: DecodedStatus): UserpciErrorCode {
  if (d.sct === 0) {
    if (d.sc === 0x80 || d.sc === 0x81) return 'ERANGE';
    if (d.sc === 0x01 || d.sc === 0x02 || d.sc === 0x0b || d.sc === 0x13) return 'EINVAL';
    if (d.sc === 0x20) return 'EROFS';
    if (d.sc === 0x07 || d.sc === 0x08 || d.sc === 0x1b || d.sc === 0x05) return 'ECANCELED';
  }
  if (d.sct === 1 && d.sc === 0x82) return 'EROFS';
  return 'EIO';
}
