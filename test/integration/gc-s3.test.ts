import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3ChunkStore } from '../../src/chunk/s3-store.js';
import { scrub } from '../../src/chunk/scrub.js';
import { openEngine } from '../../src/meta/engine.js';
import { openMeta } from '../../src/meta/open.js';
import { S3DeltaBucket } from '../../src/sync/delta-bucket.js';
import { DeltaCache } from '../../src/sync/delta-cache.js';
import { sharedPostgres, sharedRgw } from '../helpers/engines.js';
import { checkExports, CHUNKS, dropUnreferencedVersions, G, gc, makeCatalog, poolChunk, publish, tmpDir, type World } from '../helpers/gc-world.js';

/**
 * Garbage collection on the scale-out engines: chunks, blobs and deltas in a Ceph RGW bucket, the
 * metadata (lock, candidates, holds) in PostgreSQL. Two phases over LastModified times, orphan deltas
 * in the bucket, and the lock between two collectors on one database.
 */
describe('garbage collection on Ceph RGW and PostgreSQL', () => {
  let w: World;
  let dir: string;
  let deltas: DeltaCache;
  let bucketDeltas: S3DeltaBucket;
  beforeAll(async () => {
    const [rgw, pg] = await Promise.all([sharedRgw('gc'), sharedPostgres('gc')]);
    const cred = { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey };
    const chunks = await S3ChunkStore.open(rgw.url(), cred, { maxChunkSize: 1 << 20 });
    const blobs = new S3ChunkStore(chunks.loc, cred, { maxChunkSize: 1 << 20, folder: 'blobs' });
    const meta = await openMeta(await openEngine(pg.url));
    const catalog = makeCatalog(meta, chunks, blobs);
    await catalog.createImage('img', G);
    w = { meta, chunks, blobs, catalog, image: 'img', expected: new Map() };
    dir = await tmpDir('df-gc-s3-');
    bucketDeltas = new S3DeltaBucket(chunks.client);
    deltas = new DeltaCache(path.join(dir, 'deltas'), blobs, chunks, bucketDeltas);
  }, 300_000);
  afterAll(async () => {
    await w?.meta.close();
    if (dir) await fsp.rm(dir, { recursive: true, force: true });
  });

  const content = (...ks: number[]) => Array.from({ length: CHUNKS }, (_, i) => poolChunk(ks[i] ?? 0, 11));

  it('removes unreferenced chunks, layers, indexes and deltas in two runs; keeps what the version left reaches', async () => {
    await publish(w, 'main', content(1, 2, 3));
    await publish(w, 'main', content(4, 2, 3));
    await publish(w, 'main', content(4, 5, 3));
    for (const v of await w.meta.images.listVersions('img', 10)) await deltas.get(v.layer);
    expect(await dropUnreferencedVersions(w)).toBe(2);
    const later = (s: number) => () => Date.now() + s * 1000; // S3 times are whole seconds

    const first = await gc(w, { tmpDir: dir, deltas, now: later(3) });
    expect(first.candidates.chunks).toBe(2); // pool chunks 1 and 2 are only in the dropped versions
    expect(first.deleted.chunks).toBe(0);
    expect(first.deleted.deltas).toBe(2); // deltas are a cache: one phase
    const second = await gc(w, { tmpDir: dir, deltas, now: later(4) });
    expect(second.deleted.chunks).toBe(2);
    expect(second.deleted.blobs).toBeGreaterThanOrEqual(4);
    expect(second.deleted.bytes).toBeGreaterThan(0);
    expect(second.usage.kinds.unreferencedChunks.count).toBe(0);

    expect(await checkExports(w)).toBe(1);
    const report = await scrub(w.meta, w.chunks, w.blobs);
    expect(report.missing).toEqual([]);
    expect(report.ok).toBe(true);
    const left = [];
    for await (const d of bucketDeltas.list()) left.push(d.layer);
    expect(left).toEqual([(await w.meta.images.getVersion('img', 3))!.layer]);
  });

  it('one collector at a time across servers: the second gets DF_ERR_GC_RUNNING', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const a = gc(w, { tmpDir: dir, holder: 'server-a', step: () => gate });
    await new Promise((r) => setTimeout(r, 200));
    await expect(gc(w, { tmpDir: dir, holder: 'server-b' })).rejects.toMatchObject({ code: 'DF_ERR_GC_RUNNING', fields: { holder: 'server-a' } });
    release();
    await expect(a).resolves.toMatchObject({ dryRun: false });
  });
});
