import { existsSync } from 'node:fs';
import { dataPaths, MAX_BLOB_SIZE } from '../../server/appliance.js';
import { openBareStores } from '../../src/chunk/open-stores.js';
import { loadServerConfig, type ServerConfig } from '../../src/config/server.js';
import { dfError } from '../../src/errors.js';
import { MAX_CHUNK_SIZE } from '../../src/image/geometry.js';
import { maskUrl, openEngine } from '../../src/meta/engine.js';
import { openConfiguredMeta } from '../../src/meta/open.js';
import { migrateInstall, type MigrateProgress, type StoreCopy } from '../../src/transfer/migrate.js';
import { parse, type Io } from '../args.js';
import { emit } from '../output.js';

export const ADMIN_USAGE = `deskfuse admin migrate [--data DIR] [--config FILE] --to-meta postgres://USER:PASS@HOST:PORT/DB --to-store s3://BUCKET/PREFIX?endpoint=URL&region=R [--json]
  Move a single-box install (SQLite + the local store under --data) to PostgreSQL + S3. Stop its server first.
  The destination database must be empty (CREATE DATABASE …); the bucket must exist (S3 credentials:
  AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY). Chunks, then layers and indexes, then the metadata rows
  are copied, each skipping what the destination already has: after an interruption, run the same
  command again and it carries on. At the end every row is compared on both sides and every version's
  chunks are read back from the bucket against their ids. Deltas are not copied (servers rebuild them).
  Progress goes to stderr, the summary (or with --json one JSON object) to stdout.
  Then start each server with --meta and --store (and a data directory of its own for its cache).
`;

export async function adminCommand(args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === undefined || sub === '--help' || sub === '-h' || sub === 'help') {
    io.out.write(ADMIN_USAGE);
    return sub === undefined ? 2 : 0;
  }
  if (sub !== 'migrate') throw dfError('DF_ERR_USAGE', `unknown admin command ${JSON.stringify(sub)}${sub.startsWith('mig') ? ' (did you mean migrate?)' : ''}\n${ADMIN_USAGE}`);
  const { values, positionals } = parse(rest, { data: { type: 'string' }, config: { type: 'string' }, 'to-meta': { type: 'string' }, 'to-store': { type: 'string' } });
  if (values.help) {
    io.out.write(ADMIN_USAGE);
    return 0;
  }
  if (positionals.length) throw dfError('DF_ERR_USAGE', `admin migrate takes no argument ${JSON.stringify(positionals[0])} (deskfuse admin migrate --help)`);
  const toMeta = values['to-meta'];
  const toStore = values['to-store'];
  const lacking = [...(toMeta ? [] : ['--to-meta postgres://…']), ...(toStore ? [] : ['--to-store s3://…'])];
  if (lacking.length) throw dfError('DF_ERR_USAGE', `admin migrate needs ${lacking.join(' and ')} (deskfuse admin migrate --help)`);
  if (!/^postgres(ql)?:\/\//i.test(toMeta!)) throw dfError('DF_ERR_USAGE', `--to-meta: expected postgres://USER:PASS@HOST:PORT/DB, got ${JSON.stringify(maskUrl(toMeta!))}`, { option: '--to-meta' });
  if (!/^s3:\/\//i.test(toStore!)) throw dfError('DF_ERR_USAGE', `--to-store: expected s3://BUCKET/PREFIX?endpoint=URL&region=R, got ${JSON.stringify(toStore)}`, { option: '--to-store' });

  const common = { ...(values.config ? { file: values.config } : {}), env: io.env };
  const data = values.data ? { data: values.data } : {};
  const dst = loadServerConfig({ ...common, flags: { ...data, meta: toMeta!, store: toStore! } });
  // The source is the same install on its embedded engines (a config file naming S3 credentials serves the destination).
  const src: ServerConfig = { ...dst, meta: null, store: { ...dst.store, s3: null } };
  const p = dataPaths(src.dataDir);
  if (!existsSync(p.meta)) throw dfError('DF_ERR_FILE_UNREADABLE', `${src.dataDir} holds no deskfuse data (no meta.sqlite): name the install's data directory with --data`, { dataDir: src.dataDir });

  // The destination first, nothing written: the bucket is listed, the database connected to.
  const limits = { maxChunkSize: MAX_CHUNK_SIZE, maxBlobSize: MAX_BLOB_SIZE };
  const toStores = await openBareStores(dst, p, limits);
  const toEngine = await openEngine(toMeta!);
  try {
    const from = await openConfiguredMeta(null, p.meta);
    try {
      const fromStores = await openBareStores(src, p, limits);
      const t0 = Date.now();
      // With --json too: stdout holds the JSON. Each line ends with the time since the start.
      const say = (line: string) => io.err.write(`${line} [${Math.round((Date.now() - t0) / 1000)} s]\n`);
      say(`migrating ${src.dataDir} (SQLite, local store) → PostgreSQL ${maskUrl(toMeta!)}, S3 ${toStores.where}`);
      const r = await migrateInstall({ meta: from.engine, ...fromStores }, { meta: toEngine, ...toStores }, { onProgress: (e) => say(progressLine(e)) });
      emit(io, values.json, { ok: true, from: src.dataDir, toMeta: maskUrl(toMeta!), toStore, ...r }, () => {
        const rows = Object.entries(r.rows).filter(([, n]) => n.total).map(([t, n]) => `${t} ${n.total}`).join(', ');
        const rowsNew = Object.values(r.rows).reduce((a, n) => a + n.copied, 0);
        const copy = (c: StoreCopy) => `${c.total} (${c.copied} copied now${c.present ? `, ${c.present} already there` : ''})`;
        return `OK: ${src.dataDir} moved to PostgreSQL + S3 and verified\n`
          + `  chunks          ${copy(r.chunks)}\n`
          + `  layers/indexes  ${copy(r.blobs)}\n`
          + `  rows            ${rows || 'none'} (${rowsNew} copied now)\n`
          + `  verified        ${r.verified.rows} rows equal on both sides; ${r.verified.versions} versions: their ${r.verified.chunks} chunks read back from the bucket\n`
          + `next: start each server with --meta ${maskUrl(toMeta!)} --store ${toStore} and a data directory of its own;\n`
          + `  the admin token is the same (${p.adminToken}). Keep ${src.dataDir} until you trust the new install; do not start its server again.\n`;
      });
      return 0;
    } finally {
      await from.close();
    }
  } finally {
    await toEngine.close();
  }
}

/** One line a human can follow per step of the migration. */
export function progressLine(e: MigrateProgress): string {
  switch (e.phase) {
    case 'check':
      return e.destinationRows ? `destination: ${e.destinationRows} rows of an earlier run of this migration: carrying on` : 'destination: empty';
    case 'chunks':
    case 'blobs': {
      const what = e.phase === 'chunks' ? 'chunks' : 'layers/indexes';
      const todo = e.total - e.present;
      if (e.done) return `${what}: done, ${e.copied} copied${e.present ? ` (${e.present} were there already)` : ''}`;
      if (!e.copied) return `${what}: ${e.total} in the source, ${e.present} already in the destination, ${todo} to copy`;
      return `${what}: ${e.copied}/${todo} copied (${Math.floor((100 * e.copied) / todo)}%)`;
    }
    case 'rows':
      return `rows: ${e.table} ${e.total}${e.copied !== e.total ? ` (${e.copied} copied now)` : ''}`;
    case 'verify':
      return e.versions === 0
        ? `verify: ${e.rows} rows equal on both sides; reading back the chunks of ${e.of} versions`
        : `verify: ${e.versions}/${e.of} versions, ${e.chunks} chunks read back`;
  }
}
