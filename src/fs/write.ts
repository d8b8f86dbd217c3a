import type { FileHandle } from 'node:fs/promises';

/** All of `buf` at file offset `pos` (write(2) may write fewer bytes than asked: loop until done). */
export async function writeFull(fh: FileHandle, buf: Buffer, pos: number): Promise<void> {
  let done = 0;
  while (done < buf.length) done += (await fh.write(buf, done, buf.length - done, pos + done)).bytesWritten;
}
