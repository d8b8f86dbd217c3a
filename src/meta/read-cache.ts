import type { Row, SqlValue } from './sql.js';

/**
 * A SQLite server's memory of catalog reads (src/meta/sqlite-engine.ts): a boot storm reads the same
 * image, version, ref and desktop rows over and over (an `images` row 17 times per boot), and each
 * read is a statement run on the event loop.
 *
 * A SELECT is remembered only when every table it reads is one of CACHED_TABLES (rarely written:
 * the catalog, desktops and their leases, MAC bindings, disk-secret keys); its answer holds until any statement writes
 * one of those tables (each table has a generation, bumped by every write to it). A write whose
 * target table cannot be read from its text forgets everything. The engine drops it all when another
 * connection changed the file (PRAGMA data_version), so a tool writing the file directly is seen too.
 *
 * This is for one process owning its database. PostgreSQL servers share one, where another server's
 * write would not be seen: that engine has no such cache.
 */
export const CACHED_TABLES: ReadonlySet<string> = new Set([
  'images', 'versions', 'refs', 'ref_log', 'version_manifests', 'desktops', 'leases', 'endpoint_macs', 'endpoint_keys',
]);

/** Time and randomness make a statement's answer not a function of the tables. */
const VOLATILE = /\b(random|now|current_(time|date|timestamp)|datetime|julianday|strftime|changes|last_insert_rowid)\b/i;

/** The tables a SELECT reads (CTE names left out), or undefined when it is not one to remember. */
export function readTables(sql: string): string[] | undefined {
  const text = sql.toLowerCase();
  if (!/^\s*(select|with)\b/.test(text) || VOLATILE.test(text)) return undefined;
  const ctes = new Set([...text.matchAll(/(?:\bwith(?:\s+recursive)?|,)\s*([a-z_][a-z0-9_]*)\s*(?:\([^)]*\))?\s+as\s*\(/g)].map((m) => m[1]!));
  const tables = new Set<string>();
  for (const m of text.matchAll(/\b(?:from|join)\s+([a-z_][a-z0-9_]*)/g)) if (!ctes.has(m[1]!)) tables.add(m[1]!);
  if (!tables.size || [...tables].some((t) => !CACHED_TABLES.has(t))) return undefined;
  return [...tables];
}

/** The table a statement writes; null for a read; undefined when it cannot be told (forget everything). */
export function writtenTable(sql: string): string | null | undefined {
  const text = sql.trimStart().toLowerCase();
  if (/^(select|with|pragma\s+(table_info|data_version))\b/.test(text) && !/\b(insert|update|delete|replace)\b/.test(text)) return null;
  const m = /^(?:insert(?:\s+or\s+\w+)?\s+into|replace\s+into|update(?:\s+or\s+\w+)?|delete\s+from)\s+([a-z_][a-z0-9_]*)\s*(\.?)/.exec(text);
  return m && !m[2] ? m[1]! : undefined; // schema.table: not told apart, so everything is forgotten
}

interface Entry {
  rows: readonly Row[];
  tables: string[];
  gens: number[];
}

export class ReadCache {
  private readonly entries = new Map<string, Entry>();
  private readonly gens = new Map<string, number>();
  private readonly tablesOf = new Map<string, string[] | null>();
  private readonly writesOf = new Map<string, string | null | undefined>();
  /** Hits and misses (tests, and a look in a profile). */
  readonly stats = { hits: 0, misses: 0 };

  constructor(private readonly max = 4096) {}

  /** The remembered answer of `sql` with `params`, else what `read` gives (remembered when the statement may be). */
  read(sql: string, params: readonly SqlValue[], read: () => Row[], kind: 'all' | 'get' = 'all'): readonly Row[] {
    let tables = this.tablesOf.get(sql);
    if (tables === undefined) {
      tables = readTables(sql) ?? null;
      if (this.tablesOf.size >= this.max) this.tablesOf.clear();
      this.tablesOf.set(sql, tables);
    }
    if (tables === null) {
      this.wrote(sql); // it may write (INSERT … RETURNING is run through all/get)
      return read();
    }
    // `get` keeps one row: its own key, so an `all` of the same text never gets it
    const key = `${kind}\u0000${sql}\u0000${params.length ? JSON.stringify(params) : ''}`;
    const hit = this.entries.get(key);
    if (hit && hit.tables.every((t, i) => this.gen(t) === hit.gens[i])) {
      this.stats.hits++;
      return hit.rows;
    }
    this.stats.misses++;
    // Frozen: a caller that changed a row would change every later caller's answer.
    const rows = read().map((r) => Object.freeze(r));
    Object.freeze(rows);
    if (this.entries.size >= this.max) this.entries.clear();
    this.entries.set(key, { rows, tables, gens: tables.map((t) => this.gen(t)) });
    return rows;
  }

  /** Before (and after) a statement runs that may write: what it writes is forgotten. */
  wrote(sql: string): void {
    let t = this.writesOf.get(sql);
    if (!this.writesOf.has(sql)) {
      t = writtenTable(sql);
      if (this.writesOf.size >= this.max) this.writesOf.clear();
      this.writesOf.set(sql, t);
    }
    if (t === null) return;
    if (t === undefined) this.clear();
    else if (CACHED_TABLES.has(t)) this.gens.set(t, this.gen(t) + 1);
  }

  clear(): void {
    this.entries.clear();
  }

  private gen(t: string): number {
    return this.gens.get(t) ?? 0;
  }
}
