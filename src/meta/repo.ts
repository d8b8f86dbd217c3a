/**
 * The metadata repository: images, versions, refs, the ref log and tokens. Programs depend on this
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
  | { kind: 'conflict'; version: VersionRow; ref: string; head: number | null; conflictRef: string };

export type RefMoveOutcome = { moved: true; ref: RefRow } | { moved: false; head: number | null };

export interface MetaRepo {
  createImage(row: ImageRow): { created: boolean; image: ImageRow };
  getImage(name: string): ImageRow | undefined;
  listImages(): ImageRow[];
  versionCount(image: string): number;
  getVersion(image: string, version: number): VersionRow | undefined;
  listVersions(image: string, limit: number): VersionRow[];
  /**
   * Insert a version and, in the same transaction, move `ref` from `parent` to it when the ref is
   * still at `parent` (compare-and-swap; a missing ref counts as null), or else point the new ref
   * `conflictRef` at it. Both moves go to the ref log.
   */
  commitVersion(v: NewVersion, ref: string, conflictRef: string): CommitOutcome;
  getRef(image: string, name: string): RefRow | undefined;
  listRefs(image: string): RefRow[];
  /** Compare-and-swap: moves only when the ref's head is `expect` (null = the ref must not exist). */
  moveRef(image: string, name: string, to: number, expect: number | null, reason: string, author: string, at: string): RefMoveOutcome;
  refLog(image: string, ref: string | undefined, limit: number): RefLogRow[];
  addToken(hash: string, scope: string, at: string): void;
  findToken(hash: string): { scope: string } | undefined;
  countTokens(scope: string): number;
  close(): void;
}
