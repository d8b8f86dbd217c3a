import { existsSync } from 'node:fs';
import { dataPaths, MAX_BLOB_SIZE } from '../../server/appliance.js';
import { openBareStores } from '../../src/chunk/open-stores.js';
import { scrub } from '../../src/chunk/scrub.js';
import { loadServerConfig } from '../../src/config/server.js';
import { dfError } from '../../src/errors.js';
import { MAX_CHUNK_SIZE } from '../../src/image/geometry.js';
import { openConfiguredMeta } from '../../src/meta/open.js';
import { fmtBytes } from '../../src/progress.js';
import { clientFrom, parseCommand, type Io } from '../args.js';
import { groupHelp } from '../help.js';
import { STORE } from '../spec.js';
import type { GcResult, StoreUsage, Tally } from '../../src/gc/gc.js';
import { emit, plural } from '../output.js';

/** `deskfuse store --help` (rendered from cli/spec.ts). */
export const STORE_USAGE = groupHelp(STORE);

export async function storeCommand(args: string[], io: Io): Promise<number> {
  const parsed = parseCommand(STORE, args, io);
  if (typeof parsed === 'number') return parsed;
  const { sub, values } = parsed;
  if (sub === 'gc' || sub === 'usage') return await gcCommand(sub, values, io);
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
      const lines = [`${r.ok ? 'OK' : 'PROBLEMS'}: ${plural(r.chunks, 'chunk')} (${fmtBytes(r.bytes)} stored), ${r.blobs} layers/indexes, ${plural(r.versions, 'version')} checked`];
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

interface GcStatusBody {
  running: { phase: string; done: number } | null;
  result: GcResult | null;
  error: { code: string; message: string } | null;
}

/** `store gc` and `store usage`: start a run on the server (usage: a dry run), show its progress, print its figures. */
async function gcCommand(sub: 'gc' | 'usage', values: { server?: string | undefined; token?: string | undefined; json: boolean; 'dry-run': boolean }, io: Io): Promise<number> {
  const client = clientFrom(values, io.env);
  const dryRun = sub === 'usage' || values['dry-run'];
  const { run } = (await client.json<{ run: string }>('POST', `/api/v1/store/gc${dryRun ? '?dryRun=true' : ''}`)).body;
  let shown = '';
  for (;;) {
    const s = (await client.json<GcStatusBody>('GET', `/api/v1/store/gc?run=${encodeURIComponent(run)}`)).body;
    if (s.error) throw dfError(s.error.code as never, s.error.message, { run });
    if (s.result) {
      if (shown && !values.json) io.err.write('\n');
      const r = s.result;
      if (sub === 'usage') emit(io, values.json, r.usage, () => usageText(r.usage));
      else emit(io, values.json, r, () => gcText(r));
      return 0;
    }
    const line = s.running ? `${s.running.phase}: ${s.running.done}` : 'starting';
    if (line !== shown && !values.json && io.err.isTTY) io.err.write(`\r${line.padEnd(40)}`);
    else if (line !== shown && !values.json) io.err.write(`${line}\n`);
    shown = line;
    await new Promise((r) => setTimeout(r, 500));
  }
}

const t = (x: Tally) => `${x.count} (${fmtBytes(x.bytes)})`;

function gcText(r: GcResult): string {
  return [
    `garbage collection ${r.run}${r.dryRun ? ' (dry run: nothing changed)' : ''} in ${r.seconds.toFixed(1)} s`,
    `  marked (referenced):   ${plural(r.marked.chunks, 'chunk')}, ${r.marked.blobs} layers/indexes, ${fmtBytes(r.marked.bytes)}`,
    `  new candidates:        ${plural(r.candidates.chunks, 'chunk')}, ${r.candidates.blobs} layers/indexes, ${fmtBytes(r.candidates.bytes)} (removed by the next run if still unreferenced)`,
    `  cancelled:             ${r.cancelled} (referenced or written again since they were marked)`,
    `  ${r.dryRun ? 'would delete:' : 'deleted:     '}          ${plural(r.deleted.chunks, 'chunk')}, ${r.deleted.blobs} layers/indexes, ${plural(r.deleted.deltas, 'delta')}, ${fmtBytes(r.deleted.bytes)} freed`,
  ].join('\n') + '\n';
}

function usageText(u: StoreUsage): string {
  const lines = [
    `chunks:               ${t(u.kinds.chunks)}`, `layers:               ${t(u.kinds.layers)}`, `chunk indexes:        ${t(u.kinds.indexes)}`,
    `deltas:               ${t(u.kinds.deltas)}`, `unreferenced chunks:  ${t(u.kinds.unreferencedChunks)}`, `unreferenced blobs:   ${t(u.kinds.unreferencedBlobs)}`,
    `reclaimable:          ${t(u.reclaimable)} (unreferenced and older than the grace period)`, '', 'by image (bytes its versions reference; shared chunks count in each):',
  ];
  for (const i of u.images) lines.push(`  ${i.image}: ${fmtBytes(i.chunks.bytes + i.blobs.bytes)} (${plural(i.chunks.count, 'chunk')}, ${i.blobs.count} layers/indexes)`);
  return lines.join('\n') + '\n';
}
