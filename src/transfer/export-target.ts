import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { dfError } from '../errors.js';

/**
 * Where an export lands. `--to` names a file, or an existing directory (then the file is
 * `DIR/<image>-v<N>.img|qcow2`). The bytes go to `<file>.part` beside it — kept when the export
 * stops, so the next run resumes from it — and reach the file's name only when complete. An
 * existing file is replaced only when asked (`force`); otherwise the final step is a link, which
 * fails rather than overwrite a file that appeared meanwhile.
 */
export interface ExportTarget {
  file: string;
  part: string;
}

export async function exportTarget(to: string, image: string, version: number, format: 'raw' | 'qcow2', force: boolean): Promise<ExportTarget> {
  let file = path.resolve(to);
  const st = await statOrNull(file);
  if (st?.isDirectory()) {
    file = path.join(file, `${image}-v${version}.${format === 'raw' ? 'img' : 'qcow2'}`);
  } else if (!st && (to.endsWith('/') || to.endsWith(path.sep))) {
    throw dfError('DF_ERR_OUTPUT_DIR', `--to ${to}: no such directory: nothing was written`, { path: to });
  }
  const dir = path.dirname(file);
  const d = await statOrNull(dir);
  if (!d?.isDirectory()) {
    throw dfError('DF_ERR_OUTPUT_DIR', `--to ${to}: ${d ? 'is not a directory' : 'no such directory'}: ${dir}; nothing was written`, { path: to, dir });
  }
  const existing = file === path.resolve(to) ? st : await statOrNull(file);
  if (existing?.isDirectory()) throw dfError('DF_ERR_FILE_EXISTS', `${file} is a directory: nothing was written`, { path: file });
  if (existing && !force) throw dfError('DF_ERR_FILE_EXISTS', `${file} exists: nothing was written (--force replaces it)`, { path: file });
  return { file, part: `${file}.part` };
}

/** Give the complete temp file its name: replace only when forced, else refuse a file that appeared meanwhile. */
export async function publishExport(from: string, file: string, force: boolean): Promise<void> {
  if (force) return fsp.rename(from, file);
  try {
    await fsp.link(from, file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw dfError('DF_ERR_FILE_EXISTS', `${file} appeared during the export: left as it was; the export is in ${from} (--force replaces it)`, { path: file, part: from });
    throw err;
  }
  await fsp.rm(from);
}

async function statOrNull(p: string) {
  try {
    return await fsp.stat(p);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw err;
  }
}
