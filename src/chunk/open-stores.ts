import path from 'node:path';
import type { ServerConfig } from '../config/server.js';
import { DeltaCache } from '../sync/delta-cache.js';
import { S3DeltaBucket } from '../sync/delta-bucket.js';
import { CacheStore } from './cache-store.js';
import { FsChunkStore } from './fs-store.js';
import { S3ChunkStore } from './s3-store.js';
import type { StoreTallies } from './store-metrics.js';
import type { PrunableStore } from './store.js';

/**
 * The stores a server runs on, from its configuration (the composition root calls this once).
 *
 * Local (default): everything under the data directory, as ever:
 *   chunks/ and blobs/ (FsChunkStore), deltas/ (DeltaCache's folder)
 *
 * S3 (`store: s3://BUCKET/PREFIX?…`): the bucket holds everything, each server a disk cache of it:
 *   PREFIX/chunks/<id[0..2]>/<id>   chunks         ← CacheStore, <data>/store-cache/chunks (storeCacheMiB)
 *   PREFIX/blobs/<id[0..2]>/<id>    layers, indexes ← CacheStore, <data>/store-cache/blobs (storeCacheMiB / 8)
 *   PREFIX/deltas/<layer id>        deltas         ← DeltaCache, <data>/store-cache/deltas
 * The bucket is checked at start (one listing): DF_ERR_S3_NO_BUCKET, DF_ERR_S3_DENIED or
 * DF_ERR_S3_UNREACHABLE naming the endpoint and bucket (never the secret) when it does not answer.
 */
export interface Stores {
  chunks: PrunableStore;
  /** Layers and chunk indexes. */
  blobs: PrunableStore;
  deltas: DeltaCache;
  /** `local` or the S3 endpoint and bucket (for the start log line; no secret). */
  where: string;
  /** What /metrics reports of the stores (src/chunk/store-metrics.ts). */
  tallies: StoreTallies;
}

export interface LocalPaths {
  chunks: string;
  blobs: string;
  deltas: string;
  /** The S3 store's disk cache (chunks/, blobs/, deltas/ under it). */
  storeCache: string;
}

export async function openStores(config: ServerConfig, paths: LocalPaths, limits: StoreLimits): Promise<Stores> {
  const bare = await openBareStores(config, paths, limits);
  if (!(bare.chunks instanceof S3ChunkStore) || !(bare.blobs instanceof S3ChunkStore)) {
    const deltas = new DeltaCache(paths.deltas, bare.blobs, bare.chunks);
    return { chunks: bare.chunks, blobs: bare.blobs, deltas, where: bare.where, tallies: { deltas } };
  }
  const mib = 1024 * 1024;
  const chunks = await CacheStore.open(bare.chunks, path.join(paths.storeCache, 'chunks'), config.store.cacheMiB * mib, limits.maxChunkSize);
  const blobs = await CacheStore.open(bare.blobs, path.join(paths.storeCache, 'blobs'), Math.max(64, config.store.cacheMiB >> 3) * mib, limits.maxBlobSize);
  const deltas = new DeltaCache(path.join(paths.storeCache, 'deltas'), blobs, chunks, new S3DeltaBucket(bare.chunks.client));
  const tallies: StoreTallies = { s3: { chunks: bare.chunks.client, blobs: bare.blobs.client }, caches: { chunks, blobs }, deltas };
  return { chunks, blobs, deltas, where: bare.where, tallies };
}

export interface StoreLimits {
  maxChunkSize: number;
  maxBlobSize: number;
}

/**
 * The stores themselves, without the disk cache: what `store verify` reads back and `admin migrate`
 * copies to (the bucket is the truth; a server's cache is only a copy of it).
 */
export async function openBareStores(config: ServerConfig, paths: LocalPaths, limits: StoreLimits): Promise<{ chunks: FsChunkStore | S3ChunkStore; blobs: FsChunkStore | S3ChunkStore; where: string }> {
  const s3 = config.store.s3;
  if (!s3) return { chunks: await FsChunkStore.open(paths.chunks, limits.maxChunkSize), blobs: await FsChunkStore.open(paths.blobs, limits.maxBlobSize), where: 'local' };
  const retryMs = config.store.retrySeconds * 1000;
  const chunks = await S3ChunkStore.open(s3.location, s3.credentials, { maxChunkSize: limits.maxChunkSize, retryMs });
  const blobs = new S3ChunkStore(s3.location, s3.credentials, { maxChunkSize: limits.maxBlobSize, retryMs, folder: 'blobs' });
  const { endpoint, bucket, prefix } = s3.location;
  return { chunks, blobs, where: `${endpoint} bucket ${bucket}${prefix ? ` prefix ${prefix}` : ''}` };
}
