import { closeSync, openSync } from 'node:fs';
import { hashBytes, ID_BYTES, isZero } from '../chunk/id.js';
import { toImageView, type GptView } from '../disk/gpt.js';
import { readFullSync } from '../fs/read.js';
import { blocksPerChunk, chunkLength, type Geometry } from '../image/geometry.js';
import { BLOCK_HASH_BYTES, blockHashes } from './blockhash.js';

/**
 * Hash the chunks [first, end) of a disk (one stripe of them): what a worker thread runs (or the caller itself when no
 * worker file is at hand, as under the test runner). Reads only allocated extents, in big
 * sequential pieces; a chunk with no allocated byte is zero without being read.
 */
export interface ScanRangeArgs {
  path: string;
  geometry: Geometry;
  first: number;
  end: number;
  /** This worker reads every `stripes`-th batch of 4 MiB starting with batch `stripe`, so work
   *  spreads evenly however the data lies on the disk. Positions it skips stay zero in `ids`. */
  stripe: number;
  stripes: number;
  /** Bytes per read batch (default 4 MiB; tests use small ones to exercise striping). */
  batchBytes?: number;
  /** Allocated extents, sorted; null = everything (a block device). */
  extents: Array<{ start: number; length: number }> | null;
  /** Ids the disk should hold for [first, end) (32 bytes each); null = unknown (compute every hint). */
  expected: Uint8Array | null;
  /** The disk holds the image's GPT as the disk wants it (src/disk/gpt.ts): hash the image's bytes. */
  view?: GptView | null;
}

export interface ScanRangeResult {
  /** Actual ids for [first, end), 32 bytes each, zero = zero chunk. */
  ids: Uint8Array;
  /** Positions whose id differs from `expected` (all non-zero ones when expected is null). */
  changed: Uint32Array;
  /** Block hints of the changed positions, blocksPerChunk × 4 bytes each, in `changed` order. */
  hints: Uint8Array;
  bytesRead: number;
}

export const READ_SIZE = 4 * 1024 * 1024;

export function scanRange(a: ScanRangeArgs): ScanRangeResult {
  const g = a.geometry;
  const n = a.end - a.first;
  const ids = new Uint8Array(n * ID_BYTES);
  const changed: number[] = [];
  const hintParts: Buffer[] = [];
  const hintLen = blocksPerChunk(g) * BLOCK_HASH_BYTES;
  const per = Math.max(1, Math.floor((a.batchBytes ?? READ_SIZE) / g.chunkSize));
  const buf = Buffer.alloc(per * g.chunkSize);
  const fd = openSync(a.path, 'r');
  let bytesRead = 0;
  try {
    for (let i = a.first + a.stripe * per; i < a.end; i += per * a.stripes) {
      const k = Math.min(per, a.end - i);
      const start = i * g.chunkSize;
      const len = Math.min(k * g.chunkSize, g.virtualSize - start);
      bytesRead += readAllocated(fd, buf, start, len, a.extents);
      if (a.view && start < 2 * a.view.sectorSize) toImageView(buf.subarray(0, len), start, a.view);
      for (let j = 0; j < k; j++) {
        const pos = i + j;
        const raw = buf.subarray(j * g.chunkSize, j * g.chunkSize + chunkLength(g, pos));
        const o = (pos - a.first) * ID_BYTES;
        if (!isZero(raw)) ids.set(hashBytes(raw), o);
        const id = ids.subarray(o, o + ID_BYTES);
        const exp = a.expected?.subarray(o, o + ID_BYTES);
        const differs = exp ? Buffer.compare(id, exp) !== 0 : !id.every((x) => x === 0);
        if (differs) {
          changed.push(pos);
          hintParts.push(blockHashes(raw, g));
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  const hints = new Uint8Array(changed.length * hintLen);
  hintParts.forEach((h, k) => hints.set(h, k * hintLen));
  return { ids, changed: Uint32Array.from(changed), hints, bytesRead };
}

/** Fill buf[0, len) with the disk bytes at `start`: allocated extents read, holes zeroed. */
function readAllocated(fd: number, buf: Buffer, start: number, len: number, extents: ScanRangeArgs['extents']): number {
  if (!extents) {
    const n = readFullSync(fd, buf, 0, len, start);
    buf.fill(0, n, len); // past the end of a short file reads as zero, never as the previous batch
    return n;
  }
  buf.fill(0, 0, len);
  let n = 0;
  const end = start + len;
  // binary search the first extent ending after start
  let lo = 0;
  let hi = extents.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (extents[mid]!.start + extents[mid]!.length <= start) lo = mid + 1;
    else hi = mid;
  }
  for (let e = lo; e < extents.length && extents[e]!.start < end; e++) {
    const s = Math.max(extents[e]!.start, start);
    const t = Math.min(extents[e]!.start + extents[e]!.length, end);
    if (t > s) n += readFullSync(fd, buf, s - start, t - s, s);
  }
  return n;
}
