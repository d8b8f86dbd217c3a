import { describe, expect, it } from 'vitest';
import { DeskfuseError } from '../errors.js';
import {
  blocksPerChunk, checkGeometry, chunkCount, chunkLength, DEFAULT_CHUNK_SIZE, geometryProblems, maskBytes, MAX_CHUNK_SIZE, MAX_VIRTUAL_SIZE, MIN_CHUNK_SIZE,
} from './geometry.js';

const KiB = 1024;
const MiB = 1024 * KiB;

describe('geometryProblems', () => {
  it.each([
    [512, MIN_CHUNK_SIZE],
    [10 * 1024 * MiB, DEFAULT_CHUNK_SIZE],
    [MAX_VIRTUAL_SIZE, MAX_CHUNK_SIZE],
    [4096 + 512, 8 * KiB],
  ])('accepts virtualSize %i, chunkSize %i', (virtualSize, chunkSize) => {
    expect(geometryProblems({ virtualSize, chunkSize })).toEqual([]);
    expect(checkGeometry({ virtualSize, chunkSize })).toEqual({ virtualSize, chunkSize });
  });

  it.each([2048, 4095, 6144, 8 * MiB, 0, -4096, 4096.5, Number.NaN, 2 ** 60])('refuses chunkSize %d', (chunkSize) => {
    const p = geometryProblems({ virtualSize: MiB, chunkSize });
    expect(p).toHaveLength(1);
    expect(p[0]).toMatch(/^chunkSize must be a power of two from 4096 to 4194304/);
  });

  it.each([0, -512, 511, 513, 1000.5, Number.NaN, Infinity, MAX_VIRTUAL_SIZE + 512, 2 ** 53 + 512])('refuses virtualSize %d', (virtualSize) => {
    const p = geometryProblems({ virtualSize, chunkSize: DEFAULT_CHUNK_SIZE });
    expect(p).toHaveLength(1);
    expect(p[0]).toMatch(/^virtualSize must be a positive multiple of 512/);
  });

  it('reports both problems at once', () => {
    expect(geometryProblems({ virtualSize: 100, chunkSize: 100 })).toHaveLength(2);
  });

  it('checkGeometry throws DF_ERR_GEOMETRY with every problem and the values', () => {
    try {
      checkGeometry({ virtualSize: 100, chunkSize: 100 });
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(DeskfuseError);
      const err = e as DeskfuseError;
      expect(err.code).toBe('DF_ERR_GEOMETRY');
      expect(err.fields).toEqual({ virtualSize: 100, chunkSize: 100 });
      expect(err.message).toContain('chunkSize');
      expect(err.message).toContain('virtualSize');
    }
  });
});

describe('chunkCount and chunkLength', () => {
  it('an exact multiple has full chunks only', () => {
    const g = { virtualSize: 4 * 64 * KiB, chunkSize: 64 * KiB };
    expect(chunkCount(g)).toBe(4);
    expect([0, 1, 2, 3].map((i) => chunkLength(g, i))).toEqual([65536, 65536, 65536, 65536]);
  });

  it('a remainder makes a short last chunk', () => {
    const g = { virtualSize: 2 * 64 * KiB + 512, chunkSize: 64 * KiB };
    expect(chunkCount(g)).toBe(3);
    expect(chunkLength(g, 0)).toBe(65536);
    expect(chunkLength(g, 2)).toBe(512);
  });

  it('a disk smaller than one chunk is one short chunk', () => {
    const g = { virtualSize: 512, chunkSize: MAX_CHUNK_SIZE };
    expect(chunkCount(g)).toBe(1);
    expect(chunkLength(g, 0)).toBe(512);
  });

  it('the chunk lengths sum to the virtual size', () => {
    const g = { virtualSize: 1000 * 512, chunkSize: 16 * KiB };
    let sum = 0;
    for (let i = 0; i < chunkCount(g); i++) sum += chunkLength(g, i);
    expect(sum).toBe(g.virtualSize);
  });

  it('large disks count exactly', () => {
    expect(chunkCount({ virtualSize: MAX_VIRTUAL_SIZE, chunkSize: MAX_CHUNK_SIZE })).toBe(2 ** 28);
  });
});

describe('blocks and masks', () => {
  it.each([
    [4 * KiB, 1, 1],
    [16 * KiB, 4, 1],
    [32 * KiB, 8, 1],
    [64 * KiB, 16, 2],
    [4 * MiB, 1024, 128],
  ])('chunkSize %i → %i blocks, %i mask bytes', (chunkSize, blocks, bytes) => {
    const g = { virtualSize: chunkSize, chunkSize };
    expect(blocksPerChunk(g)).toBe(blocks);
    expect(maskBytes(g)).toBe(bytes);
  });
});
