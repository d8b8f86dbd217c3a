import { promises as fsp } from 'node:fs';
import { inLanes } from './lanes.js';
import type { ApiClient } from '../api/client.js';
import { chunkWorkers } from '../chunk/workers.js';
import { dfError } from '../errors.js';
import { encodeIdList, idHex, ID_LIST_TYPE } from '../chunk/id.js';
import { frameBound, PackReader, type PackSink } from '../chunk/pack.js';
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
/** Raw bytes per worker task: a batch's frames go to the workers in slices while the rest streams in. */
const SLICE_RAW = 2 * 1024 * 1024;
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

    // Each batch: one fetch (the server sends the stored frames as they are, unopened), decoded as it
    // streams in; its frames go to the chunk workers in slices of SLICE_RAW raw bytes as soon as each
    // is complete; each worker opens and verifies its chunks against their ids (the one verification
    // on this path: the trust boundary is here, the client) and writes them at their offsets itself.
    // BATCHES_IN_FLIGHT batches go through that at once, so fetching, verifying and writing overlap on
    // every core.
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
    // What each asked id is: its raw length (the index's) and its offsets in the file.
    const want = new Map<string, { raw: number; at: number[] }>();
    for (const [id, list] of positions) want.set(id, { raw: chunkLength(g, list[0]!), at: list.map((i) => i * g.chunkSize) });
    // Slice buffers: each worker task's frames, copied in once as the pack streams, moved to the worker
    // and back (reused: no buffer per batch for the garbage collector).
    const cap = SLICE_RAW + frameBound(g.chunkSize);
    const free: ArrayBuffer[] = [];
    const place = async (b: string[]) => {
      type Slice = { buf: Uint8Array; used: number; raw: number; recs: Array<{ id: string; off: number; len: number; raw: number; at: number[] }> };
      let asked = new Set(b);
      let cur: Slice | undefined;
      const tasks: Promise<void>[] = [];
      const dispatch = () => {
        const sl = cur!;
        cur = undefined;
        tasks.push(workers.place(fd, sl.buf.buffer as ArrayBuffer, sl.recs, sparse, MAX_CHUNK_SIZE).then((w) => {
          free.push(w.buffer);
          bytesWritten += w.written;
          progress.add(w.placed);
          writeback();
        }));
      };
      const sink: PackSink = {
        record(id, _rawLength, flen) {
          if (!asked.delete(id)) return null; // not asked for, or sent twice: skipped
          const w = want.get(id)!;
          if (cur && cur.used + flen > cur.buf.length) dispatch();
          cur ??= { buf: new Uint8Array(free.pop() ?? new ArrayBuffer(cap)), used: 0, raw: 0, recs: [] };
          cur.recs.push({ id, off: cur.used, len: flen, raw: w.raw, at: w.at });
          cur.used += flen;
          cur.raw += w.raw * w.at.length;
          return cur.buf.subarray(cur.used - flen, cur.used);
        },
        filled() {
          if (cur!.raw >= SLICE_RAW) dispatch();
        },
      };
      let reader = new PackReader(MAX_CHUNK_SIZE, sink);
      let failed: { err: unknown } | undefined;
      try {
        await c.consume('POST', '/api/v1/chunks/fetch', { raw: { data: encodeIdList(b), type: ID_LIST_TYPE }, idempotent: true }, {
          piece: (p) => {
            bytesFetched += p.length;
            reader.push(p);
          },
          restart: () => { // the connection broke mid-body: the whole pack again (what was placed is placed again, the same bytes)
            if (cur) free.push(cur.buf.buffer as ArrayBuffer);
            cur = undefined;
            asked = new Set(b);
            reader = new PackReader(MAX_CHUNK_SIZE, sink);
          },
        });
        requests++;
        reader.end();
        if (cur) dispatch();
        if (asked.size) throw dfError('DF_ERR_CHUNK_NOT_FOUND', `the server omitted ${asked.size} of ${b.length} chunks from a fetch`, { omitted: asked.size });
      } catch (err) {
        failed = { err };
      }
      // No failure leaves a task behind: the fd stays open until every worker is done with it.
      const done = await Promise.allSettled(tasks);
      if (failed) throw failed.err;
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
