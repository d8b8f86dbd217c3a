import pg from 'pg';
import { DeskfuseError, dfError, isDeskfuseError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { MIGRATIONS_TABLE_DDL, pendingMigrations, type Migration, type Row, type Sql, type SqlEngine, type SqlValue } from './sql.js';

/**
 * The networked engine: PostgreSQL over a node-postgres pool, so several deskfuse servers share one
 * metadata database.
 *
 * - SQL comes with `?` placeholders (src/meta/sql.ts) and is numbered `$1…` here, once per text.
 * - `tx` runs SERIALIZABLE; a serialization failure (40001), a deadlock (40P01) or a unique violation
 *   (23505: repositories read, then insert; the retry reads the winner's row) rolls back and runs `fn`
 *   again after a short jittered pause, at most `txAttempts` times, then fails DF_ERR_META. A unique
 *   violation that a re-read does not explain (a genuine duplicate) fails after UNIQUE_ATTEMPTS with
 *   the statement's own error.
 * - A lost connection never retries a statement (a COMMIT whose answer was lost may have happened):
 *   the call fails DF_ERR_META_UNREACHABLE and the next one connects again.
 * - The server restarting must never take the process down: idle pooled clients, the client of a
 *   transaction and the LISTEN client all have 'error' handlers; the LISTEN client reconnects with
 *   backoff and LISTENs its channels again (notifications sent while it was away are lost: listeners
 *   that need every event re-read the state they follow).
 * - Errors: refused, unreachable, timed out, shut down → DF_ERR_META_UNREACHABLE naming host:port;
 *   28P01/28000 → DF_ERR_META_DENIED; a missing database → DF_ERR_META_UNREACHABLE naming it; any
 *   other failure → DF_ERR_META with the SQLSTATE and the cause. The password is never in a message.
 */
export interface PgEngineOptions {
  /** Most connections the pool opens (default 10). */
  max?: number;
  /** How long to wait for a connection before DF_ERR_META_UNREACHABLE (default 5000 ms). */
  connectTimeoutMs?: number;
  /** Attempts of a transaction that keeps conflicting (default 30). */
  txAttempts?: number;
  log?: Logger;
}

/** Where a PostgreSQL URL points, for messages: never the password. */
export interface PgTarget {
  host: string;
  port: number;
  database: string;
  user: string;
}

export function pgTarget(url: string): PgTarget {
  const u = new URL(url);
  const user = decodeURIComponent(u.username) || process.env.PGUSER || 'postgres';
  return {
    host: u.hostname.replace(/^\[(.*)\]$/, '$1') || 'localhost',
    port: u.port ? Number(u.port) : 5432,
    database: decodeURIComponent(u.pathname.replace(/^\//, '')) || user,
    user,
  };
}

const RETRY = new Set(['40001', '40P01', '23505']);
/** One retry settles a read-then-insert race; a violation that outlives it is a real duplicate. */
const UNIQUE_ATTEMPTS = 3;
const UNREACHABLE_ERRNO = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE', 'ECONNABORTED']);
// admin shutdown, crash shutdown, cannot connect now (starting up / shutting down)
const UNREACHABLE_SQLSTATE = new Set(['57P01', '57P02', '57P03']);
const UNREACHABLE_MESSAGE = /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|Connection ended|not queryable/i;

function sqlstate(err: unknown): string | undefined {
  if (isDeskfuseError(err)) return typeof err.fields.sqlstate === 'string' ? err.fields.sqlstate : undefined;
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

/** A pg or socket failure as the coded error callers branch on (DeskfuseErrors pass through). */
export function pgError(err: unknown, t: PgTarget): DeskfuseError {
  if (err instanceof DeskfuseError) return err;
  const e = err as { code?: unknown; message?: unknown } | null;
  const code = typeof e?.code === 'string' ? e.code : undefined;
  const msg = typeof e?.message === 'string' ? e.message : String(err);
  const where = `${t.host}:${t.port}`;
  const state = sqlstate(err);
  if (state === '28P01' || state === '28000') {
    return dfError('DF_ERR_META_DENIED', `PostgreSQL at ${where} refused the credentials of role ${t.user}: ${msg}`, { host: t.host, port: t.port, user: t.user, sqlstate: state }, err);
  }
  if (state === '3D000') {
    return dfError('DF_ERR_META_UNREACHABLE', `PostgreSQL at ${where} has no database "${t.database}" (create it, or fix the URL)`, { host: t.host, port: t.port, database: t.database, sqlstate: state }, err);
  }
  if ((code && UNREACHABLE_ERRNO.has(code)) || (state && (UNREACHABLE_SQLSTATE.has(state) || state.startsWith('08'))) || (!state && UNREACHABLE_MESSAGE.test(msg))) {
    return dfError('DF_ERR_META_UNREACHABLE', `PostgreSQL at ${where} cannot be reached: ${msg}`, { host: t.host, port: t.port, ...(state ? { sqlstate: state } : {}) }, err);
  }
  return dfError('DF_ERR_META', `PostgreSQL query failed: ${msg}${state ? ` (SQLSTATE ${state})` : ''}`, state ? { sqlstate: state } : {}, err);
}

const numbered = new Map<string, string>();
/** `?` → `$1, $2…` (outside quoted text, which must not hold a `?` anyway: see sql.ts). */
export function numberPlaceholders(sql: string): string {
  let out = numbered.get(sql);
  if (out !== undefined) return out;
  let n = 0;
  let quote: string | null = null;
  out = '';
  for (const ch of sql) {
    if (quote) {
      if (ch === quote) quote = null;
      out += ch;
    } else if (ch === "'" || ch === '"') {
      quote = ch;
      out += ch;
    } else out += ch === '?' ? `$${++n}` : ch;
  }
  if (numbered.size < 5000) numbered.set(sql, out);
  return out;
}

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
const MIGRATE_LOCK = 0x64_66_6d_69; // 'dfmi': pg_advisory_lock key of `migrate` (per database)

type Queryable = Pick<pg.ClientBase, 'query'>;

export class PgEngine implements SqlEngine {
  readonly dialect = 'postgres' as const;
  readonly target: PgTarget;
  private readonly pool: pg.Pool;
  private readonly config: pg.ClientConfig;
  private readonly log: Logger;
  private readonly txAttempts: number;
  private closed = false;

  // LISTEN: one dedicated connection per engine, re-established after a loss
  private readonly channels = new Map<string, Set<(payload: string) => void>>();
  private lc: pg.Client | undefined;
  private lcPending: Promise<pg.Client> | undefined;
  private lcTimer: NodeJS.Timeout | undefined;
  private lcBackoff = 100;

  /** Opens the pool and proves it with `SELECT 1`: bad credentials or an unreachable server fail here, coded. */
  static async open(url: string, opts: PgEngineOptions = {}): Promise<PgEngine> {
    const engine = new PgEngine(url, opts);
    try {
      await engine.get('SELECT 1 AS ok');
    } catch (err) {
      await engine.close().catch(() => {});
      throw err;
    }
    return engine;
  }

  constructor(url: string, opts: PgEngineOptions = {}) {
    this.target = pgTarget(url);
    this.log = (opts.log ?? silentLogger).child({ meta: 'postgres', host: this.target.host, port: this.target.port, database: this.target.database });
    this.txAttempts = opts.txAttempts ?? 30;
    this.config = {
      connectionString: url,
      connectionTimeoutMillis: opts.connectTimeoutMs ?? 5000,
      keepAlive: true,
      application_name: 'deskfuse',
    };
    this.pool = new pg.Pool({ ...this.config, max: opts.max ?? 10, idleTimeoutMillis: 10_000 });
    // An idle client's connection failed (the server restarted): the pool drops it; never a crash.
    this.pool.on('error', (err) => this.log.warn({ err: this.safe(err) }, 'an idle PostgreSQL connection failed'));
  }

  private safe(err: unknown): { code: string; message: string } {
    const e = pgError(err, this.target);
    return { code: e.code, message: e.message };
  }

  private static bound(c: Queryable, map: (err: unknown) => DeskfuseError): Sql {
    const q = async (sql: string, params: readonly SqlValue[] | undefined) => {
      try {
        return await c.query(numberPlaceholders(sql), params?.length ? (params as SqlValue[]) : undefined);
      } catch (err) {
        throw map(err);
      }
    };
    return {
      all: async (sql, params) => (await q(sql, params)).rows as Row[],
      get: async (sql, params) => (await q(sql, params)).rows[0] as Row | undefined,
      run: async (sql, params) => (await q(sql, params)).rowCount ?? 0,
    };
  }

  private readonly direct = PgEngine.bound(this.poolQueryable(), (err) => pgError(err, this.target));
  private poolQueryable(): Queryable {
    return { query: ((text: string, values?: unknown[]) => this.pool.query(text, values)) as Queryable['query'] };
  }

  all(sql: string, params?: readonly SqlValue[]): Promise<Row[]> {
    return this.direct.all(sql, params);
  }
  get(sql: string, params?: readonly SqlValue[]): Promise<Row | undefined> {
    return this.direct.get(sql, params);
  }
  run(sql: string, params?: readonly SqlValue[]): Promise<number> {
    return this.direct.run(sql, params);
  }

  private async checkout(): Promise<pg.PoolClient> {
    if (this.closed) throw dfError('DF_ERR_META', 'the metadata engine is closed');
    try {
      return await this.pool.connect();
    } catch (err) {
      throw pgError(err, this.target);
    }
  }

  /**
   * Runs `fn` on one checked-out client. Between statements (while `fn` awaits something else) the
   * connection may fail: the error is kept, never crashes the process, and the client is dropped.
   */
  private async withClient<T>(fn: (q: Sql, conn: { broken(): boolean; drop(err: unknown): void }) => Promise<T>): Promise<T> {
    const client = await this.checkout();
    let broken: unknown;
    const onError = (err: unknown) => {
      broken = err;
    };
    client.on('error', onError);
    try {
      const conn = { broken: () => broken !== undefined, drop: (err: unknown) => void (broken = err) };
      return await fn(PgEngine.bound(client, (err) => pgError(err, this.target)), conn);
    } finally {
      client.off('error', onError);
      client.release(broken ? (broken as Error) : undefined);
    }
  }

  /** Runs `fn` between BEGIN and COMMIT on one client. */
  private once<T>(begin: string, fn: (q: Sql) => Promise<T>): Promise<T> {
    return this.withClient(async (q, conn) => {
      try {
        await q.run(begin);
        const out = await fn(q);
        await q.run('COMMIT');
        return out;
      } catch (err) {
        // what `fn` threw passes through as it is (statements' failures are already coded)
        // a client whose ROLLBACK failed is not put back in the pool
        if (!conn.broken()) await q.run('ROLLBACK').catch((e: unknown) => conn.drop(e));
        throw err;
      }
    });
  }

  async tx<T>(fn: (q: Sql) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.once('BEGIN ISOLATION LEVEL SERIALIZABLE', fn);
      } catch (err) {
        const state = sqlstate(err);
        if (!state || !RETRY.has(state) || !isDeskfuseError(err, 'DF_ERR_META')) throw err;
        if (state === '23505' && attempt >= UNIQUE_ATTEMPTS) throw err;
        if (attempt >= this.txAttempts) {
          throw dfError('DF_ERR_META', `a transaction still conflicted after ${attempt} attempts (SQLSTATE ${state})`, { attempts: attempt, sqlstate: state }, err);
        }
        this.log.debug({ attempt, sqlstate: state }, 'transaction conflict: retrying');
        await pause(Math.random() * Math.min(250, 2 * 2 ** Math.min(attempt, 7)));
      }
    }
  }

  async migrate(migrations: readonly Migration[]): Promise<number[]> {
    return this.withClient(async (q, conn) => {
      // one migrator per database at a time: a second server waits here, then finds the work done
      await q.run('SELECT pg_advisory_lock(?)', [MIGRATE_LOCK]);
      try {
        await q.run(MIGRATIONS_TABLE_DDL);
        const done = new Set((await q.all('SELECT id FROM schema_migrations')).map((r) => Number(r.id)));
        const applied: number[] = [];
        for (const m of pendingMigrations(done, migrations)) {
          await q.run('BEGIN');
          try {
            await m.up(q, 'postgres');
            await q.run('INSERT INTO schema_migrations (id, name, applied_at) VALUES (?, ?, ?)', [m.id, m.name, new Date().toISOString()]);
            await q.run('COMMIT');
          } catch (err) {
            await q.run('ROLLBACK').catch((e: unknown) => conn.drop(e));
            throw err;
          }
          applied.push(m.id);
          this.log.info({ migration: m.id, name: m.name }, 'migration applied');
        }
        return applied;
      } finally {
        if (!conn.broken()) await q.run('SELECT pg_advisory_unlock(?)', [MIGRATE_LOCK]).catch(() => {});
      }
    });
  }

  async notify(channel: string, payload: string): Promise<void> {
    await this.run('SELECT pg_notify(?, ?)', [channel, payload]);
  }

  async listen(channel: string, fn: (payload: string) => void): Promise<() => Promise<void>> {
    if (this.closed) throw dfError('DF_ERR_META', 'the metadata engine is closed');
    let set = this.channels.get(channel);
    if (!set) this.channels.set(channel, (set = new Set()));
    set.add(fn);
    const drop = () => {
      set.delete(fn);
      if (set.size === 0 && this.channels.get(channel) === set) this.channels.delete(channel);
    };
    try {
      const c = await this.attach();
      await c.query(`LISTEN ${pg.escapeIdentifier(channel)}`); // idempotent: the attach may have listened already
    } catch (err) {
      drop();
      throw pgError(err, this.target);
    }
    return async () => {
      drop();
      if (!this.channels.has(channel) && this.lc) await this.lc.query(`UNLISTEN ${pg.escapeIdentifier(channel)}`).catch(() => {});
    };
  }

  /** The LISTEN connection: the open one, the one being opened, or a new one. */
  private attach(): Promise<pg.Client> {
    if (this.lc) return Promise.resolve(this.lc);
    if (!this.lcPending) {
      this.lcPending = this.openListener().finally(() => {
        this.lcPending = undefined;
      });
    }
    return this.lcPending;
  }

  private async openListener(): Promise<pg.Client> {
    const c = new pg.Client(this.config);
    let lost = false;
    const onLost = (err?: unknown) => {
      if (lost) return;
      lost = true;
      if (this.lc === c) this.lc = undefined;
      c.end().catch(() => {});
      if (this.closed) return;
      this.log.warn({ err: err ? this.safe(err) : undefined }, 'the LISTEN connection to PostgreSQL was lost: reconnecting');
      this.reconnectLater();
    };
    c.on('error', onLost);
    c.on('end', () => onLost());
    c.on('notification', (n) => {
      for (const fn of [...(this.channels.get(n.channel) ?? [])]) {
        try {
          fn(n.payload ?? '');
        } catch (err) {
          this.log.error({ err, channel: n.channel }, 'a listener threw');
        }
      }
    });
    try {
      await c.connect();
      for (const ch of this.channels.keys()) await c.query(`LISTEN ${pg.escapeIdentifier(ch)}`);
    } catch (err) {
      lost = true; // this attempt failed: its caller (listen or the reconnect loop) decides what next
      c.end().catch(() => {});
      throw err;
    }
    if (this.closed) {
      await c.end().catch(() => {});
      throw dfError('DF_ERR_META', 'the metadata engine is closed');
    }
    this.lc = c;
    this.lcBackoff = 100;
    return c;
  }

  private reconnectLater(): void {
    if (this.closed || this.lcTimer || this.channels.size === 0) return;
    const wait = this.lcBackoff;
    this.lcBackoff = Math.min(this.lcBackoff * 2, 2000);
    this.lcTimer = setTimeout(() => {
      this.lcTimer = undefined;
      if (this.closed || this.lc || this.channels.size === 0) return;
      this.attach().then(
        () => this.log.info({ channels: [...this.channels.keys()] }, 'LISTEN connection to PostgreSQL restored'),
        () => this.reconnectLater(),
      );
    }, wait);
    this.lcTimer.unref();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.lcTimer);
    this.lcTimer = undefined;
    const pending = this.lcPending;
    const lc = this.lc;
    this.lc = undefined;
    await Promise.all([
      lc?.end().catch(() => {}),
      pending?.then((c) => c.end()).catch(() => {}),
      this.pool.end().catch(() => {}),
    ]);
  }
}
