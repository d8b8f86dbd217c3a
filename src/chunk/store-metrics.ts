import type { Metrics } from '../metrics.js';

/**
 * The stores' own tallies on /metrics, read at each scrape (what an admin watches on an S3 store,
 * and what `npm run bench` reads before and after each step):
 *
 *   deskfuse_s3_requests_total{client,method}     requests sent to the S3 engine, retries included
 *                                                 (client `chunks`: chunks and deltas; `blobs`: layers and indexes)
 *   deskfuse_store_cache_hits_total{cache}        reads answered from the server's disk cache of the bucket
 *   deskfuse_store_cache_shared_total{cache}      reads that joined a miss already in flight (no request of their own)
 *   deskfuse_store_cache_misses_total{cache}      reads that went to the bucket
 *   deskfuse_deltas_total{how}                    deltas built here, fetched from the bucket, stored in it
 *
 * With the local store (the default) only the delta counters have values; the others stay absent.
 */
export interface StoreTallies {
  /** S3 clients by name, each with its requests by method (src/chunk/s3-client.ts `requests`). */
  s3?: Record<string, { readonly requests: Readonly<Record<string, number>> }>;
  /** Disk caches by name (src/chunk/cache-store.ts `stats`). */
  caches?: Record<string, { readonly stats: { readonly hits: number; readonly shared: number; readonly misses: number } }>;
  /** src/sync/delta-cache.ts `stats`. */
  deltas?: { readonly stats: { readonly built: number; readonly fetched: number; readonly stored: number } };
}

export function registerStoreMetrics(metrics: Metrics, t: StoreTallies): void {
  const requests = metrics.counterTotal('deskfuse_s3_requests_total', 'Requests sent to the S3 store by client and method, retries included');
  const hits = metrics.counterTotal('deskfuse_store_cache_hits_total', "Reads answered from the server's disk cache of the S3 store");
  const shared = metrics.counterTotal('deskfuse_store_cache_shared_total', 'Reads of the S3 store cache that joined a miss already in flight');
  const misses = metrics.counterTotal('deskfuse_store_cache_misses_total', 'Reads of the S3 store cache that went to the bucket');
  const deltas = metrics.counterTotal('deskfuse_deltas_total', 'Deltas built by this server, fetched from the bucket, and stored in it');
  metrics.onCollect(() => {
    for (const [client, c] of Object.entries(t.s3 ?? {})) {
      for (const [method, n] of Object.entries(c.requests)) requests(n, { client, method });
    }
    for (const [cache, c] of Object.entries(t.caches ?? {})) {
      hits(c.stats.hits, { cache });
      shared(c.stats.shared, { cache });
      misses(c.stats.misses, { cache });
    }
    if (t.deltas) for (const how of ['built', 'fetched', 'stored'] as const) deltas(t.deltas.stats[how], { how });
  });
}
