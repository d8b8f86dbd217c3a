import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { storeIoError } from './io-errors.js';
import { writeFull } from './write.js';

/**
 * Write a file so that its name never points at bytes a crash could lose: a temp file beside it,
 * fdatasync, rename, then (with `syncDir`) fsync of the folder so the name itself survives.
 * `content` is the bytes, or pieces written as they come (a delta built frame by frame); `final` is
 * the name, or a folder and a function that names the file once its content is written (a file
 * named by its own hash). A failed write removes its temp file (a full disk must not stay full of
 * partial files) and throws DF_ERR_NO_SPACE or DF_ERR_STORE_IO naming `what`. Returns the path.
 * Temp files are named `.tmp-…` (a store's scrub removes the ones a crash left).
 */
export async function writeDurable(
  final: string | { dir: string; name: () => string }, content: Buffer | AsyncIterable<Buffer>, syncDir = true,
  what = typeof final === 'string' ? path.basename(final) : final.dir,
): Promise<string> {
  const dir = typeof final === 'string' ? path.dirname(final) : final.dir;
  const stem = typeof final === 'string' ? path.basename(final).slice(0, 16) : 'new';
  const tmp = path.join(dir, `.tmp-${stem}-${randomBytes(6).toString('hex')}`);
  let file: string;
  try {
    const fh = await fsp.open(tmp, 'wx', 0o644);
    try {
      if (Buffer.isBuffer(content)) await fh.writeFile(content);
      else {
        let pos = 0;
        for await (const piece of content) {
          await writeFull(fh, piece, pos);
          pos += piece.length;
        }
      }
      await fh.datasync();
    } finally {
      await fh.close();
    }
    file = typeof final === 'string' ? final : path.join(dir, final.name());
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.rm(tmp, { force: true }).catch(() => {}); // nothing there when the open failed
    throw storeIoError(err, 'write', what);
  }
  if (syncDir) await fsyncDir(dir);
  return file;
}

/** fsync a folder, so the names created or renamed in it survive a crash (DF_ERR_STORE_IO if not). */
export async function fsyncDir(dir: string): Promise<void> {
  try {
    const fh = await fsp.open(dir, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch (err) {
    throw storeIoError(err, 'sync', `folder ${path.basename(dir)}`);
  }
}
