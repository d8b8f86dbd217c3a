import { promises as fsp, readFileSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { dfError } from '../errors.js';

/** The endpoint's disk: a block device or (tests, benchmarks) a regular file. */
export interface Disk {
  path: string;
  fh: FileHandle;
  size: number;
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
  if (st.isBlockDevice()) {
    // fstat gives 0 for a block device; the kernel publishes its size in 512-byte sectors.
    const maj = Number(st.rdev >> 8) & 0xfff;
    const min = (Number(st.rdev) & 0xff) | ((Number(st.rdev) >> 12) & 0xfff00);
    size = Number(readFileSync(`/sys/dev/block/${maj}:${min}/size`, 'utf8').trim()) * 512;
  } else if (!st.isFile()) {
    await fh.close();
    throw dfError('DF_ERR_NOT_A_DISK', `${path} is neither a block device nor a regular file`, { disk: path });
  }
  return { path, fh, size, close: () => fh.close() };
}

export async function readChunkAt(d: Disk, pos: number, len: number): Promise<Buffer> {
  const buf = Buffer.alloc(len);
  let done = 0;
  while (done < len) {
    const { bytesRead } = await d.fh.read(buf, done, len - done, pos + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return buf;
}
