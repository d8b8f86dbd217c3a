import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { idHex, isZeroId } from '../chunk/id.js';
import { dfError, isDeskfuseError } from '../errors.js';
import { ChunkIndex } from '../image/chunk-index.js';
import { decodeLayer } from '../image/layer.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import type { DeltaCache } from '../sync/delta-cache.js';
import { MarkSet, SortedCursor, type MarkEntry } from './mark-set.js';
import type { GcCandidate, GcKind, GcRepo } from './model.js';

/**
 * Garbage collection of the stores: chunks, blobs (layers and chunk indexes) and deltas that no
 * version, VDI checkpoint or in-flight commit reaches. Online, two-phase, one at a time, resumable.
 *
 *   lock     one row in gc_lock (a lease with an expiry, renewed while the run works): a second GC
 *            anywhere gets DF_ERR_GC_RUNNING; a crashed holder's lease runs out and the next run takes over
 *   mark     roots, read in this order: in-flight commit holds, VDI checkpoints, versions. A version
 *            whose parent row is kept adds its layer's chunks (its index is its parent's plus its
 *            layer), one without adds its index's chunks. Ids go to sorted run files (mark-set.ts):
 *            memory stays bounded however many chunks there are
 *   sweep    (phase 2) candidates recorded by EARLIER runs: still unreferenced → state 'deleting' (one
 *            transaction a batch), removed unless written again since (newer mtime), row dropped;
 *            referenced again → row dropped (cancelled)
 *   candidates (phase 1) the store listing (in id order) joined with the mark: unreferenced objects
 *            older than the grace period become candidates for the NEXT run
 *   deltas   a delta whose layer no version or root references, older than the grace period, goes
 *            (deltas are a cache: one phase; whoever needs one again builds it)
 *
 * Why nothing reachable goes: an object is removed only if a run R2 found it unreferenced although
 * it was recorded as a candidate before R2 read its roots. A commit records a hold (its staged layer
 * and parent index; later its final layer and index) and cancels candidates among its chunks and those
 * blobs in one transaction before it checks they are stored; it drops the holds after its version row is in. So a commit that began before the candidate row
 * existed is seen by R2 (hold or version, as holds are read before versions), and one that began
 * after cancelled the row, or found it 'deleting' and waits, then finds the chunk missing and
 * asks for it again (DF_ERR_CHUNKS_MISSING) — never a version without its chunks. Uploads that
 * no commit names yet are younger than the grace period, which must exceed the longest upload.
 */
export interface GcObject {
  id: string;
  size: number;
  /** Modification time, epoch ms. */
  mtime: number;
}

/** A store as garbage collection needs it: a listing in id order, and a removal that spares what was written again. */
export interface GcStore {
  objects(): AsyncIterable<GcObject>;
  removeIfUnchanged(id: string, mtime: number): Promise<'removed' | 'newer' | 'absent'>;
  /** Called after each batch of removals (the local store tells its sender and pack cache). */
  afterRemovals?(): void;
}

export interface GcProgress {
  phase: string;
  /** Objects looked at in this phase so far. */
  done: number;
}

export interface GcDeps {
  repo: GcRepo;
  images: { listImages(): Promise<Array<{ name: string }>> };
  chunks: GcStore;
  blobs: GcStore;
  /** A layer's or index's raw bytes (verified). */
  readBlob(id: string): Promise<Buffer>;
  deltas?: DeltaCache;
  /** Where mark runs go (a folder of its own per run is made under it). */
  tmpDir: string;
  /** Who runs it (the server's name). */
  holder: string;
  graceMs: number;
  /** Lock lease; renewed every third of it. Default 60 s. */
  leaseMs?: number;
  now?: () => number;
  log?: Logger;
  onProgress?: (p: GcProgress) => void;
  /** Called once the run holds the lock (a dry run: at once), with its id. */
  onStarted?: (run: string) => void;
  /** Awaited between batches (tests slow a run down or stop it at a chosen point). */
  step?: (phase: string) => Promise<void>;
  /** Ids per mark run file (default 200,000). */
  runSize?: number;
}

export interface Tally {
  count: number;
  bytes: number;
}

export interface StoreUsage {
  kinds: { chunks: Tally; layers: Tally; indexes: Tally; unreferencedChunks: Tally; unreferencedBlobs: Tally; deltas: Tally };
  /** Bytes each image's versions reference (a chunk shared by two images counts in both). */
  images: Array<{ image: string; chunks: Tally; blobs: Tally }>;
  /** Unreferenced and older than the grace period: what the next two runs free. */
  reclaimable: Tally;
}

export interface GcResult {
  run: string;
  dryRun: boolean;
  /** Referenced objects found in the stores. */
  marked: { chunks: number; blobs: number; bytes: number };
  /** Objects recorded as candidates by this run (removed by the next one if still unreferenced). */
  candidates: { chunks: number; blobs: number; bytes: number };
  /** Candidates of earlier runs referenced or written again since. */
  cancelled: number;
  /** Removed by this run (dry run: would be). */
  deleted: { chunks: number; blobs: number; deltas: number; bytes: number };
  usage: StoreUsage;
  startedAt: string;
  finishedAt: string;
  seconds: number;
}

const KIND_CHUNK = 0;
const KIND_LAYER = 1;
const KIND_INDEX = 2;
const tag = (image: number, kind: number) => image * 4 + kind;
const BATCH = 500;
const REMOVE_CONCURRENCY = 8;
const ROOT_PAGE = 500;

const tally = (): Tally => ({ count: 0, bytes: 0 });
const add = (t: Tally, bytes: number) => {
  t.count++;
  t.bytes += bytes;
};

export async function runGc(deps: GcDeps, opts: { dryRun?: boolean } = {}): Promise<GcResult> {
  const now = deps.now ?? (() => Date.now());
  const log = deps.log ?? silentLogger;
  const leaseMs = deps.leaseMs ?? 60_000;
  const dryRun = opts.dryRun ?? false;
  const run = `${new Date(now()).toISOString()}-${randomBytes(4).toString('hex')}`;
  const started = now();
  if (!dryRun) {
    // A crashed run's lease runs out (leaseMs): then the next run takes over and finishes its work.
    const held = await deps.repo.acquire(deps.holder, run, started, started + leaseMs);
    if (held) {
      throw dfError('DF_ERR_GC_RUNNING', `a garbage collection is already running on ${held.holder ?? '?'} (its lease runs to ${new Date(held.expires).toISOString()})`,
        { holder: held.holder, run: held.run, expires: new Date(held.expires).toISOString(), phase: held.phase });
    }
  }
  deps.onStarted?.(run);
  const dir = path.join(deps.tmpDir, `gc-${run.replace(/[^0-9a-zA-Z-]/g, '')}`);
  let phase = 'mark';
  let done = 0;
  let lost: Error | undefined;
  const beat = async () => {
    if (dryRun || lost) return;
    const ok = await deps.repo.renew(run, now() + leaseMs, phase, { done }).catch(() => true);
    if (!ok) lost = dfError('DF_ERR_GC_RUNNING', 'the garbage collection lost its lease to another server', { run });
  };
  const timer = dryRun ? undefined : setInterval(() => void beat(), Math.max(200, leaseMs / 3));
  timer?.unref();
  const progress = async (p: string, n: number) => {
    if (p !== phase) {
      phase = p;
      done = 0;
      await beat();
    }
    done = n;
    deps.onProgress?.({ phase: p, done: n });
    if (deps.step) await deps.step(p);
    if (lost) throw lost;
  };

  const res: GcResult = {
    run, dryRun, marked: { chunks: 0, blobs: 0, bytes: 0 }, candidates: { chunks: 0, blobs: 0, bytes: 0 }, cancelled: 0,
    deleted: { chunks: 0, blobs: 0, deltas: 0, bytes: 0 },
    usage: { kinds: { chunks: tally(), layers: tally(), indexes: tally(), unreferencedChunks: tally(), unreferencedBlobs: tally(), deltas: tally() }, images: [], reclaimable: tally() },
    startedAt: new Date(started).toISOString(), finishedAt: '', seconds: 0,
  };
  const cursors: Array<SortedCursor<MarkEntry>> = [];
  const cursorOf = (m: MarkSet) => {
    const c = new SortedCursor(m.entries()[Symbol.asyncIterator]());
    cursors.push(c);
    return c;
  };
  const chunkMarks = new MarkSet(dir, 'chunks', deps.runSize);
  const blobMarks = new MarkSet(dir, 'blobs', deps.runSize);
  try {
    await fsp.mkdir(dir, { recursive: true });
    const images = (await deps.images.listImages()).map((i) => i.name);
    const imageIdx = new Map(images.map((n, i) => [n, i]));
    const idxOf = (name: string) => imageIdx.get(name) ?? images.length;
    const usageImages = images.map((image) => ({ image, chunks: tally(), blobs: tally() }));
    const unknownImage = { image: '(other)', chunks: tally(), blobs: tally() };

    // ---- mark: holds, then VDI checkpoints, then versions (see above for why this order) ----
    const markLayerChunks = async (layerId: string, img: number, what: string) => {
      let raw: Buffer;
      try {
        raw = await deps.readBlob(layerId);
      } catch (cause) {
        if (isDeskfuseError(cause, 'DF_ERR_CHUNK_NOT_FOUND')) return false;
        throw dfError('DF_ERR_GC_UNSAFE', `garbage collection cannot read ${what} ${layerId}: ${(cause as Error).message}`, { layer: layerId }, cause);
      }
      for (const e of decodeLayer(raw).entries) if (!isZeroId(e.id)) await chunkMarks.add(idHex(e.id), tag(img, KIND_CHUNK));
      return true;
    };
    const markIndexChunks = async (indexId: string, img: number, what: string, optional = false) => {
      let raw: Buffer;
      try {
        raw = await deps.readBlob(indexId);
      } catch (cause) {
        // An in-flight commit whose parent's index is gone fails its own checks: nothing to keep for it.
        if (optional && isDeskfuseError(cause, 'DF_ERR_CHUNK_NOT_FOUND')) return;
        throw dfError('DF_ERR_GC_UNSAFE', `garbage collection cannot read ${what} (${indexId}): ${(cause as Error).message}`, { index: indexId }, cause);
      }
      const idx = ChunkIndex.decode(raw);
      for (let i = 0; i < idx.count; i++) {
        const id = idx.ids.subarray(i * 32, i * 32 + 32);
        if (!isZeroId(id)) await chunkMarks.add(idHex(id), tag(img, KIND_CHUNK));
      }
    };
    let roots = 0;
    for (const h of await deps.repo.holds(now())) {
      await blobMarks.add(h.layer, tag(idxOf(h.image), KIND_LAYER));
      await markLayerChunks(h.layer, idxOf(h.image), 'the staged layer of an in-flight commit'); // not staged yet: nothing to keep
      if (h.parentIndex) {
        await blobMarks.add(h.parentIndex, tag(idxOf(h.image), KIND_INDEX));
        await markIndexChunks(h.parentIndex, idxOf(h.image), `the parent index of an in-flight commit to ${h.image}`, true);
      }
      await progress('mark', ++roots);
    }
    for (const s of await deps.repo.sessionRoots()) {
      await blobMarks.add(s.layer, tag(idxOf(s.image), KIND_LAYER));
      if (!(await markLayerChunks(s.layer, idxOf(s.image), 'the checkpoint of a VDI session'))) {
        throw dfError('DF_ERR_GC_UNSAFE', `garbage collection cannot read the checkpoint layer ${s.layer} of a VDI session of ${s.image}`, { layer: s.layer });
      }
      await progress('mark', ++roots);
    }
    let after: { image: string; version: number } | null = null;
    for (;;) {
      const page = await deps.repo.versionRoots(after, ROOT_PAGE);
      if (!page.length) break;
      for (const v of page) {
        const img = idxOf(v.image);
        await blobMarks.add(v.layer, tag(img, KIND_LAYER));
        await blobMarks.add(v.index, tag(img, KIND_INDEX));
        // Its index = its parent's index overlaid by its layer: with the parent kept, the layer's chunks are enough.
        if (v.parentKept && (await markLayerChunks(v.layer, img, `the layer of ${v.image} version ${v.version}`))) continue;
        await markIndexChunks(v.index, img, `the chunk index of ${v.image} version ${v.version}`);
      }
      after = { image: page[page.length - 1]!.image, version: page[page.length - 1]!.version };
      roots += page.length;
      await progress('mark', roots);
    }

    // ---- per kind: phase 2 (delete earlier candidates), then phase 1 (record new ones) ----
    const graceEdge = now() - deps.graceMs;
    const imageUsage = (e: MarkEntry, bytes: number, kind: 'chunks' | 'blobs') => {
      const seen = new Set<number>();
      for (const t of e.tags) {
        const i = Math.floor(t / 4);
        if (seen.has(i)) continue;
        seen.add(i);
        add((usageImages[i] ?? unknownImage)[kind], bytes);
      }
    };
    for (const [kind, store, marks] of [['blob', deps.blobs, blobMarks], ['chunk', deps.chunks, chunkMarks]] as const) {
      await sweep(kind, store, marks);
      const cursor = cursorOf(marks);
      let batch: GcCandidate[] = [];
      let seen = 0;
      for await (const o of store.objects()) {
        const e = await cursor.seek(o.id);
        if (e) {
          if (kind === 'chunk') {
            res.marked.chunks++;
            add(res.usage.kinds.chunks, o.size);
            imageUsage(e, o.size, 'chunks');
          } else {
            res.marked.blobs++;
            add(e.tags.some((t) => t % 4 === KIND_LAYER) ? res.usage.kinds.layers : res.usage.kinds.indexes, o.size);
            imageUsage(e, o.size, 'blobs');
          }
          res.marked.bytes += o.size;
        } else {
          add(kind === 'chunk' ? res.usage.kinds.unreferencedChunks : res.usage.kinds.unreferencedBlobs, o.size);
          if (o.mtime < graceEdge) {
            add(res.usage.reclaimable, o.size);
            res.candidates[kind === 'chunk' ? 'chunks' : 'blobs']++;
            res.candidates.bytes += o.size;
            batch.push({ kind, id: o.id, state: 'candidate', size: o.size, mtime: o.mtime, run });
          }
        }
        if (++seen % BATCH === 0) {
          if (!dryRun) await deps.repo.addCandidates(batch, new Date(now()).toISOString());
          batch = [];
          await progress(`candidates ${kind}s`, seen);
        }
      }
      if (!dryRun) await deps.repo.addCandidates(batch, new Date(now()).toISOString());
      await progress(`candidates ${kind}s`, seen);
    }

    // ---- deltas: one phase, orphans older than the grace period ----
    if (deps.deltas) await sweepDeltas(deps.deltas);

    res.usage.images = [...usageImages, ...(unknownImage.chunks.count + unknownImage.blobs.count ? [unknownImage] : [])];
    const end = now();
    res.finishedAt = new Date(end).toISOString();
    res.seconds = (end - started) / 1000;
    if (!dryRun) await deps.repo.release(run, res.finishedAt, res);
    log.info({ run, dryRun, marked: res.marked, candidates: res.candidates, cancelled: res.cancelled, deleted: res.deleted, seconds: res.seconds }, 'garbage collection done');
    return res;
  } catch (err) {
    // The lease runs out by itself; releasing it now lets the next run start at once.
    if (!dryRun && !lost) await deps.repo.release(run, new Date(now()).toISOString(), { run, failed: (err as Error).message }).catch(() => {});
    throw err;
  } finally {
    if (timer) clearInterval(timer);
    await Promise.all(cursors.map((c) => c.close().catch(() => {})));
    await fsp.rm(dir, { recursive: true, force: true });
  }

  async function sweep(kind: GcKind, store: GcStore, marks: MarkSet): Promise<void> {
    const cursor = cursorOf(marks);
    let after = '';
    let seen = 0;
    for (;;) {
      const page = await deps.repo.candidates(kind, after, BATCH);
      if (!page.length) break;
      after = page[page.length - 1]!.id;
      const referenced: string[] = [];
      const gone = new Map<string, GcCandidate>();
      for (const c of page) {
        // Only what was recorded before this run read its roots (the lock makes that every other run's; this is a second guard).
        if (c.run === run || (c.markedAt !== undefined && c.markedAt > res.startedAt)) continue;
        if (await cursor.seek(c.id)) referenced.push(c.id);
        else gone.set(c.id, c);
      }
      res.cancelled += referenced.length;
      if (dryRun) {
        for (const c of gone.values()) countDeleted(kind, c.size);
      } else {
        await deps.repo.dropCandidates(kind, referenced);
        const ids = await deps.repo.startDeleting(kind, [...gone.keys()]);
        let next = 0;
        const lane = async () => {
          while (next < ids.length) {
            const c = gone.get(ids[next++]!)!;
            const r = await store.removeIfUnchanged(c.id, c.mtime);
            if (r === 'removed') countDeleted(kind, c.size);
            else if (r === 'newer') res.cancelled++;
          }
        };
        await Promise.all(Array.from({ length: REMOVE_CONCURRENCY }, lane));
        if (ids.length) store.afterRemovals?.();
        await deps.repo.dropCandidates(kind, ids);
      }
      seen += page.length;
      await progress(`sweep ${kind}s`, seen);
    }
  }

  function countDeleted(kind: GcKind, size: number): void {
    if (kind === 'chunk') res.deleted.chunks++;
    else res.deleted.blobs++;
    res.deleted.bytes += size;
  }

  async function sweepDeltas(deltas: DeltaCache): Promise<void> {
    const edge = now() - deps.graceMs;
    const layerKept = async (cursor: SortedCursor<MarkEntry>, layer: string) => (await cursor.seek(layer))?.tags.some((t) => t % 4 === KIND_LAYER) ?? false;
    // The shared bucket's deltas (S3), then this server's folder (a local store's deltas, or an S3 server's cache of them).
    const bucket = deltas.shared;
    if (bucket?.list) {
      const cursor = cursorOf(blobMarks);
      let seen = 0;
      for await (const d of bucket.list()) {
        if (await layerKept(cursor, d.layer)) add(res.usage.kinds.deltas, d.size);
        else if (d.mtime < edge) {
          if (!dryRun) await bucket.remove(d.layer);
          res.deleted.deltas++;
          res.deleted.bytes += d.size;
        } else add(res.usage.kinds.deltas, d.size);
        if (++seen % BATCH === 0) await progress('deltas', seen);
      }
    }
    const cursor = cursorOf(blobMarks);
    let seen = 0;
    for await (const f of deltas.files()) {
      const keep = await layerKept(cursor, f.layer);
      if (!keep && f.mtime < edge) {
        if (!dryRun) await deltas.removeFile(f.name);
        if (!bucket) {
          res.deleted.deltas++;
          res.deleted.bytes += f.size;
        }
      } else if (!bucket) add(res.usage.kinds.deltas, f.size);
      if (++seen % BATCH === 0) await progress('deltas', seen);
    }
  }
}
