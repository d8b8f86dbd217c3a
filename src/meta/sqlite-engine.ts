import { open, type FileHandle } from 'node:fs/promises';
import Database from 'better-sqlite3';
import { dfError } from '../errors.js';
import { ReadCache } from './read-cache.js';
import { MIGRATIONS_TABLE_DDL, pendingMigrations, type Migration, type Row, type Sql, type SqlEngine, type SqlValue } from './sql.js';

/**
 * The embedded engine: one better-sqlite3 connection in WAL mode. better-sqlite3 is synchronous, so
 * a transaction that awaits between its statements must keep every other caller out until it ends:
 * one async queue orders transactions and plain statements alike (a statement outside a transaction
 * runs at once when none is open).
 *
 * Durability is a group commit: SQLite commits with synchronous=NORMAL (the WAL frames written, no
 * fsync, on the event loop), and no caller hears of a commit until an fdatasync of the WAL file — on
 * the thread pool, shared by every commit made meanwhile — has put it on disk: what synchronous=FULL
 * gives (an acknowledged commit survives power loss; https://sqlite.org/wal.html), for one fsync per
 * batch instead of one per commit, and without blocking the loop that DHCP, TFTP and NBD share. A read
 * that may have seen a commit not yet on disk waits for it too, so nothing undurable is ever answered.
 *
 * Catalog reads outside a transaction are remembered until a write to their tables (src/meta/read-cache.ts).
 */
export class SqliteEngine implements SqlEngine {
  readonly dialect = 'sqlite' as const;
  private readonly db: Database.Database;
  private queue: Promise<unknown> = Promise.resolve();
  private inTx = false;
  private readonly listeners = new Map<string, Set<(payload: string) => void>>();
  private readonly wal: string | undefined;
  /** Writes (statements run, transactions) made, and known to be on disk. */
  private written = 0;
  private synced = 0;
  private syncing: Promise<void> | undefined;
  private walFile: FileHandle | undefined;
  /** fdatasync calls made, and operations that waited for one (tests: commits share syncs). */
  readonly durability = { syncs: 0, waits: 0 };
  /** Remembered catalog reads (tests read its stats). */
  readonly reads = new ReadCache();
  private dataVersion: Database.Statement | undefined;
  private lastDataVersion: unknown;
  private versionSeen = false;

  constructor(file: string) {
    try {
      this.db = new Database(file);
      const mode = String(this.db.pragma('journal_mode = WAL', { simple: true }));
      // No WAL (an in-memory database): SQLite syncs each commit itself, and there is nothing to sync here.
      this.wal = mode === 'wal' ? `${file}-wal` : undefined;
      this.db.pragma(this.wal ? 'synchronous = NORMAL' : 'synchronous = FULL'); // NORMAL: with the WAL fdatasync before any answer (above)
      this.db.pragma('foreign_keys = ON');
      this.db.pragma('busy_timeout = 5000');
    } catch (err) {
      throw dfError('DF_ERR_META_UNREACHABLE', `cannot open the SQLite database ${file}: ${(err as Error).message}`, { file }, err);
    }
  }

  private readonly direct: Sql = {
    // In a transaction nothing is remembered (it sees its own writes); what it writes is forgotten.
    all: async (sql, params = []) => (this.reads.wrote(sql), this.stmt(sql).all(...(params as SqlValue[])) as Row[]),
    get: async (sql, params = []) => (this.reads.wrote(sql), this.stmt(sql).get(...(params as SqlValue[])) as Row | undefined),
    run: async (sql, params = []) => {
      this.reads.wrote(sql);
      return this.stmt(sql).run(...(params as SqlValue[])).changes;
    },
  };

  /**
   * A read outside a transaction, through the read cache, emptied first if another connection wrote
   * the file: looked at once per turn of the event loop (the pragma costs what a read does).
   */
  private cachedRead(kind: 'all' | 'get', sql: string, params: readonly SqlValue[]): readonly Row[] {
    if (!this.versionSeen) {
      this.dataVersion ??= this.db.prepare('PRAGMA data_version').pluck();
      const v = this.dataVersion.get();
      if (v !== this.lastDataVersion) {
        this.reads.clear();
        this.lastDataVersion = v;
      }
      this.versionSeen = true;
      setImmediate(() => { this.versionSeen = false; });
    }
    if (kind === 'get') return this.reads.read(sql, params, () => { const r = this.stmt(sql).get(...(params as SqlValue[])) as Row | undefined; return r ? [r] : []; }, 'get');
    return this.reads.read(sql, params, () => this.stmt(sql).all(...(params as SqlValue[])) as Row[]);
  }

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
    // a copy of the list: the caller may sort or splice it (its rows are frozen)
    return this.durable(this.outside(() => [...this.cachedRead('all', sql, params ?? [])]));
  }
  get(sql: string, params?: readonly SqlValue[]): Promise<Row | undefined> {
    return this.durable(this.outside(() => this.cachedRead('get', sql, params ?? [])[0]));
  }
  run(sql: string, params?: readonly SqlValue[]): Promise<number> {
    return this.durable(this.outside(() => {
      this.reads.wrote(sql);
      const n = this.stmt(sql).run(...((params ?? []) as SqlValue[])).changes;
      this.written++;
      return n;
    }));
  }

  /**
   * `op`'s outcome once every write made so far is on disk: its own, and any it may have read (a
   * write counts from the moment it is in the WAL, in the same tick). A read with nothing pending costs no sync.
   */
  private async durable<T>(op: Promise<T>): Promise<T> {
    const out = await op;
    const want = this.written;
    if (want <= this.synced || this.wal === undefined) return out;
    this.durability.waits++;
    while (this.synced < want) await (this.syncing ??= this.sync());
    return out;
  }

  /** One fdatasync of the WAL for every change written before it starts. */
  private async sync(): Promise<void> {
    const upTo = this.written;
    try {
      this.durability.syncs++;
      // The WAL keeps its inode while this connection is open (only the last connection's close removes it).
      this.walFile ??= await open(this.wal!, 'r');
      await this.walFile.datasync();
      this.synced = Math.max(this.synced, upTo);
    } catch (err) {
      throw dfError('DF_ERR_META_UNREACHABLE', `cannot sync the SQLite write-ahead log ${this.wal}: ${(err as Error).message}`, { file: this.wal }, err);
    } finally {
      this.syncing = undefined;
    }
  }

  tx<T>(fn: (q: Sql) => Promise<T>): Promise<T> {
    return this.durable(this.enqueue(async () => {
      this.inTx = true;
      this.db.exec('BEGIN IMMEDIATE');
      try {
        const out = await fn(this.direct);
        this.db.exec('COMMIT');
        this.written++;
        return out;
      } catch (err) {
        if (this.db.inTransaction) this.db.exec('ROLLBACK');
        throw err;
      } finally {
        this.inTx = false;
      }
    }));
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
    await this.durable(this.enqueue(async () => undefined));
    await this.walFile?.close();
    this.walFile = undefined;
    if (this.db.open) this.db.close();
  }
}
