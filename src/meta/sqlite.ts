import Database from 'better-sqlite3';
import type {
  ConflictReason,
  CommitFence, CommitOutcome, DesktopCreateOutcome, DesktopRow, ImageBoot, ImageRow, LeaseAcquireOutcome, LeaseReleaseOutcome, LeaseRow, MetaRepo,
  NewVersion, RefLogRow, RefMoveOutcome, RefRow, TokenInfo, TokenRow, VersionRow,
} from './repo.js';

/**
 * SQLite implementation of MetaRepo (better-sqlite3 12, WAL, synchronous=FULL so a commit that
 * answered is on disk). The SQL sticks to what PostgreSQL also runs: no AUTOINCREMENT, no
 * INSERT OR REPLACE, ISO-8601 text times, BIGINT sizes.
 */
const SCHEMA = [
  `CREATE TABLE IF NOT EXISTS images (
     name TEXT PRIMARY KEY, virtual_size BIGINT NOT NULL, chunk_size INTEGER NOT NULL,
     hash_alg TEXT NOT NULL, created_at TEXT NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS versions (
     image TEXT NOT NULL REFERENCES images(name), version INTEGER NOT NULL, parent INTEGER,
     layer_id TEXT NOT NULL, index_id TEXT NOT NULL, kind TEXT NOT NULL, author TEXT NOT NULL,
     message TEXT NOT NULL, created_at TEXT NOT NULL, chunks_changed INTEGER NOT NULL,
     chunks_total INTEGER NOT NULL, PRIMARY KEY (image, version))`,
  `CREATE TABLE IF NOT EXISTS refs (
     image TEXT NOT NULL REFERENCES images(name), name TEXT NOT NULL, version INTEGER NOT NULL,
     updated_at TEXT NOT NULL, PRIMARY KEY (image, name))`,
  `CREATE TABLE IF NOT EXISTS ref_log (
     seq BIGINT PRIMARY KEY, image TEXT NOT NULL, ref TEXT NOT NULL, old_version INTEGER,
     new_version INTEGER NOT NULL, reason TEXT NOT NULL, author TEXT NOT NULL, at TEXT NOT NULL)`,
  `CREATE INDEX IF NOT EXISTS ref_log_by_ref ON ref_log (image, ref, seq)`,
  `CREATE TABLE IF NOT EXISTS tokens (hash TEXT PRIMARY KEY, scope TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT)`,
  `CREATE TABLE IF NOT EXISTS desktops (
     name TEXT PRIMARY KEY, image TEXT NOT NULL REFERENCES images(name), mode TEXT NOT NULL,
     follows TEXT NOT NULL, created_at TEXT NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS leases (
     desktop TEXT PRIMARY KEY REFERENCES desktops(name), holder TEXT, fencing BIGINT NOT NULL,
     since TEXT NOT NULL, expires_at TEXT NOT NULL)`,
];

/** Columns added after a table was first shipped: (table, column, definition). */
const ADDED_COLUMNS: Array<[string, string, string]> = [
  ['tokens', 'expires_at', 'TEXT'],
  // Idempotent commits: the request's key, and where the version landed (ref, or conflict ref and why).
  ['versions', 'commit_key', 'TEXT'],
  ['versions', 'landed_ref', 'TEXT'],
  ['versions', 'landed_reason', 'TEXT'],
  // What a kexec hand-off boots (ImageBoot as JSON), recorded at publish.
  ['images', 'boot', 'TEXT'],
  // When a token was last accepted (token list).
  ['tokens', 'last_used_at', 'TEXT'],
];

type Row = Record<string, unknown>;

const toImage = (r: Row): ImageRow => ({
  name: r.name as string, virtualSize: Number(r.virtual_size), chunkSize: Number(r.chunk_size),
  hashAlg: r.hash_alg as string, createdAt: r.created_at as string,
  ...(r.boot ? { boot: JSON.parse(r.boot as string) as ImageBoot } : {}),
});
const toVersion = (r: Row): VersionRow => ({
  image: r.image as string, version: Number(r.version), parent: r.parent === null ? null : Number(r.parent),
  layer: r.layer_id as string, index: r.index_id as string, kind: r.kind as VersionRow['kind'],
  author: r.author as string, message: r.message as string, createdAt: r.created_at as string,
  chunksChanged: Number(r.chunks_changed), chunksTotal: Number(r.chunks_total),
});
const toRef = (r: Row): RefRow => ({ image: r.image as string, name: r.name as string, version: Number(r.version), updatedAt: r.updated_at as string });
const toDesktop = (r: Row): DesktopRow => ({
  name: r.name as string, image: r.image as string, mode: r.mode as DesktopRow['mode'], follows: r.follows as string, createdAt: r.created_at as string,
});
const toLease = (r: Row): LeaseRow => ({
  desktop: r.desktop as string, holder: (r.holder as string | null) ?? null, fencing: Number(r.fencing), since: r.since as string, expiresAt: r.expires_at as string,
});
const TOKEN_COLUMNS = 'hash, scope, created_at, expires_at, last_used_at';
const toTokenInfo = (r: Row): TokenInfo => ({
  id: (r.hash as string).slice(0, 16), scope: r.scope as string, createdAt: r.created_at as string,
  expiresAt: (r.expires_at as string | null) ?? null, lastUsedAt: (r.last_used_at as string | null) ?? null,
});
const toLog = (r: Row): RefLogRow => ({
  seq: Number(r.seq), image: r.image as string, ref: r.ref as string,
  oldVersion: r.old_version === null ? null : Number(r.old_version), newVersion: Number(r.new_version),
  reason: r.reason as string, author: r.author as string, at: r.at as string,
});

export class SqliteMetaRepo implements MetaRepo {
  private readonly db: Database.Database;

  constructor(file: string) {
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('busy_timeout = 5000');
    for (const s of SCHEMA) this.db.exec(s);
    for (const [table, column, def] of ADDED_COLUMNS) {
      const cols = this.db.prepare(`PRAGMA table_info(${table})`).all() as Row[];
      if (!cols.some((c) => c.name === column)) this.db.exec(`ALTER TABLE ${table} ADD COLUMN ${column} ${def}`);
    }
  }

  createImage(row: ImageRow): { created: boolean; image: ImageRow } {
    return this.db.transaction(() => {
      const existing = this.getImage(row.name);
      if (existing) return { created: false, image: existing };
      this.db.prepare('INSERT INTO images (name, virtual_size, chunk_size, hash_alg, created_at) VALUES (?, ?, ?, ?, ?)')
        .run(row.name, row.virtualSize, row.chunkSize, row.hashAlg, row.createdAt);
      return { created: true, image: row };
    })();
  }

  /** The connection, for the endpoint tables that live in the same database (sqlite-endpoints.ts). */
  get database(): Database.Database {
    return this.db;
  }

  setImageBoot(name: string, boot: ImageBoot | null): void {
    this.db.prepare('UPDATE images SET boot = ? WHERE name = ?').run(boot ? JSON.stringify(boot) : null, name);
  }

  getImage(name: string): ImageRow | undefined {
    const r = this.db.prepare('SELECT * FROM images WHERE name = ?').get(name) as Row | undefined;
    return r && toImage(r);
  }

  listImages(): ImageRow[] {
    return (this.db.prepare('SELECT * FROM images ORDER BY name').all() as Row[]).map(toImage);
  }

  versionCount(image: string): number {
    return Number((this.db.prepare('SELECT COUNT(*) AS n FROM versions WHERE image = ?').get(image) as Row).n);
  }

  getVersion(image: string, version: number): VersionRow | undefined {
    const r = this.db.prepare('SELECT * FROM versions WHERE image = ? AND version = ?').get(image, version) as Row | undefined;
    return r && toVersion(r);
  }

  listVersions(image: string, limit: number): VersionRow[] {
    return (this.db.prepare('SELECT * FROM versions WHERE image = ? ORDER BY version DESC LIMIT ?').all(image, limit) as Row[]).map(toVersion);
  }

  findCommit(image: string, commitKey: string, ref: string): CommitOutcome | undefined {
    const r = this.db.prepare('SELECT * FROM versions WHERE image = ? AND commit_key = ?').get(image, commitKey) as Row | undefined;
    if (!r) return undefined;
    const version = toVersion(r);
    const landed = r.landed_ref as string;
    const reason = r.landed_reason as ConflictReason | null;
    if (!reason) return { kind: 'fast-forward', version, ref: landed };
    return { kind: 'conflict', version, ref, head: this.getRef(image, ref)?.version ?? null, conflictRef: landed, reason };
  }

  commitVersion(v: NewVersion, ref: string, conflictRef: string, fence?: CommitFence): CommitOutcome {
    return this.db.transaction((): CommitOutcome => {
      const again = v.commitKey ? this.findCommit(v.image, v.commitKey, ref) : undefined;
      if (again) return again;
      const next = Number((this.db.prepare('SELECT COALESCE(MAX(version), 0) + 1 AS n FROM versions WHERE image = ?').get(v.image) as Row).n);
      this.db.prepare(`INSERT INTO versions (image, version, parent, layer_id, index_id, kind, author, message, created_at, chunks_changed, chunks_total)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
        .run(v.image, next, v.parent, v.layer, v.index, v.kind, v.author, v.message, v.at, v.chunksChanged, v.chunksTotal);
      const version = this.getVersion(v.image, next)!;
      const head = this.getRef(v.image, ref)?.version ?? null;
      const lease = fence ? this.getLease(fence.desktop) : undefined;
      const fenced = !fence || (lease !== undefined && lease.holder !== null && lease.fencing === fence.fencing && lease.expiresAt > v.at);
      if (fenced && head === v.parent) {
        this.setRef(v.image, ref, head, next, v.kind, v.author, v.at);
        this.landed(v, next, ref, null);
        return { kind: 'fast-forward', version, ref };
      }
      const why = fenced
        ? `conflict: ${ref} was at ${head ?? 'none'}, parent ${v.parent ?? 'none'}`
        : `conflict: fencing ${fence!.fencing} is not the current lease of desktop ${fence!.desktop} (${leaseText(lease, v.at)})`;
      // Two conflicts on one ref in the same millisecond get distinct names.
      let name = conflictRef;
      for (let n = 2; this.getRef(v.image, name); n++) name = `${conflictRef}-${n}`;
      this.setRef(v.image, name, null, next, why, v.author, v.at);
      this.landed(v, next, name, fenced ? 'parent' : 'fencing');
      return { kind: 'conflict', version, ref, head, conflictRef: name, reason: fenced ? 'parent' : 'fencing' };
    })();
  }

  private landed(v: NewVersion, version: number, ref: string, reason: ConflictReason | null): void {
    this.db.prepare('UPDATE versions SET commit_key = ?, landed_ref = ?, landed_reason = ? WHERE image = ? AND version = ?')
      .run(v.commitKey ?? null, ref, reason, v.image, version);
  }

  private setRef(image: string, name: string, old: number | null, to: number, reason: string, author: string, at: string): void {
    if (old === null) {
      this.db.prepare('INSERT INTO refs (image, name, version, updated_at) VALUES (?, ?, ?, ?)').run(image, name, to, at);
    } else {
      this.db.prepare('UPDATE refs SET version = ?, updated_at = ? WHERE image = ? AND name = ?').run(to, at, image, name);
    }
    const seq = Number((this.db.prepare('SELECT COALESCE(MAX(seq), 0) + 1 AS n FROM ref_log').get() as Row).n);
    this.db.prepare('INSERT INTO ref_log (seq, image, ref, old_version, new_version, reason, author, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)')
      .run(seq, image, name, old, to, reason, author, at);
  }

  getRef(image: string, name: string): RefRow | undefined {
    const r = this.db.prepare('SELECT * FROM refs WHERE image = ? AND name = ?').get(image, name) as Row | undefined;
    return r && toRef(r);
  }

  listRefs(image: string): RefRow[] {
    return (this.db.prepare('SELECT * FROM refs WHERE image = ? ORDER BY name').all(image) as Row[]).map(toRef);
  }

  moveRef(image: string, name: string, to: number, expect: number | null, reason: string, author: string, at: string): RefMoveOutcome {
    return this.db.transaction((): RefMoveOutcome => {
      const head = this.getRef(image, name)?.version ?? null;
      if (head !== expect) return { moved: false, head };
      this.setRef(image, name, head, to, reason, author, at);
      return { moved: true, ref: this.getRef(image, name)! };
    })();
  }

  refLog(image: string, ref: string | undefined, limit: number): RefLogRow[] {
    const rows = ref === undefined
      ? this.db.prepare('SELECT * FROM ref_log WHERE image = ? ORDER BY seq DESC LIMIT ?').all(image, limit)
      : this.db.prepare('SELECT * FROM ref_log WHERE image = ? AND ref = ? ORDER BY seq DESC LIMIT ?').all(image, ref, limit);
    return (rows as Row[]).map(toLog);
  }

  addToken(hash: string, scope: string, at: string, expiresAt: string | null = null): void {
    this.db.prepare('INSERT INTO tokens (hash, scope, created_at, expires_at) VALUES (?, ?, ?, ?)').run(hash, scope, at, expiresAt);
  }

  findToken(hash: string): TokenRow | undefined {
    const r = this.db.prepare('SELECT scope, expires_at FROM tokens WHERE hash = ?').get(hash) as Row | undefined;
    return r && { scope: r.scope as string, expiresAt: (r.expires_at as string | null) ?? null };
  }

  countTokens(scope: string): number {
    return Number((this.db.prepare('SELECT COUNT(*) AS n FROM tokens WHERE scope = ?').get(scope) as Row).n);
  }

  touchToken(hash: string, at: string, since: string): void {
    this.db.prepare('UPDATE tokens SET last_used_at = ? WHERE hash = ? AND (last_used_at IS NULL OR last_used_at < ?)').run(at, hash, since);
  }

  listTokens(): TokenInfo[] {
    return (this.db.prepare(`SELECT ${TOKEN_COLUMNS} FROM tokens ORDER BY created_at, hash`).all() as Row[]).map(toTokenInfo);
  }

  deleteToken(id: string): TokenInfo | undefined {
    return this.db.transaction(() => {
      const r = this.db.prepare(`SELECT ${TOKEN_COLUMNS} FROM tokens WHERE substr(hash, 1, 16) = ?`).get(id) as Row | undefined;
      if (r) this.db.prepare('DELETE FROM tokens WHERE hash = ?').run(r.hash);
      return r && toTokenInfo(r);
    }).immediate();
  }

  pruneTokens(before: string): number {
    return this.db.prepare('DELETE FROM tokens WHERE expires_at IS NOT NULL AND expires_at < ?').run(before).changes;
  }

  reachable(image: string, heads: readonly number[], version: number): boolean {
    if (!heads.length) return false;
    // Parents are always older (smaller numbers): the walk stops below the version asked about.
    const r = this.db.prepare(`WITH RECURSIVE reach(v) AS (
        SELECT version FROM versions WHERE image = ? AND version IN (${heads.map(() => '?').join(', ')}) AND version >= ?
        UNION SELECT p.parent FROM versions p JOIN reach ON p.image = ? AND p.version = reach.v WHERE p.parent IS NOT NULL AND p.parent >= ?)
      SELECT 1 AS ok FROM reach WHERE v = ?`).get(image, ...heads, version, image, version, version);
    return r !== undefined;
  }

  ancestry(image: string, heads: readonly number[], limit: number): VersionRow[] {
    if (!heads.length) return [];
    const rows = this.db.prepare(`WITH RECURSIVE reach(v) AS (
        SELECT version FROM versions WHERE image = ? AND version IN (${heads.map(() => '?').join(', ')})
        UNION SELECT p.parent FROM versions p JOIN reach ON p.image = ? AND p.version = reach.v WHERE p.parent IS NOT NULL)
      SELECT versions.* FROM versions JOIN reach ON versions.image = ? AND versions.version = reach.v ORDER BY versions.version DESC LIMIT ?`)
      .all(image, ...heads, image, image, limit) as Row[];
    return rows.map(toVersion);
  }

  createDesktop(row: DesktopRow, ref?: { name: string; version: number; reason: string; author: string }): DesktopCreateOutcome {
    return this.db.transaction((): DesktopCreateOutcome => {
      const existing = this.getDesktop(row.name);
      if (existing) return { kind: 'exists', desktop: existing };
      if (ref) {
        const moved = this.moveRef(row.image, ref.name, ref.version, null, ref.reason, ref.author, row.createdAt);
        if (!moved.moved) return { kind: 'ref-exists', head: moved.head };
      }
      this.db.prepare('INSERT INTO desktops (name, image, mode, follows, created_at) VALUES (?, ?, ?, ?, ?)')
        .run(row.name, row.image, row.mode, row.follows, row.createdAt);
      return { kind: 'created', desktop: row };
    }).immediate();
  }

  getDesktop(name: string): DesktopRow | undefined {
    const r = this.db.prepare('SELECT * FROM desktops WHERE name = ?').get(name) as Row | undefined;
    return r && toDesktop(r);
  }

  listDesktops(): DesktopRow[] {
    return (this.db.prepare('SELECT * FROM desktops ORDER BY name').all() as Row[]).map(toDesktop);
  }

  getLease(desktop: string): LeaseRow | undefined {
    const r = this.db.prepare('SELECT * FROM leases WHERE desktop = ?').get(desktop) as Row | undefined;
    return r && toLease(r);
  }

  acquireLease(desktop: string, holder: string, at: string, expiresAt: string, force: boolean): LeaseAcquireOutcome {
    return this.db.transaction((): LeaseAcquireOutcome => {
      const cur = this.getLease(desktop);
      if (!cur) {
        this.db.prepare('INSERT INTO leases (desktop, holder, fencing, since, expires_at) VALUES (?, ?, ?, ?, ?)').run(desktop, holder, 1, at, expiresAt);
        return { kind: 'acquired', lease: this.getLease(desktop)! };
      }
      const live = cur.holder !== null && cur.expiresAt > at;
      if (live && cur.holder === holder) {
        this.db.prepare('UPDATE leases SET expires_at = ? WHERE desktop = ? AND fencing = ?').run(expiresAt, desktop, cur.fencing);
        return { kind: 'renewed', lease: this.getLease(desktop)! };
      }
      if (live && !force) return { kind: 'held', lease: cur };
      // Compare-and-swap on the fencing read above; the next fencing is always higher.
      this.db.prepare('UPDATE leases SET holder = ?, fencing = ?, since = ?, expires_at = ? WHERE desktop = ? AND fencing = ?')
        .run(holder, cur.fencing + 1, at, expiresAt, desktop, cur.fencing);
      const lease = this.getLease(desktop)!;
      return live ? { kind: 'taken-over', lease, previous: cur } : { kind: 'acquired', lease };
    }).immediate();
  }

  releaseLease(desktop: string, fencing: number): LeaseReleaseOutcome {
    return this.db.transaction((): LeaseReleaseOutcome => {
      const cur = this.getLease(desktop);
      if (!cur || cur.fencing !== fencing) return { released: false, current: cur };
      this.db.prepare('UPDATE leases SET holder = NULL WHERE desktop = ? AND fencing = ?').run(desktop, fencing);
      return { released: true };
    }).immediate();
  }

  breakLease(desktop: string): LeaseRow | undefined {
    return this.db.transaction((): LeaseRow | undefined => {
      const cur = this.getLease(desktop);
      if (!cur || cur.holder === null) return undefined;
      this.db.prepare('UPDATE leases SET holder = NULL WHERE desktop = ? AND fencing = ?').run(desktop, cur.fencing);
      return cur;
    }).immediate();
  }

  close(): void {
    this.db.close();
  }
}

function leaseText(lease: LeaseRow | undefined, at: string): string {
  if (!lease || lease.holder === null) return 'no lease is held';
  if (lease.expiresAt <= at) return `lease ${lease.fencing} of ${lease.holder} expired at ${lease.expiresAt}`;
  return `held by ${lease.holder} with fencing ${lease.fencing}`;
}
