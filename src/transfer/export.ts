import { promises as fsp } from 'node:fs';
import type { ApiClient } from '../api/client.js';
import { openFrame } from '../chunk/frame.js';
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
 * written), qcow2 goes through qemu-img. Every chunk is verified against its id before it is
 * written; the file appears under its name only when complete (src/transfer/export-target.ts).
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
const FETCHES_IN_FLIGHT = 3;

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
    const ids = [...positions.keys()];
    const perBatch = Math.max(1, Math.min(MAX_IDS, Math.floor(FETCH_BYTES / g.chunkSize)));
    const batches: string[][] = [];
    for (let k = 0; k < ids.length; k += perBatch) batches.push(ids.slice(k, k + perBatch));

    const fetchBatch = (b: string[]) => {
      const p = fetchOne(b);
      p.catch(() => {}); // awaited in order below; this only keeps an early failure from going unhandled
      return p;
    };
    const fetchOne = async (b: string[]) => {
      const r = await c.binary('POST', '/api/v1/chunks/fetch', { raw: { data: encodeIdList(b), type: ID_LIST_TYPE }, idempotent: true });
      requests++;
      bytesFetched += r.body.length;
      return decodePack(r.body, MAX_CHUNK_SIZE);
    };
    // Several requests in flight: the server reads and verifies while this side writes.
    const pending = batches.slice(0, FETCHES_IN_FLIGHT).map(fetchBatch);
    for (let k = 0; k < batches.length; k++) {
      const records = await pending[k]!;
      if (k + FETCHES_IN_FLIGHT < batches.length) pending.push(fetchBatch(batches[k + FETCHES_IN_FLIGHT]!));
      pending[k] = Promise.resolve([]); // let the batch be collected
      const asked = new Set(batches[k]);
      for (const rec of records) {
        if (!asked.has(rec.id)) continue;
        asked.delete(rec.id);
        const raw = openFrame(rec.id, rec.frame, MAX_CHUNK_SIZE);
        for (const i of positions.get(rec.id)!) {
          await out.chunk(raw, i * g.chunkSize);
          progress.add(raw.length);
        }
      }
      if (asked.size) throw new Error(`server omitted ${asked.size} chunks from a fetch`);
    }
    await out.flush();
    bytesWritten = out.written;
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
