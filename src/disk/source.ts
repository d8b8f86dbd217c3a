import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { dfError } from '../errors.js';
import { convert, imageInfo, rawExtents, type Extent } from './qemu-img.js';

/**
 * A disk to read chunks from: a raw file read directly (only its allocated extents), or a
 * qcow2/vmdk/vhdx/vdi/… file converted by qemu-img into a sparse raw temp file first.
 */
export interface DiskSource {
  /** Raw file to read. */
  rawPath: string;
  format: string;
  virtualSize: number;
  /** Allocated, possibly non-zero regions; everything else reads as zero and is never read. */
  extents: Array<{ start: number; length: number }>;
  /** Bytes in `extents`. */
  dataBytes: number;
  close(): Promise<void>;
}

const DISK_FORMATS = new Set(['raw', 'qcow2', 'qcow', 'vmdk', 'vhdx', 'vpc', 'vdi', 'qed', 'parallels', 'dmg', 'cloop', 'bochs']);

export async function openDiskSource(file: string, tmpDir: string): Promise<DiskSource> {
  let st;
  try {
    st = await fsp.stat(file);
    await (await fsp.open(file, 'r')).close();
  } catch (cause) {
    throw dfError('DF_ERR_FILE_UNREADABLE', `cannot read ${file}: ${(cause as Error).message}`, { file }, cause);
  }
  if (!st.isFile() && !st.isBlockDevice()) throw dfError('DF_ERR_NOT_A_DISK', `${file} is not a regular file or block device`, { file });
  const info = await imageInfo(file);
  if (!DISK_FORMATS.has(info.format)) throw dfError('DF_ERR_NOT_A_DISK', `${file}: unsupported format ${info.format}`, { file, format: info.format });
  if (info.format === 'raw') {
    // Anything is "raw" to qemu-img; a disk is at least one sector and whole sectors.
    // (qemu-img rounds a raw file's size up to a sector, so look at the file itself.)
    const size = st.isFile() ? st.size : info.virtualSize;
    if (size === 0 || size % 512 !== 0) {
      throw dfError('DF_ERR_NOT_A_DISK', `${file} is not a disk image: ${size} bytes is not a whole number of 512-byte sectors`, { file, size });
    }
    return rawSource(file, info.format, info.virtualSize, async () => {});
  }
  await fsp.mkdir(tmpDir, { recursive: true });
  const tmp = path.join(tmpDir, `deskfuse-convert-${randomBytes(6).toString('hex')}.raw`);
  try {
    await convert(file, info.format, tmp, 'raw');
    return await rawSource(tmp, info.format, info.virtualSize, () => fsp.rm(tmp, { force: true }));
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
}

async function rawSource(rawPath: string, format: string, virtualSize: number, close: () => Promise<void>): Promise<DiskSource> {
  const map: Extent[] = await rawExtents(rawPath);
  const extents = map.filter((e) => e.data && !e.zero).map((e) => ({ start: e.start, length: Math.min(e.length, virtualSize - e.start) })).filter((e) => e.length > 0);
  return { rawPath, format, virtualSize, extents, dataBytes: extents.reduce((n, e) => n + e.length, 0), close };
}
