import type Database from 'better-sqlite3';
import type { BootEvent, BootTokenRow, EndpointKeys, EndpointRepo, EndpointRow } from '../endpoint/model.js';

/** Endpoint tables, in the appliance's SQLite database (same conventions as sqlite.ts). */
export const ENDPOINT_SCHEMA = [
  `CREATE TABLE IF NOT EXISTS endpoints (
     id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, uuid TEXT, serial TEXT, state TEXT NOT NULL,
     desktop TEXT, mode TEXT NOT NULL, boot_method TEXT NOT NULL, firmware TEXT, disk TEXT NOT NULL,
     disk_version INTEGER, commit_requested INTEGER NOT NULL, last_seen TEXT, last_sync TEXT,
     created_at TEXT NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS endpoint_macs (mac TEXT PRIMARY KEY, endpoint TEXT NOT NULL REFERENCES endpoints(id))`,
  `CREATE TABLE IF NOT EXISTS boot_tokens (
     hash TEXT PRIMARY KEY, endpoint TEXT NOT NULL, mac TEXT NOT NULL, action TEXT NOT NULL,
     created_at TEXT NOT NULL, expires_at TEXT NOT NULL, used_at TEXT)`,
  `CREATE TABLE IF NOT EXISTS boot_events (
     seq BIGINT PRIMARY KEY, endpoint TEXT, mac TEXT NOT NULL, phase TEXT NOT NULL, at TEXT NOT NULL, detail TEXT NOT NULL)`,
  `CREATE INDEX IF NOT EXISTS boot_events_by_endpoint ON boot_events (endpoint, seq)`,
  // The public keys of each endpoint's disk secret (src/endpoint/proof.ts); a table of its own, so the
  // endpoint rows the API lists never carry them.
  `CREATE TABLE IF NOT EXISTS endpoint_keys (
     endpoint TEXT PRIMARY KEY REFERENCES endpoints(id), key TEXT, pending_key TEXT, changed_at TEXT NOT NULL)`,
  // Where each endpoint last booted or reported from (commit requests are accepted from there only).
  `CREATE TABLE IF NOT EXISTS endpoint_addresses (endpoint TEXT PRIMARY KEY, ip TEXT NOT NULL, at TEXT NOT NULL)`,
];

type Row = Record<string, unknown>;

/** commit_requested: 0 = no order, else the request's time in epoch ms (1, from before times were kept: long ago). */
const commitRequestedAt = (v: unknown): string | null => (Number(v) > 0 ? new Date(Number(v)).toISOString() : null);

export class SqliteEndpointRepo implements EndpointRepo {
  constructor(private readonly db: Database.Database) {
    for (const s of ENDPOINT_SCHEMA) db.exec(s);
  }

  private toEndpoint(r: Row): EndpointRow {
    const macs = (this.db.prepare('SELECT mac FROM endpoint_macs WHERE endpoint = ? ORDER BY mac').all(r.id) as Row[]).map((m) => m.mac as string);
    const k = this.getKeys(r.id as string);
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

  getKeys(endpoint: string): EndpointKeys {
    const r = this.db.prepare('SELECT key, pending_key FROM endpoint_keys WHERE endpoint = ?').get(endpoint) as Row | undefined;
    return { key: (r?.key as string | null) ?? null, pendingKey: (r?.pending_key as string | null) ?? null };
  }

  setKeys(endpoint: string, k: EndpointKeys, at: string): void {
    this.db.prepare(`INSERT INTO endpoint_keys (endpoint, key, pending_key, changed_at) VALUES (?, ?, ?, ?)
      ON CONFLICT (endpoint) DO UPDATE SET key = excluded.key, pending_key = excluded.pending_key, changed_at = excluded.changed_at`)
      .run(endpoint, k.key, k.pendingKey, at);
  }

  insertEndpoint(e: EndpointRow): void {
    this.db.transaction(() => {
      this.db.prepare(`INSERT INTO endpoints (id, name, uuid, serial, state, desktop, mode, boot_method, firmware, disk, disk_version,
        commit_requested, last_seen, last_sync, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
        .run(e.id, e.name, e.uuid, e.serial, e.state, e.desktop, e.mode, e.bootMethod, e.firmware, e.disk, e.diskVersion,
          e.commitRequested ? Date.parse(e.commitRequested) : 0, e.lastSeen, e.lastSync ? JSON.stringify(e.lastSync) : null, e.createdAt);
      for (const m of e.macs) this.db.prepare('INSERT INTO endpoint_macs (mac, endpoint) VALUES (?, ?)').run(m, e.id);
    })();
  }

  updateEndpoint(e: EndpointRow): void {
    this.db.prepare(`UPDATE endpoints SET name = ?, uuid = ?, serial = ?, state = ?, desktop = ?, mode = ?, boot_method = ?, firmware = ?,
      disk = ?, disk_version = ?, commit_requested = ?, last_seen = ?, last_sync = ? WHERE id = ?`)
      .run(e.name, e.uuid, e.serial, e.state, e.desktop, e.mode, e.bootMethod, e.firmware, e.disk, e.diskVersion,
        e.commitRequested ? Date.parse(e.commitRequested) : 0, e.lastSeen, e.lastSync ? JSON.stringify(e.lastSync) : null, e.id);
  }

  getEndpoint(id: string): EndpointRow | undefined {
    const r = this.db.prepare('SELECT * FROM endpoints WHERE id = ?').get(id) as Row | undefined;
    return r && this.toEndpoint(r);
  }

  findByMac(mac: string): EndpointRow | undefined {
    const r = this.db.prepare('SELECT endpoint FROM endpoint_macs WHERE mac = ?').get(mac) as Row | undefined;
    return r && this.getEndpoint(r.endpoint as string);
  }

  findByName(name: string): EndpointRow | undefined {
    const r = this.db.prepare('SELECT * FROM endpoints WHERE name = ?').get(name) as Row | undefined;
    return r && this.toEndpoint(r);
  }

  listEndpoints(): EndpointRow[] {
    return (this.db.prepare('SELECT * FROM endpoints ORDER BY name').all() as Row[]).map((r) => this.toEndpoint(r));
  }

  addBootToken(t: BootTokenRow): void {
    this.db.prepare('INSERT INTO boot_tokens (hash, endpoint, mac, action, created_at, expires_at, used_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
      .run(t.hash, t.endpoint, t.mac, t.action, t.createdAt, t.expiresAt, t.usedAt);
  }

  useBootToken(hash: string, at: string): BootTokenRow | undefined {
    return this.db.transaction(() => {
      const r = this.db.prepare('SELECT * FROM boot_tokens WHERE hash = ?').get(hash) as Row | undefined;
      if (!r) return undefined;
      if (r.used_at === null) this.db.prepare('UPDATE boot_tokens SET used_at = ? WHERE hash = ?').run(at, hash);
      return {
        hash, endpoint: r.endpoint as string, mac: r.mac as string, action: r.action as BootTokenRow['action'],
        createdAt: r.created_at as string, expiresAt: r.expires_at as string, usedAt: (r.used_at as string | null) ?? null,
      };
    })();
  }

  addEvent(e: Omit<BootEvent, 'seq'>): BootEvent {
    return this.db.transaction(() => {
      const seq = Number((this.db.prepare('SELECT COALESCE(MAX(seq), 0) + 1 AS s FROM boot_events').get() as Row).s);
      this.db.prepare('INSERT INTO boot_events (seq, endpoint, mac, phase, at, detail) VALUES (?, ?, ?, ?, ?, ?)')
        .run(seq, e.endpoint, e.mac, e.phase, e.at, JSON.stringify(e.detail));
      return { seq, ...e };
    })();
  }

  listEvents(filter: { endpoint: string | null; macs: string[] } | undefined, limit: number): BootEvent[] {
    const rows = (filter === undefined
      ? this.db.prepare('SELECT * FROM boot_events ORDER BY seq DESC LIMIT ?').all(limit)
      : this.db.prepare(`SELECT * FROM boot_events WHERE endpoint = ? OR mac IN (${filter.macs.map(() => '?').join(', ') || 'NULL'}) ORDER BY seq DESC LIMIT ?`)
        .all(filter.endpoint, ...filter.macs, limit)) as Row[];
    return rows.reverse().map((r) => ({
      seq: Number(r.seq), endpoint: (r.endpoint as string | null) ?? null, mac: r.mac as string, phase: r.phase as BootEvent['phase'],
      at: r.at as string, detail: JSON.parse(r.detail as string) as Record<string, unknown>,
    }));
  }

  setAddress(endpoint: string, ip: string, at: string): void {
    this.db.prepare('INSERT INTO endpoint_addresses (endpoint, ip, at) VALUES (?, ?, ?) ON CONFLICT (endpoint) DO UPDATE SET ip = excluded.ip, at = excluded.at')
      .run(endpoint, ip, at);
  }

  getAddress(endpoint: string): { ip: string; at: string } | undefined {
    const r = this.db.prepare('SELECT ip, at FROM endpoint_addresses WHERE endpoint = ?').get(endpoint) as Row | undefined;
    return r && { ip: r.ip as string, at: r.at as string };
  }

  countPending(since: string): number {
    return Number((this.db.prepare("SELECT COUNT(*) AS n FROM endpoints WHERE state = 'pending' AND last_seen >= ?").get(since) as Row).n);
  }

  prunePending(seenBefore: string): number {
    return this.db.transaction(() => {
      const ids = (this.db.prepare("SELECT id FROM endpoints WHERE state = 'pending' AND (last_seen IS NULL OR last_seen < ?) AND created_at < ?").all(seenBefore, seenBefore) as Row[]).map((r) => r.id as string);
      for (const id of ids) {
        this.db.prepare('DELETE FROM endpoint_macs WHERE endpoint = ?').run(id);
        this.db.prepare('DELETE FROM endpoint_addresses WHERE endpoint = ?').run(id);
        this.db.prepare('DELETE FROM endpoints WHERE id = ?').run(id);
      }
      return ids.length;
    }).immediate();
  }

  pruneBootTokens(now: string): number {
    return this.db.prepare('DELETE FROM boot_tokens WHERE used_at IS NOT NULL OR expires_at <= ?').run(now).changes;
  }

  pruneEvents(before: string): number {
    // The newest event stays: event numbers (seq, the event stream's ids) never start over.
    return this.db.prepare('DELETE FROM boot_events WHERE at < ? AND seq < (SELECT MAX(seq) FROM boot_events)').run(before).changes;
  }
}
