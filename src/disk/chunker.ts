import type { FileHandle } from 'node:fs/promises';
import { open } from 'node:fs/promises';
import { readFull } from '../fs/read.js';
import { chunkLength, type Geometry } from '../image/geometry.js';
import type { DiskSource } from './source.js';

export interface ReadChunk {
  index: number;
  raw: Buffer;
}

/**
 * Chunks of a disk that overlap its allocated extents, in position order. Holes inside a chunk
 * are zero-filled without being read; chunks with no allocated byte are not yielded (zero).
 */
export async function* readChunks(src: DiskSource, g: Geometry, onBytes?: (n: number) => void): AsyncGenerator<ReadChunk> {
  const fh: FileHandle = await open(src.rawPath, 'r');
  try {
    const ex = src.extents;
    let e = 0;
    let next = 0;
    while (e < ex.length) {
      const i = Math.max(next, Math.floor(ex[e]!.start / g.chunkSize));
      const cStart = i * g.chunkSize;
      const len = chunkLength(g, i);
      const cEnd = cStart + len;
      const raw = Buffer.alloc(len);
      // Copy every extent piece that falls in this chunk (extents are sorted, non-overlapping).
      for (let k = e; k < ex.length && ex[k]!.start < cEnd; k++) {
        const s = Math.max(ex[k]!.start, cStart);
        const t = Math.min(ex[k]!.start + ex[k]!.length, cEnd);
        if (t > s) {
          await readFull(fh, raw, s - cStart, t - s, s); // past EOF stays zero (a raw file shorter than its map)
          onBytes?.(t - s);
        }
      }
      yield { index: i, raw };
      next = i + 1;
      while (e < ex.length && ex[e]!.start + ex[e]!.length <= cEnd) e++;
    }
  } finally {
    await fh.close();
  }
}
