import type { VdiRepo, VdiSessionRow, VdiState } from '../vdi/model.js';
import type { Row, SqlEngine, SqlValue } from './sql.js';

/** VDI sessions over either engine. */
const COLUMNS: Record<keyof Omit<VdiSessionRow, 'id'>, string> = {
  desktop: 'desktop', image: 'image', base: 'base', mode: 'mode', holder: 'holder', fencing: 'fencing', secretHash: 'secret_hash',
  autoCommit: 'auto_commit', state: 'state', createdAt: 'created_at', createdBy: 'created_by', updatedAt: 'updated_at',
  lastConnectAt: 'last_connect_at', lastDisconnectAt: 'last_disconnect_at', lastDisconnect: 'last_disconnect', outcome: 'outcome',
  failure: 'failure', server: 'server', nbdHost: 'nbd_host', nbdPort: 'nbd_port', heartbeatAt: 'heartbeat_at',
  checkpointLayer: 'checkpoint_layer', checkpointAt: 'checkpoint_at',
};

const toRow = (r: Row): VdiSessionRow => ({
  id: r.id as string, desktop: r.desktop as string, image: r.image as string, base: Number(r.base), mode: r.mode as VdiSessionRow['mode'],
  holder: r.holder as string, fencing: r.fencing === null ? null : Number(r.fencing), secretHash: r.secret_hash as string,
  autoCommit: Number(r.auto_commit) === 1, state: r.state as VdiState, createdAt: r.created_at as string, createdBy: r.created_by as string,
  updatedAt: r.updated_at as string, lastConnectAt: (r.last_connect_at as string | null) ?? null,
  lastDisconnectAt: (r.last_disconnect_at as string | null) ?? null, lastDisconnect: (r.last_disconnect as VdiSessionRow['lastDisconnect']) ?? null,
  outcome: r.outcome ? JSON.parse(r.outcome as string) : null,
  failure: (r.failure as string | null | undefined) ?? null,
  // Rows from before migration 2 have no server: they are the (only) server's, whichever name it has now.
  server: (r.server as string | null) ?? '', nbdHost: (r.nbd_host as string | null) ?? null,
  nbdPort: r.nbd_port === null || r.nbd_port === undefined ? null : Number(r.nbd_port), heartbeatAt: (r.heartbeat_at as string | null) ?? null,
  checkpointLayer: (r.checkpoint_layer as string | null) ?? null, checkpointAt: (r.checkpoint_at as string | null) ?? null,
});

// A row's server is '' when it predates migration 2 (NULL in the table).
const toColumn = (k: string, v: unknown): SqlValue =>
  (k === 'autoCommit' ? (v ? 1 : 0) : k === 'outcome' ? (v === null ? null : JSON.stringify(v)) : k === 'server' && v === '' ? null : (v as SqlValue));

export class SqlVdiRepo implements VdiRepo {
  constructor(private readonly db: SqlEngine) {}

  async insert(row: VdiSessionRow): Promise<void> {
    const keys = Object.keys(COLUMNS) as Array<keyof typeof COLUMNS>;
    await this.db.run(`INSERT INTO vdi_sessions (id, ${keys.map((k) => COLUMNS[k]).join(', ')}) VALUES (?${', ?'.repeat(keys.length)})`,
      [row.id, ...keys.map((k) => toColumn(k, row[k]))]);
  }

  async get(id: string): Promise<VdiSessionRow | undefined> {
    const r = await this.db.get('SELECT * FROM vdi_sessions WHERE id = ?', [id]);
    return r && toRow(r);
  }

  async list(opts: { desktop?: string; states?: VdiState[] }): Promise<VdiSessionRow[]> {
    const where: string[] = [];
    const args: SqlValue[] = [];
    if (opts.desktop !== undefined) { where.push('desktop = ?'); args.push(opts.desktop); }
    if (opts.states?.length) { where.push(`state IN (${opts.states.map(() => '?').join(', ')})`); args.push(...opts.states); }
    const sql = `SELECT * FROM vdi_sessions${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at, id`;
    return (await this.db.all(sql, args)).map(toRow);
  }

  update(id: string, patch: Partial<Omit<VdiSessionRow, 'id'>>): Promise<VdiSessionRow> {
    return this.db.tx(async (q) => {
      const keys = Object.keys(patch) as Array<keyof typeof COLUMNS>;
      if (keys.length) {
        await q.run(`UPDATE vdi_sessions SET ${keys.map((k) => `${COLUMNS[k]} = ?`).join(', ')} WHERE id = ?`,
          [...keys.map((k) => toColumn(k, patch[k])), id]);
      }
      return toRow((await q.get('SELECT * FROM vdi_sessions WHERE id = ?', [id]))!);
    });
  }

  updateIf(id: string, expect: Partial<Omit<VdiSessionRow, 'id'>>, patch: Partial<Omit<VdiSessionRow, 'id'>>): Promise<VdiSessionRow | undefined> {
    return this.db.tx(async (q) => {
      const conds: string[] = [];
      const args: SqlValue[] = [];
      for (const k of Object.keys(expect) as Array<keyof typeof COLUMNS>) {
        const v = toColumn(k, expect[k]);
        if (v === null) conds.push(`${COLUMNS[k]} IS NULL`);
        else { conds.push(`${COLUMNS[k]} = ?`); args.push(v); }
      }
      const keys = Object.keys(patch) as Array<keyof typeof COLUMNS>;
      const set = keys.length ? keys.map((k) => `${COLUMNS[k]} = ?`).join(', ') : 'id = id';
      const n = await q.run(`UPDATE vdi_sessions SET ${set} WHERE id = ?${conds.map((c) => ` AND ${c}`).join('')}`,
        [...keys.map((k) => toColumn(k, patch[k])), id, ...args]);
      if (n === 0) return undefined;
      return toRow((await q.get('SELECT * FROM vdi_sessions WHERE id = ?', [id]))!);
    });
  }
}
