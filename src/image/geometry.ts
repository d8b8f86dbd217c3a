import { dfError } from '../errors.js';

/**
 * An image's geometry: its virtual size and its chunk size. Chunks are aligned; the last one may be
 * short. Sub-chunk deltas work on 4 KiB blocks (the filesystem block of every OS we boot).
 */
export const BLOCK_SIZE = 4096;
export const MIN_CHUNK_SIZE = 4096;
export const MAX_CHUNK_SIZE = 4 * 1024 * 1024;
/** Default chosen by measurement: see README "Design notes: delta granularity". */
export const DEFAULT_CHUNK_SIZE = 64 * 1024;
/** 2^32 chunks of at least 4 KiB; far above any disk we will see, and indexes use u32 positions. */
export const MAX_VIRTUAL_SIZE = 2 ** 50;

export interface Geometry {
  readonly virtualSize: number;
  readonly chunkSize: number;
}

export function geometryProblems(g: Geometry): string[] {
  const p: string[] = [];
  if (!Number.isSafeInteger(g.chunkSize) || g.chunkSize < MIN_CHUNK_SIZE || g.chunkSize > MAX_CHUNK_SIZE || (g.chunkSize & (g.chunkSize - 1)) !== 0) {
    p.push(`chunkSize must be a power of two from ${MIN_CHUNK_SIZE} to ${MAX_CHUNK_SIZE}, got ${g.chunkSize}`);
  }
  if (!Number.isSafeInteger(g.virtualSize) || g.virtualSize <= 0 || g.virtualSize % 512 !== 0 || g.virtualSize > MAX_VIRTUAL_SIZE) {
    p.push(`virtualSize must be a positive multiple of 512 up to ${MAX_VIRTUAL_SIZE}, got ${g.virtualSize}`);
  }
  if (p.length === 0 && Math.ceil(g.virtualSize / g.chunkSize) > 0xffffffff) {
    p.push(`virtualSize ${g.virtualSize} makes more than 2^32-1 chunks of ${g.chunkSize} bytes; use larger chunks`);
  }
  return p;
}

export function checkGeometry(g: Geometry): Geometry {
  const p = geometryProblems(g);
  if (p.length) throw dfError('DF_ERR_GEOMETRY', p.join('; '), { virtualSize: g.virtualSize, chunkSize: g.chunkSize });
  return g;
}

export function chunkCount(g: Geometry): number {
  return Math.ceil(g.virtualSize / g.chunkSize);
}

/** Length in bytes of chunk `i` (the last chunk may be short). */
export function chunkLength(g: Geometry, i: number): number {
  return Math.min(g.chunkSize, g.virtualSize - i * g.chunkSize);
}

export function blocksPerChunk(g: Geometry): number {
  return Math.ceil(g.chunkSize / BLOCK_SIZE);
}

export function maskBytes(g: Geometry): number {
  return Math.ceil(blocksPerChunk(g) / 8);
}

/** A block mask naming every 4 KiB block of a chunk (the whole chunk changed). */
export function fullMask(g: Geometry): Buffer {
  const m = Buffer.alloc(maskBytes(g));
  for (let b = 0; b < blocksPerChunk(g); b++) m[b >> 3]! |= 1 << (b & 7);
  return m;
}

/**
 * Walk the byte range [offset, offset+length) chunk by chunk: `fn(i, within, n, at)` for chunk i,
 * `n` bytes from `within` inside it, which are bytes [at, at+n) of the range.
 */
export function forEachChunkPiece(g: Geometry, offset: number, length: number, fn: (i: number, within: number, n: number, at: number) => void): void {
  const cs = g.chunkSize;
  for (let at = 0; at < length;) {
    const pos = offset + at;
    const i = Math.floor(pos / cs);
    const within = pos - i * cs;
    const n = Math.min(cs - within, length - at);
    fn(i, within, n, at);
    at += n;
  }
}
