import Database from 'better-sqlite3';
import type { CommitOutcome, ImageRow, MetaRepo, NewVersion, RefLogRow, RefMoveOutcome, RefRow, VersionRow } from './repo.js';

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
  `CREATE TABLE IF NOT EXISTS tokens (hash TEXT PRIMARY KEY, scope TEXT NOT NULL, created_at TEXT NOT NULL)`,
];

type Row = Record<string, unknown>;

const toImage = (r: Row): ImageRow => ({
  name: r.name as string, virtualSize: Number(r.virtual_size), chunkSize: Number(r.chunk_size),
  hashAlg: r.hash_alg as string, createdAt: r.created_at as string,
});
const toVersion = (r: Row): VersionRow => ({
  image: r.image as string, version: Number(r.version), parent: r.parent === null ? null : Number(r.parent),
  layer: r.layer_id as string, index: r.index_id as string, kind: r.kind as VersionRow['kind'],
  author: r.author as string, message: r.message as string, createdAt: r.created_at as string,
  chunksChanged: Number(r.chunks_changed), chunksTotal: Number(r.chunks_total),
});
const toRef = (r: Row): RefRow => ({ image: r.image as string, name: r.name as string, version: Number(r.version), updatedAt: r.updated_at as string });
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

  commitVersion(v: NewVersion, ref: string, conflictRef: string): CommitOutcome {
    return this.db.transaction((): CommitOutcome => {
      const next = Number((this.db.prepare('SELECT COALESCE(MAX(version), 0) + 1 AS n FROM versions WHERE image = ?').get(v.image) as Row).n);
      this.db.prepare(`INSERT INTO versions (image, version, parent, layer_id, index_id, kind, author, message, created_at, chunks_changed, chunks_total)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
        .run(v.image, next, v.parent, v.layer, v.index, v.kind, v.author, v.message, v.at, v.chunksChanged, v.chunksTotal);
      const version = this.getVersion(v.image, next)!;
      const head = this.getRef(v.image, ref)?.version ?? null;
      if (head === v.parent) {
        this.setRef(v.image, ref, head, next, v.kind, v.author, v.at);
        return { kind: 'fast-forward', version, ref };
      }
      this.setRef(v.image, conflictRef, null, next, `conflict: ${ref} was at ${head ?? 'none'}, parent ${v.parent ?? 'none'}`, v.author, v.at);
      return { kind: 'conflict', version, ref, head, conflictRef };
    })();
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

  addToken(hash: string, scope: string, at: string): void {
    this.db.prepare('INSERT INTO tokens (hash, scope, created_at) VALUES (?, ?, ?)').run(hash, scope, at);
  }

  findToken(hash: string): { scope: string } | undefined {
    return this.db.prepare('SELECT scope FROM tokens WHERE hash = ?').get(hash) as { scope: string } | undefined;
  }

  countTokens(scope: string): number {
    return Number((this.db.prepare('SELECT COUNT(*) AS n FROM tokens WHERE scope = ?').get(scope) as Row).n);
  }

  close(): void {
    this.db.close();
  }
}
