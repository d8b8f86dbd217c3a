import { promises as fsp, readFileSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { backupGpt, entrySectors, parseHeader, toDiskView, toImageView, type GptView } from '../disk/gpt.js';
import { isZero } from '../chunk/id.js';
import { dfError } from '../errors.js';
import { readAt, readFull } from '../fs/read.js';
import { writeFull } from '../fs/write.js';
import { sealedThrough } from './state-area.js';

/** The endpoint's disk: a block device or (tests, benchmarks) a regular file. */
export interface Disk {
  path: string;
  fh: FileHandle;
  size: number;
  /** Logical sector size: the unit of the disk's GPT (512 for a file). */
  sectorSize: number;
  /** Set by the session: the image region reads as the image's bytes (see src/disk/gpt.ts). */
  view: GptView | null;
  /** A regular file's mtime when opened (ms); null for a block device (writes do not change it). */
  mtimeMs: number | null;
  close(): Promise<void>;
}

export async function openDisk(path: string, writable: boolean): Promise<Disk> {
  let fh: FileHandle;
  try {
    fh = await fsp.open(path, writable ? 'r+' : 'r');
  } catch (cause) {
    throw dfError('DF_ERR_FILE_UNREADABLE', `cannot open disk ${path}: ${(cause as Error).message}`, { disk: path }, cause);
  }
  const st = await fh.stat();
  let size = st.size;
  let sectorSize = 512;
  if (st.isBlockDevice()) {
    // fstat gives 0 for a block device; the kernel publishes its size in 512-byte sectors.
    const maj = Number(st.rdev >> 8) & 0xfff;
    const min = (Number(st.rdev) & 0xff) | ((Number(st.rdev) >> 12) & 0xfff00);
    size = Number(readFileSync(`/sys/dev/block/${maj}:${min}/size`, 'utf8').trim()) * 512;
    try { sectorSize = Number(readFileSync(`/sys/dev/block/${maj}:${min}/queue/logical_block_size`, 'utf8').trim()) || 512; } catch { /* a partition: 512 */ }
  } else if (!st.isFile()) {
    await fh.close();
    throw dfError('DF_ERR_NOT_A_DISK', `${path} is neither a block device nor a regular file`, { disk: path });
  }
  // A run that sealed the disk clean stamps the file's mtime with the header's `sealed at` last of
  // all, so a write after it (the OS, a loop mount, a tool) shows as a changed mtime (state-area.ts).
  const close = async () => {
    const sealed = writable && st.isFile() ? sealedThrough(fh) : undefined;
    try {
      if (sealed) await fh.utimes(new Date(), new Date(sealed));
    } finally {
      await fh.close();
    }
  };
  return { path, fh, size, sectorSize, view: null, mtimeMs: st.isFile() ? st.mtimeMs : null, close };
}

/** Bytes of the image region at `pos`, as the image has them (the disk's GPT fields mapped back). */
export async function readChunkAt(d: Disk, pos: number, len: number): Promise<Buffer> {
  const buf = await readAt(d.fh, pos, len);
  if (d.view) toImageView(buf, pos, d.view);
  return buf;
}

/** readChunkAt into buf[0, len) (reused by the caller); past the end of the disk reads as zeros. */
export async function readChunkInto(d: Disk, buf: Buffer, pos: number, len: number): Promise<Buffer> {
  const out = buf.subarray(0, len);
  const n = await readFull(d.fh, out, 0, len, pos);
  out.fill(0, n);
  if (d.view) toImageView(out, pos, d.view);
  return out;
}

/**
 * Give the disk a valid GPT for its size (src/disk/gpt.ts) when the image holds one: the backup
 * entries and header in the last `reserve` bytes first, then the protective MBR and primary header
 * as the disk wants them. Writes only what differs; every step leaves a disk that reads as the
 * same image. Returns whether the disk now has the GPT (false: the image has none, or an exotic one).
 */
export async function sealGpt(d: Disk, reserve: number): Promise<boolean> {
  if (!d.view) return false;
  const ss = d.sectorSize;
  const head = await readAt(d.fh, 0, 2 * ss);
  const want = Buffer.from(head);
  toImageView(want, 0, d.view);
  toDiskView(want, 0, d.view);
  const h = parseHeader(want.subarray(ss, 2 * ss));
  if (!h || h.entriesLba < 2n || entrySectors(h, ss) * ss + ss > reserve) return false;
  const entries = await readChunkAt(d, Number(h.entriesLba) * ss, entrySectors(h, ss) * ss);
  const backup = backupGpt(want.subarray(ss, 2 * ss), entries, d.view);
  if (!backup) return false;
  if (!(await readAt(d.fh, backup.offset, backup.bytes.length)).equals(backup.bytes)) {
    await writeFull(d.fh, backup.bytes, backup.offset);
    await d.fh.datasync();
  }
  if (!head.equals(want)) {
    await writeFull(d.fh, want, 0);
    await d.fh.datasync();
  }
  return true;
}

const SAMPLE = 2 * 1024 * 1024;

/**
 * Whether the disk holds non-zero bytes where deskfuse would find them outside a scan of the image:
 * its first MiB (partition tables, boot code), the MiB after the image (`imageSize`, 0 for none)
 * and its last 2 MiB (backup GPT, state headers of this and earlier layouts).
 */
export async function hasDataOutside(d: Disk, imageSize: number): Promise<boolean> {
  const ranges: Array<[number, number]> = [[0, SAMPLE / 2], [imageSize, SAMPLE / 2], [Math.max(0, d.size - SAMPLE), SAMPLE]];
  for (const [pos, len] of ranges) {
    const n = Math.min(len, d.size - pos);
    if (n > 0 && !isZero(await readAt(d.fh, pos, n))) return true;
  }
  return false;
}
