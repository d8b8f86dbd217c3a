import type Database from 'better-sqlite3';
import type { VdiRepo, VdiSessionRow, VdiState } from '../vdi/model.js';

/** VDI sessions, in the appliance's SQLite database (same conventions as sqlite.ts). */
export const VDI_SCHEMA = [
  `CREATE TABLE IF NOT EXISTS vdi_sessions (
     id TEXT PRIMARY KEY, desktop TEXT NOT NULL, image TEXT NOT NULL, base INTEGER NOT NULL, mode TEXT NOT NULL,
     holder TEXT NOT NULL, fencing BIGINT, secret_hash TEXT NOT NULL, auto_commit INTEGER NOT NULL, state TEXT NOT NULL,
     created_at TEXT NOT NULL, created_by TEXT NOT NULL, updated_at TEXT NOT NULL, last_connect_at TEXT,
     last_disconnect_at TEXT, last_disconnect TEXT, outcome TEXT, failure TEXT)`,
  `CREATE INDEX IF NOT EXISTS vdi_sessions_by_desktop ON vdi_sessions (desktop, created_at)`,
];

const COLUMNS: Record<keyof Omit<VdiSessionRow, 'id'>, string> = {
  desktop: 'desktop', image: 'image', base: 'base', mode: 'mode', holder: 'holder', fencing: 'fencing', secretHash: 'secret_hash',
  autoCommit: 'auto_commit', state: 'state', createdAt: 'created_at', createdBy: 'created_by', updatedAt: 'updated_at',
  lastConnectAt: 'last_connect_at', lastDisconnectAt: 'last_disconnect_at', lastDisconnect: 'last_disconnect', outcome: 'outcome',
  failure: 'failure',
};

type Row = Record<string, unknown>;

const toRow = (r: Row): VdiSessionRow => ({
  id: r.id as string, desktop: r.desktop as string, image: r.image as string, base: Number(r.base), mode: r.mode as VdiSessionRow['mode'],
  holder: r.holder as string, fencing: r.fencing === null ? null : Number(r.fencing), secretHash: r.secret_hash as string,
  autoCommit: Number(r.auto_commit) === 1, state: r.state as VdiState, createdAt: r.created_at as string, createdBy: r.created_by as string,
  updatedAt: r.updated_at as string, lastConnectAt: (r.last_connect_at as string | null) ?? null,
  lastDisconnectAt: (r.last_disconnect_at as string | null) ?? null, lastDisconnect: (r.last_disconnect as VdiSessionRow['lastDisconnect']) ?? null,
  outcome: r.outcome ? JSON.parse(r.outcome as string) : null,
  failure: (r.failure as string | null | undefined) ?? null,
});

const toColumn = (k: string, v: unknown): unknown => (k === 'autoCommit' ? (v ? 1 : 0) : k === 'outcome' ? (v === null ? null : JSON.stringify(v)) : v);

export class SqliteVdiRepo implements VdiRepo {
  constructor(private readonly db: Database.Database) {
    for (const s of VDI_SCHEMA) db.exec(s);
    // Databases made before sessions could fail.
    const cols = db.prepare('PRAGMA table_info(vdi_sessions)').all() as Array<{ name: string }>;
    if (!cols.some((c) => c.name === 'failure')) db.exec('ALTER TABLE vdi_sessions ADD COLUMN failure TEXT');
  }

  insert(row: VdiSessionRow): void {
    const keys = Object.keys(COLUMNS) as Array<keyof typeof COLUMNS>;
    this.db.prepare(`INSERT INTO vdi_sessions (id, ${keys.map((k) => COLUMNS[k]).join(', ')}) VALUES (?${', ?'.repeat(keys.length)})`)
      .run(row.id, ...keys.map((k) => toColumn(k, row[k])));
  }

  get(id: string): VdiSessionRow | undefined {
    const r = this.db.prepare('SELECT * FROM vdi_sessions WHERE id = ?').get(id) as Row | undefined;
    return r && toRow(r);
  }

  list(opts: { desktop?: string; states?: VdiState[] }): VdiSessionRow[] {
    const where: string[] = [];
    const args: unknown[] = [];
    if (opts.desktop !== undefined) { where.push('desktop = ?'); args.push(opts.desktop); }
    if (opts.states?.length) { where.push(`state IN (${opts.states.map(() => '?').join(', ')})`); args.push(...opts.states); }
    const sql = `SELECT * FROM vdi_sessions${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at, id`;
    return (this.db.prepare(sql).all(...args) as Row[]).map(toRow);
  }

  update(id: string, patch: Partial<Omit<VdiSessionRow, 'id'>>): VdiSessionRow {
    const keys = Object.keys(patch) as Array<keyof typeof COLUMNS>;
    if (keys.length) {
      this.db.prepare(`UPDATE vdi_sessions SET ${keys.map((k) => `${COLUMNS[k]} = ?`).join(', ')} WHERE id = ?`)
        .run(...keys.map((k) => toColumn(k, patch[k])), id);
    }
    return this.get(id)!;
  }
}
