import type { ApiClient } from '../api/client.js';
import { dfError, isDeskfuseError } from '../errors.js';
import { encodeFrame } from '../chunk/frame.js';
import { hashBytes, idHex, isZero } from '../chunk/id.js';
import { encodePack, PACK_CONTENT_TYPE, type PackRecord } from '../chunk/pack.js';
import { readChunks } from '../disk/chunker.js';
import { openDiskSource } from '../disk/source.js';
import { ChunkIndex } from '../image/chunk-index.js';
import { DEFAULT_CHUNK_SIZE, type Geometry } from '../image/geometry.js';
import { diffIndexes, encodeLayer } from '../image/layer.js';
import type { ImageRow, VersionKind, VersionRow } from '../image/model.js';
import { Progress } from '../progress.js';

/**
 * Import or publish a disk file as a new version: read the allocated chunks, hash them, ask the
 * server which it lacks, upload only those in packs, upload the layer (the difference from the
 * parent's index), then commit. Reruns after any interruption skip what the server already has.
 */
export interface PublishOptions {
  client: ApiClient;
  image: string;
  file: string;
  /** true: `image create` (makes the image, version without parent). */
  create: boolean;
  chunkSize?: number;
  ref: string;
  /** Parent version (default: the ref's head). A parent that is not the head makes a conflict version. */
  parent?: number;
  message: string;
  /** Make a version even when the disk is identical to the parent (default: none is made, `unchanged`). */
  allowEmpty?: boolean;
  tmpDir: string;
  progress?: boolean;
}

export interface PublishResult {
  image: string;
  version: number;
  parent: number | null;
  ref: string;
  conflict: { conflictRef: string; head: number | null } | null;
  /** The disk was identical to the parent: no version was made (`version` is the parent; `head` the ref's). */
  unchanged: boolean;
  head?: number | null;
  chunks: number;
  chunksChanged: number;
  chunksNew: number;
  bytesRead: number;
  bytesUploaded: number;
  requests: number;
  seconds: number;
}

const BATCH_BYTES = 8 * 1024 * 1024;
const UPLOADS_IN_FLIGHT = 3;

export async function publishDisk(o: PublishOptions): Promise<PublishResult> {
  const t0 = performance.now();
  const c = o.client;
  let requests = 0;
  let bytesUploaded = 0;
  const call = async <T>(p: Promise<{ body: T; bytesSent: number }>): Promise<T> => {
    const r = await p;
    requests++;
    bytesUploaded += r.bytesSent;
    return r.body;
  };

  const src = await openDiskSource(o.file, o.tmpDir);
  try {
    let img: ImageRow;
    let parent: VersionRow | null = null;
    const kind: VersionKind = o.create ? 'import' : 'publish';
    if (o.create) {
      img = await call(c.json<ImageRow>('POST', '/api/v1/images', { body: { name: o.image, virtualSize: src.virtualSize, chunkSize: o.chunkSize ?? DEFAULT_CHUNK_SIZE } }));
    } else {
      img = await call(c.json<ImageRow>('GET', `/api/v1/images/${o.image}`));
      if (img.virtualSize !== src.virtualSize) {
        throw dfError('DF_ERR_SIZE_MISMATCH', `${o.file} is ${src.virtualSize} bytes but image ${o.image} is ${img.virtualSize} bytes; resize the disk to the image's size (qemu-img resize) or create a new image`, {
          file: o.file, virtualSize: src.virtualSize, imageSize: img.virtualSize,
        });
      }
      parent = o.parent !== undefined
        ? await call(c.json<VersionRow>('GET', `/api/v1/images/${o.image}/versions/${o.parent}`))
        : await resolveOrBranch(o.image, o.ref, call, c);
    }
    const g: Geometry = { virtualSize: img.virtualSize, chunkSize: img.chunkSize };
    const parentIndex = parent ? ChunkIndex.decode(await call(c.binary('GET', `/api/v1/images/${o.image}/versions/${parent.version}/index`))) : null;
    const known = parentIndex ? parentIndex.distinctIds() : new Set<string>();
    const index = ChunkIndex.empty(g);

    const progress = Progress.for(o.create ? 'import' : 'publish', src.dataBytes, o.progress ?? false);
    let bytesRead = 0;
    let chunksNew = 0;
    let batch: Array<{ id: string; raw: Buffer }> = [];
    let batchBytes = 0;
    const inflight = new Set<Promise<void>>();
    let failure: unknown;
    const launch = async (items: Array<{ id: string; raw: Buffer }>) => {
      while (inflight.size >= UPLOADS_IN_FLIGHT) await Promise.race(inflight);
      if (failure) throw failure;
      const p: Promise<void> = flush(items).catch((err) => { failure ??= err; }).finally(() => inflight.delete(p));
      inflight.add(p);
    };

    const flush = async (items: Array<{ id: string; raw: Buffer }>): Promise<void> => {
      if (!items.length) return;
      const { missing } = await call(c.json<{ missing: string[] }>('POST', '/api/v1/chunks/missing', { body: { ids: items.map((x) => x.id) }, idempotent: true }));
      const want = new Set(missing);
      const records: PackRecord[] = [];
      for (const x of items) if (want.has(x.id)) records.push({ id: x.id, rawLength: x.raw.length, frame: encodeFrame(x.raw) });
      if (records.length) {
        await call(c.json('POST', '/api/v1/chunks/pack', { raw: { data: encodePack(records), type: PACK_CONTENT_TYPE }, idempotent: true }));
        chunksNew += records.length;
      }
    };

    for await (const ch of readChunks(src, g, (n) => { bytesRead += n; progress.add(n); })) {
      if (isZero(ch.raw)) continue;
      const id = hashBytes(ch.raw);
      index.set(ch.index, id);
      const hex = idHex(id);
      if (known.has(hex)) continue;
      known.add(hex);
      batch.push({ id: hex, raw: ch.raw });
      batchBytes += ch.raw.length;
      if (batchBytes >= BATCH_BYTES) {
        const items = batch;
        batch = [];
        batchBytes = 0;
        await launch(items); // uploads overlap with reading and hashing the next batches
      }
    }
    await launch(batch);
    await Promise.all(inflight);
    if (failure) throw failure;
    progress.finish();

    const layer = encodeLayer(diffIndexes(parentIndex, index));
    const staged = await call(c.json<{ layer: string }>('POST', `/api/v1/images/${o.image}/layers`, { raw: { data: layer, type: 'application/octet-stream' }, idempotent: true }));
    const r = await call(c.json<{ outcome?: string; version: VersionRow; conflictRef?: string; head?: number | null }>('POST', `/api/v1/images/${o.image}/commits`, {
      body: { parent: parent?.version ?? null, ref: o.ref, layer: staged.layer, kind, message: o.message, ...(o.allowEmpty ? { allowEmpty: true } : {}) },
      accept: [409], idempotent: true, // the server's commit key answers a repeat with the first outcome
    }).then((res) => {
      const b = res.body as { code?: string };
      if (res.status === 409 && b.code !== 'DF_ERR_CONFLICT') throw dfError('DF_ERR_CHUNKS_MISSING', 'the server lost chunks during the publish; run the command again', { ...res.body });
      return res;
    }));
    return {
      image: o.image, version: r.version.version, parent: parent?.version ?? null, ref: o.ref,
      conflict: r.conflictRef ? { conflictRef: r.conflictRef, head: r.head ?? null } : null,
      unchanged: r.outcome === 'unchanged', ...(r.outcome === 'unchanged' ? { head: r.head ?? null } : {}),
      chunks: r.version.chunksTotal, chunksChanged: r.outcome === 'unchanged' ? 0 : r.version.chunksChanged, chunksNew, bytesRead, bytesUploaded, requests,
      seconds: (performance.now() - t0) / 1000,
    };
  } finally {
    await src.close();
  }
}

/** The ref's head; a ref that does not exist yet branches from `main`. */
async function resolveOrBranch(
  image: string, ref: string,
  call: <T>(p: Promise<{ body: T; bytesSent: number }>) => Promise<T>, c: ApiClient,
): Promise<VersionRow | null> {
  try {
    return await call(c.json<VersionRow>('GET', `/api/v1/images/${image}/resolve?rev=${encodeURIComponent(ref)}`));
  } catch (err) {
    if (!isDeskfuseError(err, 'DF_ERR_REF_NOT_FOUND') || ref === 'main') throw err;
  }
  const main = await call(c.json<VersionRow>('GET', `/api/v1/images/${image}/resolve?rev=main`));
  await call(c.json('PUT', `/api/v1/images/${image}/refs/${ref}`, { body: { version: main.version, expect: null, reason: `branch from main@${main.version}` } }));
  return main;
}
