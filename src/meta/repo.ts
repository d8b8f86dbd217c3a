/**
 * The metadata repository: images, versions, refs, the ref log, tokens, desktops and leases. Programs depend on this
 * interface; SQLite (embedded default) implements it, and its SQL is plain enough for PostgreSQL.
 * Methods are coarse on purpose: each one that changes state is a single transaction.
 */
export type VersionKind = 'import' | 'publish' | 'voi-commit' | 'vdi-commit' | 'rollback';
export const VERSION_KINDS: readonly VersionKind[] = ['import', 'publish', 'voi-commit', 'vdi-commit', 'rollback'];

export interface ImageRow {
  name: string;
  virtualSize: number;
  chunkSize: number;
  hashAlg: string;
  createdAt: string;
  /** What a kexec hand-off boots, if the image declares it. */
  boot?: ImageBoot;
}

/**
 * The Linux kernel an image's OS boots, for the agent's kexec hand-off: files on partition
 * `partition` (1-based, MBR or GPT) of the image, and the kernel command line.
 */
export interface ImageBoot {
  partition: number;
  kernel: string;
  initrd?: string;
  cmdline: string;
}

export interface VersionRow {
  image: string;
  version: number;
  parent: number | null;
  layer: string;
  index: string;
  kind: VersionKind;
  author: string;
  message: string;
  createdAt: string;
  /** Chunk positions the layer changes. */
  chunksChanged: number;
  /** Non-zero chunks in the whole version. */
  chunksTotal: number;
}

export interface RefRow {
  image: string;
  name: string;
  version: number;
  updatedAt: string;
}

export interface RefLogRow {
  seq: number;
  image: string;
  ref: string;
  oldVersion: number | null;
  newVersion: number;
  reason: string;
  author: string;
  at: string;
}

export interface NewVersion {
  image: string;
  /**
   * Idempotency key of the commit request (same ref, parent, staged layer and kind). A retried
   * commit whose first attempt landed gets the first outcome back instead of a duplicate version.
   */
  commitKey?: string;
  parent: number | null;
  layer: string;
  index: string;
  kind: VersionKind;
  author: string;
  message: string;
  chunksChanged: number;
  chunksTotal: number;
  at: string;
}

export type CommitOutcome =
  | { kind: 'fast-forward'; version: VersionRow; ref: string }
  | { kind: 'conflict'; version: VersionRow; ref: string; head: number | null; conflictRef: string; reason: ConflictReason };

/** Why a commit was kept as a conflict: its parent is not the ref's head, or its lease is not current. */
export type ConflictReason = 'parent' | 'fencing';

/** A commit made under a lease: it may move the ref only while `fencing` is the desktop's current, unexpired lease. */
export interface CommitFence {
  desktop: string;
  fencing: number;
}

export type DesktopMode = 'persistent' | 'restore';

export interface DesktopRow {
  name: string;
  image: string;
  mode: DesktopMode;
  /** The image ref the desktop was made from; a restore desktop syncs to its head. */
  follows: string;
  createdAt: string;
}

/** The last lease of a desktop. `holder` null = released or broken (the row keeps the fencing counter). */
export interface LeaseRow {
  desktop: string;
  holder: string | null;
  fencing: number;
  since: string;
  expiresAt: string;
}

export type LeaseAcquireOutcome =
  | { kind: 'acquired' | 'renewed'; lease: LeaseRow }
  | { kind: 'taken-over'; lease: LeaseRow; previous: LeaseRow }
  | { kind: 'held'; lease: LeaseRow };

export type LeaseReleaseOutcome = { released: true } | { released: false; current: LeaseRow | undefined };

export type DesktopCreateOutcome =
  | { kind: 'created'; desktop: DesktopRow }
  | { kind: 'exists'; desktop: DesktopRow }
  | { kind: 'ref-exists'; head: number | null };

export interface TokenRow {
  scope: string;
  /** ISO time, or null for a token that does not expire (the admin token). */
  expiresAt: string | null;
}

/** A bearer token as `token list` shows it: never its secret, nor its hash. */
export interface TokenInfo {
  /** The first 16 hex digits of the token's SHA-256: names it for `token revoke`, proves nothing. */
  id: string;
  scope: string;
  createdAt: string;
  expiresAt: string | null;
  /** When it was last accepted (kept to the minute), or null. */
  lastUsedAt: string | null;
}

export type RefMoveOutcome = { moved: true; ref: RefRow } | { moved: false; head: number | null };

export interface MetaRepo {
  createImage(row: ImageRow): { created: boolean; image: ImageRow };
  getImage(name: string): ImageRow | undefined;
  setImageBoot(name: string, boot: ImageBoot | null): void;
  listImages(): ImageRow[];
  versionCount(image: string): number;
  getVersion(image: string, version: number): VersionRow | undefined;
  listVersions(image: string, limit: number): VersionRow[];
  /**
   * Insert a version and, in the same transaction, move `ref` from `parent` to it when the ref is
   * still at `parent` (compare-and-swap; a missing ref counts as null), or else point the new ref
   * `conflictRef` at it. Both moves go to the ref log. With `fence`, the ref moves only if the
   * fence's desktop lease is held, unexpired at `v.at` and has that fencing (checked in the same
   * transaction); otherwise the version goes to `conflictRef` with reason 'fencing'.
   */
  commitVersion(v: NewVersion, ref: string, conflictRef: string, fence?: CommitFence): CommitOutcome;
  /** The outcome of an earlier commit with this key, if one landed. */
  findCommit(image: string, commitKey: string, ref: string): CommitOutcome | undefined;
  getRef(image: string, name: string): RefRow | undefined;
  listRefs(image: string): RefRow[];
  /** Compare-and-swap: moves only when the ref's head is `expect` (null = the ref must not exist). */
  moveRef(image: string, name: string, to: number, expect: number | null, reason: string, author: string, at: string): RefMoveOutcome;
  refLog(image: string, ref: string | undefined, limit: number): RefLogRow[];
  addToken(hash: string, scope: string, at: string, expiresAt?: string | null): void;
  findToken(hash: string): TokenRow | undefined;
  countTokens(scope: string): number;
  /** Note a use of the token at `at`, unless one after `since` is noted already (one write a minute, not one a request). */
  touchToken(hash: string, at: string, since: string): void;
  listTokens(): TokenInfo[];
  /** Delete the token with this id; returns it, or undefined when there is none. */
  deleteToken(id: string): TokenInfo | undefined;
  /** Delete tokens that expired before `before`; returns how many. */
  pruneTokens(before: string): number;
  /** Is `version` `heads` or an ancestor of one of them (walking parents)? */
  reachable(image: string, heads: readonly number[], version: number): boolean;
  /** The versions reachable from `heads` (the heads and their ancestors), newest first. */
  ancestry(image: string, heads: readonly number[], limit: number): VersionRow[];
  /** Insert a desktop; with `ref`, create its ref (compare-and-swap from nothing) in the same transaction. */
  createDesktop(row: DesktopRow, ref?: { name: string; version: number; reason: string; author: string }): DesktopCreateOutcome;
  getDesktop(name: string): DesktopRow | undefined;
  listDesktops(): DesktopRow[];
  getLease(desktop: string): LeaseRow | undefined;
  /**
   * One transaction: a free, released or expired (at `at`) lease → new lease with the next fencing;
   * the same holder → renewed (same fencing, new expiry); another holder → `held`, unless `force`
   * (taken over with the next fencing). Fencing numbers only grow, across releases too.
   */
  acquireLease(desktop: string, holder: string, at: string, expiresAt: string, force: boolean): LeaseAcquireOutcome;
  /** Release when `fencing` is the desktop's last lease (idempotent once released). */
  releaseLease(desktop: string, fencing: number): LeaseReleaseOutcome;
  /** Clear the holder; returns the lease that was held (expired or not), if any. */
  breakLease(desktop: string): LeaseRow | undefined;
  close(): void;
}
