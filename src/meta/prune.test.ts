import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { EndpointRow } from '../endpoint/model.js';
import { pruneMeta } from './prune.js';
import { SqliteEndpointRepo } from './sqlite-endpoints.js';
import { SqliteMetaRepo } from './sqlite.js';

let dir: string;
let meta: SqliteMetaRepo;
let eps: SqliteEndpointRepo;

const HOUR = 3600;
const NOW = Date.UTC(2026, 2, 2, 8, 0, 0);
/** `s` seconds before NOW (negative: after). */
const ago = (s: number) => new Date(NOW - s * 1000).toISOString();
const policy = { eventsSeconds: 24 * HOUR, tokensSeconds: 2 * HOUR, pendingSeconds: 6 * HOUR };

function endpoint(id: string, state: EndpointRow['state'], lastSeen: string): EndpointRow {
  return {
    id, name: id, macs: [`02:00:00:00:00:${id.slice(-2)}`], uuid: null, serial: null, state, desktop: null, mode: 'sync', bootMethod: 'auto',
    firmware: null, disk: 'unknown', diskVersion: null, commitRequested: null, lastSeen, lastSync: null, createdAt: lastSeen,
  };
}

beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'deskfuse-prune-'));
  meta = new SqliteMetaRepo(path.join(dir, 'meta.db'));
  eps = new SqliteEndpointRepo(meta.database);
});
afterEach(() => {
  meta.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('pruneMeta', () => {
  it('deletes used and expired boot tokens, long-expired tokens, old events and stale pending endpoints; keeps the rest', () => {
    meta.addToken('admin-forever', 'admin', ago(1000 * HOUR));
    meta.addToken('expired-long-ago', 'desktop:a', ago(10 * HOUR), ago(3 * HOUR));
    meta.addToken('expired-recently', 'desktop:a', ago(10 * HOUR), ago(1 * HOUR)); // still answers "expired"
    meta.addToken('live', 'hypervisor', ago(10 * HOUR), ago(-HOUR));
    const boot = (hash: string, expiresAt: string, usedAt: string | null) =>
      eps.addBootToken({ hash, endpoint: 'ep-01', mac: '02:00:00:00:00:01', action: 'sync', createdAt: ago(HOUR), expiresAt, usedAt });
    boot('b-used', ago(-HOUR), ago(30));
    boot('b-expired', ago(1), null);
    boot('b-fresh', ago(-600), null);
    eps.insertEndpoint(endpoint('ep-01', 'pending', ago(7 * HOUR)));
    eps.insertEndpoint(endpoint('ep-02', 'pending', ago(5 * HOUR)));
    eps.insertEndpoint(endpoint('ep-03', 'enrolled', ago(100 * HOUR)));
    eps.setAddress('ep-01', '10.0.0.1', ago(7 * HOUR));
    for (const [i, s] of [[1, 48 * HOUR], [2, 25 * HOUR], [3, 23 * HOUR], [4, 60]] as const) {
      eps.addEvent({ endpoint: 'ep-03', mac: '02:00:00:00:00:03', phase: 'script', at: ago(s), detail: { i } });
    }

    expect(pruneMeta(meta, eps, new Date(NOW), policy)).toEqual({ bootTokens: 2, tokens: 1, events: 2, pending: 1 });
    // nothing left to do: a second run deletes nothing
    expect(pruneMeta(meta, eps, new Date(NOW), policy)).toEqual({ bootTokens: 0, tokens: 0, events: 0, pending: 0 });

    expect(meta.listTokens().map((t) => t.scope).sort()).toEqual(['admin', 'desktop:a', 'hypervisor']);
    expect(meta.findToken('expired-long-ago')).toBeUndefined();
    expect(meta.findToken('expired-recently')).toBeDefined();
    expect(eps.useBootToken('b-used', ago(0))).toBeUndefined();
    expect(eps.useBootToken('b-expired', ago(0))).toBeUndefined();
    expect(eps.useBootToken('b-fresh', ago(0))?.usedAt).toBeNull();
    expect(eps.listEndpoints().map((e) => e.id)).toEqual(['ep-02', 'ep-03']);
    expect(eps.findByMac('02:00:00:00:00:01')).toBeUndefined();
    expect(eps.getAddress('ep-01')).toBeUndefined();
    expect(eps.listEvents(undefined, 10).map((e) => e.detail.i)).toEqual([3, 4]);
  });

  it('keeps the newest event even when it is old, so event numbers never start over', () => {
    eps.addEvent({ endpoint: null, mac: '02:00:00:00:00:09', phase: 'dhcp', at: ago(90 * HOUR), detail: {} });
    const last = eps.addEvent({ endpoint: null, mac: '02:00:00:00:00:09', phase: 'dhcp', at: ago(80 * HOUR), detail: {} });
    expect(pruneMeta(meta, eps, new Date(NOW), policy).events).toBe(1);
    expect(eps.addEvent({ endpoint: null, mac: '02:00:00:00:00:09', phase: 'dhcp', at: ago(0), detail: {} }).seq).toBe(last.seq + 1);
  });
});
