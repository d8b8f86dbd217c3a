import { execa } from 'execa';
import { dfError } from '../errors.js';

/** Thin wrappers over `qemu-img` (Debian qemu-utils), run with execa; failures become coded errors. */
export const QEMU_IMG = 'qemu-img';

export async function qemuImg(args: string[]): Promise<string> {
  try {
    const r = await execa(QEMU_IMG, args, { stripFinalNewline: true });
    return r.stdout;
  } catch (cause) {
    const e = cause as { code?: string; stderr?: string; shortMessage?: string };
    if (e.code === 'ENOENT') {
      throw dfError('DF_ERR_TOOL_MISSING', 'qemu-img is not installed (run `npm run setup:deps` or `apt-get install -y qemu-utils`)', { tool: QEMU_IMG }, cause);
    }
    throw dfError('DF_ERR_TOOL_FAILED', `qemu-img ${args[0]} failed: ${(e.stderr || e.shortMessage || '').trim().split('\n').slice(-2).join(' ')}`, { tool: QEMU_IMG, args }, cause);
  }
}

export interface ImageInfo {
  format: string;
  virtualSize: number;
}

export async function imageInfo(file: string): Promise<ImageInfo> {
  const j = JSON.parse(await qemuImg(['info', '--output=json', file])) as { format: string; 'virtual-size': number };
  return { format: j.format, virtualSize: j['virtual-size'] };
}

export interface Extent {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}

/** Allocation map of a raw file (qemu-img asks the filesystem with SEEK_DATA/SEEK_HOLE). */
export async function rawExtents(file: string): Promise<Extent[]> {
  return JSON.parse(await qemuImg(['map', '-f', 'raw', '--output=json', file])) as Extent[];
}

export async function convert(src: string, srcFormat: string, dst: string, dstFormat: string): Promise<void> {
  await qemuImg(['convert', '-f', srcFormat, '-O', dstFormat, src, dst]);
}
