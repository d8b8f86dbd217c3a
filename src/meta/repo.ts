import type { TokenRepo } from '../auth/model.js';
import type { DesktopRepo } from '../desktop/model.js';
import type { DhcpLeaseRepo } from '../dhcp/model.js';
import type { GcRepo } from '../gc/model.js';
import type { EndpointRepo } from '../endpoint/model.js';
import type { ImageRepo } from '../image/model.js';
import type { LifecycleRepo } from '../image/retention.js';
import type { VdiRepo } from '../vdi/model.js';
import type { SqlEngine } from './sql.js';

/**
 * The metadata: one asynchronous repository per domain, each owning its types (src/image/model.ts,
 * src/desktop/model.ts, src/auth/model.ts, src/endpoint/model.ts, src/vdi/model.ts, src/dhcp/model.ts). The SQL that
 * implements them is written once (src/meta/sql-*.ts) over an engine the composition root picks
 * (src/meta/open.ts): SQLite for the embedded default, PostgreSQL for several servers.
 */
export interface Meta {
  images: ImageRepo;
  desktops: DesktopRepo;
  tokens: TokenRepo;
  endpoints: EndpointRepo;
  vdi: VdiRepo;
  /** Retention policies, prune and deletes (src/meta/sql-lifecycle.ts). */
  lifecycle: LifecycleRepo;
  /** The full-mode DHCP pool's bindings. */
  dhcp: DhcpLeaseRepo;
  /** Garbage collection's lock, candidates and in-flight commit holds (src/gc/gc.ts). */
  gc: GcRepo;
  /** The engine, for what spans servers (notify/listen) and for housekeeping. */
  engine: SqlEngine;
  close(): Promise<void>;
}
