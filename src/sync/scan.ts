import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { ID_BYTES } from '../chunk/id.js';
import type { GptView } from '../disk/gpt.js';
import { ChunkIndex } from '../image/chunk-index.js';
import { loadNative } from '../native/addon.js';
import { blocksPerChunk, chunkCount, type Geometry } from '../image/geometry.js';
import { BLOCK_HASH_BYTES } from './blockhash.js';
import { FINGERPRINT_BYTES, READ_SIZE, scanRange, type ScanRangeArgs, type ScanRangeResult } from './scan-core.js';
import { scanByFingerprints } from './scan-fast.js';

/**
 * Scan a disk: hash every chunk on all cores (worker threads taking interleaved 4 MiB stripes, so
 * the work is even wherever the data lies) and compare with the ids it should hold. Holes are not
 * read, and with the fingerprints recorded with `expected`, an unchanged chunk is not hashed with
 * BLAKE3 (src/sync/scan-core.ts). With those fingerprints the addon's pass comes first
 * (src/sync/scan-fast.ts): no worker at all unless many chunks changed.
 */
export interface ScanResult {
  /** What the disk actually holds. */
  index: ChunkIndex;
  /** XXH3-128 of every chunk as the scan read it (16 bytes per position; all zero: the addon is missing). */
  fingerprints: Buffer;
  /** Positions whose content differs from `expected` (or every non-zero one without it). */
  changed: number[];
  /** Block hints of the changed positions (blocksPerChunk × 4 bytes each). */
  hints: Map<number, Buffer>;
  bytesRead: number;
  /** Chunks hashed with BLAKE3 (the others were zero or kept their fingerprint). */
  hashed: number;
  seconds: number;
}

const WORKER = fileURLToPath(new URL('./scan-worker.js', import.meta.url));

export async function scanDisk(
  path: string, g: Geometry, extents: ScanRangeArgs['extents'], expected: ChunkIndex | null, threads = availableParallelism(), batchBytes = READ_SIZE,
  view: GptView | null = null, expectedFingerprints: Uint8Array | null = null, onlyPositions: Uint8Array | null = null,
): Promise<ScanResult> {
  const t0 = performance.now();
  const n = chunkCount(g);
  // With the OS's tracking, only its marked chunks are read (below); the fingerprint pass reads them all.
  if (expected && expectedFingerprints && !extents && !onlyPositions) {
    const f = await scanByFingerprints(path, g, expected, expectedFingerprints, view, threads, Math.max(64, Math.floor(n / 8)));
    if (f) return { ...f, index: ChunkIndex.over(g, f.ids), seconds: (performance.now() - t0) / 1000 };
  }
  const per = Math.max(1, Math.floor(batchBytes / g.chunkSize));
  const k = Math.max(1, Math.min(threads, 8, Math.ceil(n / per)));
  const useWorkers = k > 1 && existsSync(WORKER);
  // One copy of the inputs and outputs, shared by the workers (each writes only its own stripes):
  // nothing per worker grows with the disk but its 4 MiB read buffer.
  const shared = (bytes: number) => new Uint8Array(useWorkers ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes));
  const ids = shared(n * ID_BYTES);
  const fps = shared(n * FINGERPRINT_BYTES);
  let expectedIds: Uint8Array | null = null;
  let expectedFps: Uint8Array | null = null;
  if (expected) {
    expectedIds = shared(n * ID_BYTES);
    expectedIds.set(expected.ids);
    if (expectedFingerprints && expectedFingerprints.length === n * FINGERPRINT_BYTES) {
      expectedFps = shared(n * FINGERPRINT_BYTES);
      expectedFps.set(expectedFingerprints);
    }
  }
  // Positions known unwritten (the OS's changed-block tracking) keep their expected id unread.
  let only: Uint8Array | null = null;
  if (onlyPositions && expectedIds) {
    only = shared(n);
    only.set(onlyPositions.subarray(0, n));
  }
  const results = await Promise.all(Array.from({ length: k }, (_, stripe) => {
    const args: ScanRangeArgs = {
      path, geometry: { ...g }, first: 0, end: n, stripe, stripes: k, batchBytes, extents, expected: expectedIds, expectedFingerprints: expectedFps, view,
      outIds: ids, outFingerprints: fps, only,
    };
    return useWorkers ? inWorker(args) : Promise.resolve(scanRange(args));
  }));
  if (useWorkers) trimMalloc(); // the workers' freed arena pages stayed in the RSS (~40 MiB) for the rest of the run
  const index = ChunkIndex.over(g, Buffer.from(ids.buffer, ids.byteOffset, ids.byteLength));
  const found: Array<[number, Buffer]> = [];
  const hl = blocksPerChunk(g) * BLOCK_HASH_BYTES;
  let bytesRead = 0;
  let hashed = 0;
  for (const r of results) {
    const hb = Buffer.from(r.hints.buffer, r.hints.byteOffset, r.hints.byteLength);
    r.changed.forEach((pos, j) => found.push([pos, hb.subarray(j * hl, (j + 1) * hl)]));
    bytesRead += r.bytesRead;
    hashed += r.hashed;
  }
  found.sort((x, y) => x[0] - y[0]);
  const changed = found.map(([pos]) => pos);
  const hints = new Map(found);
  return { index, fingerprints: Buffer.from(fps.buffer, fps.byteOffset, fps.byteLength), changed, hints, bytesRead, hashed, seconds: (performance.now() - t0) / 1000 };
}

function trimMalloc(): void {
  try {
    loadNative().mallocTrim?.();
  } catch {
    // no addon: nothing to trim with
  }
}

function inWorker(args: ScanRangeArgs): Promise<ScanRangeResult> {
  return new Promise((resolve, reject) => {
    const w = new Worker(WORKER, { workerData: args });
    w.once('message', resolve);
    w.once('error', reject);
    w.once('exit', (code) => code !== 0 && reject(new Error(`scan worker exited with ${code}`)));
  });
}
