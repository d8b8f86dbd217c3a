import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { ID_BYTES } from '../chunk/id.js';
import type { GptView } from '../disk/gpt.js';
import { ChunkIndex } from '../image/chunk-index.js';
import { blocksPerChunk, chunkCount, type Geometry } from '../image/geometry.js';
import { BLOCK_HASH_BYTES } from './blockhash.js';
import { READ_SIZE, scanRange, type ScanRangeArgs, type ScanRangeResult } from './scan-core.js';

/**
 * Scan a disk: hash every chunk on all cores (worker threads taking interleaved 4 MiB stripes, so
 * the work is even wherever the data lies) and compare with the ids it should hold.
 */
export interface ScanResult {
  /** What the disk actually holds. */
  index: ChunkIndex;
  /** Positions whose content differs from `expected` (or every non-zero one without it). */
  changed: number[];
  /** Block hints of the changed positions (blocksPerChunk × 4 bytes each). */
  hints: Map<number, Buffer>;
  bytesRead: number;
  seconds: number;
}

const WORKER = fileURLToPath(new URL('./scan-worker.js', import.meta.url));

export async function scanDisk(
  path: string, g: Geometry, extents: ScanRangeArgs['extents'], expected: ChunkIndex | null, threads = availableParallelism(), batchBytes = READ_SIZE,
  view: GptView | null = null,
): Promise<ScanResult> {
  const t0 = performance.now();
  const n = chunkCount(g);
  const per = Math.max(1, Math.floor(batchBytes / g.chunkSize));
  const k = Math.max(1, Math.min(threads, 8, Math.ceil(n / per)));
  const useWorkers = k > 1 && existsSync(WORKER);
  const expectedIds = expected ? new Uint8Array(expected.ids) : null;
  const results = await Promise.all(Array.from({ length: k }, (_, stripe) => {
    const args: ScanRangeArgs = { path, geometry: { ...g }, first: 0, end: n, stripe, stripes: k, batchBytes, extents, expected: expectedIds, view };
    return useWorkers ? inWorker(args) : Promise.resolve(scanRange(args));
  }));
  const index = ChunkIndex.empty(g);
  const found: Array<[number, Buffer]> = [];
  const hl = blocksPerChunk(g) * BLOCK_HASH_BYTES;
  let bytesRead = 0;
  results.forEach((r, stripe) => {
    // Copy this worker's stripes of ids (the rest of its array is zeros).
    for (let i = stripe * per; i < n; i += per * k) index.ids.set(r.ids.subarray(i * ID_BYTES, Math.min(i + per, n) * ID_BYTES), i * ID_BYTES);
    const hb = Buffer.from(r.hints.buffer, r.hints.byteOffset, r.hints.byteLength);
    r.changed.forEach((pos, j) => found.push([pos, hb.subarray(j * hl, (j + 1) * hl)]));
    bytesRead += r.bytesRead;
  });
  found.sort((x, y) => x[0] - y[0]);
  const changed = found.map(([pos]) => pos);
  const hints = new Map(found);
  return { index, changed, hints, bytesRead, seconds: (performance.now() - t0) / 1000 };
}

function inWorker(args: ScanRangeArgs): Promise<ScanRangeResult> {
  return new Promise((resolve, reject) => {
    const w = new Worker(WORKER, { workerData: args });
    w.once('message', resolve);
    w.once('error', reject);
    w.once('exit', (code) => code !== 0 && reject(new Error(`scan worker exited with ${code}`)));
  });
}
