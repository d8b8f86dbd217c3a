import { describe, expect, it } from 'vitest';
import { blockMask, maskPopcount } from './blocks.js';
import { BLOCK_SIZE } from './geometry.js';

const B = BLOCK_SIZE;

/** A chunk of `blocks` 4 KiB blocks; the listed blocks get one non-zero byte at `at` within the block. */
function chunk(len: number, dirty: number[], at = 100, value = 1): Buffer {
  const b = Buffer.alloc(len);
  for (const i of dirty) b[i * B + at] = value;
  return b;
}

describe('blockMask against a null (all-zero) parent', () => {
  it('an all-zero chunk has an empty mask', () => {
    expect(blockMask(null, Buffer.alloc(16 * B), 16 * B, 2).toString('hex')).toBe('0000');
  });

  it('sets bit b, LSB first within each byte, for each non-zero block', () => {
    // Blocks 0, 2 → byte 0 = 0b101; block 15 → byte 1 bit 7.
    expect(blockMask(null, chunk(16 * B, [0, 2, 15]), 16 * B, 2).toString('hex')).toBe('0580');
    // A change in the last byte of a block marks that block only.
    expect(blockMask(null, chunk(16 * B, [9], B - 1), 16 * B, 2).toString('hex')).toBe('0002');
  });

  it('null after vs a non-zero before marks the blocks that were non-zero', () => {
    expect(blockMask(chunk(8 * B, [3]), null, 8 * B, 1).toString('hex')).toBe('08');
  });

  it('both null is all clear', () => {
    expect(blockMask(null, null, 8 * B, 1).toString('hex')).toBe('00');
  });
});

describe('blockMask against a parent chunk', () => {
  it('identical chunks give an empty mask', () => {
    const a = chunk(16 * B, [1, 4, 7]);
    expect(maskPopcount(blockMask(a, Buffer.from(a), 16 * B, 2))).toBe(0);
  });

  it('marks exactly the blocks whose bytes differ', () => {
    const before = chunk(16 * B, [0, 1, 2, 3], 5, 0x11);
    const after = Buffer.from(before);
    after[1 * B + 5] = 0x22; // block 1 changed
    after[8 * B] = 0x01; //     block 8 changed (first byte)
    after[14 * B + B - 1] = 0x01; // block 14 changed (last byte)
    const mask = blockMask(before, after, 16 * B, 2);
    expect(mask.toString('hex')).toBe('0241');
    expect(maskPopcount(mask)).toBe(3);
  });

  it('is symmetric', () => {
    const a = chunk(16 * B, [2, 11]);
    const b = chunk(16 * B, [2, 5], 7);
    expect(blockMask(a, b, 16 * B, 2)).toEqual(blockMask(b, a, 16 * B, 2));
  });
});

describe('blockMask on a short last chunk', () => {
  // 2.125 blocks: blocks 0, 1 whole, block 2 has 512 bytes.
  const len = 2 * B + 512;

  it('compares the partial block on its real length', () => {
    const after = Buffer.alloc(len);
    after[len - 1] = 1;
    expect(blockMask(null, after, len, 2).toString('hex')).toBe('0400');
  });

  it('never sets bits for blocks past the end of the chunk', () => {
    // Buffers longer than chunkLen (e.g. a reused 64 KiB buffer) with garbage past the end.
    const before = Buffer.alloc(16 * B, 0);
    const after = Buffer.alloc(16 * B, 0xff);
    after.fill(0, 0, len);
    expect(blockMask(before, after, len, 2).toString('hex')).toBe('0000');
    expect(blockMask(null, after, len, 2).toString('hex')).toBe('0000');
    after[0] = 1;
    expect(blockMask(before, after, len, 2).toString('hex')).toBe('0100');
  });

  it('a fully different short chunk sets only its 3 blocks', () => {
    const mask = blockMask(null, Buffer.alloc(len, 0xff), len, 2);
    expect(mask.toString('hex')).toBe('0700');
    expect(maskPopcount(mask)).toBe(3);
  });
});

describe('maskPopcount', () => {
  it('counts set bits', () => {
    expect(maskPopcount(Buffer.from([]))).toBe(0);
    expect(maskPopcount(Buffer.from([0xff, 0x01, 0x80, 0x00]))).toBe(10);
  });
});
