/**
 * UblkServer: a block device of ours as a kernel block device, /dev/ublkbN, through ublk
 * (Linux 6.0+, ublk_drv). The kernel's block layer hands each request to one of our queues as
 * an io_uring command completion; we serve it from the BlockDevice and commit the result with
 * the next fetch in the same command. One queue per device given (e.g. one per NVMe queue pair).
 *
 *   const server = await UblkServer.start([dev0, dev1]);   // /dev/ublkb<server.id>
 *   ...
 *   await server.close();                                  // disk removed, device deleted
 *
 * A killed server leaves its disk failing every request with EIO (the kernel aborts the queues
 * when the io_urings go away). Every start deletes such leftovers that a UblkServer added (its
 * mark in the device's ublksrv_flags) in a process that is gone; `start({ id })` also deletes a
 * dead server's leftover with that id whoever added it.
 */
import { existsSync, readdirSync } from 'node:fs';
import { EventEmitter } from 'node:events';
import { describeValue, optionsObject } from '../../arguments';
import { InvalidArgumentError, UserpciError } from '../../errors';
import { constants as C, native } from '../../native';
import * as U from '../../uapi/ublk';
import type { UblkBlockDevice } from './block-device';
import { UblkControl, type UblkDeviceInfo } from './control';
import { UblkQueue } from './queue';

export interface UblkServerOptions {
  /** Device id (/dev/ublkbN); default: the driver picks. A leftover whose server died is deleted first. */
  id?: number;
  /** Tags per queue (requests in flight); default 64, at most 4096. */
  depth?: number;
  /** Largest request, bytes (a multiple of 4 KiB); default min(512 KiB, the device's maxRequest). */
  maxIoBytes?: number;
  /** Announce a volatile write cache (flush, FUA); default: the device's volatileCache. */
  writeCache?: boolean;
  /**
   * When a queue has no request left in flight after a commit, spin this long (µs) for the
   * client's next request before sleeping in the event loop (default 0: sleep at once).
   */
  idleSpinUs?: number;
  /**
   * Each queue's ring defers the kernel's work (posting new requests) until the server enters
   * it, instead of interrupting the server per request (IoUringOptions.deferTaskrun; default false).
   */
  deferTaskrun?: boolean;
  /** Delete the devices UblkServers of dead processes left behind (default true). */
  reclaim?: boolean;
}

/** A device a dead server left, deleted at start. */
export interface ReclaimedDevice {
  id: number;
  /** The process that added it. */
  pid: number;
}

/** The high half of ublksrv_flags on the devices UblkServer adds: 'upci'. The low half is the pid. */
export const UBLK_OWNER_MARK = 0x75706369;

export class UblkServer extends EventEmitter {
  private state: 'running' | 'closing' | 'closed' = 'running';
  private closing: Promise<void> | null = null;

  private constructor(
    readonly info: UblkDeviceInfo,
    private readonly control: UblkControl,
    private readonly cdevFd: number,
    readonly queues: UblkQueue[],
    readonly devices: UblkBlockDevice[],
    /** Leftovers of dead servers this start deleted. */
    readonly reclaimed: ReclaimedDevice[],
  ) {
    super();
  }

  /** The ublk device id: the disk is /dev/ublkb<id>, its server side /dev/ublkc<id>. */
  get id(): number {
    return this.info.devId;
  }

  get diskPath(): string {
    return `/dev/ublkb${this.info.devId}`;
  }

  /**
   * Adds the device, sets its parameters from the block device, starts one queue per device
   * given (all must be views of one disk: same size and block size), and starts the disk.
   * The driver may grant fewer queues than asked (at most one per CPU): the extra devices go unused.
   */
  static async start(devices: UblkBlockDevice | UblkBlockDevice[], options: UblkServerOptions = {}): Promise<UblkServer> {
    options = optionsObject(options, 'ublk options');
    const devs = Array.isArray(devices) ? devices : [devices];
    if (devs.some((d) => d === null || typeof d !== 'object')) throw new InvalidArgumentError(`ublk: a queue's device must be a block device object, got ${describeValue(devs.find((d) => d === null || typeof d !== 'object'))}`);
    if (devs.length === 0 || devs.length > U.UBLK_MAX_NR_QUEUES) throw new InvalidArgumentError(`ublk: 1..${U.UBLK_MAX_NR_QUEUES} queues, got ${devs.length}`);
    const first = devs[0]!;
    for (const d of devs) {
      if (d.size !== first.size || d.blockSize !== first.blockSize) throw new InvalidArgumentError('ublk: every queue must serve the same disk (size and block size differ)');
    }
    const bs = first.blockSize;
    if (!(bs >= 512 && bs <= C.PAGE_SIZE && (bs & (bs - 1)) === 0)) throw new InvalidArgumentError(`ublk: block size ${bs} is not a power of two in 512..${C.PAGE_SIZE}`);
    if (first.size % bs !== 0 || first.size === 0) throw new InvalidArgumentError(`ublk: size ${first.size} is not a positive multiple of ${bs}`);
    const depth = options.depth ?? 64;
    if (!Number.isInteger(depth) || depth < 1 || depth > U.UBLK_MAX_QUEUE_DEPTH) throw new InvalidArgumentError(`ublk: depth must be 1..${U.UBLK_MAX_QUEUE_DEPTH}, got ${depth}`);
    const maxIo = options.maxIoBytes ?? Math.min(512 << 10, Math.floor(first.maxRequest / 4096) * 4096);
    if (!Number.isInteger(maxIo) || maxIo < 4096 || maxIo % 4096 !== 0 || maxIo > first.maxRequest) {
      throw new InvalidArgumentError(`ublk: maxIoBytes must be a multiple of 4096 in 4096..${first.maxRequest}, got ${maxIo}`);
    }
    const control = UblkControl.open();
    let info: UblkDeviceInfo | null = null;
    let cdevFd = -1;
    const queues: UblkQueue[] = [];
    try {
      const features = await control.features();
      if (!(features & U.UBLK_F_CMD_IOCTL_ENCODE)) throw new UserpciError('ENOTSUP', 'ublk: this driver lacks ioctl-encoded commands (Linux 6.1 or later needed)');
      const reclaimed = options.reclaim === false ? [] : await reclaimDeadOwned(control);
      if (options.id !== undefined) await reclaimLeftover(control, options.id);
      info = await control.add({
        devId: options.id ?? -1, queues: devs.length, depth, maxIoBytes: maxIo, flags: U.UBLK_F_CMD_IOCTL_ENCODE,
        serverFlagsHigh: UBLK_OWNER_MARK, serverFlagsLow: process.pid,
      });
      const volatileCache = options.writeCache ?? first.volatileCache ?? false;
      await control.setParams(info.devId, {
        logicalBlockSize: bs, physicalBlockSize: bs, size: first.size, maxIoBytes: info.maxIoBytes, readOnly: first.readOnly,
        volatileCache, fua: volatileCache,
        maxDiscardBytes: first.canTrim ? Math.floor(Math.min(first.maxRequest, 1 << 30) / bs) * bs : 0,
        maxWriteZeroesBytes: first.canWriteZeroes ? Math.floor(Math.min(first.maxRequest, 1 << 30) / bs) * bs : 0,
        discardGranularity: bs,
      });
      cdevFd = await openCdev(info.devId);
      let failed: Error | null = null;
      for (let q = 0; q < info.queues; q++) {
        queues.push(new UblkQueue(q, info.depth, cdevFd, devs[q]!, info.maxIoBytes, (e) => (failed ??= e), options.idleSpinUs ?? 0, options.deferTaskrun ?? false));
      }
      for (const q of queues) q.start();
      await control.start(info.devId, process.pid);
      if (failed) throw failed;
      const server = new UblkServer(info, control, cdevFd, queues, devs.slice(0, info.queues), reclaimed);
      return server;
    } catch (e) {
      for (const q of queues) q.close();
      if (cdevFd >= 0) native.close(cdevFd);
      if (info) await control.delete(info.devId).catch(() => undefined);
      control.close();
      throw e;
    }
  }

  /** Requests served, over all queues. */
  get requests(): number {
    return this.queues.reduce((n, q) => n + q.stats.requests, 0);
  }

  /**
   * Removes the disk (requests in flight finish first), gives the tags back, closes the
   * server side and deletes the device. Idempotent.
   */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.state = 'closing';
    this.closing = (async () => {
      const id = this.info.devId;
      let error: unknown = null;
      try {
        await this.control.stop(id);
      } catch (e) {
        error = e;
      }
      await Promise.all(this.queues.map((q) => q.idle()));
      // STOP_DEV aborts every fetch; do not wait on a device that never got that far.
      if (!error) await Promise.all(this.queues.map((q) => q.aborted()));
      // Every queue closed whatever one of them says: a ring left open keeps the process alive.
      for (const q of this.queues) {
        try {
          q.close();
        } catch (e) {
          error ??= e;
        }
      }
      native.close(this.cdevFd);
      try {
        await this.control.delete(id);
      } catch (e) {
        error ??= e;
      }
      this.control.close();
      this.state = 'closed';
      this.emit('close');
      if (error) throw error;
    })();
    return this.closing;
  }

  get isClosed(): boolean {
    return this.state === 'closed';
  }
}

/** /dev/ublkcN appears once devtmpfs has it; ADD_DEV returns before that on a busy machine. */
export async function openCdev(devId: number): Promise<number> {
  const path = `/dev/ublkc${devId}`;
  for (let i = 0; ; i++) {
    try {
      return native.open(path, C.O_RDWR);
    } catch (e) {
      if ((e as { code?: string }).code !== 'ENOENT' || i >= 200) throw new UserpciError('ENOENT', `ublk: cannot open ${path}: ${(e as Error).message}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * Every device a UblkServer added (our mark in ublksrv_flags) whose adding process and server
 * are both gone: stopped and deleted. Best effort: a device that vanishes or refuses meanwhile
 * is left alone (another process may be reclaiming it too).
 */
export async function reclaimDeadOwned(control: UblkControl): Promise<ReclaimedDevice[]> {
  let names: string[];
  try {
    names = readdirSync('/sys/class/ublk-char');
  } catch {
    return [];
  }
  const out: ReclaimedDevice[] = [];
  for (const name of names) {
    const m = /^ublkc(\d+)$/.exec(name);
    if (!m) continue;
    const id = Number(m[1]);
    try {
      const info = await control.info(id);
      if (info.serverFlagsHigh !== UBLK_OWNER_MARK) continue;
      const pid = info.serverFlagsLow;
      if (processAlive(pid) || (info.serverPid > 0 && processAlive(info.serverPid))) continue;
      await control.stop(id).catch(() => undefined);
      await control.delete(id);
      out.push({ id, pid });
    } catch {
      // gone meanwhile, or not ours to delete
    }
  }
  return out;
}

/** A device with this id whose server is gone (killed): stop and delete it so the id can be reused. */
export async function reclaimLeftover(control: UblkControl, id: number): Promise<void> {
  if (!existsSync(`/dev/ublkc${id}`) && !existsSync(`/sys/class/ublk-char/ublkc${id}`)) return;
  let info: UblkDeviceInfo;
  try {
    info = await control.info(id);
  } catch (e) {
    if ((e as { code?: string }).code === 'ENODEV' || (e as { code?: string }).code === 'ENOENT') return;
    throw e;
  }
  if (info.serverPid > 0 && processAlive(info.serverPid)) {
    throw new UserpciError('EBUSY', `ublk device ${id} is served by process ${info.serverPid}`);
  }
  await control.stop(id).catch(() => undefined);
  await control.delete(id);
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as { code?: string }).code === 'EPERM';
  }
}
