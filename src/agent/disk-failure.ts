import { promises as fsp } from 'node:fs';
import { errnoName } from '../fs/io-errors.js';
import { dfError, isDeskfuseError, type DeskfuseError } from '../errors.js';
import { openDisk } from './disk.js';
import { readState, writeHeader, type DiskFailure } from './state-area.js';

/**
 * The endpoint's disk failing under the agent. The agent's only local file is its disk (the server is
 * reached through the API client, whose failures are coded), so a system error during a run is the
 * disk's: DF_ERR_DISK_FULL when a file holding the disk ran out of space, DF_ERR_DISK_IO for anything
 * else (a block device's ENOSPC means its thin backing store failed, not that the disk is full).
 * The failure is then recorded in the state area's header, leaving the rest of the state as it was,
 * so `agent status` says what happened and a rerun resumes or commits.
 */
const FULL = new Set(['ENOSPC', 'EDQUOT', 'EFBIG']);

/** `err` as a coded disk error, or null when it is not a system error (coded errors pass as they are). */
export async function diskError(err: unknown, disk: string): Promise<DeskfuseError | null> {
  if (isDeskfuseError(err)) return null;
  const errno = errnoName(err);
  if (!errno) return null;
  const op = String((err as NodeJS.ErrnoException).syscall ?? 'io');
  const blockDevice = await fsp.stat(disk).then((s) => s.isBlockDevice(), () => false);
  const full = FULL.has(errno) && !blockDevice;
  const code = full ? 'DF_ERR_DISK_FULL' : 'DF_ERR_DISK_IO';
  const message = full
    ? `the disk ${disk} is full (${errno} on ${op}): free space where the disk file lives and rerun; the sync resumes where it stopped`
    : `the disk ${disk} failed (${errno} on ${op}): its writes may not have reached it; check or replace the disk, then rerun`;
  return dfError(code, message, { disk, errno, op }, err);
}

/**
 * Record `e` in the disk's state area (best effort: a disk that fails there too cannot say more).
 * Returns whether it was recorded.
 */
export async function recordDiskFailure(disk: string, e: DeskfuseError): Promise<boolean> {
  try {
    const d = await openDisk(disk, true);
    try {
      const st = await readState(d.fh, d.size);
      if (!st) return false; // nothing provisioned yet: no state to amend
      const failure: DiskFailure = {
        code: e.code as DiskFailure['code'], errno: String(e.fields.errno), op: String(e.fields.op), at: new Date().toISOString(), message: e.message,
      };
      await writeHeader(d.fh, d.size, { ...st, failure });
      return true;
    } finally {
      await d.close();
    }
  } catch {
    return false;
  }
}

/** Run `fn`; a disk failure stops it with a coded error that the disk's state also records. */
export async function stopOnDiskFailure<T>(disk: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    const e = await diskError(err, disk);
    if (!e) throw err;
    const recorded = await recordDiskFailure(disk, e);
    throw dfError(e.code, e.message, { ...e.fields, recorded }, err);
  }
}
