import type { BootEvent, BootTokenRow, EndpointKeys, EndpointRepo, EndpointRow } from '../endpoint/model.js';
import { GroupCommit } from './group-commit.js';
import type { Row, Sql, SqlEngine, SqlValue } from './sql.js';

/** Endpoints, their MACs, boot tokens, boot events, disk-secret keys and last addresses, over either engine. */

/** commit_requested: 0 = no order, else the request's time in epoch ms (1, from before times were kept: long ago). */
const commitRequestedAt = (v: unknown): string | null => (Number(v) > 0 ? new Date(Number(v)).toISOString() : null);

async function getKeys(q: Sql, endpoint: string): Promise<EndpointKeys> {
  const r = await q.get('SELECT key, pending_key FROM endpoint_keys WHERE endpoint = ?', [endpoint]);
  return { key: (r?.key as string | null) ?? null, pendingKey: (r?.pending_key as string | null) ?? null };
}

async function toEndpoint(q: Sql, r: Row): Promise<EndpointRow> {
  const macs = (await q.all('SELECT mac FROM endpoint_macs WHERE endpoint = ? ORDER BY mac', [r.id as string])).map((m) => m.mac as string);
  return endpointFrom(r, macs, await getKeys(q, r.id as string));
}

function endpointFrom(r: Row, macs: string[], k: EndpointKeys): EndpointRow {
  return {
    id: r.id as string, name: r.name as string, macs, uuid: (r.uuid as string | null) ?? null, serial: (r.serial as string | null) ?? null,
    state: r.state as EndpointRow['state'], desktop: (r.desktop as string | null) ?? null, mode: r.mode as EndpointRow['mode'],
    bootMethod: r.boot_method as EndpointRow['bootMethod'], firmware: (r.firmware as EndpointRow['firmware']) ?? null,
    disk: r.disk as EndpointRow['disk'], diskVersion: r.disk_version === null ? null : Number(r.disk_version),
    commitRequested: commitRequestedAt(r.commit_requested), lastSeen: (r.last_seen as string | null) ?? null,
    lastSync: r.last_sync ? JSON.parse(r.last_sync as string) : null, createdAt: r.created_at as string,
    secret: k.key ? 'bound' : k.pendingKey ? 'provisioning' : 'none',
  };
}

const toEvent = (r: Row): BootEvent => ({
  seq: Number(r.seq), endpoint: (r.endpoint as string | null) ?? null, mac: r.mac as string, phase: r.phase as BootEvent['phase'],
  at: r.at as string, detail: JSON.parse(r.detail as string) as Record<string, unknown>,
});

/** The columns an update may change, with how each field is stored (compared in that form). */
const asIs = (v: unknown): SqlValue => (v ?? null) as SqlValue;
const UPDATED_COLUMNS: Partial<Record<keyof EndpointRow, [string, (v: unknown) => SqlValue]>> = {
  name: ['name', asIs], uuid: ['uuid', asIs], serial: ['serial', asIs], state: ['state', asIs], desktop: ['desktop', asIs],
  mode: ['mode', asIs], bootMethod: ['boot_method', asIs], firmware: ['firmware', asIs], disk: ['disk', asIs], diskVersion: ['disk_version', asIs],
  commitRequested: ['commit_requested', (v) => (v ? Date.parse(v as string) : 0)], lastSeen: ['last_seen', asIs],
  lastSync: ['last_sync', (v) => (v ? JSON.stringify(v) : null)],
};

export class SqlEndpointRepo implements EndpointRepo {
  constructor(private readonly db: SqlEngine) {}

  getKeys(endpoint: string): Promise<EndpointKeys> {
    return getKeys(this.db, endpoint);
  }

  async setKeys(endpoint: string, k: EndpointKeys, at: string): Promise<void> {
    await this.db.run(`INSERT INTO endpoint_keys (endpoint, key, pending_key, changed_at) VALUES (?, ?, ?, ?)
      ON CONFLICT (endpoint) DO UPDATE SET key = excluded.key, pending_key = excluded.pending_key, changed_at = excluded.changed_at`,
    [endpoint, k.key, k.pendingKey, at]);
  }

  async insertEndpoint(e: EndpointRow): Promise<void> {
    await this.db.tx(async (q) => {
      await q.run(`INSERT INTO endpoints (id, name, uuid, serial, state, desktop, mode, boot_method, firmware, disk, disk_version,
        commit_requested, last_seen, last_sync, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [e.id, e.name, e.uuid, e.serial, e.state, e.desktop, e.mode, e.bootMethod, e.firmware, e.disk, e.diskVersion,
        e.commitRequested ? Date.parse(e.commitRequested) : 0, e.lastSeen, e.lastSync ? JSON.stringify(e.lastSync) : null, e.createdAt]);
      for (const m of e.macs) await q.run('INSERT INTO endpoint_macs (mac, endpoint) VALUES (?, ?)', [m, e.id]);
    });
  }

  async updateEndpoint(e: EndpointRow, before?: EndpointRow): Promise<void> {
    const cols = Object.entries(UPDATED_COLUMNS)
      .map(([k, [col, enc]]) => [col, enc(e[k as keyof EndpointRow]), before === undefined ? undefined : enc(before[k as keyof EndpointRow])] as const)
      .filter(([, now, was]) => before === undefined || now !== was);
    if (!cols.length) return;
    await this.db.run(`UPDATE endpoints SET ${cols.map(([col]) => `${col} = ?`).join(', ')} WHERE id = ?`, [...cols.map(([, v]) => v), e.id]);
  }

  async getEndpoint(id: string): Promise<EndpointRow | undefined> {
    const r = await this.db.get('SELECT * FROM endpoints WHERE id = ?', [id]);
    return r && toEndpoint(this.db, r);
  }

  async findByMac(mac: string): Promise<EndpointRow | undefined> {
    const r = await this.db.get('SELECT endpoint FROM endpoint_macs WHERE mac = ?', [mac]);
    return r && this.getEndpoint(r.endpoint as string);
  }

  async findByName(name: string): Promise<EndpointRow | undefined> {
    const r = await this.db.get('SELECT * FROM endpoints WHERE name = ?', [name]);
    return r && toEndpoint(this.db, r);
  }

  listEndpoints(): Promise<EndpointRow[]> {
    // Three queries however many endpoints (not two per endpoint), read in one snapshot.
    return this.db.tx(async (q) => {
      const rows = await q.all('SELECT * FROM endpoints ORDER BY name');
      const macs = new Map<string, string[]>();
      for (const m of await q.all('SELECT endpoint, mac FROM endpoint_macs ORDER BY endpoint, mac')) {
        const list = macs.get(m.endpoint as string) ?? [];
        list.push(m.mac as string);
        macs.set(m.endpoint as string, list);
      }
      const keys = new Map<string, EndpointKeys>();
      for (const k of await q.all('SELECT endpoint, key, pending_key FROM endpoint_keys')) {
        keys.set(k.endpoint as string, { key: (k.key as string | null) ?? null, pendingKey: (k.pending_key as string | null) ?? null });
      }
      return rows.map((r) => endpointFrom(r, macs.get(r.id as string) ?? [], keys.get(r.id as string) ?? { key: null, pendingKey: null }));
    });
  }

  async addBootToken(t: BootTokenRow): Promise<void> {
    await this.db.run('INSERT INTO boot_tokens (hash, endpoint, mac, action, created_at, expires_at, used_at) VALUES (?, ?, ?, ?, ?, ?, ?)',
      [t.hash, t.endpoint, t.mac, t.action, t.createdAt, t.expiresAt, t.usedAt]);
  }

  useBootToken(hash: string, at: string): Promise<BootTokenRow | undefined> {
    // One-time: of two uses at once (two servers too), the database lets one see used_at still empty.
    return this.db.tx(async (q) => {
      const r = await q.get('SELECT * FROM boot_tokens WHERE hash = ?', [hash]);
      if (!r) return undefined;
      if (r.used_at === null) await q.run('UPDATE boot_tokens SET used_at = ? WHERE hash = ? AND used_at IS NULL', [at, hash]);
      return {
        hash, endpoint: r.endpoint as string, mac: r.mac as string, action: r.action as BootTokenRow['action'],
        createdAt: r.created_at as string, expiresAt: r.expires_at as string, usedAt: (r.used_at as string | null) ?? null,
      };
    });
  }

  /**
   * Events recorded at once (a DHCP storm: one per answer) share one transaction, in call order, so
   * a burst costs one commit, not one fsync per packet on the event loop that answers DHCP.
   */
  private readonly events = new GroupCommit<Omit<BootEvent, 'seq'>, BootEvent>((es) => this.db.tx(async (q) => {
    const first = Number((await q.get('SELECT COALESCE(MAX(seq), 0) + 1 AS s FROM boot_events'))!.s);
    const out: BootEvent[] = [];
    for (const e of es) {
      const seq = first + out.length;
      await q.run('INSERT INTO boot_events (seq, endpoint, mac, phase, at, detail) VALUES (?, ?, ?, ?, ?, ?)',
        [seq, e.endpoint, e.mac, e.phase, e.at, JSON.stringify(e.detail)]);
      out.push({ seq, ...e });
    }
    return out;
  }), { isolate: true });

  addEvent(e: Omit<BootEvent, 'seq'>): Promise<BootEvent> {
    return this.events.add(e);
  }

  async listEvents(filter: { endpoint: string | null; macs: string[] } | undefined, limit: number): Promise<BootEvent[]> {
    const rows = filter === undefined
      ? await this.db.all('SELECT * FROM boot_events ORDER BY seq DESC LIMIT ?', [limit])
      // Two index walks (by endpoint, by MAC: migration 6), not one `endpoint = ? OR mac IN (…)`, which
      // scanned every event of every endpoint back from the newest: every synced report reads these.
      : await this.db.all(`SELECT * FROM (SELECT * FROM (SELECT * FROM boot_events WHERE endpoint = ? ORDER BY seq DESC LIMIT ?) by_endpoint
          UNION SELECT * FROM (SELECT * FROM boot_events WHERE mac IN (${filter.macs.map(() => '?').join(', ') || 'NULL'}) ORDER BY seq DESC LIMIT ?) by_mac) e
          ORDER BY seq DESC LIMIT ?`, [filter.endpoint, limit, ...filter.macs, limit, limit]);
    return rows.reverse().map(toEvent);
  }

  async getEvent(seq: number): Promise<BootEvent | undefined> {
    const r = await this.db.get('SELECT * FROM boot_events WHERE seq = ?', [seq]);
    return r && toEvent(r);
  }

  async setAddress(endpoint: string, ip: string, at: string): Promise<void> {
    await this.db.run('INSERT INTO endpoint_addresses (endpoint, ip, at) VALUES (?, ?, ?) ON CONFLICT (endpoint) DO UPDATE SET ip = excluded.ip, at = excluded.at',
      [endpoint, ip, at]);
  }

  async getAddress(endpoint: string): Promise<{ ip: string; at: string } | undefined> {
    const r = await this.db.get('SELECT ip, at FROM endpoint_addresses WHERE endpoint = ?', [endpoint]);
    return r && { ip: r.ip as string, at: r.at as string };
  }

  async countPending(since: string): Promise<number> {
    return Number((await this.db.get("SELECT COUNT(*) AS n FROM endpoints WHERE state = 'pending' AND last_seen >= ?", [since]))!.n);
  }

  prunePending(seenBefore: string): Promise<number> {
    return this.db.tx(async (q) => {
      const ids = (await q.all("SELECT id FROM endpoints WHERE state = 'pending' AND (last_seen IS NULL OR last_seen < ?) AND created_at < ?", [seenBefore, seenBefore]))
        .map((r) => r.id as string);
      for (const id of ids) {
        await q.run('DELETE FROM endpoint_macs WHERE endpoint = ?', [id]);
        await q.run('DELETE FROM endpoint_addresses WHERE endpoint = ?', [id]);
        await q.run('DELETE FROM endpoint_keys WHERE endpoint = ?', [id]);
        await q.run('DELETE FROM endpoints WHERE id = ?', [id]);
      }
      return ids.length;
    });
  }

  pruneBootTokens(now: string): Promise<number> {
    return this.db.run('DELETE FROM boot_tokens WHERE used_at IS NOT NULL OR expires_at <= ?', [now]);
  }

  pruneEvents(before: string): Promise<number> {
    // The newest event stays: event numbers (seq, the event stream's ids) never start over.
    return this.db.run('DELETE FROM boot_events WHERE at < ? AND seq < (SELECT MAX(seq) FROM boot_events)', [before]);
  }
}
