import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FsChunkStore } from '../chunk/fs-store.js';
import { openMeta } from '../meta/open.js';
import type { SqlEngine } from '../meta/sql.js';
import { SqliteEngine } from '../meta/sqlite-engine.js';
import { migrateInstall, type InstallSide, type MigrateProgress } from './migrate.js';

// The row copy and its checks, SQLite to SQLite (the CLI's run on PostgreSQL + RGW is
// test/integration/migrate.test.ts): an interruption in the rows step, a destination holding another
// install's rows, a source that changes meanwhile.
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function side(dir: string): Promise<InstallSide & { close(): Promise<void> }> {
  mkdirSync(dir);
  const meta = await openMeta(new SqliteEngine(path.join(dir, 'meta.sqlite')));
  return { meta: meta.engine, chunks: await FsChunkStore.open(path.join(dir, 'chunks'), 1 << 20), blobs: await FsChunkStore.open(path.join(dir, 'blobs'), 1 << 20), close: () => meta.close() };
}

async function install(): Promise<{ from: Awaited<ReturnType<typeof side>>; to: Awaited<ReturnType<typeof side>> }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'df-migrate-unit-'));
  dirs.push(dir);
  const from = await side(path.join(dir, 'from'));
  const to = await side(path.join(dir, 'to'));
  const db = from.meta;
  for (let i = 0; i < 450; i++) {
    await db.run('INSERT INTO tokens (hash, scope, created_at, expires_at) VALUES (?, ?, ?, ?)', [`h${String(i).padStart(4, '0')}`, i % 2 ? 'admin' : `desktop:d${i}`, '2026-01-01T00:00:00.000Z', null]);
  }
  await db.run("INSERT INTO endpoints (id, name, state, mode, boot_method, disk, commit_requested, created_at) VALUES ('e1', 'pc-1', 'enrolled', 'sync', 'auto', '{}', ?, '2026-01-01T00:00:00.000Z')", [1_780_000_000_123]);
  await db.run("INSERT INTO boot_events (seq, endpoint, mac, phase, at, detail) VALUES (?, 'e1', 'aa:bb:cc:dd:ee:ff', 'synced', '2026-01-01T00:00:00.000Z', ?)", [2 ** 40, JSON.stringify({ note: 'ünï "q" \\ \n', n: 2 ** 53 - 1 })]);
  return { from, to };
}

async function rejection(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
  } catch (err) {
    return err as { code: string; message: string };
  }
  throw new Error('expected a rejection');
}

const text = async (db: SqlEngine, table: string) => (await db.all(`SELECT * FROM ${table}`)).map((r) => JSON.stringify(r)).sort();

describe('migrateInstall (rows)', () => {
  it('copies every row exactly; interrupted in the rows step, a rerun copies only the rest', async () => {
    const { from, to } = await install();
    try {
      // Interrupted once the tokens are copied (by name: the table list grows with the schema).
      const stop = (p: MigrateProgress) => {
        if (p.phase === 'rows' && p.table === 'tokens') throw new Error('interrupted');
      };
      await expect(migrateInstall(from, to, { onProgress: stop })).rejects.toThrow('interrupted');
      expect(await text(to.meta, 'tokens')).toEqual(await text(from.meta, 'tokens'));
      expect(await text(to.meta, 'endpoints')).toEqual([]);

      const events: MigrateProgress[] = [];
      const r = await migrateInstall(from, to, { onProgress: (p) => events.push(p) });
      expect(events[0]).toEqual({ phase: 'check', destinationRows: 450 });
      expect(r.rows.tokens).toEqual({ total: 450, copied: 0 });
      expect(r.rows.endpoints).toEqual({ total: 1, copied: 1 });
      expect(r.rows.boot_events).toEqual({ total: 1, copied: 1 });
      expect(r.verified.rows).toBe(452);
      for (const t of ['tokens', 'endpoints', 'boot_events']) expect(await text(to.meta, t)).toEqual(await text(from.meta, t));
      expect((await to.meta.get('SELECT seq, detail FROM boot_events'))).toEqual(await from.meta.get('SELECT seq, detail FROM boot_events'));
    } finally {
      await from.close();
      await to.close();
    }
  });

  it("refuses a destination holding another install's rows before writing anything", async () => {
    const { from, to } = await install();
    try {
      await to.meta.run("INSERT INTO tokens (hash, scope, created_at) VALUES ('other', 'admin', '2025-01-01T00:00:00.000Z')");
      const err = await rejection(migrateInstall(from, to));
      expect(err).toMatchObject({ code: 'DF_ERR_MIGRATE_NOT_EMPTY' });
      expect(err.message).toContain('tokens ["other"]');
      expect(await text(to.meta, 'tokens')).toHaveLength(1);
      // A row of the source with other values is another install's too.
      await to.meta.run('DELETE FROM tokens');
      await to.meta.run("INSERT INTO tokens (hash, scope, created_at) VALUES ('h0000', 'admin', '2025-01-01T00:00:00.000Z')");
      await expect(migrateInstall(from, to)).rejects.toMatchObject({ code: 'DF_ERR_MIGRATE_NOT_EMPTY', fields: { rows: 1 } });
    } finally {
      await from.close();
      await to.close();
    }
  });

  it('finds a source that changed during the migration (its server was not stopped)', async () => {
    const { from, to } = await install();
    try {
      const meddle = async (p: MigrateProgress) => {
        if (p.phase === 'rows' && p.table === 'dhcp_leases') await from.meta.run("UPDATE tokens SET last_used_at = '2026-02-02T00:00:00.000Z' WHERE hash = 'h0001'");
      };
      const pending: Array<Promise<void>> = [];
      const err = await rejection(migrateInstall(from, to, { onProgress: (p) => void pending.push(meddle(p)) }));
      await Promise.all(pending);
      expect(err).toMatchObject({ code: 'DF_ERR_MIGRATE_VERIFY' });
      expect(err.message).toContain('table tokens of the source changed during the migration');
    } finally {
      await from.close();
      await to.close();
    }
  });
});
