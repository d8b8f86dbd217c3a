import Database from 'better-sqlite3';
import { dfError } from '../errors.js';
import { MIGRATIONS_TABLE_DDL, pendingMigrations, type Migration, type Row, type Sql, type SqlEngine, type SqlValue } from './sql.js';

/**
 * The embedded engine: one better-sqlite3 connection (WAL, synchronous=FULL so a commit that
 * answered is on disk). better-sqlite3 is synchronous, so a transaction that awaits between its
 * statements must keep every other caller out until it ends: one async queue orders transactions
 * and plain statements alike (a statement outside a transaction runs at once when none is open).
 */
export class SqliteEngine implements SqlEngine {
  readonly dialect = 'sqlite' as const;
  private readonly db: Database.Database;
  private queue: Promise<unknown> = Promise.resolve();
  private inTx = false;
  private readonly listeners = new Map<string, Set<(payload: string) => void>>();

  constructor(file: string) {
    try {
      this.db = new Database(file);
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = FULL');
      this.db.pragma('foreign_keys = ON');
      this.db.pragma('busy_timeout = 5000');
    } catch (err) {
      throw dfError('DF_ERR_META_UNREACHABLE', `cannot open the SQLite database ${file}: ${(err as Error).message}`, { file }, err);
    }
  }

  private readonly direct: Sql = {
    all: async (sql, params = []) => this.stmt(sql).all(...(params as SqlValue[])) as Row[],
    get: async (sql, params = []) => this.stmt(sql).get(...(params as SqlValue[])) as Row | undefined,
    run: async (sql, params = []) => this.stmt(sql).run(...(params as SqlValue[])).changes,
  };

  private readonly cache = new Map<string, Database.Statement>();
  private stmt(sql: string): Database.Statement {
    let s = this.cache.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      // Texts with a variable number of placeholders (IN lists, batches) are many: keep the cache bounded.
      if (this.cache.size >= 1000) this.cache.clear();
      this.cache.set(sql, s);
    }
    return s;
  }

  /** A statement outside a transaction: at once when no transaction is open, else after it. */
  private outside<T>(fn: () => T): Promise<T> {
    if (!this.inTx) {
      try {
        return Promise.resolve(fn());
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return this.enqueue(async () => fn());
  }

  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(fn, fn);
    this.queue = next.catch(() => undefined);
    return next;
  }

  all(sql: string, params?: readonly SqlValue[]): Promise<Row[]> {
    return this.outside(() => this.stmt(sql).all(...((params ?? []) as SqlValue[])) as Row[]);
  }
  get(sql: string, params?: readonly SqlValue[]): Promise<Row | undefined> {
    return this.outside(() => this.stmt(sql).get(...((params ?? []) as SqlValue[])) as Row | undefined);
  }
  run(sql: string, params?: readonly SqlValue[]): Promise<number> {
    return this.outside(() => this.stmt(sql).run(...((params ?? []) as SqlValue[])).changes);
  }

  tx<T>(fn: (q: Sql) => Promise<T>): Promise<T> {
    return this.enqueue(async () => {
      this.inTx = true;
      this.db.exec('BEGIN IMMEDIATE');
      try {
        const out = await fn(this.direct);
        this.db.exec('COMMIT');
        return out;
      } catch (err) {
        if (this.db.inTransaction) this.db.exec('ROLLBACK');
        throw err;
      } finally {
        this.inTx = false;
      }
    });
  }

  async migrate(migrations: readonly Migration[]): Promise<number[]> {
    await this.run(MIGRATIONS_TABLE_DDL);
    const done = new Set((await this.all('SELECT id FROM schema_migrations')).map((r) => Number(r.id)));
    const applied: number[] = [];
    for (const m of pendingMigrations(done, migrations)) {
      // the transaction queue is the lock: a concurrent migrate may have applied it since the read
      const now = await this.tx(async (q) => {
        if (await q.get('SELECT id FROM schema_migrations WHERE id = ?', [m.id])) return false;
        await m.up(q, 'sqlite');
        await q.run('INSERT INTO schema_migrations (id, name, applied_at) VALUES (?, ?, ?)', [m.id, m.name, new Date().toISOString()]);
        return true;
      });
      if (now) applied.push(m.id);
    }
    return applied;
  }

  async notify(channel: string, payload: string): Promise<void> {
    for (const fn of this.listeners.get(channel) ?? []) fn(payload);
  }

  async listen(channel: string, fn: (payload: string) => void): Promise<() => Promise<void>> {
    let set = this.listeners.get(channel);
    if (!set) this.listeners.set(channel, (set = new Set()));
    set.add(fn);
    return async () => {
      set.delete(fn);
    };
  }

  async close(): Promise<void> {
    await this.enqueue(async () => undefined);
    if (this.db.open) this.db.close();
  }
}
