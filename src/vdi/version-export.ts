import { idHex } from '../chunk/id.js';
import type { RawChunkCache } from '../chunk/raw-cache.js';
import { dfError } from '../errors.js';
import type { ChunkIndex } from '../image/chunk-index.js';
import { DEFAULT_MAX_PAYLOAD, STATE } from '../nbd/constants.js';
import type { NbdExport } from '../nbd/export.js';
import type { Extent } from '../nbd/transmission.js';

/** Block sizes of every deskfuse export: any byte alignment works, 4 KiB is what disks like. */
export const BLOCK_SIZE = { minimum: 1, preferred: 4096, maximum: DEFAULT_MAX_PAYLOAD } as const;

/**
 * A version as a read-only NBD export: chunks come from the verified raw-chunk cache, zero chunks are
 * holes (so `nbdcopy` and `qemu-img convert` skip them through base:allocation).
 */
export class VersionExport implements NbdExport {
  readonly readOnly = true;
  readonly blockSize = BLOCK_SIZE;
  readonly size: number;

  constructor(readonly name: string, readonly description: string, private readonly index: ChunkIndex, private readonly chunks: RawChunkCache) {
    this.size = index.geometry.virtualSize;
  }

  async read(offset: number, length: number): Promise<Buffer[]> {
    const cs = this.index.geometry.chunkSize;
    const parts: Array<Promise<Buffer> | Buffer> = [];
    for (let at = offset; at < offset + length;) {
      const i = Math.floor(at / cs);
      const within = at - i * cs;
      const n = Math.min(cs - within, offset + length - at);
      parts.push(this.index.isZeroAt(i) ? Buffer.alloc(n) : this.chunks.read(idHex(this.index.idAt(i)), within, n));
      at += n;
    }
    return Promise.all(parts);
  }

  async readInto(offset: number, out: Buffer): Promise<void> {
    const cs = this.index.geometry.chunkSize;
    const jobs: Promise<void>[] = [];
    for (let at = 0; at < out.length;) {
      const pos = offset + at;
      const i = Math.floor(pos / cs);
      const within = pos - i * cs;
      const n = Math.min(cs - within, out.length - at);
      if (this.index.isZeroAt(i)) out.fill(0, at, at + n);
      else jobs.push(this.chunks.readInto(idHex(this.index.idAt(i)), within, n, out, at));
      at += n;
    }
    await Promise.all(jobs);
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    return zeroChunkExtents(this.index, offset, length, (i) => this.index.isZeroAt(i));
  }

  write(): Promise<void> { return Promise.reject(readOnly(this.name)); }
  zero(): Promise<void> { return Promise.reject(readOnly(this.name)); }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

/** Extents at chunk granularity: runs of chunks that are holes (`isHole`) or data, merged. */
export function zeroChunkExtents(index: ChunkIndex, offset: number, length: number, isHole: (i: number) => boolean): Extent[] {
  const { chunkSize: cs, virtualSize } = index.geometry;
  const out: Extent[] = [];
  const end = Math.min(offset + length, virtualSize);
  for (let at = offset; at < end;) {
    const i = Math.floor(at / cs);
    const n = Math.min((i + 1) * cs, virtualSize) - at;
    const flags = isHole(i) ? STATE.HOLE | STATE.ZERO : 0;
    const last = out[out.length - 1];
    if (last && last.flags === flags) last.length += n;
    else out.push({ length: n, flags });
    at += n;
    // Enough for the client to go on; a huge disk need not be described in one reply.
    if (out.length >= 4096) break;
  }
  return out;
}

function readOnly(name: string) {
  return dfError('DF_ERR_FORBIDDEN', `export ${name} is read-only`, { export: name });
}
