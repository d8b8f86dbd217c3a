import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { ID_BYTES } from '../chunk/id.js';
import { ChunkIndex } from '../image/chunk-index.js';
import { blocksPerChunk, chunkCount, type Geometry } from '../image/geometry.js';
import { BLOCK_HASH_BYTES } from './blockhash.js';
import { scanRange, type ScanRangeArgs, type ScanRangeResult } from './scan-core.js';

/**
 * Scan a disk: hash every chunk on all cores (worker threads over contiguous ranges balanced by
 * allocated bytes) and compare with the ids it should hold.
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

export async function scanDisk(path: string, g: Geometry, extents: ScanRangeArgs['extents'], expected: ChunkIndex | null, threads = availableParallelism()): Promise<ScanResult> {
  const t0 = performance.now();
  const n = chunkCount(g);
  const ranges = splitRanges(n, g, extents, Math.max(1, Math.min(threads, 8)));
  const useWorkers = ranges.length > 1 && existsSync(WORKER);
  const results = await Promise.all(ranges.map(([first, end]) => {
    const args: ScanRangeArgs = {
      path, geometry: { ...g }, first, end,
      extents: extents && extents.filter((e) => e.start < end * g.chunkSize && e.start + e.length > first * g.chunkSize),
      expected: expected ? new Uint8Array(expected.ids.subarray(first * ID_BYTES, end * ID_BYTES)) : null,
    };
    return useWorkers ? inWorker(args) : Promise.resolve(scanRange(args));
  }));
  const index = ChunkIndex.empty(g);
  const changed: number[] = [];
  const hints = new Map<number, Buffer>();
  const hl = blocksPerChunk(g) * BLOCK_HASH_BYTES;
  let bytesRead = 0;
  results.forEach((r, k) => {
    index.ids.set(r.ids, ranges[k]![0] * ID_BYTES);
    const hb = Buffer.from(r.hints.buffer, r.hints.byteOffset, r.hints.byteLength);
    r.changed.forEach((pos, j) => {
      changed.push(pos);
      hints.set(pos, hb.subarray(j * hl, (j + 1) * hl));
    });
    bytesRead += r.bytesRead;
  });
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

/** Split [0, n) into up to k contiguous ranges holding about equal allocated bytes. */
export function splitRanges(n: number, g: Geometry, extents: ScanRangeArgs['extents'], k: number): Array<[number, number]> {
  if (k <= 1 || n < 2 * k) return [[0, n]];
  const total = extents ? extents.reduce((s, e) => s + e.length, 0) : g.virtualSize;
  const per = total / k;
  const cuts: number[] = [0];
  if (!extents) {
    for (let j = 1; j < k; j++) cuts.push(Math.floor((n * j) / k));
  } else {
    let acc = 0;
    let next = per;
    for (const e of extents) {
      while (acc + e.length >= next && cuts.length < k) {
        const at = e.start + (next - acc);
        cuts.push(Math.min(n, Math.max(cuts[cuts.length - 1]!, Math.floor(at / g.chunkSize))));
        next += per;
      }
      acc += e.length;
    }
  }
  cuts.push(n);
  const out: Array<[number, number]> = [];
  for (let j = 0; j + 1 < cuts.length; j++) if (cuts[j + 1]! > cuts[j]!) out.push([cuts[j]!, cuts[j + 1]!]);
  return out.length ? out : [[0, n]];
}
