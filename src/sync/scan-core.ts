import { closeSync, fstatSync, openSync } from 'node:fs';
import { hashBytes, ID_BYTES, isZero } from '../chunk/id.js';
import { toImageView, type GptView } from '../disk/gpt.js';
import { readFullSync } from '../fs/read.js';
import { blocksPerChunk, chunkLength, type Geometry } from '../image/geometry.js';
import { loadNative, type Native } from '../native/addon.js';
import { BLOCK_HASH_BYTES, blockHashes } from './blockhash.js';

/**
 * Hash the chunks [first, end) of a disk (one stripe of them): what a worker thread runs (or the caller itself when no
 * worker file is at hand, as under the test runner). Reads only allocated bytes, in big
 * sequential pieces; a chunk with no allocated byte is zero without being read.
 *
 * Allocated bytes: the `extents` given, or (none given) what lseek(SEEK_DATA/SEEK_HOLE) reports
 * for the file. A hole reads as zeros by definition (the kernel's), so skipping it is exact; a
 * block device reports all of itself as data.
 *
 * The change test: with `expected` ids and the `expectedFingerprints` recorded with them (XXH3-128
 * of each chunk's bytes, made by this scan or by the agent as it wrote the chunk), a chunk whose
 * fingerprint is unchanged keeps its expected id without BLAKE3; any other chunk is hashed with
 * BLAKE3 as before. Every chunk read gets a fingerprint (`fingerprints`), so the next scan can do
 * the same. The trust model (src/agent/state-area.ts, "Fingerprints"): XXH3-128 is not a
 * cryptographic hash; an accidental change that keeps it equal has probability 2^-128, a crafted
 * one needs the disk's owner (it only hides that owner's own change from a commit, the server
 * verifies every chunk it stores and a sync verifies every chunk it patches), so restore-mode
 * desktops, whose reset must undo whatever a user did, pass no fingerprints and hash everything.
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
  /** Allocated extents, sorted; null = ask the file (SEEK_DATA/SEEK_HOLE; everything when the addon is missing). */
  extents: Array<{ start: number; length: number }> | null;
  /** Ids the disk should hold for [first, end) (32 bytes each); null = unknown (compute every hint). */
  expected: Uint8Array | null;
  /** Fingerprints the chunks had when `expected` was recorded (16 bytes each, all-zero = unknown). */
  expectedFingerprints?: Uint8Array | null;
  /** The disk holds the image's GPT as the disk wants it (src/disk/gpt.ts): hash the image's bytes. */
  view?: GptView | null;
  /**
   * Where to write (shared with the other workers, each writing only its own stripes): ids for
   * [first, end), 32 bytes each, and fingerprints, 16 bytes each. Absent: allocated here.
   */
  outIds?: Uint8Array;
  outFingerprints?: Uint8Array;
  /**
   * Positions to read (1 per position of [first, end)); null or absent: all. The others are taken
   * to hold their `expected` id and fingerprint unread: only for a caller that knows they were not
   * written (the OS's changed-block tracking, src/agent/era/arm.ts).
   */
  only?: Uint8Array | null;
}

export interface ScanRangeResult {
  /** Actual ids for [first, end), 32 bytes each, zero = zero chunk (outIds when given). */
  ids: Uint8Array;
  /** XXH3-128 per position, 16 bytes each (all zero when the addon is missing; outFingerprints when given). */
  fingerprints: Uint8Array;
  /** Positions whose id differs from `expected` (all non-zero ones when expected is null). */
  changed: Uint32Array;
  /** Block hints of the changed positions, blocksPerChunk × 4 bytes each, in `changed` order. */
  hints: Uint8Array;
  bytesRead: number;
  /** Chunks hashed with BLAKE3 (the rest: zero, or fingerprint unchanged). */
  hashed: number;
}

export const READ_SIZE = 4 * 1024 * 1024;
export const FINGERPRINT_BYTES = 16;

function native(): Native | null {
  try {
    return loadNative();
  } catch {
    return null; // no addon (a bare source tree): read everything, hash everything
  }
}

/** The fingerprint of `len` zero bytes (what a chunk in a hole has), per length. */
const zeroFps = new Map<number, Buffer>();
export function zeroFingerprint(n: Native, len: number): Buffer {
  let f = zeroFps.get(len);
  if (!f) {
    f = Buffer.alloc(FINGERPRINT_BYTES);
    n.fingerprint(Buffer.alloc(len), f, 0);
    zeroFps.set(len, f);
  }
  return f;
}

export function scanRange(a: ScanRangeArgs): ScanRangeResult {
  const g = a.geometry;
  const n = a.end - a.first;
  const ids = a.outIds ?? new Uint8Array(n * ID_BYTES);
  const fps = a.outFingerprints ?? new Uint8Array(n * FINGERPRINT_BYTES);
  const nat = native();
  const expFps = nat ? a.expectedFingerprints ?? null : null;
  const changed: number[] = [];
  const hintParts: Buffer[] = [];
  const hintLen = blocksPerChunk(g) * BLOCK_HASH_BYTES;
  const per = Math.max(1, Math.floor((a.batchBytes ?? READ_SIZE) / g.chunkSize));
  const buf = Buffer.alloc(per * g.chunkSize);
  const fd = openSync(a.path, 'r');
  // Holes exist only in files: a block device answers SEEK_DATA with EINVAL (Linux's block devices
  // have no hole map), so a device is read whole.
  const holes = nat && fstatSync(fd).isFile() ? nat : null;
  let bytesRead = 0;
  let hashed = 0;
  const ranges: Array<[number, number]> = [];
  try {
    for (let i = a.first + a.stripe * per; i < a.end; i += per * a.stripes) {
      const k = Math.min(per, a.end - i);
      const start = i * g.chunkSize;
      const len = Math.min(k * g.chunkSize, g.virtualSize - start);
      if (a.only && !anyMarked(a.only, i - a.first, k)) {
        for (let j = 0; j < k; j++) keepExpected(a, ids, fps, i + j);
        continue;
      }
      dataRanges(fd, start, len, a.extents, holes, ranges);
      if (a.only) onlyMarked(ranges, a.only, a.first, g.chunkSize);
      bytesRead += readRanges(fd, buf, start, len, ranges);
      if (a.view && start < 2 * a.view.sectorSize) toImageView(buf.subarray(0, len), start, a.view);
      let r = 0; // the first data range that may overlap chunk j
      for (let j = 0; j < k; j++) {
        const pos = i + j;
        const cs = start + j * g.chunkSize;
        const clen = chunkLength(g, pos);
        const o = (pos - a.first) * ID_BYTES;
        const fo = (pos - a.first) * FINGERPRINT_BYTES;
        while (r < ranges.length && ranges[r]![1] <= cs) r++;
        const inHole = !(r < ranges.length && ranges[r]![0] < cs + clen) && !(a.view && cs < 2 * a.view.sectorSize);
        const raw = buf.subarray(j * g.chunkSize, j * g.chunkSize + clen);
        if (a.only && !a.only[pos - a.first]) {
          keepExpected(a, ids, fps, pos);
          continue;
        }
        ids.fill(0, o, o + ID_BYTES);
        if (inHole) {
          if (nat) fps.set(zeroFingerprint(nat, clen), fo);
        } else {
          let known = false;
          if (nat) {
            nat.fingerprint(raw, fps, fo);
            if (expFps && a.expected && !isZeroFp(expFps, fo) && equalAt(fps, expFps, fo, FINGERPRINT_BYTES)) {
              ids.set(a.expected.subarray(o, o + ID_BYTES), o); // unchanged since its id was recorded
              known = true;
            }
          }
          if (!known && !isZero(raw)) {
            ids.set(hashBytes(raw), o);
            hashed++;
          }
        }
        const differs = a.expected ? !equalBetween(ids, a.expected, o, ID_BYTES) : !isZeroFp(ids, o, ID_BYTES);
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
  return { ids, fingerprints: fps, changed: Uint32Array.from(changed), hints, bytesRead, hashed };
}

function anyMarked(only: Uint8Array, from: number, k: number): boolean {
  for (let j = from; j < from + k; j++) if (only[j]) return true;
  return false;
}

/** A position not read: its expected id and fingerprint (zero: unknown) stand. */
function keepExpected(a: ScanRangeArgs, ids: Uint8Array, fps: Uint8Array, pos: number): void {
  const o = (pos - a.first) * ID_BYTES;
  const fo = (pos - a.first) * FINGERPRINT_BYTES;
  if (a.expected) ids.set(a.expected.subarray(o, o + ID_BYTES), o);
  else ids.fill(0, o, o + ID_BYTES);
  if (a.expectedFingerprints) fps.set(a.expectedFingerprints.subarray(fo, fo + FINGERPRINT_BYTES), fo);
  else fps.fill(0, fo, fo + FINGERPRINT_BYTES);
}

/** Cut `ranges` (absolute bytes) down to the chunks marked in `only`. */
function onlyMarked(ranges: Array<[number, number]>, only: Uint8Array, first: number, chunk: number): void {
  const out: Array<[number, number]> = [];
  for (const [s, t] of ranges) {
    for (let pos = Math.floor(s / chunk); pos * chunk < t; pos++) {
      if (!only[pos - first]) continue;
      const a = Math.max(s, pos * chunk);
      const b = Math.min(t, (pos + 1) * chunk);
      const last = out[out.length - 1];
      if (last && last[1] === a) last[1] = b;
      else out.push([a, b]);
    }
  }
  ranges.length = 0;
  ranges.push(...out);
}

function isZeroFp(b: Uint8Array, at: number, len = FINGERPRINT_BYTES): boolean {
  for (let x = at; x < at + len; x++) if (b[x] !== 0) return false;
  return true;
}

function equalAt(a: Uint8Array, b: Uint8Array, at: number, len: number): boolean {
  for (let x = at; x < at + len; x++) if (a[x] !== b[x]) return false;
  return true;
}
const equalBetween = equalAt;

/**
 * The allocated byte ranges of [start, start + len) into `out` (absolute, sorted): from `extents`
 * when given, else from SEEK_DATA/SEEK_HOLE, else (no addon) the whole range.
 */
function dataRanges(fd: number, start: number, len: number, extents: ScanRangeArgs['extents'], nat: Native | null, out: Array<[number, number]>): void {
  out.length = 0;
  const end = start + len;
  if (extents) {
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
      if (t > s) out.push([s, t]);
    }
    return;
  }
  if (!nat) {
    out.push([start, end]);
    return;
  }
  for (let off = start; off < end;) {
    let d: number;
    try {
      d = nat.seekData(fd, off);
    } catch (e) {
      // A file system without SEEK_DATA (EINVAL, EOPNOTSUPP): everything from here is data.
      if ((e as NodeJS.ErrnoException).code !== 'EINVAL' && (e as NodeJS.ErrnoException).code !== 'EOPNOTSUPP') throw e;
      out.push([off, end]);
      return;
    }
    if (d < 0 || d >= end) break; // ENXIO: no data from here to the end of the file
    const h = nat.seekHole(fd, d);
    const t = h < 0 ? end : Math.min(h, end);
    out.push([d, t]);
    off = t;
  }
}

/** Fill buf[0, len) with the disk bytes at `start`: the ranges read, the rest zeroed. */
function readRanges(fd: number, buf: Buffer, start: number, len: number, ranges: Array<[number, number]>): number {
  let n = 0;
  let at = start; // bytes before `at` are filled
  for (const [s, t] of ranges) {
    if (s > at) buf.fill(0, at - start, s - start);
    const got = readFullSync(fd, buf, s - start, t - s, s);
    if (got < t - s) buf.fill(0, s - start + got, t - start); // past the end of a short file reads as zero, never as the previous batch
    n += got;
    at = t;
  }
  if (at < start + len) buf.fill(0, at - start, len);
  return n;
}
