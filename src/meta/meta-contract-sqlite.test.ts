import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { metaContract, sqliteFixture } from './meta-contract.js';
import { MIGRATIONS } from './migrations.js';
import { openMeta } from './open.js';
import { SqliteEngine } from './sqlite-engine.js';

metaContract('SQLite', sqliteFixture('deskfuse-meta-'));

describe('SQLite databases from before migrations', () => {
  it('are brought up by migration 1 with their rows and the columns they lacked, then migration 2 (VDI ownership)', async () => {
    const d = mkdtempSync(path.join(os.tmpdir(), 'deskfuse-meta-old-'));
    try {
      const f = path.join(d, 'meta.sqlite');
      const db = new Database(f);
      db.exec('CREATE TABLE tokens (hash TEXT PRIMARY KEY, scope TEXT NOT NULL, created_at TEXT NOT NULL)');
      db.prepare('INSERT INTO tokens VALUES (?, ?, ?)').run('h0', 'admin', '2026-01-01T00:00:00.000Z');
      db.exec('CREATE TABLE vdi_sessions (id TEXT PRIMARY KEY, desktop TEXT NOT NULL, image TEXT NOT NULL, base INTEGER NOT NULL, mode TEXT NOT NULL, holder TEXT NOT NULL, fencing BIGINT, secret_hash TEXT NOT NULL, auto_commit INTEGER NOT NULL, state TEXT NOT NULL, created_at TEXT NOT NULL, created_by TEXT NOT NULL, updated_at TEXT NOT NULL, last_connect_at TEXT, last_disconnect_at TEXT, last_disconnect TEXT, outcome TEXT)');
      db.close();
      const meta = await openMeta(new SqliteEngine(f));
      try {
        expect(await meta.tokens.findToken('h0')).toEqual({ scope: 'admin', expiresAt: null });
        expect((await meta.tokens.listTokens())[0]).toMatchObject({ scope: 'admin', lastUsedAt: null });
        expect(await meta.vdi.list({})).toEqual([]);
        expect(await meta.engine.migrate(MIGRATIONS)).toEqual([]);
      } finally {
        await meta.close();
      }
      const raw = new Database(f);
      expect((raw.prepare('PRAGMA table_info(vdi_sessions)').all() as Array<{ name: string }>).map((c) => c.name)).toEqual(expect.arrayContaining(['server', 'nbd_host', 'nbd_port', 'heartbeat_at', 'checkpoint_layer', 'checkpoint_at']));
      expect((raw.prepare('PRAGMA table_info(vdi_sessions)').all() as Array<{ name: string }>).map((c) => c.name)).toContain('failure');
      expect(raw.prepare('SELECT id FROM schema_migrations ORDER BY id').all()).toEqual(MIGRATIONS.map((m) => ({ id: m.id })));
      raw.close();
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });

  it('state survives closing and reopening the file', async () => {
    const d = mkdtempSync(path.join(os.tmpdir(), 'deskfuse-meta-reopen-'));
    try {
      const f = path.join(d, 'meta.sqlite');
      let meta = await openMeta(new SqliteEngine(f));
      await meta.images.createImage({ name: 'win11', virtualSize: 1 << 20, chunkSize: 65536, hashAlg: 'blake3', createdAt: 't0' });
      await meta.images.commitVersion({ image: 'win11', parent: null, layer: 'l', index: 'i', kind: 'import', author: 'a', message: '', chunksChanged: 1, chunksTotal: 1, at: 't1' }, 'main', 'x');
      await meta.close();
      meta = await openMeta(new SqliteEngine(f));
      expect((await meta.images.getRef('win11', 'main'))?.version).toBe(1);
      expect(await meta.images.refLog('win11', 'main', 10)).toHaveLength(1);
      await meta.close();
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});
