import { describe, expect, it } from 'vitest';
import { hashBytes } from '../chunk/id.js';
import { blockMask } from '../image/blocks.js';
import type { Geometry } from '../image/geometry.js';
import { BLOCK_HASH_BYTES, blockHashes, extractBlocks, hintMask, maskedLength, maskHas, patchBlocks } from './blockhash.js';
import { prng } from '../../test/helpers/expect.js';

const B = 4096;
const rnd = prng(0xb10c);
/** Seeded bytes, 4 per PRNG draw. */
const randomBytes = (n: number) => {
  const b = Buffer.alloc(n + 3);
  for (let i = 0; i < n; i += 4) b.writeUInt32LE(Math.floor(rnd() * 2 ** 32), i);
  return b.subarray(0, n);
};
const G: Geometry = { virtualSize: 1 << 20, chunkSize: 65536 }; // 16 blocks, 2 mask bytes

describe('blockHashes', () => {
  it('4 bytes per block: the first 4 bytes of the block BLAKE3', () => {
    const raw = randomBytes(65536);
    const h = blockHashes(raw, G);
    expect(h.length).toBe(16 * BLOCK_HASH_BYTES);
    for (let b = 0; b < 16; b++) expect(h.subarray(b * 4, b * 4 + 4)).toEqual(hashBytes(raw.subarray(b * B, (b + 1) * B)).subarray(0, 4));
  });

  it('a short chunk: the partial block hashes its bytes, blocks past the end are zero hints', () => {
    const raw = randomBytes(B + 512);
    const h = blockHashes(raw, G);
    expect(h.subarray(0, 4)).toEqual(hashBytes(raw.subarray(0, B)).subarray(0, 4));
    expect(h.subarray(4, 8)).toEqual(hashBytes(raw.subarray(B)).subarray(0, 4));
    expect(h.subarray(8).equals(Buffer.alloc(14 * 4))).toBe(true);
  });

  it('writes into a given buffer at an offset, leaving the rest', () => {
    const raw = randomBytes(65536);
    const out = Buffer.alloc(200, 0xee);
    blockHashes(raw, G, out, 100);
    expect(out.subarray(0, 100).equals(Buffer.alloc(100, 0xee))).toBe(true);
    expect(out.subarray(100, 164)).toEqual(blockHashes(raw, G));
    expect(out.subarray(164).equals(Buffer.alloc(36, 0xee))).toBe(true);
  });
});

describe('hintMask / maskHas', () => {
  it('sets bit b, LSB first, for each block whose hint differs', () => {
    const before = Buffer.alloc(16 * 4);
    const after = Buffer.from(before);
    for (const b of [0, 2, 15]) after.writeUInt32BE(b + 1, b * 4);
    const m = hintMask(before, after, 16, 2);
    expect(m.toString('hex')).toBe('0580');
    expect([...Array(16).keys()].filter((b) => maskHas(m, b))).toEqual([0, 2, 15]);
  });

  it('equal hints give an empty mask; only `blocks` blocks are compared', () => {
    const h = randomBytes(16 * 4);
    expect(hintMask(h, Buffer.from(h), 16, 2).toString('hex')).toBe('0000');
    const other = Buffer.from(h);
    other[15 * 4] = other[15 * 4]! ^ 1;
    expect(hintMask(h, other, 15, 2).toString('hex')).toBe('0000');
  });

  it('on real edits agrees with the exact blockMask of image/blocks.ts', () => {
    for (let k = 0; k < 50; k++) {
      const len = k % 4 === 0 ? 512 * (1 + Math.floor(rnd() * 127)) : 65536;
      const before = randomBytes(len);
      const after = Buffer.from(before);
      for (let e = Math.floor(rnd() * 6); e > 0; e--) {
        const at = Math.floor(rnd() * len);
        after[at] = after[at]! ^ (1 + Math.floor(rnd() * 255));
      }
      expect(hintMask(blockHashes(before, G), blockHashes(after, G), 16, 2)).toEqual(blockMask(before, after, len, 2));
    }
  });
});

describe('maskedLength / extractBlocks / patchBlocks', () => {
  it('maskedLength counts whole blocks, the partial last block by its bytes, and ignores bits past the end', () => {
    expect(maskedLength(Buffer.from([0xff, 0xff]), 65536)).toBe(65536);
    expect(maskedLength(Buffer.from([0b101, 0]), 65536)).toBe(2 * B);
    expect(maskedLength(Buffer.from([0, 0]), 65536)).toBe(0);
    expect(maskedLength(Buffer.from([0xff, 0xff]), B + 512)).toBe(B + 512);
    expect(maskedLength(Buffer.from([0b10, 0]), B + 512)).toBe(512);
    expect(maskedLength(Buffer.from([0b100, 0x80]), B + 512)).toBe(0);
    expect(maskedLength(Buffer.from([1]), 100)).toBe(100);
  });

  it('extractBlocks concatenates the masked blocks, in order', () => {
    const raw = randomBytes(3 * B + 100);
    expect(extractBlocks(raw, Buffer.from([0b1010]))).toEqual(Buffer.concat([raw.subarray(B, 2 * B), raw.subarray(3 * B)]));
    expect(extractBlocks(raw, Buffer.from([0])).length).toBe(0);
    expect(extractBlocks(raw, Buffer.from([0xff]))).toEqual(raw);
  });

  it('patchBlocks(base, mask, extractBlocks(next, mask)) gives next when they differ only in masked blocks', () => {
    for (let k = 0; k < 200; k++) {
      const len = k % 3 === 0 ? 1 + Math.floor(rnd() * 65536) : 65536;
      const base = randomBytes(len);
      const mask = randomBytes(2);
      const next = Buffer.from(base);
      for (let b = 0; b * B < len; b++) if (maskHas(mask, b)) randomBytes(Math.min(B, len - b * B)).copy(next, b * B);
      const blocks = extractBlocks(next, mask);
      expect(blocks.length).toBe(maskedLength(mask, len));
      const out = Buffer.from(base);
      patchBlocks(out, mask, blocks);
      expect(out.equals(next)).toBe(true);
      // And the other way: extracting from the patched chunk gives the same blocks back.
      expect(extractBlocks(out, mask).equals(blocks)).toBe(true);
    }
  });

  it('patchBlocks leaves unmasked blocks alone, also on a short chunk', () => {
    const base = Buffer.alloc(2 * B + 7, 1);
    patchBlocks(base, Buffer.from([0b100]), Buffer.alloc(7, 9));
    expect(base.subarray(0, 2 * B).equals(Buffer.alloc(2 * B, 1))).toBe(true);
    expect(base.subarray(2 * B).equals(Buffer.alloc(7, 9))).toBe(true);
  });
});
