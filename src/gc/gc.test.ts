import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { hashBytes, idHex } from '../chunk/id.js';
import { FsChunkStore } from '../chunk/fs-store.js';
import { scrub } from '../chunk/scrub.js';
import { openMeta } from '../meta/open.js';
import { SqliteEngine } from '../meta/sqlite-engine.js';
import { DeltaCache } from '../sync/delta-cache.js';
import { checkExports, CHUNKS, dropUnreferencedVersions, G, gc, makeCatalog, poolChunk, publish, tmpDir, type World } from '../../test/helpers/gc-world.js';
import { encodeLayer } from '../image/layer.js';
import { MarkSet } from './mark-set.js';

const HOUR = 3600_000;
const content = (...ks: number[]) => Array.from({ length: CHUNKS }, (_, i) => poolChunk(ks[i] ?? 0, 7));
const idOf = (b: Buffer) => idHex(hashBytes(b));

describe('garbage collection', () => {
  let dir: string;
  let w: World;
  beforeEach(async () => {
    dir = await tmpDir('df-gc-');
    const meta = await openMeta(new SqliteEngine(path.join(dir, 'meta.sqlite')));
    const chunks = await FsChunkStore.open(path.join(dir, 'chunks'), 1 << 20);
    const blobs = await FsChunkStore.open(path.join(dir, 'blobs'), 1 << 20);
    const catalog = makeCatalog(meta, chunks, blobs);
    await catalog.createImage('img', G);
    w = { meta, chunks, blobs, catalog, image: 'img', expected: new Map() };
  });
  afterEach(async () => {
    await w.meta.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('removes what no version reaches in two runs, only past the grace period, and keeps the rest', async () => {
    await publish(w, 'main', content(1, 2, 3));
    await publish(w, 'main', content(4, 2, 3)); // chunk 1 now only in version 1
    expect(await dropUnreferencedVersions(w)).toBe(1);
    const one = idOf(poolChunk(1, 7));
    // Young: not even a candidate.
    let r = await gc(w, { tmpDir: dir, graceMs: HOUR });
    expect(r.candidates.chunks).toBe(0);
    expect(r.usage.kinds.unreferencedChunks.count).toBe(1);
    // Old (the clock two hours on): a candidate, still stored.
    const later = () => Date.now() + 2 * HOUR;
    r = await gc(w, { tmpDir: dir, graceMs: HOUR, now: later });
    expect(r.candidates.chunks).toBe(1);
    expect(r.deleted.chunks).toBe(0);
    expect(await w.chunks.has(one)).toBe(true);
    // Dry run: says what would go, changes nothing.
    r = await gc(w, { tmpDir: dir, graceMs: HOUR, now: later }, true);
    expect(r.deleted.chunks).toBe(1);
    expect(await w.chunks.has(one)).toBe(true);
    // The next run removes it (and the blobs of version 1 and the staged layers).
    r = await gc(w, { tmpDir: dir, graceMs: HOUR, now: later });
    expect(r.deleted.chunks).toBe(1);
    expect(r.deleted.blobs).toBeGreaterThanOrEqual(2);
    expect(r.deleted.bytes).toBeGreaterThan(0);
    expect(await w.chunks.has(one)).toBe(false);
    expect(await checkExports(w)).toBe(1);
    expect((await scrub(w.meta, w.chunks, w.blobs)).ok).toBe(true);
    expect(r.usage.images[0]!.image).toBe('img');
    expect(r.usage.images[0]!.chunks.count).toBe(3);
  });

  it('a candidate written again, or referenced again, before the sweep is kept', async () => {
    await publish(w, 'main', content(1, 2));
    await publish(w, 'main', content(3, 4));
    await dropUnreferencedVersions(w);
    const later = () => Date.now() + 2 * HOUR;
    let r = await gc(w, { tmpDir: dir, graceMs: HOUR, now: later });
    expect(r.candidates.chunks).toBe(2);
    // Chunk 1 is uploaded again (its time becomes now); chunk 2 is referenced by a new version.
    await w.chunks.put(idOf(poolChunk(1, 7)), { raw: poolChunk(1, 7) });
    await publish(w, 'main', content(3, 2));
    r = await gc(w, { tmpDir: dir, graceMs: HOUR, now: later });
    expect(r.deleted.chunks).toBe(0);
    expect(r.cancelled).toBe(1); // the upload; the commit's hold dropped chunk 2's row itself
    expect(await w.chunks.has(idOf(poolChunk(1, 7)))).toBe(true);
    expect(await w.chunks.has(idOf(poolChunk(2, 7)))).toBe(true);
    expect(await checkExports(w)).toBe(2);
  });

  it("a commit whose final layer and index are old candidates (the same change made before, since dropped) cancels them", async () => {
    await publish(w, 'main', content(1, 2));
    const base = (await w.meta.images.getRef('img', 'main'))!.version;
    await publish(w, 'main', content(3, 2));
    const gone = (await w.meta.images.getVersion('img', base + 1))!;
    await w.meta.images.moveRef('img', 'main', base, base + 1, 'rollback', 't', new Date().toISOString());
    await dropUnreferencedVersions(w);
    await gc(w, { tmpDir: dir, graceMs: HOUR, now: () => Date.now() + 2 * HOUR });
    const blobs = (await w.meta.gc.candidates('blob', '', 100)).map((c) => c.id);
    expect(blobs).toEqual(expect.arrayContaining([gone.layer, gone.index]));
    const again = await publish(w, 'main', content(3, 2)); // the same change on the same parent: the same final layer and index
    const v = (await w.meta.images.getVersion('img', again))!;
    expect([v.layer, v.index]).toEqual([gone.layer, gone.index]);
    const left = (await w.meta.gc.candidates('blob', '', 100)).map((c) => c.id);
    expect(left).not.toContain(gone.layer);
    expect(left).not.toContain(gone.index);
    const r = await gc(w, { tmpDir: dir, graceMs: HOUR, now: () => Date.now() + 2 * HOUR });
    expect(await w.blobs.has(gone.layer)).toBe(true);
    expect(r.deleted.chunks).toBe(0);
    expect(await checkExports(w)).toBe(2);
  });

  it('a commit takes back rows a dead run left `deleting`; a live run makes it wait, then report them missing', async () => {
    await publish(w, 'main', content(1, 2));
    await publish(w, 'main', content(3, 4));
    await dropUnreferencedVersions(w);
    const later = () => Date.now() + 2 * HOUR;
    await gc(w, { tmpDir: dir, graceMs: HOUR, now: later });
    const one = idOf(poolChunk(1, 7));
    expect(await w.meta.gc.startDeleting('chunk', [one])).toEqual([one]); // a run died right after this
    // A live run holds the lock: the commit waits for it (5 s in these tests), then reports the chunk missing.
    await w.meta.gc.acquire('other', 'r1', Date.now(), Date.now() + HOUR);
    const head = (await w.meta.images.getRef('img', 'main'))!.version;
    const layer = (await w.catalog.stageLayer('img', encodeLayer({ geometry: G, hasMasks: false, entries: [{ index: 0, id: hashBytes(poolChunk(1, 7)) }] }))).layer;
    const t = Date.now();
    await expect(w.catalog.commit({ image: 'img', parent: head, ref: 'main', layer, kind: 'publish', author: 't', message: '' }))
      .rejects.toMatchObject({ code: 'DF_ERR_CHUNKS_MISSING', fields: { missing: [one] } });
    expect(Date.now() - t).toBeGreaterThanOrEqual(4_000);
    // Its lease gone (the run died): the next commit takes the row back and lands.
    await w.meta.gc.release('r1', new Date().toISOString(), null);
    await expect(w.catalog.commit({ image: 'img', parent: head, ref: 'main', layer, kind: 'publish', author: 't', message: '' })).resolves.toMatchObject({ kind: 'fast-forward' });
    expect(await w.meta.gc.deleting('chunk', [one])).toEqual([]);
    expect(await w.chunks.has(one)).toBe(true);
  }, 20_000);

  it('one at a time: a second run gets DF_ERR_GC_RUNNING until the first finishes or its lease runs out', async () => {
    await publish(w, 'main', content(1));
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const first = gc(w, { tmpDir: dir, holder: 'server-a', step: () => gate });
    await new Promise((r) => setTimeout(r, 50));
    await expect(gc(w, { tmpDir: dir, holder: 'server-b' })).rejects.toMatchObject({ code: 'DF_ERR_GC_RUNNING', fields: { holder: 'server-a' } });
    release();
    await first;
    await expect(gc(w, { tmpDir: dir, holder: 'server-b' })).resolves.toMatchObject({ dryRun: false });
    // A holder that died: its lease (1 s here) runs out and another server takes over.
    await w.meta.gc.acquire('dead', 'r0', Date.now(), Date.now() + 1000);
    await expect(gc(w, { tmpDir: dir, holder: 'server-b' })).rejects.toMatchObject({ code: 'DF_ERR_GC_RUNNING' });
    await expect(gc(w, { tmpDir: dir, holder: 'server-b', now: () => Date.now() + 2000 })).resolves.toMatchObject({ dryRun: false });
  });

  it('orphan deltas go with their layer; a kept version keeps its delta', async () => {
    await publish(w, 'main', content(1, 2));
    await publish(w, 'main', content(3, 2));
    const deltas = new DeltaCache(path.join(dir, 'deltas'), w.blobs, w.chunks);
    for (const v of await w.meta.images.listVersions('img', 10)) await deltas.get(v.layer);
    await dropUnreferencedVersions(w);
    const r = await gc(w, { tmpDir: dir, graceMs: 0, deltas, now: () => Date.now() + 1000 });
    expect(r.deleted.deltas).toBe(1);
    const left = [];
    for await (const f of deltas.files()) left.push(f.layer);
    expect(left).toEqual([(await w.meta.images.getVersion('img', 2))!.layer]);
    expect(r.usage.kinds.deltas.count).toBe(1);
  });

  it("an open VDI session's checkpoint and an in-flight commit's hold are roots", async () => {
    await publish(w, 'main', content(1));
    const stage = async (k: number) => {
      const c = poolChunk(k, 7);
      await w.chunks.put(idOf(c), { raw: c });
      return (await w.catalog.stageLayer('img', encodeLayer({ geometry: G, hasMasks: false, entries: [{ index: 3, id: hashBytes(c) }] }))).layer;
    };
    const checkpoint = await stage(5);
    const held = await stage(6);
    const at = new Date().toISOString();
    await w.meta.vdi.insert({
      id: 's1', desktop: 'd', image: 'img', base: 1, mode: 'persistent', holder: 'vdi:s1', fencing: 1, secretHash: 'x', autoCommit: true, state: 'open',
      createdAt: at, createdBy: 't', updatedAt: at, lastConnectAt: null, lastDisconnectAt: null, lastDisconnect: null, outcome: null, failure: null,
      server: 'a', nbdHost: null, nbdPort: null, heartbeatAt: null, checkpointLayer: checkpoint, checkpointAt: at,
    });
    await w.meta.gc.hold({ id: 'h1', image: 'img', layer: held, parentIndex: null }, [], [], Date.now() + 10 * HOUR); // past the runs' clock
    const orphan = await stage(7);
    const later = () => Date.now() + 2 * HOUR;
    await gc(w, { tmpDir: dir, graceMs: HOUR, now: later });
    const r = await gc(w, { tmpDir: dir, graceMs: HOUR, now: later });
    expect(r.deleted.chunks).toBe(1); // pool chunk 7, whose staged layer nothing holds
    for (const k of [5, 6]) expect(await w.chunks.has(idOf(poolChunk(k, 7)))).toBe(true);
    expect(await w.chunks.has(idOf(poolChunk(7, 7)))).toBe(false);
    for (const l of [checkpoint, held]) expect(await w.blobs.has(l)).toBe(true);
    expect(await w.blobs.has(orphan)).toBe(false);
  });

  it("a VDI checkpoint's hold refuses a layer whose chunks a sweep took after they were stored (no grace period)", async () => {
    await publish(w, 'main', content(1));
    const c = poolChunk(5, 7);
    await w.chunks.put(idOf(c), { raw: c }); // the checkpoint stores its chunk…
    await gc(w, { tmpDir: dir, graceMs: 0, now: () => Date.now() + 1000 }); // …a run finds it unreferenced…
    const { layer } = await w.catalog.stageLayer('img', encodeLayer({ geometry: G, hasMasks: false, entries: [{ index: 3, id: hashBytes(c) }] }));
    const r = await gc(w, { tmpDir: dir, graceMs: 0, now: () => Date.now() + 2000 }); // …the next removes it before the hold
    expect(r.deleted.chunks).toBe(1);
    // Recording this layer in the session row would make a checkpoint that cannot be committed.
    await expect(w.catalog.holdStaged('img', layer, [idOf(c)])).rejects.toMatchObject({ code: 'DF_ERR_CHUNKS_MISSING' });
    expect(await w.meta.gc.holds(Date.now())).toEqual([]);
    // Stored again (the next checkpoint takes the same positions again), it is held.
    await w.chunks.put(idOf(c), { raw: c });
    const release = await w.catalog.holdStaged('img', layer, [idOf(c)]);
    expect(await w.meta.gc.holds(Date.now())).toHaveLength(1);
    await release();
  });

  it('FsChunkStore.removeIfUnchanged spares a file written again; a sweep tells the sender once per batch', async () => {
    const store = w.chunks as FsChunkStore;
    const c = poolChunk(9, 7);
    await store.put(idOf(c), { raw: c });
    const [o] = await collect(store.objects());
    await new Promise((r) => setTimeout(r, 5));
    await store.put(idOf(c), { raw: c }); // stored already: its time becomes now
    expect(await store.removeIfUnchanged(idOf(c), o!.mtime)).toBe('newer');
    expect((await store.get(idOf(c))).raw).toEqual(c);
    const [o2] = await collect(store.objects());
    expect(await store.removeIfUnchanged(idOf(c), o2!.mtime)).toBe('removed');
    expect(await store.removeIfUnchanged(idOf(c), o2!.mtime)).toBe('absent');
    expect(await store.has(idOf(c))).toBe(false);
    let told = 0;
    store.onForget = () => told++;
    await publish(w, 'main', content(1, 2));
    await publish(w, 'main', content(3, 4));
    await dropUnreferencedVersions(w);
    await gc(w, { tmpDir: dir, graceMs: 0, now: () => Date.now() + 1000 });
    const r = await gc(w, { tmpDir: dir, graceMs: 0, now: () => Date.now() + 2000 });
    expect(r.deleted.chunks).toBe(2);
    expect(told).toBe(1);
  });

  it('the mark set merges sorted runs on disk', async () => {
    const m = new MarkSet(dir, 't', 3);
    const ids = Array.from({ length: 20 }, (_, i) => idOf(Buffer.from([i % 7])));
    for (const [i, id] of ids.entries()) await m.add(id, i % 2);
    const out = [];
    for await (const e of m.entries()) out.push(e);
    expect(out.map((e) => e.id)).toEqual([...new Set(ids)].sort());
    // id i % 7 is added at i, i + 7 (and i + 14): with tag i % 2 each gets both tags, each once
    expect(out.map((e) => [...e.tags].sort().join())).toEqual(out.map(() => '0,1'));
    await m.dispose();
  });
});

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}
