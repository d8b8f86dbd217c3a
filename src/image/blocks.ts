import { BLOCK_SIZE } from './geometry.js';

/**
 * Which 4 KiB blocks of `after` differ from `before` (null = zeros); bit b, LSB first in each byte.
 * The mask has `maskLen` bytes; blocks past the end of a short chunk are never set.
 */
export function blockMask(before: Buffer | null, after: Buffer | null, chunkLen: number, maskLen: number): Buffer {
  const mask = Buffer.alloc(maskLen);
  for (let b = 0, off = 0; off < chunkLen; b++, off += BLOCK_SIZE) {
    const end = Math.min(off + BLOCK_SIZE, chunkLen);
    const x = before ? before.subarray(off, end) : null;
    const y = after ? after.subarray(off, end) : null;
    if (!sameBlock(x, y, end - off)) mask[b >> 3]! |= 1 << (b & 7);
  }
  return mask;
}

const ZERO_BLOCK = Buffer.alloc(BLOCK_SIZE);

function sameBlock(x: Buffer | null, y: Buffer | null, len: number): boolean {
  const a = x ?? ZERO_BLOCK.subarray(0, len);
  const b = y ?? ZERO_BLOCK.subarray(0, len);
  return a.equals(b);
}

export function maskPopcount(mask: Buffer): number {
  let n = 0;
  for (const byte of mask) {
    let v = byte;
    while (v) { n += v & 1; v >>= 1; }
  }
  return n;
}
