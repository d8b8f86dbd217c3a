/**
 * The small SQL interface every metadata repository is written against, once, for both engines:
 * SQLite (embedded default, src/meta/sqlite-engine.ts) and PostgreSQL (src/meta/pg-engine.ts).
 *
 * SQL text uses `?` placeholders (the PostgreSQL engine numbers them `$1…`; never put a `?` in a
 * literal) and sticks to what both run: ISO-8601 text times, BIGINT for anything past 2^31,
 * `INSERT … ON CONFLICT … DO UPDATE`, `RETURNING`, no AUTOINCREMENT. Engines hand numbers back
 * as they like (PostgreSQL BIGINT and COUNT come as strings): mappers wrap them in Number().
 */
import { dfError } from '../errors.js';

export type SqlValue = string | number | null;
export type Row = Record<string, unknown>;

export interface Sql {
  all(sql: string, params?: readonly SqlValue[]): Promise<Row[]>;
  get(sql: string, params?: readonly SqlValue[]): Promise<Row | undefined>;
  /** Runs a statement; resolves to the number of rows it changed. */
  run(sql: string, params?: readonly SqlValue[]): Promise<number>;
}

/** A numbered schema step. Both engines apply the same numbers in order, each once. */
export interface Migration {
  id: number;
  name: string;
  up(q: Sql, dialect: SqlDialect): Promise<void>;
}

export type SqlDialect = 'sqlite' | 'postgres';

export interface SqlEngine extends Sql {
  readonly dialect: SqlDialect;
  /**
   * Runs `fn` as one serializable transaction and commits it. A serialization failure (or a
   * deadlock) rolls back and runs `fn` again, so `fn` must do nothing outside the database.
   */
  tx<T>(fn: (q: Sql) => Promise<T>): Promise<T>;
  /** Applies the migrations not applied yet, in order, under a lock (two servers starting at once apply each once). Resolves to the ids applied now. */
  migrate(migrations: readonly Migration[]): Promise<number[]>;
  /** Tells every listener of `channel` on every server (PostgreSQL NOTIFY; in-process on SQLite). */
  notify(channel: string, payload: string): Promise<void>;
  /** Subscribes; resolves to an unsubscribe. */
  listen(channel: string, fn: (payload: string) => void): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

/** The table both engines record applied migrations in. */
export const MIGRATIONS_TABLE_DDL = 'CREATE TABLE IF NOT EXISTS schema_migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)';

/**
 * The migrations still to apply, in order, given the ids a database has applied; an applied id this
 * server does not know means the database is newer than the server (DF_ERR_META_SCHEMA).
 */
export function pendingMigrations(done: ReadonlySet<number>, migrations: readonly Migration[]): Migration[] {
  const known = new Set(migrations.map((m) => m.id));
  const unknown = [...done].filter((id) => !known.has(id)).sort((a, b) => a - b);
  if (unknown.length) {
    throw dfError('DF_ERR_META_SCHEMA', `the database has migrations this server does not know (${unknown.join(', ')}): run a newer deskfuse`, { unknown });
  }
  return [...migrations].filter((m) => !done.has(m.id)).sort((a, b) => a.id - b.id);
}
