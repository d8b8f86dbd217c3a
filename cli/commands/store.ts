import path from 'node:path';
import { dataPaths, MAX_BLOB_SIZE } from '../../server/appliance.js';
import { FsChunkStore } from '../../src/chunk/fs-store.js';
import { scrub } from '../../src/chunk/scrub.js';
import { dfError } from '../../src/errors.js';
import { MAX_CHUNK_SIZE } from '../../src/image/geometry.js';
import { openMeta } from '../../src/meta/open.js';
import { SqliteEngine } from '../../src/meta/sqlite-engine.js';
import { fmtBytes } from '../../src/progress.js';
import { parse, type Io } from '../args.js';
import { emit } from '../output.js';
import { existsSync } from 'node:fs';

export async function storeCommand(args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args;
  const { values } = parse(rest, { data: { type: 'string' } });
  if (sub !== 'verify' || values.help) {
    io.out.write('deskfuse store verify [--data DIR]   read back every chunk and check every version has its chunks\n');
    return sub === 'verify' || values.help ? 0 : 2;
  }
  const dir = path.resolve(values.data ?? io.env.DESKFUSE_DATA ?? 'data');
  const p = dataPaths(dir);
  if (!existsSync(p.meta)) throw dfError('DF_ERR_FILE_UNREADABLE', `${dir} holds no deskfuse data (no meta.sqlite)`, { dataDir: dir });
  const meta = await openMeta(new SqliteEngine(p.meta));
  try {
    const r = await scrub(meta, await FsChunkStore.open(p.chunks, MAX_CHUNK_SIZE), await FsChunkStore.open(p.blobs, MAX_BLOB_SIZE));
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
