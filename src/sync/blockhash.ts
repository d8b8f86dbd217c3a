import { hashBytes } from '../chunk/id.js';
import { BLOCK_SIZE, blocksPerChunk, type Geometry } from '../image/geometry.js';

/**
 * 4-byte hints per 4 KiB block (the first 4 bytes of its BLAKE3), kept in the state area for the
 * on-disk version. Comparing them tells which blocks of a locally changed chunk differ from the
 * version, so a commit uploads only those. They are hints: the server rebuilds the chunk and checks
 * its full id, so a colliding hint costs a re-upload, never a wrong chunk.
 */
export const BLOCK_HASH_BYTES = 4;

export function blockHashes(raw: Buffer, g: Geometry, out?: Buffer, at = 0): Buffer {
  const n = blocksPerChunk(g);
  const dst = out ?? Buffer.alloc(n * BLOCK_HASH_BYTES);
  for (let b = 0; b < n; b++) {
    const off = b * BLOCK_SIZE;
    const o = at + b * BLOCK_HASH_BYTES;
    if (off >= raw.length) {
      dst.writeUInt32BE(0, o);
      continue;
    }
    hashBytes(raw.subarray(off, Math.min(off + BLOCK_SIZE, raw.length))).copy(dst, o, 0, BLOCK_HASH_BYTES);
  }
  return dst;
}

/** Mask of blocks whose hints differ (bit b LSB-first), `maskLen` bytes. */
export function hintMask(before: Buffer, after: Buffer, blocks: number, maskLen: number): Buffer {
  const m = Buffer.alloc(maskLen);
  for (let b = 0; b < blocks; b++) {
    const o = b * BLOCK_HASH_BYTES;
    if (before.readUInt32BE(o) !== after.readUInt32BE(o)) m[b >> 3]! |= 1 << (b & 7);
  }
  return m;
}

export function maskHas(mask: Buffer, b: number): boolean {
  return (mask[b >> 3]! & (1 << (b & 7))) !== 0;
}

/** Bytes the masked blocks of a chunk of length `len` take. */
export function maskedLength(mask: Buffer, len: number): number {
  let n = 0;
  for (let off = 0, b = 0; off < len; off += BLOCK_SIZE, b++) if (maskHas(mask, b)) n += Math.min(BLOCK_SIZE, len - off);
  return n;
}

/** Concatenate the masked blocks of `raw`. */
export function extractBlocks(raw: Buffer, mask: Buffer): Buffer {
  const parts: Buffer[] = [];
  for (let off = 0, b = 0; off < raw.length; off += BLOCK_SIZE, b++) if (maskHas(mask, b)) parts.push(raw.subarray(off, Math.min(off + BLOCK_SIZE, raw.length)));
  return Buffer.concat(parts);
}

/** Overwrite the masked blocks of `base` (in place) with `blocks` (as extractBlocks made them). */
export function patchBlocks(base: Buffer, mask: Buffer, blocks: Buffer): void {
  let src = 0;
  for (let off = 0, b = 0; off < base.length; off += BLOCK_SIZE, b++) {
    if (!maskHas(mask, b)) continue;
    const n = Math.min(BLOCK_SIZE, base.length - off);
    blocks.copy(base, off, src, src + n);
    src += n;
  }
}
