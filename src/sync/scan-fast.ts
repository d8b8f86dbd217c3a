import { closeSync, fstatSync, openSync } from 'node:fs';
import { setImmediate as yieldLoop } from 'node:timers/promises';
import { hashBytes, ID_BYTES, isZero } from '../chunk/id.js';
import { toImageView, type GptView } from '../disk/gpt.js';
import { readFullSync } from '../fs/read.js';
import type { ChunkIndex } from '../image/chunk-index.js';
import { chunkCount, chunkLength, type Geometry } from '../image/geometry.js';
import { loadNative, type Native } from '../native/addon.js';
import { blockHashes } from './blockhash.js';
import { FINGERPRINT_BYTES } from './scan-core.js';

/**
 * The scan of a disk whose fingerprints are trusted (a persistent desktop's, recorded with `expected`:
 * src/sync/scan-core.ts explains the trust). Two passes:
 *   1. the addon fingerprints every chunk on libuv's thread pool (native/fingerprint.c,
 *      fingerprintFile): holes skipped, no worker thread to start, no JavaScript per chunk;
 *   2. only the chunks whose fingerprint is not the recorded one (changed, or never recorded), and
 *      those holding the disk's GPT fields (`view`: the image's bytes are hashed), are read again here
 *      and hashed with BLAKE3.
 * Same result as the worker scan (src/sync/scan.ts) with the same fingerprints. Returns null where it
 * does not apply: no addon, fingerprints of another geometry, or more than `maxSuspects` chunks to hash
 * (a big change is hashed faster by the workers, on every core).
 */
export interface FastScan {
  ids: Buffer;
  fingerprints: Buffer;
  changed: number[];
  hints: Map<number, Buffer>;
  bytesRead: number;
  hashed: number;
}

/** Chunks per thread-pool job: small enough to spread the data evenly over the jobs in flight. */
const PIECE_BYTES = 64 * 1024 * 1024;

export async function scanByFingerprints(
  path: string, g: Geometry, expected: ChunkIndex, expectedFps: Uint8Array, view: GptView | null, threads: number, maxSuspects: number,
): Promise<FastScan | null> {
  const n = chunkCount(g);
  let nat: Native;
  try {
    nat = loadNative();
  } catch {
    return null;
  }
  if (typeof nat.fingerprintFile !== 'function' || expectedFps.length !== n * FINGERPRINT_BYTES) return null;
  const fd = openSync(path, 'r');
  try {
    // Holes exist only in files (a block device answers SEEK_DATA with EINVAL): a device is read whole.
    const holes = fstatSync(fd).isFile();
    const fps = Buffer.alloc(n * FINGERPRINT_BYTES);
    const per = Math.max(1, Math.floor(PIECE_BYTES / g.chunkSize));
    let next = 0;
    let bytesRead = 0;
    let failed = false;
    const piece = (first: number, count: number) => new Promise<number>((resolve, reject) => {
      nat.fingerprintFile(fd, first * g.chunkSize, g.chunkSize, count, chunkLength(g, first + count - 1), holes, fps, first * FINGERPRINT_BYTES,
        (err, got) => (err ? reject(err) : resolve(got)));
    });
    const lane = async () => {
      while (next < n && !failed) {
        const first = next;
        next = Math.min(n, next + per);
        const got = await piece(first, next - first).catch((err: unknown) => {
          failed = true;
          throw err;
        });
        bytesRead += got; // after the await: `x += await` would add to a stale x
      }
    };
    // Every lane ends before the descriptor is closed, a failed one included.
    const lanes = await Promise.allSettled(Array.from({ length: Math.max(1, Math.min(threads, 8, Math.ceil(n / per))) }, lane));
    for (const l of lanes) if (l.status === 'rejected') throw l.reason;

    // The chunks to hash: fingerprint unknown or not the recorded one, or the GPT's sectors under a view.
    const suspects: number[] = [];
    const gptEnd = view ? 2 * view.sectorSize : 0;
    for (let pos = 0; pos < n; pos++) {
      const at = pos * FINGERPRINT_BYTES;
      if (pos * g.chunkSize < gptEnd || isUnknown(expectedFps, at) || fps.compare(expectedFps, at, at + FINGERPRINT_BYTES, at, at + FINGERPRINT_BYTES) !== 0) {
        suspects.push(pos);
        if (suspects.length > maxSuspects) return null;
      }
    }
    const ids = Buffer.from(expected.ids);
    const changed: number[] = [];
    const hints = new Map<number, Buffer>();
    let hashed = 0;
    const buf = Buffer.alloc(g.chunkSize);
    for (let k = 0; k < suspects.length; k++) {
      const pos = suspects[k]!;
      const len = chunkLength(g, pos);
      const start = pos * g.chunkSize;
      const raw = buf.subarray(0, len);
      const got = readFullSync(fd, raw, 0, len, start);
      raw.fill(0, got); // past the end of a short file reads as zero
      bytesRead += got;
      if (view && start < gptEnd) toImageView(raw, start, view);
      const at = pos * FINGERPRINT_BYTES;
      nat.fingerprint(raw, fps, at);
      const o = pos * ID_BYTES;
      if (!isUnknown(expectedFps, at) && fps.compare(expectedFps, at, at + FINGERPRINT_BYTES, at, at + FINGERPRINT_BYTES) === 0) continue; // the recorded id stands
      if (isZero(raw)) ids.fill(0, o, o + ID_BYTES);
      else {
        ids.set(hashBytes(raw), o);
        hashed++;
      }
      if (ids.compare(expected.ids, o, o + ID_BYTES, o, o + ID_BYTES) !== 0) {
        changed.push(pos);
        hints.set(pos, blockHashes(raw, g));
      }
      if (k % 64 === 63) await yieldLoop(); // the lease's renewals run between hashes
    }
    return { ids, fingerprints: fps, changed, hints, bytesRead, hashed };
  } finally {
    closeSync(fd);
  }
}

/** All-zero: no fingerprint recorded for the position. */
function isUnknown(fps: Uint8Array, at: number): boolean {
  for (let x = at; x < at + FINGERPRINT_BYTES; x++) if (fps[x] !== 0) return false;
  return true;
}
