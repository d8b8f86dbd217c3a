import { existsSync } from 'node:fs';
import { dataPaths, MAX_BLOB_SIZE } from '../../server/appliance.js';
import { openBareStores } from '../../src/chunk/open-stores.js';
import { loadServerConfig } from '../../src/config/server.js';
import { dfError } from '../../src/errors.js';
import { MAX_CHUNK_SIZE } from '../../src/image/geometry.js';
import { maskUrl } from '../../src/meta/engine.js';
import { openConfiguredMeta } from '../../src/meta/open.js';
import { migrateInstall, type MigrateProgress } from '../../src/transfer/migrate.js';
import { parse, type Io } from '../args.js';
import { emit } from '../output.js';

export const ADMIN_USAGE = `deskfuse admin migrate [--data DIR] [--config FILE] --to-meta postgres://USER:PASS@HOST:PORT/DB --to-store s3://BUCKET/PREFIX?endpoint=URL&region=R
  move a single-box install (SQLite + the local store under --data) to PostgreSQL + S3. Stop the server first.
  Chunks, then layers and indexes, then the metadata rows are copied, each skipping what the destination already
  has: run it again after an interruption and it carries on. At the end every table is counted on both sides and
  every version's chunks are read back from the bucket against their ids. Deltas are not copied (servers rebuild them).
  S3 credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. Then start each server with --meta and --store.
`;

export async function adminCommand(args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args;
  const { values } = parse(rest, { data: { type: 'string' }, config: { type: 'string' }, 'to-meta': { type: 'string' }, 'to-store': { type: 'string' } });
  if (sub !== 'migrate' || values.help) {
    io.out.write(ADMIN_USAGE);
    return sub === 'migrate' || values.help ? 0 : 2;
  }
  const toMeta = values['to-meta'];
  const toStore = values['to-store'];
  if (!toMeta || !toStore) throw dfError('DF_ERR_USAGE', 'admin migrate needs --to-meta postgres://… and --to-store s3://… (deskfuse admin migrate --help)');
  const common = { ...(values.config ? { file: values.config } : {}), env: io.env };
  const data = values.data ? { data: values.data } : {};
  const src = loadServerConfig({ ...common, flags: { ...data, meta: 'sqlite', store: 'local' } });
  const dst = loadServerConfig({ ...common, flags: { ...data, meta: toMeta, store: toStore } });
  const dstMeta = dst.meta;
  if (!dstMeta || !dst.store.s3) throw dfError('DF_ERR_USAGE', '--to-meta must be a postgres:// URL and --to-store an s3:// URL');
  const p = dataPaths(src.dataDir);
  if (!existsSync(p.meta)) throw dfError('DF_ERR_FILE_UNREADABLE', `${src.dataDir} holds no deskfuse data (no meta.sqlite)`, { dataDir: src.dataDir });

  const limits = { maxChunkSize: MAX_CHUNK_SIZE, maxBlobSize: MAX_BLOB_SIZE };
  const from = await openConfiguredMeta(null, p.meta);
  try {
    const to = await openConfiguredMeta(dstMeta, p.meta);
    try {
      const fromStores = await openBareStores(src, p, limits);
      const toStores = await openBareStores(dst, p, limits);
      if (!values.json) io.err.write(`migrating ${src.dataDir} → ${maskUrl(dstMeta)} + ${toStores.where}\n`);
      let last = '';
      const onProgress = (e: MigrateProgress) => {
        const line = `${e.phase}${e.table ? ` ${e.table}` : ''}: ${e.done}${e.copied !== undefined ? ` (${e.copied} copied)` : ''}`;
        if (!values.json && line !== last) io.err.write(`${line}\n`);
        last = line;
      };
      const r = await migrateInstall({ meta: from.engine, ...fromStores }, { meta: to.engine, ...toStores }, { onProgress });
      emit(io, values.json, { ok: true, ...r }, () => {
        const rows = Object.entries(r.rows).map(([t, n]) => `${t} ${n.total}${n.copied !== n.total ? ` (${n.copied} new)` : ''}`).join(', ');
        return `OK: ${r.chunks.total} chunks (${r.chunks.copied} copied now), ${r.blobs.total} layers/indexes (${r.blobs.copied} copied now)\n` +
          `rows: ${rows}\nverified: ${r.verified.versions} versions, ${r.verified.chunks} chunks read back from the bucket\n` +
          `next: start each server with --meta ${maskUrl(dstMeta)} --store ${toStore}\n`;
      });
      return 0;
    } finally {
      await to.close();
    }
  } finally {
    await from.close();
  }
}
