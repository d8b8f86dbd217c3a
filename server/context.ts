import type { ChunkStore } from '../src/chunk/store.js';
import type { PackFileCache } from '../src/chunk/pack-cache.js';
import type { Admission } from './admission.js';
import type { SigningKey } from './signing.js';
import type { Desktops } from '../src/desktop/desktops.js';
import type { Endpoints } from '../src/endpoint/endpoints.js';
import type { Templates } from '../src/ipxe/render.js';
import type { Catalog } from '../src/image/catalog.js';
import type { Lifecycle } from '../src/image/lifecycle.js';
import type { GcResult } from '../src/gc/gc.js';
import type { GcRunOptions, GcStatus } from './appliance.js';
import type { Meta } from '../src/meta/repo.js';
import type { Metrics } from '../src/metrics.js';
import type { DeltaCache } from '../src/sync/delta-cache.js';
import type { VdiSessions } from '../src/vdi/sessions.js';
import type { TlsContext } from './tls.js';

/** What routes need; built once by the composition root and handed to buildApp. */
export interface AppContext {
  catalog: Catalog;
  desktops: Desktops;
  chunks: ChunkStore;
  meta: Meta;
  metrics: Metrics;
  deltas: DeltaCache;
  /** Batch fetches kept as files (local store only). */
  packs?: PackFileCache;
  /** Largest raw chunk accepted (the largest chunk size). */
  maxChunkSize: number;
  bodyLimit: number;
  /** The clock (token expiry, leases); tests inject one they can advance. */
  now: () => Date;
  endpoints: Endpoints;
  boot: BootContext;
  vdi: VdiContext;
  /** Heavy transfers at once, and the line past them (routes with `config.heavy`). */
  admission: Admission;
  /** Retention policies, prune and deletes (server/routes/lifecycle.ts). */
  lifecycle: Lifecycle;
  /** With TLS on (server/tls.ts): plain HTTP serves only the network boot's first fetches. */
  tls?: TlsContext;
  /** Signed versions: the key, and how long a signed head holds (server/routes/signed.ts). */
  signing: { key: SigningKey; headSeconds: number };
  /** Garbage collection of the stores (set by the composition root; routes/store.ts). */
  gc?: {
    run(opts?: GcRunOptions): Promise<GcResult>;
    status(run?: string): Promise<GcStatus>;
  };
}

/**
 * VDI: the sessions, this server's name, and how hypervisors reach its NBD server (its port is known
 * once it listens; the host is the public one, else the listen host unless that is a wildcard).
 */
export interface VdiContext {
  sessions: VdiSessions;
  serverName: string;
  nbd: { port: number | null; publicHost: string | null; listenHost: string | null; tls?: boolean };
}

/** What the /boot routes serve: the boot stage's files, iPXE templates, how endpoints reach us. */
export interface BootContext {
  dir: string;
  templates: Templates;
  publicUrl: string | null;
  kernelArgs: string;
  retrySeconds: number;
}
