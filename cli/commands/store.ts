import { existsSync } from 'node:fs';
import { dataPaths, MAX_BLOB_SIZE } from '../../server/appliance.js';
import { openBareStores } from '../../src/chunk/open-stores.js';
import { scrub } from '../../src/chunk/scrub.js';
import { loadServerConfig } from '../../src/config/server.js';
import { dfError } from '../../src/errors.js';
import { MAX_CHUNK_SIZE } from '../../src/image/geometry.js';
import { openConfiguredMeta } from '../../src/meta/open.js';
import { fmtBytes } from '../../src/progress.js';
import { parse, type Io } from '../args.js';
import { emit } from '../output.js';

export const STORE_USAGE = 'deskfuse store verify [--data DIR] [--meta URL] [--store URL] [--config FILE]\n' +
  '  read back every chunk and check every version has its chunks (the same --data/--meta/--store as the server:\n' +
  '  with s3:// the bucket itself is read, not a server\'s cache)\n';

export async function storeCommand(args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args;
  const { values } = parse(rest, { data: { type: 'string' }, meta: { type: 'string' }, store: { type: 'string' }, config: { type: 'string' } });
  const asksHelp = values.help || sub === '--help' || sub === '-h' || sub === 'help';
  if (sub !== 'verify' || asksHelp) {
    io.out.write(STORE_USAGE);
    return asksHelp ? 0 : 2;
  }
  const config = loadServerConfig({
    ...(values.config ? { file: values.config } : {}), env: io.env,
    flags: { ...(values.data ? { data: values.data } : {}), ...(values.meta ? { meta: values.meta } : {}), ...(values.store ? { store: values.store } : {}) },
  });
  const p = dataPaths(config.dataDir);
  if (!config.meta && !existsSync(p.meta)) throw dfError('DF_ERR_FILE_UNREADABLE', `${config.dataDir} holds no deskfuse data (no meta.sqlite)`, { dataDir: config.dataDir });
  const meta = await openConfiguredMeta(config.meta, p.meta);
  try {
    const { chunks, blobs } = await openBareStores(config, p, { maxChunkSize: MAX_CHUNK_SIZE, maxBlobSize: MAX_BLOB_SIZE });
    const r = await scrub(meta, chunks, blobs);
    emit(io, values.json, r, () => {
      const lines = [`${r.ok ? 'OK' : 'PROBLEMS'}: ${r.chunks} chunks (${fmtBytes(r.bytes)} stored), ${r.blobs} layers/indexes, ${r.versions} versions checked`];
      for (const c of r.corrupt) lines.push(`corrupt ${c.what} ${c.id} (${c.path}) hashes to ${String(c.got ?? 'undecodable')}`);
      for (const m of r.missing) lines.push(`missing ${m.what} ${m.id} needed by ${m.image} version ${m.versions.join(',')}`);
      if (r.tempFilesRemoved) lines.push(`removed ${r.tempFilesRemoved} stale temp files of interrupted writes`);
      return lines.join('\n') + '\n';
    });
    return r.ok ? 0 : 1;
  } finally {
    await meta.close();
  }
}
