import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Metrics } from '../metrics.js';
import { CacheStore } from './cache-store.js';
import { FsChunkStore } from './fs-store.js';
import { hashBytes, idHex } from './id.js';
import { registerStoreMetrics } from './store-metrics.js';

const dirs: string[] = [];
afterEach(() => { for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true }); });

/** The value of one sample line of a scrape, or undefined when absent. */
function sample(text: string, line: string): number | undefined {
  const m = text.split('\n').find((l) => l.startsWith(`${line} `));
  return m === undefined ? undefined : Number(m.slice(line.length + 1));
}

describe('store metrics', () => {
  it('reports the cache\'s hits and misses and the S3 clients\' requests as counters, read at each scrape', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'df-smet-'));
    dirs.push(dir);
    const remote = await FsChunkStore.open(path.join(dir, 'remote'), 1 << 20);
    const cache = await CacheStore.open(remote, path.join(dir, 'cache'), 1 << 20, 1 << 20);
    const raw = Buffer.alloc(4096, 7);
    const id = idHex(hashBytes(raw));
    await remote.put(id, { raw });
    const client = { requests: { GET: 3, PUT: 1 } as Record<string, number> };
    const metrics = new Metrics();
    registerStoreMetrics(metrics, { s3: { chunks: client }, caches: { chunks: cache } });

    let text = await metrics.render();
    expect(text).toContain('# TYPE deskfuse_s3_requests_total counter');
    expect(sample(text, 'deskfuse_s3_requests_total{client="chunks",method="GET"}')).toBe(3);
    expect(sample(text, 'deskfuse_store_cache_misses_total{cache="chunks"}')).toBe(0);

    expect((await cache.get(id)).raw.equals(raw)).toBe(true); // a miss: read from the remote
    await cache.idle();
    expect((await cache.get(id)).raw.equals(raw)).toBe(true); // a hit: from the cache file
    client.requests.GET = 5;
    client.requests.HEAD = 2;
    text = await metrics.render();
    expect(sample(text, 'deskfuse_store_cache_misses_total{cache="chunks"}')).toBe(1);
    expect(sample(text, 'deskfuse_store_cache_hits_total{cache="chunks"}')).toBe(1);
    expect(sample(text, 'deskfuse_s3_requests_total{client="chunks",method="GET"}')).toBe(5);
    expect(sample(text, 'deskfuse_s3_requests_total{client="chunks",method="HEAD"}')).toBe(2);
  });

  it('leaves the S3 and cache counters without samples on the local store', async () => {
    const metrics = new Metrics();
    registerStoreMetrics(metrics, { deltas: { stats: { built: 2, fetched: 0, stored: 0 } } });
    const text = await metrics.render();
    expect(sample(text, 'deskfuse_deltas_total{how="built"}')).toBe(2);
    expect(text).not.toMatch(/^deskfuse_s3_requests_total\{/m);
  });
});
