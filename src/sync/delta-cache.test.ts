import { mkdtempSync, promises as fsp, rmSync, utimesSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ChunkReader } from '../chunk/store.js';
import { dfError } from '../errors.js';
import { DeltaCache, type DeltaBucket } from './delta-cache.js';

/** Deltas are a cache (issue 13): dropped with their version or when idle; absent ones are built again (delta.test.ts, s3-cache.test.ts). */
const none: ChunkReader = { has: async () => false, get: async (id) => { throw dfError('DF_ERR_CHUNK_NOT_FOUND', id); } };
const layer = (c: string) => c.repeat(64);
const name = (c: string) => `${layer(c)}.${'f'.repeat(64)}.dfdl`;

describe('DeltaCache as a cache', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'df-deltas-'));
    writeFileSync(path.join(dir, name('a')), Buffer.alloc(1000));
    writeFileSync(path.join(dir, name('b')), Buffer.alloc(300));
    writeFileSync(path.join(dir, 'unrelated.tmp'), 'x');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('drop removes the files of those layers here and in the bucket; sizeOf counts them', async () => {
    const removed: string[] = [];
    const bucket: DeltaBucket = { fetch: async () => undefined, store: async () => true, remove: async (id) => void removed.push(id) };
    const cache = new DeltaCache(dir, none, none, bucket);
    expect(await cache.sizeOf([layer('a'), layer('b'), layer('c')])).toBe(1300);
    expect(await cache.drop([layer('a'), layer('c')])).toBe(1000);
    expect((await fsp.readdir(dir)).sort()).toEqual([name('b'), 'unrelated.tmp']);
    expect(removed).toEqual([layer('a'), layer('c')]);
  });

  it('dropIdle removes the files not used since the cutoff (by mtime), leaving others', async () => {
    const old = new Date(Date.now() - 40 * 86_400_000);
    utimesSync(path.join(dir, name('a')), old, old);
    const cache = new DeltaCache(dir, none, none);
    expect(await cache.dropIdle(Date.now() - 30 * 86_400_000)).toEqual({ files: 1, bytes: 1000 });
    expect((await fsp.readdir(dir)).sort()).toEqual([name('b'), 'unrelated.tmp']);
    expect(await cache.dropIdle(Date.now() - 30 * 86_400_000)).toEqual({ files: 0, bytes: 0 });
  });
});
