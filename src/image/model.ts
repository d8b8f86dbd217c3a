/**
 * The image domain: images, versions, refs and the ref log. Repositories are asynchronous (PostgreSQL
 * implements them as well as SQLite: src/meta/sql-images.ts); each method that changes state is one transaction.
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
  /** The ref was deleted here (it pointed at `oldVersion`; `newVersion` repeats it). */
  deleted: boolean;
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

export type RefMoveOutcome = { moved: true; ref: RefRow } | { moved: false; head: number | null };


/** A version's manifest as signed at commit (src/sign/statements.ts): canonical body text, signer, base64 signature. */
export interface SignedManifestRow {
  keyId: string;
  body: string;
  sig: string;
}

export interface ImageRepo {
  createImage(row: ImageRow): Promise<{ created: boolean; image: ImageRow }>;
  getImage(name: string): Promise<ImageRow | undefined>;
  setImageBoot(name: string, boot: ImageBoot | null): Promise<void>;
  listImages(): Promise<ImageRow[]>;
  versionCount(image: string): Promise<number>;
  getVersion(image: string, version: number): Promise<VersionRow | undefined>;
  listVersions(image: string, limit: number): Promise<VersionRow[]>;
  /**
   * Insert a version and, in the same transaction, move `ref` from `parent` to it when the ref is
   * still at `parent` (compare-and-swap; a missing ref counts as null), or else point the new ref
   * `conflictRef` at it. Both moves go to the ref log. With `fence`, the ref moves only if the
   * fence's desktop lease is held, unexpired at `v.at` and has that fencing (checked in the same
   * transaction); otherwise the version goes to `conflictRef` with reason 'fencing'.
   */
  commitVersion(v: NewVersion, ref: string, conflictRef: string, fence?: CommitFence): Promise<CommitOutcome>;
  /** The outcome of an earlier commit with this key, if one landed. */
  findCommit(image: string, commitKey: string, ref: string): Promise<CommitOutcome | undefined>;
  getRef(image: string, name: string): Promise<RefRow | undefined>;
  listRefs(image: string): Promise<RefRow[]>;
  /** Compare-and-swap: moves only when the ref's head is `expect` (null = the ref must not exist). */
  moveRef(image: string, name: string, to: number, expect: number | null, reason: string, author: string, at: string): Promise<RefMoveOutcome>;
  refLog(image: string, ref: string | undefined, limit: number): Promise<RefLogRow[]>;
  /** Record a version's signed manifest (replacing one a deleted version of that number left). */
  putManifest(image: string, version: number, m: SignedManifestRow): Promise<void>;
  getManifest(image: string, version: number): Promise<SignedManifestRow | undefined>;
  /** Is `version` `heads` or an ancestor of one of them (walking parents)? */
  reachable(image: string, heads: readonly number[], version: number): Promise<boolean>;
  /** The versions reachable from `heads` (the heads and their ancestors), newest first. */
  ancestry(image: string, heads: readonly number[], limit: number): Promise<VersionRow[]>;
}
