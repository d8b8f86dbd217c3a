import type { ChunkStore } from '../src/chunk/store.js';
import type { Catalog } from '../src/image/catalog.js';
import type { MetaRepo } from '../src/meta/repo.js';
import type { Metrics } from '../src/metrics.js';

/** What routes need; built once by the composition root and handed to buildApp. */
export interface AppContext {
  catalog: Catalog;
  chunks: ChunkStore;
  repo: MetaRepo;
  metrics: Metrics;
  /** Largest raw chunk accepted (the largest chunk size). */
  maxChunkSize: number;
  bodyLimit: number;
}
