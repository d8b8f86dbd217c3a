import { readSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';

/**
 * Positional reads that do not stop at a short read: read(2) may return fewer bytes than asked
 * (signals, network and FUSE file systems, pipes), so every caller that wants `len` bytes loops.
 * Both fill buf[off, off+len) from file offset `pos` and return how many bytes they read: fewer
 * than `len` only at the end of the file (the rest of `buf` is left as it was).
 */
export async function readFull(fh: FileHandle, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  let done = 0;
  while (done < len) {
    const { bytesRead } = await fh.read(buf, off + done, len - done, pos + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

/** readFull with a synchronous read (worker threads; page-cache reads of the process's own files). */
export function readFullSync(fd: number, buf: Buffer, off: number, len: number, pos: number): number {
  let done = 0;
  while (done < len) {
    const r = readSync(fd, buf, off + done, len - done, pos + done);
    if (r === 0) break;
    done += r;
  }
  return done;
}

/** `len` bytes at `pos` in a new buffer; past the end of the file reads as zeros. */
export async function readAt(fh: FileHandle, pos: number, len: number): Promise<Buffer> {
  const buf = Buffer.alloc(len);
  await readFull(fh, buf, 0, len, pos);
  return buf;
}

/** readFullSync that must get all `len` bytes: a short read throws (`what` names the file). */
export function readExactSync(fd: number, buf: Buffer, off: number, len: number, pos: number, what: string): void {
  const got = readFullSync(fd, buf, off, len, pos);
  if (got < len) throw new Error(`${what}: short read at ${pos + got}`);
}
