import { constants } from 'node:fs';
import { open, realpath, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { ERR } from './packet.js';

/**
 * Map a requested TFTP filename to a file inside the read-only root.
 * A leading `/` means the root (PXE configs ask for `/pxelinux.0`); `\` is a separator too (Windows
 * PXE configs), so `..\x` is caught like `../x`. Any `..` component is refused outright, even one that
 * would stay inside, and so is a path whose realpath leaves the root (a symlink out).
 */
export type Resolved =
  | { ok: true; fh: FileHandle; size: number; path: string }
  | { ok: false; code: number; reason: string };

export function safeRelative(requested: string): string | undefined {
  if (requested.includes('\0')) return undefined;
  const parts = requested.replaceAll('\\', '/').split('/').filter((p) => p !== '' && p !== '.');
  if (parts.some((p) => p === '..')) return undefined;
  return parts.join('/');
}

const inside = (root: string, p: string): boolean => p === root || p.startsWith(root.endsWith(path.sep) ? root : root + path.sep);

/** `rootReal` must already be a realpath. Opens the file: the caller owns `fh`. */
export async function openInRoot(rootReal: string, requested: string): Promise<Resolved> {
  const rel = safeRelative(requested);
  if (rel === undefined) return { ok: false, code: ERR.ACCESS, reason: 'path traversal' };
  if (rel === '') return { ok: false, code: ERR.NOT_FOUND, reason: 'no file name' };
  let real: string;
  try {
    real = await realpath(path.join(rootReal, rel));
  } catch {
    return { ok: false, code: ERR.NOT_FOUND, reason: 'not found' };
  }
  if (!inside(rootReal, real)) return { ok: false, code: ERR.ACCESS, reason: 'outside the root' };
  let fh: FileHandle;
  try {
    // O_NOFOLLOW: a symlink swapped in after realpath is refused rather than followed.
    fh = await open(real, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return { ok: false, code: code === 'ENOENT' ? ERR.NOT_FOUND : ERR.ACCESS, reason: code ?? 'open failed' };
  }
  const st = await fh.stat().catch(() => undefined);
  if (!st?.isFile()) {
    await fh.close();
    return { ok: false, code: ERR.NOT_FOUND, reason: 'not a regular file' };
  }
  return { ok: true, fh, size: st.size, path: real };
}
