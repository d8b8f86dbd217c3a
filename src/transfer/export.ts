import { promises as fsp } from 'node:fs';
import { inLanes } from './lanes.js';
import type { ApiClient } from '../api/client.js';
import { chunkWorkers } from '../chunk/workers.js';
import { dfError } from '../errors.js';
import { encodeIdList, idHex, ID_LIST_TYPE } from '../chunk/id.js';
import { decodePack } from '../chunk/pack.js';
import { convert } from '../disk/qemu-img.js';
import { ChunkIndex } from '../image/chunk-index.js';
import { chunkLength, MAX_CHUNK_SIZE } from '../image/geometry.js';
import { DiskWriter } from '../disk/writer.js';
import type { VersionRow } from '../image/model.js';
import { Progress } from '../progress.js';
import { scanDisk } from '../sync/scan.js';
import { exportTarget, publishExport } from './export-target.js';

/**
 * Export a version to a file: raw output is sparse (zero chunks and zero 4 KiB blocks are never
 * written), qcow2 goes through qemu-img. Every chunk is verified against its id (an id of the
 * version's index) before it is written, once, here: the server sends the stored frames as they are
 * (verified when they were stored), and verification and writing run in the chunk workers on every
 * core while the next batches are fetched. The file appears under its name only when complete (src/transfer/export-target.ts).
 * An interrupted export leaves its `.part`: the next run hashes the chunks already in it and
 * fetches only the ones that are missing or wrong.
 */
export interface ExportOptions {
  client: ApiClient;
  image: string;
  rev: string;
  to: string;
  format: 'raw' | 'qcow2';
  progress?: boolean;
  /** Replace an existing file. */
  force?: boolean;
  /** Told when a `.part` of an earlier run is reused: how many chunks it already held. */
  onResume?: (part: string, kept: number, total: number) => void;
}

export interface ExportResult {
  image: string;
  version: number;
  to: string;
  format: string;
  virtualSize: number;
  chunks: number;
  /** Chunks a `.part` of an interrupted run already held (not fetched again). */
  chunksResumed: number;
  bytesFetched: number;
  bytesWritten: number;
  requests: number;
  seconds: number;
}

const FETCH_BYTES = 16 * 1024 * 1024;
const MAX_IDS = 4096;
/** Batches fetched, verified and written at once (each holds one pack, ≤ 32 MiB, and its chunks). */
const BATCHES_IN_FLIGHT = 3;
/** Bytes written between two background datasyncs. */
const WRITEBACK_BYTES = 128 * 1024 * 1024;

export async function exportVersion(o: ExportOptions): Promise<ExportResult> {
  const t0 = performance.now();
  const c = o.client;
  let requests = 0;
  const v = (await c.json<VersionRow>('GET', `/api/v1/images/${o.image}/resolve?rev=${encodeURIComponent(o.rev)}`)).body;
  const index = ChunkIndex.decode((await c.binary('GET', `/api/v1/images/${o.image}/versions/${v.version}/index`)).body);
  requests += 2;
  const g = index.geometry;

  const positions = new Map<string, number[]>();
  for (let i = 0; i < index.count; i++) {
    if (index.isZeroAt(i)) continue;
    const id = idHex(index.idAt(i));
    const list = positions.get(id);
    if (list) list.push(i);
    else positions.set(id, [i]);
  }

  const target = await exportTarget(o.to, o.image, v.version, o.format, o.force ?? false);
  const part = target.part;
  // A .part of an earlier run: keep what in it already hashes to the right id, redo the rest.
  let resumed: number[] | null = null;
  let fh;
  try {
    fh = await fsp.open(part, 'r+');
    await fh.truncate(g.virtualSize);
    const scan = await scanDisk(part, g, null, index);
    resumed = scan.changed;
    o.onResume?.(part, index.count - scan.changed.length, index.count);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    fh = await fsp.open(part, 'w', 0o644);
    await fh.truncate(g.virtualSize);
  }
  if (resumed) {
    const redo = new Set(resumed);
    for (const [id, list] of positions) {
      const left = list.filter((i) => redo.has(i));
      if (left.length) positions.set(id, left);
      else positions.delete(id);
    }
  }
  // A fresh file is all holes, so zero blocks need no write; a reused one must be overwritten.
  const out = new DiskWriter(fh, resumed === null);
  let bytesFetched = 0;
  let bytesWritten = 0;
  const todo = [...positions.values()].reduce((n, l) => n + l.length, 0);
  const chunksResumed = resumed ? index.nonZeroCount() - todo : 0;
  const progress = Progress.for('export', todo * g.chunkSize, o.progress ?? false);
  try {
    // Positions the version has as zero but the reused .part does not.
    for (const i of resumed ?? []) if (index.isZeroAt(i)) await out.chunk(Buffer.alloc(chunkLength(g, i)), i * g.chunkSize);
    await out.flush();
    const ids = [...positions.keys()];
    const perBatch = Math.max(1, Math.min(MAX_IDS, Math.floor(FETCH_BYTES / g.chunkSize)));
    const batches: string[][] = [];
    for (let k = 0; k < ids.length; k += perBatch) batches.push(ids.slice(k, k + perBatch));

    // Each batch: one fetch (the server sends the stored frames as they are, unopened), then its
    // frames go to the chunk workers in slices of about equal raw bytes, one per worker; each worker
    // opens and verifies its chunks against their ids (the one verification on this path: the trust
    // boundary is here, the client) and writes them at their offsets itself. BATCHES_IN_FLIGHT
    // batches go through that at once, so fetching, verifying and writing overlap on every core.
    const workers = chunkWorkers();
    const sparse = resumed === null;
    const fd = fh.fd;
    // The page cache would hold every written byte until the final fsync (background writeback starts
    // only at a tenth of RAM), so the disk would wait on the CPU and then the CPU on the disk: a
    // datasync every WRITEBACK_BYTES, running meanwhile, keeps both busy.
    let synced = 0;
    let syncing: Promise<void> | undefined;
    const writeback = () => {
      if (syncing || bytesWritten - synced < WRITEBACK_BYTES) return;
      synced = bytesWritten;
      syncing = fh.datasync().finally(() => { syncing = undefined; });
      syncing.catch(() => {}); // an error shows again in the final sync
    };
    const place = async (b: string[]) => {
      const r = await c.binary('POST', '/api/v1/chunks/fetch', { raw: { data: encodeIdList(b), type: ID_LIST_TYPE }, idempotent: true });
      requests++;
      bytesFetched += r.body.length;
      const asked = new Set(b);
      const recs: Array<{ id: string; off: number; len: number; raw: number; at: number[] }> = [];
      let body = 0;
      // decodePack's frames are views of the body: their offsets in it come from byteOffset.
      const base = r.body.byteOffset;
      for (const rec of decodePack(r.body, MAX_CHUNK_SIZE)) {
        if (!asked.delete(rec.id)) continue;
        const at = positions.get(rec.id)!.map((i) => i * g.chunkSize);
        recs.push({ id: rec.id, off: rec.frame.byteOffset - base, len: rec.frame.length, raw: rec.rawLength, at });
        body += rec.rawLength * at.length;
      }
      if (asked.size) throw dfError('DF_ERR_CHUNK_NOT_FOUND', `the server omitted ${asked.size} of ${b.length} chunks from a fetch`, { omitted: asked.size });
      // Slices of adjacent records, about body / workers raw bytes each: one copy of their frames
      // (moved, not copied again, to the worker).
      const slices: typeof recs[] = [];
      const share = body / workers.size;
      let cur: typeof recs = [];
      let acc = 0;
      for (const rec of recs) {
        cur.push(rec);
        acc += rec.raw * rec.at.length;
        if (acc >= share * (slices.length + 1) && slices.length < workers.size - 1) {
          slices.push(cur);
          cur = [];
        }
      }
      if (cur.length) slices.push(cur);
      const done = await Promise.allSettled(slices.map((sl) => {
        const from = sl[0]!.off;
        const to = sl[sl.length - 1]!.off + sl[sl.length - 1]!.len;
        const frames = new Uint8Array(to - from);
        frames.set(r.body.subarray(from, to));
        return workers.place(fd, frames, sl.map((x) => ({ id: x.id, off: x.off - from, len: x.len, at: x.at })), sparse, MAX_CHUNK_SIZE)
          .then((w) => {
            bytesWritten += w.written;
            progress.add(w.placed);
            writeback();
          });
      }));
      for (const d of done) if (d.status === 'rejected') throw d.reason;
    };
    // Every lane settles before the file is closed: a worker must never write to a reused fd. The
    // writeback is awaited before the first failure is thrown.
    const failure = await inLanes(batches, BATCHES_IN_FLIGHT, place).then(() => null, (err: unknown) => ({ err }));
    await syncing?.catch(() => {});
    if (failure) throw failure.err;
    bytesWritten += out.written;
    await fh.sync();
  } finally {
    await fh.close(); // on failure the .part stays: the next run resumes from it
  }
  progress.finish();
  if (o.format === 'raw') {
    await publishExport(part, target.file, o.force ?? false);
  } else {
    const converted = `${target.file}.converting`;
    try {
      await convert(part, 'raw', converted, 'qcow2');
      await publishExport(converted, target.file, o.force ?? false);
      await fsp.rm(part, { force: true });
    } finally {
      await fsp.rm(converted, { force: true });
    }
  }
  return {
    image: o.image, version: v.version, to: target.file, format: o.format, virtualSize: g.virtualSize, chunks: index.nonZeroCount(), chunksResumed,
    bytesFetched, bytesWritten, requests, seconds: (performance.now() - t0) / 1000,
  };
}
