import type { ChunkStore } from '../src/chunk/store.js';
import type { Desktops } from '../src/desktop/desktops.js';
import type { Catalog } from '../src/image/catalog.js';
import type { MetaRepo } from '../src/meta/repo.js';
import type { Metrics } from '../src/metrics.js';
import type { DeltaCache } from '../src/sync/delta-cache.js';

/** What routes need; built once by the composition root and handed to buildApp. */
export interface AppContext {
  catalog: Catalog;
  desktops: Desktops;
  chunks: ChunkStore;
  repo: MetaRepo;
  metrics: Metrics;
  deltas: DeltaCache;
  /** Largest raw chunk accepted (the largest chunk size). */
  maxChunkSize: number;
  bodyLimit: number;
  /** The clock (token expiry, leases); tests inject one they can advance. */
  now: () => Date;
}
