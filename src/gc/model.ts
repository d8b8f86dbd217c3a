/**
 * What garbage collection keeps in the database (src/meta/sql-gc.ts implements it on SQLite and
 * PostgreSQL; migration 5 makes the tables). Kinds: `chunk` (the chunk store) and `blob` (layers and
 * chunk indexes).
 */
export type GcKind = 'chunk' | 'blob';

export interface GcCandidate {
  kind: GcKind;
  id: string;
  state: 'candidate' | 'deleting';
  size: number;
  /** The object's modification time (epoch ms) when it was marked: a newer one means it was written again. */
  mtime: number;
  /** The run that marked it. */
  run: string;
  /** When it was recorded (ISO; undefined before it is). */
  markedAt?: string;
}

export interface GcLockState {
  holder: string | null;
  run: string | null;
  /** Epoch ms. */
  expires: number;
  phase: string | null;
  progress: unknown;
  startedAt: string | null;
  finishedAt: string | null;
  /** The last finished run's result. */
  result: unknown;
}

/** A root the commit path records while it is about to reference a staged layer and its chunks. */
export interface GcHold {
  id: string;
  image: string;
  layer: string;
  /** The parent version's chunk index (its chunks go into the new version's index too). */
  parentIndex: string | null;
}

/** A version as garbage collection sees it: what it references, and whether its parent row is still there. */
export interface GcVersionRoot {
  image: string;
  version: number;
  layer: string;
  index: string;
  parentKept: boolean;
}

export interface GcRepo {
  /** Versions in (image, version) order after `after` (paging). */
  versionRoots(after: { image: string; version: number } | null, limit: number): Promise<GcVersionRoot[]>;
  /** Layers VDI sessions not yet committed or discarded checkpointed (their chunks are in no version yet). */
  sessionRoots(): Promise<Array<{ image: string; layer: string }>>;

  /**
   * Take the lock for `run` until `expires` (epoch ms) when nobody holds it or the holder's time has
   * passed (a crashed GC); undefined when taken, else the current holder's state.
   */
  acquire(holder: string, run: string, now: number, expires: number): Promise<GcLockState | undefined>;
  /** Extend our lock and record progress; false when it is no longer ours (taken over after expiry). */
  renew(run: string, expires: number, phase: string, progress: unknown): Promise<boolean>;
  /** Let go of the lock, recording the run's result. */
  release(run: string, at: string, result: unknown): Promise<void>;
  state(): Promise<GcLockState | undefined>;

  /** Candidates of a kind in id order, after `after` (paging). */
  candidates(kind: GcKind, after: string, limit: number): Promise<GcCandidate[]>;
  /** Record these as candidates unless already recorded. */
  addCandidates(rows: GcCandidate[], at: string): Promise<void>;
  /** Drop these rows (cancelled, or removed). */
  dropCandidates(kind: GcKind, ids: string[]): Promise<void>;
  /** Move these from `candidate` to `deleting`; returns the ids moved (a row gone meanwhile was cancelled). */
  startDeleting(kind: GcKind, ids: string[]): Promise<string[]>;

  /**
   * An in-flight commit: record `hold` as a root, cancel candidates among `chunks` and `blobs`, and
   * return the ids being deleted right now (the caller must not count on those).
   */
  hold(h: GcHold, chunks: string[], blobs: string[], expires: number): Promise<{ deleting: string[] }>;
  /** Ids among these in state `deleting` (a commit waits for those to finish). */
  deleting(kind: GcKind, ids: string[]): Promise<string[]>;
  /**
   * Rows among these left `deleting` by a run that died (no live lock at `now`, epoch ms) are dropped,
   * in one transaction with that check: the commit holding them then finds each object there (kept:
   * its hold and version are roots for every later run) or not (uploaded again). Returns the ids
   * still being deleted by a live run.
   */
  reclaimStale(kind: GcKind, ids: string[], now: number): Promise<string[]>;
  unhold(id: string): Promise<void>;
  /** Live holds (expired ones are dropped). */
  holds(now: number): Promise<GcHold[]>;
}
