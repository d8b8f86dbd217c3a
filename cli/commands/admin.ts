import { SigningKey } from '../../server/signing.js';
import { existsSync } from 'node:fs';
import { dataPaths, MAX_BLOB_SIZE } from '../../server/appliance.js';
import { openBareStores } from '../../src/chunk/open-stores.js';
import { loadServerConfig, type ServerConfig } from '../../src/config/server.js';
import { dfError } from '../../src/errors.js';
import { MAX_CHUNK_SIZE } from '../../src/image/geometry.js';
import { maskUrl, openEngine } from '../../src/meta/engine.js';
import { openConfiguredMeta } from '../../src/meta/open.js';
import { migrateInstall, type MigrateProgress, type StoreCopy } from '../../src/transfer/migrate.js';
import { parseCommand, type Io } from '../args.js';
import { groupHelp } from '../help.js';
import { ADMIN } from '../spec.js';
import { emit, plural } from '../output.js';

/** `deskfuse admin --help` (rendered from cli/spec.ts). */
export const ADMIN_USAGE = groupHelp(ADMIN);

export async function adminCommand(args: string[], io: Io): Promise<number> {
  const parsed = parseCommand(ADMIN, args, io);
  if (typeof parsed === 'number') return parsed;
  const { values, positionals } = parsed;
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
      // The version-signing key goes with the install: every server on the database signs with it, so the
      // endpoints this server provisioned keep accepting what the site serves (server/signing.ts).
      const key = await SigningKey.open(src.dataDir);
      await key.share(toEngine);
      emit(io, values.json, { ok: true, from: src.dataDir, toMeta: maskUrl(toMeta!), toStore, ...r }, () => {
        const rows = Object.entries(r.rows).filter(([, n]) => n.total).map(([t, n]) => `${t} ${n.total}`).join(', ');
        const rowsNew = Object.values(r.rows).reduce((a, n) => a + n.copied, 0);
        const copy = (c: StoreCopy) => `${c.total} (${c.copied} copied now${c.present ? `, ${c.present} already there` : ''})`;
        return `OK: ${src.dataDir} moved to PostgreSQL + S3 and verified\n`
          + `  signing key     ${key.keyId} (every server on the database signs with it)\n`
          + `  chunks          ${copy(r.chunks)}\n`
          + `  layers/indexes  ${copy(r.blobs)}\n`
          + `  rows            ${rows || 'none'} (${rowsNew} copied now)\n`
          + `  verified        ${plural(r.verified.rows, 'row')} equal on both sides; ${plural(r.verified.versions, 'version')}: their ${plural(r.verified.chunks, 'chunk')} read back from the bucket\n`
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
        ? `verify: ${plural(e.rows, 'row')} equal on both sides; reading back the chunks of ${plural(e.of, 'version')}`
        : `verify: ${e.versions}/${plural(e.of, 'version')}, ${plural(e.chunks, 'chunk')} read back`;
  }
}
