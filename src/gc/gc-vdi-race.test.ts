import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FsChunkStore } from '../chunk/fs-store.js';
import { hashBytes, idHex, isZero, ZERO_ID } from '../chunk/id.js';
import { RawChunkCache } from '../chunk/raw-cache.js';
import { scrub } from '../chunk/scrub.js';
import type { ChunkStore } from '../chunk/store.js';
import { Desktops } from '../desktop/desktops.js';
import { isDeskfuseError } from '../errors.js';
import type { Logger } from '../log.js';
import { openMeta } from '../meta/open.js';
import { SqliteEngine } from '../meta/sqlite-engine.js';
import type { CloudIncrement } from '../vdi/increment.js';
import type { VdiSessionView } from '../vdi/sessions.js';
import { VdiSessions } from '../vdi/sessions.js';
import { checkExports, CHUNK, CHUNKS, G, gc, makeCatalog, poolChunk, publish, Rng, tmpDir, type World } from '../../test/helpers/gc-world.js';

/**
 * Garbage collection online against VDI sessions: beside publishes, abandoned uploads, retention and
 * GC runs with no grace period (as gc-race.test.ts), VMs write to sessions of two persistent desktops
 * through the real VdiSessions code: writes and flushes on the cloud increment, checkpoints (after a
 * FLUSH and when the last client leaves: chunks stored, a staged layer held and recorded in the row),
 * commits from the increment (an admin's, or a clean shutdown's auto-commit), commits from the last
 * checkpoint by a second server, and discards. A chunk stored just before a sweep and referenced just
 * after, two ways: a quarter of the first server's checkpoints and commits wait some GC steps between
 * storing their chunks and staging and holding their layer (with no grace period, a run in between may
 * find those chunks unreferenced and the next remove them); and a run about to sweep chunks has a third
 * desktop's session (or a VM's) write one of the candidates it is about to remove, and checkpoint it. Afterwards: every version row exports byte-exact, every open session's last
 * checkpoint is complete (its layer and all its chunks stored) and holds a state the VM wrote, the
 * second server commits it, the result exports byte-exact, and `store verify` is clean.
 */
const SEEDS = Number(process.env.GC_RACE_SEEDS ?? 200);
const POOL = 9;
const DESKTOPS = ['d1', 'd2'];

/** A session as its VM sees it: what it wrote, every state it went through (a checkpoint holds one of them). */
interface VmSession {
  id: string;
  desktop: string;
  base: Buffer[];
  cur: Buffer[];
  history: Buffer[][];
  inc?: CloudIncrement;
  /** Open, its VM done with it: checked and committed after the race. */
  idle?: boolean;
  /** Writes to the increment one at a time (the VM's and the injected ones), so `cur` matches it. */
  lock: Promise<void>;
}

interface VdiWorld extends World {
  a: VdiSessions;
  b: VdiSessions;
  errors: string[];
}

function logger(errors: string[]): Logger {
  const l: Logger = {
    trace: () => {}, debug: () => {}, info: () => {}, warn: () => {},
    error: (obj, msg) => errors.push(`${msg}: ${((obj as { err?: Error }).err)?.message ?? ''}`),
    child: () => l,
  };
  return l;
}

/**
 * The store a server's checkpoints and commits write through: `after` runs once a batch is stored,
 * before the caller goes on to stage its layer and hold it (a slow server, a long checkpoint).
 */
function slowed(store: ChunkStore, after: () => Promise<void>): ChunkStore {
  return new Proxy(store, {
    get(t, k) {
      if (k === 'putMany') {
        return async (batch: Array<{ id: string; frame: Buffer }>) => {
          const r = await t.putMany(batch);
          await after();
          return r;
        };
      }
      const v = Reflect.get(t, k, t) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  });
}

async function world(dir: string, after: () => Promise<void>): Promise<VdiWorld> {
  const meta = await openMeta(new SqliteEngine(path.join(dir, 'meta.sqlite')));
  const chunks = await FsChunkStore.open(path.join(dir, 'chunks'), 1 << 20);
  const blobs = await FsChunkStore.open(path.join(dir, 'blobs'), 1 << 20);
  const catalog = makeCatalog(meta, chunks, blobs);
  await catalog.createImage('img', G);
  const desktops = new Desktops({ meta, catalog });
  const errors: string[] = [];
  const sessions = (server: string) => new VdiSessions({
    repo: meta.vdi, meta, catalog, desktops, chunks: server === 'a' ? slowed(chunks, after) : chunks, cache: new RawChunkCache(chunks, path.join(dir, `cache-${server}`), 1 << 20),
    dir: path.join(dir, `vdi-${server}`), server, checkpointSeconds: 0, log: logger(errors),
  });
  return { meta, chunks, blobs, catalog, image: 'img', expected: new Map(), a: sessions('a'), b: sessions('b'), errors };
}

const idOf = (b: Buffer) => (isZero(b) ? ZERO_ID : hashBytes(b));

/** Retention as part A does it, crudely: version rows no ref points to and no unfinished VDI session starts from go. */
function dropUnreferencedVersions(w: World): Promise<number> {
  return w.meta.engine.run(`DELETE FROM versions WHERE image = ? AND version NOT IN (SELECT version FROM refs WHERE image = ?)
    AND version NOT IN (SELECT base FROM vdi_sessions WHERE image = ? AND state IN ('open', 'committing', 'failed'))`, [w.image, w.image, w.image]);
}

/** The state of the session its last checkpoint holds (one the VM went through), or undefined. */
async function checkpointState(w: World, s: VmSession, layer: string): Promise<Buffer[] | undefined> {
  const ids = s.base.map(idOf);
  for (const e of (await w.catalog.stagedLayer(layer)).entries) ids[e.index] = e.id;
  return [...s.history].reverse().find((st) => st.every((b, i) => idOf(b).equals(ids[i]!)));
}

describe('garbage collection races VDI sessions: writes, checkpoints, commits and discards', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    await Promise.all(dirs.map((d) => fsp.rm(d, { recursive: true, force: true })));
  });

  it(`keeps every version and every open session's last checkpoint over ${SEEDS} seeded interleavings`, async () => {
    const t0 = performance.now();
    const totals = { deleted: 0, cancelled: 0, busy: 0, versions: 0, checkpoints: 0, injected: 0, fromCheckpoint: 0, fromIncrement: 0, discarded: 0, retried: 0, slowed: 0, refused: 0 };
    for (let seed = 1; seed <= SEEDS; seed++) {
      const dir = await tmpDir('df-gc-vdi-race-');
      dirs.push(dir);
      // A quarter of the checkpoints and commits of server a go on only some GC steps after their chunks are stored.
      const waiting: Array<{ steps: number; go: () => void }> = [];
      let gcOver = false;
      const stepped = () => {
        for (const x of waiting.splice(0)) if (gcOver || --x.steps <= 0) x.go(); else waiting.push(x);
      };
      const slow = () => (gcOver || rng.int(4) !== 0 ? Promise.resolve() : new Promise<void>((go) => { waiting.push({ steps: 4 + rng.int(14), go }); totals.slowed++; }));
      const w = await world(dir, () => slow());
      const rng = new Rng(seed);
      const pause = async () => {
        for (let n = rng.int(4); n > 0; n--) await new Promise((r) => setImmediate(r));
      };
      const pool = new Map<string, Buffer>();
      for (let k = 1; k < POOL; k++) pool.set(idHex(idOf(poolChunk(k, seed))), poolChunk(k, seed));
      let fresh = 0;
      const unique = () => {
        const b = poolChunk(1000 + fresh++, seed);
        pool.set(idHex(idOf(b)), b);
        return b;
      };
      const content = () => Array.from({ length: CHUNKS }, () => poolChunk(rng.int(POOL), seed));
      const sessions = new Map<string, VmSession>();

      const write = (s: VmSession, i: number, b: Buffer): Promise<boolean> => {
        const p = s.lock.then(async () => {
          if (!s.inc) return false;
          await s.inc.write(i * CHUNK, b);
          s.cur[i] = b;
          s.history.push([...s.cur]);
          return true;
        });
        s.lock = p.then(() => {}, () => {});
        return p;
      };
      const flush = async (s: VmSession) => {
        await s.lock;
        if (!s.inc) return;
        await s.inc.flush();
        w.a.flushed(s.id); // the NBD export's FLUSH: a checkpoint at once (checkpointSeconds 0), in the background
      };
      /** A commit's version holds `content`: recorded for the exports check. */
      const landed = (v: VdiSessionView, content: Buffer[]) => {
        if (v.state !== 'committed') throw new Error(`session ${v.id} is ${v.state} after its commit`);
        if (v.outcome!.kind === 'fast-forward') w.expected.set(v.outcome!.version!, content);
        else if (v.outcome!.kind !== 'unchanged') throw new Error(`session ${v.id}: ${JSON.stringify(v.outcome)}`);
      };
      /** From the increment on its owner; rerun as an admin would when GC took chunks it stored (no grace period). */
      const commitHere = async (s: VmSession) => {
        for (let attempt = 0; ; attempt++) {
          try {
            landed(await w.a.commit(s.id, 'admin', 't'), [...s.cur]);
            totals.fromIncrement++;
            return;
          } catch (err) {
            if (!isDeskfuseError(err, 'DF_ERR_CHUNKS_MISSING') || attempt > 20) throw err;
            totals.retried++;
          }
        }
      };
      /** From its last checkpoint, by the other server (the owner is idle): never retried. */
      const commitElsewhere = async (s: VmSession) => {
        const row = await w.meta.vdi.get(s.id);
        const state = row!.checkpointLayer === null ? s.base : await checkpointState(w, s, row!.checkpointLayer);
        if (!state) throw new Error(`session ${s.id}: its checkpoint ${row!.checkpointLayer} holds no state the VM wrote`);
        landed(await w.b.commit(s.id, 'admin', 't'), state);
        totals.fromCheckpoint++;
      };

      /** A VM on a desktop: sessions one after another; each connects a few times, writes and flushes, then ends one way or another. */
      const vm = async (desktop: string) => {
        for (let n = 0; n < 2; n++) {
          await pause();
          const autoCommit = rng.int(3) === 0;
          const { session } = await w.a.create({ desktop, autoCommit }, 't');
          const base = w.expected.get(session.base)!;
          const s: VmSession = { id: session.id, desktop, base, cur: [...base], history: [[...base]], lock: Promise.resolve() };
          sessions.set(s.id, s);
          const connections = 1 + rng.int(2);
          for (let c = 0; c < connections; c++) {
            s.inc = await w.a.attach(s.id, 'vm');
            for (let k = 1 + rng.int(3); k > 0; k--) {
              const i = rng.int(CHUNKS);
              // Mostly pool chunks (shared with versions and garbage), sometimes one only this session has, or back to the base.
              const r = rng.int(6);
              await write(s, i, r === 0 ? s.base[i]! : r === 1 ? unique() : poolChunk(rng.int(POOL), seed));
              await pause();
              if (rng.int(2) === 0) await flush(s);
            }
            await flush(s);
            await pause();
            await s.lock;
            s.inc = undefined;
            // A clean shutdown of an auto-commit session commits it; else the last client leaving checkpoints it.
            const clean = c === connections - 1 && rng.int(2) === 0;
            await w.a.detach(s.id, { clean, wrote: true });
          }
          const row = (await w.meta.vdi.get(s.id))!;
          if (row.state === 'committed') {
            landed(await w.a.view(s.id), [...s.cur]);
            totals.fromIncrement++;
            continue;
          }
          if (row.state === 'committing') {
            await commitHere(s); // the auto-commit failed (GC took a chunk it had stored): an admin reruns it
            continue;
          }
          const last = n === 1;
          const end = rng.int(last ? 4 : 3);
          if (end === 0) await commitHere(s);
          else if (end === 1) await commitElsewhere(s);
          else if (end === 2) {
            await w.a.discard(s.id);
            totals.discarded++;
          } else s.idle = true; // left open: checked and committed after the race
        }
      };

      try {
        await publish(w, 'main', content());
        for (const d of [...DESKTOPS, 'd3']) await new Desktops({ meta: w.meta, catalog: w.catalog }).create({ name: d, image: 'img' }, 't');
        // d3's session is written to only just before a run sweeps chunks (below), and committed after the race.
        const created = await w.a.create({ desktop: 'd3', autoCommit: false }, 't');
        const base3 = w.expected.get(created.session.base)!;
        sessions.set(created.session.id, { id: created.session.id, desktop: 'd3', base: base3, cur: [...base3], history: [[...base3]], lock: Promise.resolve(), idle: true });
        /** Just before a run sweeps chunks: an attached VM writes one of the candidates it is about to remove, and checkpoints it. */
        const leaving: Array<Promise<void>> = [];
        const inject = async () => {
          const cands = await w.meta.engine.all(`SELECT id FROM gc_objects WHERE kind = 'chunk' AND state = 'candidate' ORDER BY id`);
          const known = cands.map((r) => pool.get(r.id as string)).filter((b): b is Buffer => b !== undefined);
          // A VM connected now, or one whose session sits open and idle (it connects again for this write).
          const open = [...sessions.values()].filter((s) => s.inc || s.idle);
          if (!open.length || !known.length) return;
          const s = open[rng.int(open.length)]!;
          const b = known[rng.int(known.length)]!;
          if (s.inc) {
            if (await write(s, rng.int(CHUNKS), b)) {
              await flush(s);
              totals.injected++;
            }
            return;
          }
          s.idle = false;
          s.inc = await w.a.attach(s.id, 'vm');
          await write(s, rng.int(CHUNKS), b);
          await flush(s);
          totals.injected++;
          // It disconnects after this step (its last checkpoint may wait for later GC steps).
          leaving.push((async () => {
            await pause();
            await s.lock;
            s.inc = undefined;
            await w.a.detach(s.id, { clean: false, wrote: true });
            s.idle = true;
          })());
        };
        const gcRun = async (later = 0) => {
          try {
            const step = async (phase: string) => {
              stepped();
              if (phase === 'candidates blobs' && later === 0) await inject();
              await pause();
            };
            const r = await gc(w, { tmpDir: dir, step, now: () => Date.now() + later });
            totals.deleted += r.deleted.chunks + r.deleted.blobs;
            totals.cancelled += r.cancelled;
          } catch (err) {
            if (!isDeskfuseError(err, 'DF_ERR_GC_RUNNING')) throw err;
            totals.busy++;
          }
        };
        // GC runs one after another while the VMs work (at most 4), and sometimes a second at once.
        let working = true;
        const vms = Promise.all(DESKTOPS.map((d) => vm(d))).finally(() => { working = false; });
        await Promise.all([
          vms,
          (async () => { for (let k = 0; k < 2; k++) { await pause(); await publish(w, 'main', content(), pause); } })(),
          (async () => { for (const c of content()) { await pause(); if (!isZero(c)) await w.chunks.put(idHex(idOf(c)), { raw: c }); } })(),
          (async () => { for (let k = 0; k < 3; k++) { await pause(); await pause(); await dropUnreferencedVersions(w); } })(),
          (async () => {
            for (let k = 0; k < 4 && (working || k < 2); k++) { await pause(); await gcRun(); }
            gcOver = true; // what still waits for GC steps goes on
            stepped();
          })(),
          (async () => { await pause(); await pause(); await gcRun(); })(), // sometimes two at once: one is refused
        ]);
        gcOver = true;
        stepped();
        while (leaving.length) await leaving.shift();
        // A quiet end: a run sweeps what the race's runs found unreferenced.
        await dropUnreferencedVersions(w);
        await gcRun(1000);
        // Every open session's last checkpoint is complete and holds a state its VM wrote; the other server commits it.
        for (const row of await w.meta.vdi.list({ states: ['open', 'committing', 'failed'] })) {
          expect(row.state, `seed ${seed}: session ${row.id}`).toBe('open');
          if (row.checkpointLayer !== null) { // null: d3's session when no run injected a write (committed as unchanged)
            expect(await w.blobs.has(row.checkpointLayer), `seed ${seed}: checkpoint layer of ${row.id}`).toBe(true);
            const ids = (await w.catalog.stagedLayer(row.checkpointLayer)).entries.filter((e) => !e.id.equals(ZERO_ID)).map((e) => idHex(e.id));
            expect(await w.catalog.missingChunks(ids), `seed ${seed}: checkpoint chunks of ${row.id}`).toEqual([]);
            totals.checkpoints++;
          }
          await commitElsewhere(sessions.get(row.id)!);
        }
        // And one more (what the last found unreferenced goes), then every version row left exports byte-exact.
        await dropUnreferencedVersions(w);
        await gcRun(2000);
        totals.versions += await checkExports(w);
        const report = await scrub(w.meta, w.chunks, w.blobs);
        expect(report.missing, `seed ${seed}`).toEqual([]);
        expect(report.ok, `seed ${seed}`).toBe(true);
        totals.refused += w.errors.filter((e) => /checkpoint failed: .*removed by garbage collection/.test(e)).length;
      } catch (err) {
        throw new Error(`seed ${seed}: ${(err as Error).stack}\n${w.errors.join('\n')}`);
      } finally {
        w.a.close();
        w.b.close();
        await w.meta.close();
      }
    }
    console.log(totals, `${Math.round(performance.now() - t0)} ms`);
    expect(totals.deleted).toBeGreaterThan(SEEDS);
    expect(totals.cancelled).toBeGreaterThan(0);
    expect(totals.checkpoints).toBeGreaterThan(SEEDS / 4);
    expect(totals.fromCheckpoint).toBeGreaterThan(SEEDS / 2);
    expect(totals.injected).toBeGreaterThan(SEEDS / 4);
  }, 240_000);
});
