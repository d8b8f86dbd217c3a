import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FsChunkStore } from '../chunk/fs-store.js';
import { hashBytes, idHex } from '../chunk/id.js';
import { scrub } from '../chunk/scrub.js';
import { isDeskfuseError } from '../errors.js';
import { openMeta } from '../meta/open.js';
import { SqliteEngine } from '../meta/sqlite-engine.js';
import { checkExports, CHUNKS, dropUnreferencedVersions, G, gc, makeCatalog, poolChunk, publish, Rng, tmpDir, type World } from '../../test/helpers/gc-world.js';

/**
 * Garbage collection online: publishes (two refs, one standing in for a VDI session's commits),
 * abandoned uploads, retention dropping version rows, and GC runs with no grace period at all (the
 * harshest: every unreferenced object is a candidate at once) interleave at random points, seeded.
 * Afterwards every version row left exports byte-exact and `store verify` is clean.
 */
const SEEDS = Number(process.env.GC_RACE_SEEDS ?? 200);
const POOL = 9;

async function world(dir: string): Promise<World> {
  const meta = await openMeta(new SqliteEngine(path.join(dir, 'meta.sqlite')));
  const chunks = await FsChunkStore.open(path.join(dir, 'chunks'), 1 << 20);
  const blobs = await FsChunkStore.open(path.join(dir, 'blobs'), 1 << 20);
  const catalog = makeCatalog(meta, chunks, blobs);
  await catalog.createImage('img', G);
  return { meta, chunks, blobs, catalog, image: 'img', expected: new Map() };
}

describe('garbage collection races publishes, commits and retention', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    await Promise.all(dirs.map((d) => fsp.rm(d, { recursive: true, force: true })));
  });

  it(`keeps every version a root reaches over ${SEEDS} seeded interleavings`, async () => {
    const totals = { deleted: 0, cancelled: 0, busy: 0, versions: 0 };
    for (let seed = 1; seed <= SEEDS; seed++) {
      const dir = await tmpDir('df-gc-race-');
      dirs.push(dir);
      const w = await world(dir);
      const rng = new Rng(seed);
      const pause = async () => {
        for (let n = rng.int(4); n > 0; n--) await new Promise((r) => setImmediate(r));
      };
      const content = () => Array.from({ length: CHUNKS }, () => poolChunk(rng.int(POOL), seed));
      try {
        await publish(w, 'main', content());
        const gcRun = async (later = 0) => {
          try {
            const r = await gc(w, { tmpDir: dir, step: pause, now: () => Date.now() + later });
            totals.deleted += r.deleted.chunks + r.deleted.blobs;
            totals.cancelled += r.cancelled;
          } catch (err) {
            if (!isDeskfuseError(err, 'DF_ERR_GC_RUNNING')) throw err;
            totals.busy++;
          }
        };
        await Promise.all([
          (async () => { for (let k = 0; k < 4; k++) { await pause(); await publish(w, 'main', content(), pause); } })(),
          (async () => { for (let k = 0; k < 3; k++) { await pause(); await publish(w, 'desktops/vdi', content(), pause); } })(),
          // An upload no commit names (a client that died): its chunks are old garbage at once (grace 0),
          // and the publishers above soon reference the same pool chunks again.
          (async () => { for (const c of content()) { await pause(); if (c.some((b) => b !== 0)) await w.chunks.put(idOf(c), { raw: c }); } })(),
          (async () => { for (let k = 0; k < 3; k++) { await pause(); await pause(); await dropUnreferencedVersions(w); } })(),
          (async () => { for (let k = 0; k < 3; k++) { await pause(); await gcRun(); } })(),
          (async () => { await pause(); await pause(); await gcRun(); })(), // sometimes two at once: one is refused
        ]);
        // A quiet end: two more runs collect what the race left, then everything left is checked.
        await dropUnreferencedVersions(w);
        await gcRun(1000);
        await gcRun(2000);
        totals.versions += await checkExports(w);
        const report = await scrub(w.meta, w.chunks, w.blobs);
        expect(report.missing, `seed ${seed}`).toEqual([]);
        expect(report.ok, `seed ${seed}`).toBe(true);
        // Only what versions reference is left: the two quiet runs removed the rest.
        const left = await gc(w, { tmpDir: dir, now: () => Date.now() + 3000 }, true);
        expect(left.usage.kinds.unreferencedChunks.count, `seed ${seed}`).toBe(0);
      } catch (err) {
        throw new Error(`seed ${seed}: ${(err as Error).stack}`);
      } finally {
        await w.meta.close();
      }
    }
    expect(totals.deleted).toBeGreaterThan(SEEDS);
    expect(totals.cancelled).toBeGreaterThan(0); // candidates referenced or written again before their sweep
    expect(totals.versions).toBeGreaterThan(SEEDS);
  }, 240_000);
});

const idOf = (b: Buffer) => idHex(hashBytes(b));
