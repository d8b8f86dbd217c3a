// Prune benchmark helper (bench/prune.sh drives it): a day's cleanup of a site of persistent desktops.
//   node bench/prune.mjs make DIR DESKTOPS DAYS [CHANGED]   one image (256 chunks of 4 KiB, `main` at
//        an import), DESKTOPS persistent desktops made from it, then DAYS simulated days: each
//        desktop takes its lease, commits CHANGED new chunks (its shutdown commit) and releases it,
//        through the real Catalog and Desktops (stage layer, commit under the lease's fencing, masks
//        against the parent). A few conflicts (every 30th desktop commits a second time on a stale
//        parent, DAYS-5; half of them resolved by a reset to the conflict ref), and LIVE desktops (3)
//        in use at prune time (a live lease: their lines stay). The clock runs DAYS+2 days in the past
//        up to now; DIR/state.json keeps the simulated clock (the next prune is at 02:00 the next day)
//   node bench/prune.mjs day DIR                      one more simulated day: every desktop's commit
//   node bench/prune.mjs prune DIR [--dry-run]        the prune `deskfuse image prune bench` runs
//        (Lifecycle.prune, the server's default policy) at the simulated clock; one JSON line
//   node bench/prune.mjs gc DIR                       one garbage collection (as bench/gc.mjs run)
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { FsChunkStore } from '../dist/src/chunk/fs-store.js';
import { encodeFrame } from '../dist/src/chunk/frame.js';
import { hashBytes, idHex } from '../dist/src/chunk/id.js';
import { Desktops } from '../dist/src/desktop/desktops.js';
import { runGc } from '../dist/src/gc/gc.js';
import { gcStoreOf } from '../dist/src/gc/stores.js';
import { Catalog } from '../dist/src/image/catalog.js';
import { encodeLayer } from '../dist/src/image/layer.js';
import { Lifecycle } from '../dist/src/image/lifecycle.js';
import { DEFAULT_RETENTION_POLICY } from '../dist/src/image/retention.js';
import { openMeta } from '../dist/src/meta/open.js';
import { SqliteEngine } from '../dist/src/meta/sqlite-engine.js';
import { DeltaCache } from '../dist/src/sync/delta-cache.js';

const [mode, dir, ...rest] = process.argv.slice(2);
const G = { virtualSize: 256 * 4096, chunkSize: 4096 };
const DAY = 86_400_000;
const HOUR = 3_600_000;
const PARALLEL = 8; // desktops committing at once (the metadata transactions queue; chunk puts overlap)
const stateFile = () => path.join(dir, 'state.json');
const readState = () => JSON.parse(fs.readFileSync(stateFile(), 'utf8'));
const writeState = (s) => fs.writeFileSync(stateFile(), JSON.stringify(s));

const open = async () => ({
  meta: await openMeta(new SqliteEngine(path.join(dir, 'meta.sqlite'))),
  chunks: await FsChunkStore.open(path.join(dir, 'chunks'), 1 << 20),
  blobs: await FsChunkStore.open(path.join(dir, 'blobs'), 1 << 30),
});

/** A simulated clock: set to a time, each reading 1 ms later (distinct commit times). */
function simClock() {
  let t = 0;
  return { set: (ms) => { t = ms; }, now: () => new Date(t++) };
}

async function services() {
  const s = await open();
  const clock = simClock();
  const catalog = new Catalog({ images: s.meta.images, chunks: s.chunks, blobs: s.blobs, now: clock.now });
  const desktops = new Desktops({ meta: s.meta, catalog, now: clock.now });
  return { ...s, clock, catalog, desktops };
}

/** Upload `positions` as new random chunks and stage their layer (what an agent sends before its commit). */
async function stage(svc, positions) {
  const put = [];
  const entries = positions.map((i) => {
    const raw = randomBytes(4096);
    const id = hashBytes(raw);
    put.push({ id: idHex(id), frame: encodeFrame(raw) });
    return { index: i, id };
  });
  await svc.chunks.putMany(put);
  return (await svc.catalog.stageLayer('bench', encodeLayer({ geometry: G, hasMasks: false, entries }))).layer;
}

const randomPositions = (n) => [...new Set(Array.from({ length: n }, () => Math.floor(Math.random() * 256)))].sort((a, b) => a - b);
const deskName = (i) => `d${String(i).padStart(4, '0')}`;
const holderOf = (i) => `endpoint:ep-${String(i).padStart(4, '0')}`;

async function pool(n, fn) {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(PARALLEL, n) }, async () => {
    for (let i = next++; i < n; i = next++) await fn(i);
  }));
}

/** Day `d`: every desktop's shutdown commit at 17:00 (under its lease), the conflicts on `conflictDay`. */
async function simulateDay(svc, st, d) {
  const at = st.start + d * DAY + 17 * HOUR;
  svc.clock.set(at);
  let conflicts = 0;
  await pool(st.desktops, async (i) => {
    const name = deskName(i);
    const lease = await svc.desktops.acquireLease(name, holderOf(i), 3600);
    const head = (await svc.desktops.view(name)).head;
    const layer = await stage(svc, randomPositions(st.changed));
    const out = await svc.desktops.commit(name, { parent: head, layer, kind: 'voi-commit', fencing: lease.fencing, holder: holderOf(i) }, 'bench');
    if (out.kind !== 'fast-forward') throw new Error(`day ${d}: ${name} commit kept as conflict (${out.reason})`);
    if (d === st.conflictDay && i % 30 === 0) {
      // A second commit on the old head (another endpoint's stale disk): kept under conflicts/…
      const stale = await svc.desktops.commit(name, { parent: head, layer: await stage(svc, randomPositions(st.changed)), kind: 'voi-commit', fencing: lease.fencing, holder: holderOf(i) }, 'bench');
      if (stale.kind !== 'conflict') throw new Error(`day ${d}: ${name} stale commit was not a conflict`);
      conflicts++;
      // Half are resolved: the admin resets the desktop to the conflict version.
      if (i % 60 === 0) await svc.desktops.reset(name, stale.conflictRef, 'bench');
    }
    await svc.desktops.releaseLease(name, lease.fencing);
  });
  // Desktops in use at prune time (02:00 the next day): a live lease freezes their lines.
  svc.clock.set(st.start + (d + 1) * DAY + 1 * HOUR);
  for (let i = 0; i < st.live; i++) await svc.desktops.acquireLease(deskName(i), holderOf(i), 86_400);
  st.pruneAt = st.start + (d + 1) * DAY + 2 * HOUR;
  st.nextDay = d + 1;
  return conflicts;
}

const versionsOf = async (meta) => meta.images.versionCount('bench');

if (mode === 'make') {
  const [nArg, daysArg, changedArg] = rest;
  const st = {
    desktops: Number(nArg), days: Number(daysArg), changed: Number(changedArg ?? 4), live: Number(process.env.PRUNE_LIVE ?? 3),
    start: Math.floor(Date.now() / DAY) * DAY - (Number(daysArg) + 2) * DAY, conflictDay: Math.max(1, Number(daysArg) - 5),
  };
  fs.mkdirSync(dir, { recursive: true });
  const svc = await services();
  svc.clock.set(st.start);
  await svc.catalog.createImage('bench', G);
  const base = await stage(svc, Array.from({ length: 256 }, (_, i) => i));
  await svc.catalog.commit({ image: 'bench', parent: null, ref: 'main', layer: base, kind: 'import', author: 'bench', message: 'base' });
  for (let i = 0; i < st.desktops; i++) await svc.desktops.create({ name: deskName(i), image: 'bench', from: 'main', mode: 'persistent' }, 'bench');
  let conflicts = 0;
  for (let d = 1; d <= st.days; d++) conflicts += await simulateDay(svc, st, d);
  writeState(st);
  const c = await svc.chunks.size();
  const b = await svc.blobs.size();
  const refs = await svc.meta.images.listRefs('bench');
  console.log(JSON.stringify({
    desktops: st.desktops, days: st.days, versions: await versionsOf(svc.meta), conflictRefs: refs.filter((r) => r.name.startsWith('conflicts/')).length, conflictsMade: conflicts,
    liveLeases: st.live, chunks: c.chunks, chunkBytes: c.bytes, blobs: b.chunks, blobBytes: b.bytes,
  }));
  await svc.meta.close();
} else if (mode === 'day') {
  const st = readState();
  const svc = await services();
  const before = await versionsOf(svc.meta);
  await simulateDay(svc, st, st.nextDay);
  writeState(st);
  console.log(JSON.stringify({ day: st.nextDay - 1, commits: (await versionsOf(svc.meta)) - before, versions: await versionsOf(svc.meta) }));
  await svc.meta.close();
} else if (mode === 'prune') {
  const dryRun = rest.includes('--dry-run');
  const st = readState();
  const { meta, chunks, blobs } = await open();
  const lifecycle = new Lifecycle({
    meta, blobs, deltas: new DeltaCache(path.join(dir, 'deltas'), blobs, chunks), defaults: DEFAULT_RETENTION_POLICY, deltaIdleDays: 0, now: () => new Date(st.pruneAt),
  });
  const t0 = performance.now();
  const r = await lifecycle.prune('bench', { dryRun, author: 'bench' });
  const seconds = (performance.now() - t0) / 1000;
  console.log(JSON.stringify({
    seconds, dryRun, policy: r.policy, examined: r.dropped.length + r.kept.length, removed: r.dropped.length, kept: r.kept.length,
    rowsLeft: await versionsOf(meta), conflicts: { total: r.conflicts.length, resolved: r.conflicts.filter((c) => c.resolved).length, deleted: r.conflicts.filter((c) => c.deleted).length },
    bytes: r.bytes,
  }));
  await meta.close();
} else if (mode === 'gc') {
  const { meta, chunks, blobs } = await open();
  const r = await runGc({
    repo: meta.gc, images: meta.images, chunks: gcStoreOf(chunks), blobs: gcStoreOf(blobs),
    deltas: new DeltaCache(path.join(dir, 'deltas'), blobs, chunks), readBlob: async (id) => (await blobs.get(id)).raw,
    tmpDir: path.join(dir, 'gc-tmp'), holder: 'bench', graceMs: 0, now: () => Date.now() + 2000,
  });
  console.log(JSON.stringify({ seconds: r.seconds, marked: r.marked, candidates: r.candidates, cancelled: r.cancelled, deleted: r.deleted }));
  await meta.close();
} else {
  console.error('usage: node bench/prune.mjs make DIR DESKTOPS DAYS [CHANGED] | day DIR | prune DIR [--dry-run] | gc DIR');
  process.exit(2);
}
