import type { DesktopMode } from '../desktop/model.js';
import type { ConflictReason } from '../image/model.js';

/**
 * A VDI session: one desktop running as a VM on the hypervisor pool, its disk the NBD export
 * `session/ID`, its writes the session's cloud increment over `base`.
 *
 *   open ──(clean disconnect after writes, or `vdi session commit`)──▶ committing ──▶ committed
 *     └───────────────────────────(`vdi session discard`)───────────────────────────▶ discarded
 *
 * `committing` is kept across a crash: a rerun of the commit returns the same version.
 *   open ──(a FLUSH whose fdatasync failed)──▶ failed ──(`vdi session discard`)──▶ discarded
 * A failed session refuses writes and commits: what it lost cannot be known (see increment.ts).
 */
export type VdiState = 'open' | 'committing' | 'committed' | 'discarded' | 'failed';

export interface VdiOutcome {
  /** `unchanged`: nothing differed from the base, no version was made. `discarded`: a restore desktop's session ended. */
  kind: 'fast-forward' | 'conflict' | 'unchanged' | 'discarded';
  version: number | null;
  ref: string | null;
  conflictRef?: string;
  reason?: ConflictReason;
  chunksChanged: number;
  /** What made the commit: the VM's clean disconnect or an admin. */
  by: 'disconnect' | 'admin';
  seconds: number;
}

export interface VdiSessionRow {
  id: string;
  desktop: string;
  image: string;
  /** The version the session started from (the parent of its commit). */
  base: number;
  mode: DesktopMode;
  /** Lease holder name (`vdi:ID`) and the fencing it got; null for a restore desktop (no lease). */
  holder: string;
  fencing: number | null;
  secretHash: string;
  autoCommit: boolean;
  state: VdiState;
  createdAt: string;
  createdBy: string;
  updatedAt: string;
  lastConnectAt: string | null;
  lastDisconnectAt: string | null;
  lastDisconnect: 'clean' | 'dropped' | null;
  outcome: VdiOutcome | null;
  /** Why the session failed (state `failed`), else null. */
  failure: string | null;
  /**
   * The server that hosts the session's NBD export and cloud increment (its `serverName`); a commit or
   * discard through another server, once the owner is gone, moves the session to that server.
   */
  server: string;
  /** Where hypervisors reach the owner's NBD server (when the session was made); null when NBD was off. */
  nbdHost: string | null;
  nbdPort: number | null;
  /** Refreshed by the owner while a client is connected: a non-owner takes the session over only when it is stale. */
  heartbeatAt: string | null;
  /** The last checkpoint: a staged layer over `base` holding the increment as of `checkpointAt`, or null. */
  checkpointLayer: string | null;
  checkpointAt: string | null;
}

export interface VdiRepo {
  insert(row: VdiSessionRow): Promise<void>;
  get(id: string): Promise<VdiSessionRow | undefined>;
  list(opts: { desktop?: string; states?: VdiState[] }): Promise<VdiSessionRow[]>;
  update(id: string, patch: Partial<Omit<VdiSessionRow, 'id'>>): Promise<VdiSessionRow>;
  /**
   * One transaction: apply `patch` only if every field in `expect` still has that value (null
   * included); answers the row after, or undefined (nothing changed) when one differs or the row is gone.
   */
  updateIf(id: string, expect: Partial<Omit<VdiSessionRow, 'id'>>, patch: Partial<Omit<VdiSessionRow, 'id'>>): Promise<VdiSessionRow | undefined>;
}
