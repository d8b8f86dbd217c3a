import { dfError } from '../errors.js';
import type { PrunableStore } from '../chunk/store.js';
import { ChunkIndex } from '../image/chunk-index.js';
import type { SqlEngine, SqlValue } from '../meta/sql.js';

/**
 * Moving a single-box install (SQLite + local stores) to PostgreSQL + S3 (`deskfuse admin migrate`).
 *
 * Order: chunks, then blobs (layers, indexes), then rows — so the destination never holds a version
 * whose bytes it lacks. Every step skips what the destination already has, so an interrupted run is
 * resumed by running it again. At the end it verifies: every table has as many rows as the source,
 * and every version's index is in the destination blob store and every chunk it names reads back
 * verified against its id (a GET is checked against the id) — the same index and the same verified
 * chunks are the same bytes when the version is exported. The source must not change meanwhile
 * (stop its server first).
 */
export interface InstallSide {
  meta: SqlEngine;
  chunks: PrunableStore;
  blobs: PrunableStore;
}

export interface MigrateProgress {
  phase: 'chunks' | 'blobs' | 'rows' | 'verify';
  done: number;
  /** Copied now (not found in the destination). */
  copied?: number;
  table?: string;
}

export interface MigrateReport {
  chunks: { total: number; copied: number };
  blobs: { total: number; copied: number };
  rows: Record<string, { total: number; copied: number }>;
  verified: { versions: number; chunks: number };
}

/** Tables in an order their references allow (parents first). schema_migrations is each side's own. */
export const MIGRATED_TABLES = [
  'images', 'versions', 'refs', 'ref_log', 'tokens', 'desktops', 'leases',
  'endpoints', 'endpoint_macs', 'endpoint_keys', 'endpoint_addresses', 'boot_tokens', 'boot_events', 'vdi_sessions', 'dhcp_leases',
] as const;

const BATCH = 500;
const CONCURRENCY = 8;

export async function migrateInstall(from: InstallSide, to: InstallSide, opts: { onProgress?: (p: MigrateProgress) => void; tables?: readonly string[] } = {}): Promise<MigrateReport> {
  const progress = opts.onProgress ?? (() => {});
  const chunks = await copyStore('chunks', from.chunks, to.chunks, progress);
  const blobs = await copyStore('blobs', from.blobs, to.blobs, progress);
  const rows: MigrateReport['rows'] = {};
  for (const table of opts.tables ?? MIGRATED_TABLES) rows[table] = await copyTable(table, from.meta, to.meta, progress);
  const verified = await verify(from, to, opts.tables ?? MIGRATED_TABLES, progress);
  return { chunks, blobs, rows, verified };
}

async function copyStore(phase: 'chunks' | 'blobs', from: PrunableStore, to: PrunableStore, progress: (p: MigrateProgress) => void) {
  let total = 0;
  let copied = 0;
  const inFlight = new Set<Promise<void>>();
  const one = async (id: string) => {
    if (await to.has(id)) return;
    const c = await from.get(id); // verified against its id on the way
    if (await to.put(id, { frame: c.frame })) copied++;
  };
  for await (const id of from.list()) {
    total++;
    const p = one(id).finally(() => inFlight.delete(p));
    inFlight.add(p);
    if (inFlight.size >= CONCURRENCY) await Promise.race(inFlight);
    if (total % 1000 === 0) progress({ phase, done: total, copied });
  }
  await Promise.all(inFlight);
  progress({ phase, done: total, copied });
  return { total, copied };
}

/** Rows by primary key order, in batches, each batch one transaction of INSERT … ON CONFLICT DO NOTHING. */
async function copyTable(table: string, from: SqlEngine, to: SqlEngine, progress: (p: MigrateProgress) => void) {
  const rows = await from.all(`SELECT * FROM ${table}`);
  let copied = 0;
  for (let i = 0; i < rows.length; i += BATCH) {
    const batch = rows.slice(i, i + BATCH);
    copied += await to.tx(async (q) => {
      let n = 0;
      for (const r of batch) {
        const cols = Object.keys(r);
        n += await q.run(`INSERT INTO ${table} (${cols.join(', ')}) VALUES (${cols.map(() => '?').join(', ')}) ON CONFLICT DO NOTHING`,
          cols.map((c) => r[c] as SqlValue));
      }
      return n;
    });
    progress({ phase: 'rows', table, done: Math.min(i + BATCH, rows.length), copied });
  }
  return { total: rows.length, copied };
}

async function verify(from: InstallSide, to: InstallSide, tables: readonly string[], progress: (p: MigrateProgress) => void) {
  for (const table of tables) {
    const [a, b] = await Promise.all([count(from.meta, table), count(to.meta, table)]);
    if (a !== b) {
      throw dfError('DF_ERR_MIGRATE_VERIFY', `table ${table}: the source has ${a} rows, the destination ${b}${b > a ? ' (it held other data before: migrate into an empty database)' : ''}`, { table, source: a, destination: b });
    }
  }
  const versions = await to.meta.all('SELECT image, version, index_id FROM versions ORDER BY image, version');
  const seen = new Set<string>();
  let checked = 0;
  for (const [i, v] of versions.entries()) {
    const index = ChunkIndex.decode((await to.blobs.get(v.index_id as string)).raw);
    const ids = [...index.distinctIds()].filter((id) => !seen.has(id));
    for (let k = 0; k < ids.length; k += CONCURRENCY) {
      await Promise.all(ids.slice(k, k + CONCURRENCY).map(async (id) => {
        await to.chunks.get(id); // DF_ERR_CHUNK_NOT_FOUND / DF_ERR_CHUNK_CORRUPT if not the same bytes
        seen.add(id);
        checked++;
      }));
    }
    progress({ phase: 'verify', done: i + 1 });
  }
  return { versions: versions.length, chunks: checked };
}

async function count(db: SqlEngine, table: string): Promise<number> {
  return Number((await db.get(`SELECT COUNT(*) AS n FROM ${table}`))!.n);
}
