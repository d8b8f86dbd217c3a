import { createHash } from 'node:crypto';
import { inLanes } from './lanes.js';
import { dfError, isDeskfuseError } from '../errors.js';
import type { PrunableStore } from '../chunk/store.js';
import { ChunkIndex } from '../image/chunk-index.js';
import { MIGRATIONS } from '../meta/migrations.js';
import type { Row, SqlEngine, SqlValue } from '../meta/sql.js';

/**
 * Moving a single-box install (SQLite + local stores) to PostgreSQL + S3 (`deskfuse admin migrate`).
 *
 *   1. check    the destination database holds nothing but rows equal to the source's (empty, or
 *               an interrupted earlier run of this very move): anything else is refused before a
 *               byte is written (DF_ERR_MIGRATE_NOT_EMPTY); then its schema is brought up to date
 *   2. chunks   listed on both sides; those the destination lacks are read (verified against their
 *   3. blobs    ids) and written; layers and indexes likewise
 *   4. rows     table by table, parents first, in primary-key order, in multi-row INSERTs; rows the
 *               destination has are skipped (ON CONFLICT DO NOTHING backs that up)
 *   5. verify   every table holds on both sides the same rows (same keys, same values column by
 *               column), every version's layer and index are in the destination's blob store and
 *               every chunk its index names reads back from it verified against its id: the same
 *               index and the same chunks are the same bytes when the version is exported
 *
 * Chunks before blobs before rows: the destination never holds a version whose bytes it lacks. Each
 * step skips what the destination has, so an interrupted run is resumed by running it again, and
 * reports what it copied now. The source must not change meanwhile (stop its server first): the
 * row comparison at the end would find it (DF_ERR_MIGRATE_VERIFY). Deltas are not copied: servers
 * rebuild them on demand.
 *
 * Values: a row is read with the source engine's types and written as they are; both engines store
 * the same SQL types (src/meta/migrations.ts), and the comparison reads each value as text (a
 * PostgreSQL BIGINT comes back as a string, SQLite's as a number: 42 and "42" are the same value).
 * Version numbers and the ref log's and boot events' seq are computed as MAX + 1 by the
 * repositories, so copying the rows carries the numbering on; there are no sequences to set.
 */
export interface InstallSide {
  meta: SqlEngine;
  chunks: PrunableStore;
  blobs: PrunableStore;
}

export type MigrateProgress =
  /** The destination's rows before anything is written: 0 (empty) or those of an earlier run. */
  | { phase: 'check'; destinationRows: number }
  /** A store: listed (`copied` 0, `done` false), every 5 % of what is to copy (at least 50 objects), and at the end (`done`). */
  | { phase: 'chunks' | 'blobs'; total: number; present: number; copied: number; done: boolean }
  /** A table, once copied. */
  | { phase: 'rows'; table: string; total: number; copied: number }
  /** The rows compared (`versions` 0), then every 5 % of the versions whose chunks were read back. */
  | { phase: 'verify'; rows: number; versions: number; of: number; chunks: number };

export interface StoreCopy {
  /** Objects in the source. */
  total: number;
  /** Written now. */
  copied: number;
  /** Already in the destination before this run (copied by an earlier, interrupted run). */
  present: number;
}

export interface MigrateReport {
  chunks: StoreCopy;
  blobs: StoreCopy;
  rows: Record<string, { total: number; copied: number }>;
  verified: { rows: number; versions: number; chunks: number };
}

/** Tables in an order their references allow (parents first). schema_migrations is each side's own. */
export const MIGRATED_TABLES = [
  'images', 'versions', 'version_manifests', 'refs', 'ref_log', 'tokens', 'desktops', 'leases',
  'endpoints', 'endpoint_macs', 'endpoint_keys', 'endpoint_addresses', 'boot_tokens', 'boot_events', 'vdi_sessions', 'dhcp_leases', 'image_policies',
] as const;

const NOT_COPIED = new Set(['schema_migrations', 'signing_key']);

const BATCH = 200;
const CONCURRENCY = 16;
/** Progress at most every 5 % of a store's copy, and not more often than every STEP_MIN objects. */
const STEP_MIN = 50;
/** Rows compared per query. */
const PAGE = 2000;

export async function migrateInstall(from: InstallSide, to: InstallSide, opts: { onProgress?: (p: MigrateProgress) => void } = {}): Promise<MigrateReport> {
  const progress = opts.onProgress ?? (() => {});
  const tables = await tablesOf(from.meta);
  const source = new Map<string, TableRows>();
  for (const t of tables) source.set(t, await readTable(from.meta, t, await shapeOf(from.meta, t)));

  // 1. Nothing in the destination but rows of this install, before anything is written there.
  let destinationRows = 0;
  const foreign: string[] = [];
  let foreignRows = 0;
  for (const t of tables) {
    const shape = await shapeOf(to.meta, t);
    if (!shape.columns.length) continue; // no such table yet: a fresh database
    const dst = await readTable(to.meta, t, shape, source.get(t)!.shape);
    destinationRows += dst.rows.size;
    for (const [key, digest] of dst.rows) {
      if (source.get(t)!.rows.get(key) === digest) continue;
      foreignRows++;
      if (foreign.length < 3) foreign.push(`${t} ${key}`);
    }
  }
  if (foreignRows) {
    throw dfError('DF_ERR_MIGRATE_NOT_EMPTY', `the destination database holds ${foreignRows} row(s) that are not this install's (${foreign.join('; ')}${foreignRows > foreign.length ? '; …' : ''}): `
      + 'it belongs to another install, or a server has run on it. Nothing was copied: migrate into an empty database', { rows: foreignRows, examples: foreign });
  }
  progress({ phase: 'check', destinationRows });
  await to.meta.migrate(MIGRATIONS);

  // 2, 3. Chunks, then layers and indexes.
  const chunks = await copyStore('chunks', from.chunks, to.chunks, progress);
  const blobs = await copyStore('blobs', from.blobs, to.blobs, progress);

  // 4. Rows, parents first.
  const rows: MigrateReport['rows'] = {};
  for (const t of tables) {
    const shape = await shapeOf(to.meta, t);
    const have = await readTable(to.meta, t, shape, source.get(t)!.shape);
    rows[t] = await copyTable(t, from.meta, to.meta, source.get(t)!, shape, have);
    progress({ phase: 'rows', table: t, ...rows[t] });
  }

  // 5. Verify.
  const verified = await verify(from, to, tables, source, progress);
  return { chunks, blobs, rows, verified };
}

/** The known tables in order, then any other the source has (a table a later release added) after them. */
async function tablesOf(db: SqlEngine): Promise<string[]> {
  const names = db.dialect === 'sqlite'
    ? (await db.all("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")).map((r) => String(r.name))
    : (await db.all("SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'")).map((r) => String(r.name));
  const known = new Set<string>(MIGRATED_TABLES);
  // schema_migrations is each side's own; signing_key is written by `admin migrate` from the install's key files.
  return [...MIGRATED_TABLES.filter((t) => names.includes(t)), ...names.filter((t) => !known.has(t) && !NOT_COPIED.has(t)).sort()];
}

interface Shape {
  /** In the table's own order; empty when the table does not exist. */
  columns: string[];
  /** The primary key's columns, in order. */
  key: string[];
}

async function shapeOf(db: SqlEngine, table: string): Promise<Shape> {
  if (db.dialect === 'sqlite') {
    const info = await db.all(`PRAGMA table_info(${ident(table)})`);
    return {
      columns: info.map((c) => String(c.name)),
      key: info.filter((c) => Number(c.pk) > 0).sort((a, b) => Number(a.pk) - Number(b.pk)).map((c) => String(c.name)),
    };
  }
  const columns = (await db.all('SELECT column_name AS name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position', [table]))
    .map((c) => String(c.name));
  const key = (await db.all(`SELECT k.column_name AS name FROM information_schema.table_constraints c
      JOIN information_schema.key_column_usage k ON k.constraint_schema = c.constraint_schema AND k.constraint_name = c.constraint_name AND k.table_name = c.table_name
      WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = current_schema() AND c.table_name = ? ORDER BY k.ordinal_position`, [table]))
    .map((c) => String(c.name));
  return { columns, key };
}

const ident = (name: string): string => {
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw dfError('DF_ERR_META', `unexpected table or column name ${JSON.stringify(name)}`, { name });
  return name;
};

interface TableRows {
  shape: Shape;
  /** Primary key (as JSON text) → digest of the row's values read as text, in the source's column order. */
  rows: Map<string, string>;
}

/** A value as text for comparing across engines: 42 (SQLite) and "42" (a PostgreSQL BIGINT) are one value. */
const asText = (v: unknown): string | null => (v === null || v === undefined ? null : typeof v === 'object' ? JSON.stringify(v) : String(v));

/**
 * Every row's key and digest, in pages. `like` names the columns to read (the source's: a column only
 * one side has is caught by copyTable); a column `like` has that this table lacks reads as NULL.
 */
async function readTable(db: SqlEngine, table: string, shape: Shape, like: Shape = shape): Promise<TableRows> {
  const rows = new Map<string, string>();
  if (!shape.columns.length) return { shape, rows };
  if (!shape.key.length) throw dfError('DF_ERR_META', `table ${table} has no primary key: it cannot be migrated row by row`, { table });
  const cols = like.columns.filter((c) => shape.columns.includes(c));
  const order = shape.key.map(ident).join(', ');
  for (let offset = 0; ; offset += PAGE) {
    const page = await db.all(`SELECT ${cols.map(ident).join(', ')} FROM ${ident(table)} ORDER BY ${order} LIMIT ? OFFSET ?`, [PAGE, offset]);
    for (const r of page) rows.set(keyOf(r, shape.key), digestOf(r, like.columns));
    if (page.length < PAGE) break;
  }
  return { shape, rows };
}

const keyOf = (r: Row, key: string[]): string => JSON.stringify(key.map((k) => asText(r[k])));
const digestOf = (r: Row, columns: string[]): string =>
  createHash('sha256').update(JSON.stringify(columns.map((c) => asText(r[c])))).digest('base64url').slice(0, 22);

async function copyStore(phase: 'chunks' | 'blobs', from: PrunableStore, to: PrunableStore, progress: (p: MigrateProgress) => void): Promise<StoreCopy> {
  const there = new Set<string>();
  for await (const id of to.list()) there.add(id);
  const todo: string[] = [];
  let total = 0;
  for await (const id of from.list()) {
    total++;
    if (!there.has(id)) todo.push(id);
  }
  there.clear();
  const present = total - todo.length;
  let copied = 0;
  progress({ phase, total, present, copied, done: false });
  const step = Math.max(STEP_MIN, Math.ceil(todo.length / 20));
  await inLanes(todo, CONCURRENCY, async (id) => {
    const c = await from.get(id); // verified against its id on the way
    if (await to.put(id, { frame: c.frame })) copied++;
    if (copied % step === 0 && copied < todo.length) progress({ phase, total, present, copied, done: false });
  });
  progress({ phase, total, present, copied, done: true });
  return { total, copied, present };
}

/** A value for the destination as the source engine gave it; anything else is named, not guessed at. */
function sqlValue(v: unknown, table: string, column: string): SqlValue {
  if (v === null || v === undefined) return null;
  if (typeof v === 'string' || typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number.isSafeInteger(Number(v)) ? Number(v) : v.toString();
  if (typeof v === 'boolean') return v ? 1 : 0;
  throw dfError('DF_ERR_META', `table ${table} column ${column} holds a value of type ${typeof v} this migration does not copy`, { table, column });
}

/** The source's rows the destination lacks, in key order, in multi-row INSERTs. */
async function copyTable(table: string, from: SqlEngine, to: SqlEngine, src: TableRows, dst: Shape, have: TableRows): Promise<{ total: number; copied: number }> {
  const missing = src.shape.columns.filter((c) => !dst.columns.includes(c));
  if (missing.length) {
    throw dfError('DF_ERR_MIGRATE_VERIFY', `table ${table} in the destination lacks the column(s) ${missing.join(', ')} the source has: run the same deskfuse release on both sides`, { table, columns: missing });
  }
  const cols = src.shape.columns;
  const order = src.shape.key.map(ident).join(', ');
  const list = cols.map(ident).join(', ');
  const one = `(${cols.map(() => '?').join(', ')})`;
  let copied = 0;
  for (let offset = 0; offset < src.rows.size; offset += BATCH) {
    const page = await from.all(`SELECT ${list} FROM ${ident(table)} ORDER BY ${order} LIMIT ? OFFSET ?`, [BATCH, offset]);
    const rows = page.filter((r) => !have.rows.has(keyOf(r, src.shape.key)));
    if (!rows.length) continue;
    const insert = (batch: Row[]) => to.run(`INSERT INTO ${ident(table)} (${list}) VALUES ${batch.map(() => one).join(', ')} ON CONFLICT DO NOTHING`,
      batch.flatMap((r) => cols.map((c) => sqlValue(r[c], table, c))));
    try {
      copied += await insert(rows);
    } catch (err) {
      if (!isDeskfuseError(err, 'DF_ERR_META') || rows.length === 1) throw named(err, table, rows[0]!, src.shape.key);
      // Which row? One by one, so the error names it (the rows before it stay: a rerun carries on).
      for (const r of rows) {
        try {
          copied += await insert([r]);
        } catch (e) {
          throw named(e, table, r, src.shape.key);
        }
      }
    }
  }
  return { total: src.rows.size, copied };
}

function named(err: unknown, table: string, row: Row, key: string[]): unknown {
  if (!isDeskfuseError(err, 'DF_ERR_META')) return err;
  return dfError('DF_ERR_META', `copying table ${table}, row ${keyOf(row, key)}: ${err.message}`, { ...err.fields, table, key: keyOf(row, key) }, err);
}

async function verify(from: InstallSide, to: InstallSide, tables: readonly string[], source: Map<string, TableRows>, progress: (p: MigrateProgress) => void) {
  // Every row, both sides: the same keys with the same values.
  let rows = 0;
  for (const t of tables) {
    const src = source.get(t)!;
    // Read the source again: a server still running on it would show here.
    const again = await readTable(from.meta, t, await shapeOf(from.meta, t), src.shape);
    const dst = await readTable(to.meta, t, await shapeOf(to.meta, t), src.shape);
    const differ = (a: TableRows, b: TableRows) => [...a.rows].filter(([k, d]) => b.rows.get(k) !== d).map(([k]) => k)
      .concat([...b.rows.keys()].filter((k) => !a.rows.has(k)));
    const changed = differ(src, again);
    if (changed.length) {
      throw dfError('DF_ERR_MIGRATE_VERIFY', `table ${t} of the source changed during the migration (e.g. row ${changed[0]}): stop its server and run the migration again`, { table: t, rows: changed.length });
    }
    const bad = differ(src, dst);
    if (bad.length) {
      throw dfError('DF_ERR_MIGRATE_VERIFY', `table ${t}: ${bad.length} row(s) differ between the source (${src.rows.size} rows) and the destination (${dst.rows.size} rows), e.g. ${bad[0]}`, { table: t, rows: bad.length, source: src.rows.size, destination: dst.rows.size });
    }
    rows += src.rows.size;
  }
  const versions = await to.meta.all('SELECT image, version, layer_id, index_id FROM versions ORDER BY image, version');
  progress({ phase: 'verify', rows, versions: 0, of: versions.length, chunks: 0 });
  const seen = new Set<string>();
  const step = Math.max(1, Math.ceil(versions.length / 20));
  for (const [i, v] of versions.entries()) {
    const what = `version ${String(v.version)} of image ${String(v.image)}`;
    if (!(await to.blobs.has(String(v.layer_id)))) throw dfError('DF_ERR_MIGRATE_VERIFY', `${what}: its layer ${String(v.layer_id)} is not in the destination`, { image: v.image, version: Number(v.version), layer: v.layer_id });
    let index: ChunkIndex;
    try {
      index = ChunkIndex.decode((await to.blobs.get(String(v.index_id))).raw);
    } catch (err) {
      throw dfError('DF_ERR_MIGRATE_VERIFY', `${what}: its index ${String(v.index_id)} does not read back from the destination: ${(err as Error).message}`, { image: v.image, version: Number(v.version), index: v.index_id }, err);
    }
    const ids = [...index.distinctIds()].filter((id) => !seen.has(id));
    for (const id of ids) seen.add(id);
    await inLanes(ids, CONCURRENCY, async (id) => {
      try {
        await to.chunks.get(id); // verified against its id
      } catch (err) {
        throw dfError('DF_ERR_MIGRATE_VERIFY', `${what}: chunk ${id} does not read back from the destination: ${(err as Error).message}`, { image: v.image, version: Number(v.version), chunk: id }, err);
      }
    });
    if ((i + 1) % step === 0 || i + 1 === versions.length) progress({ phase: 'verify', rows, versions: i + 1, of: versions.length, chunks: seen.size });
  }
  return { rows, versions: versions.length, chunks: seen.size };
}
