import { promises as fsp } from 'node:fs';
import { isDeskfuseError } from '../errors.js';
import { ChunkIndex } from '../image/chunk-index.js';
import type { Meta } from '../meta/repo.js';
import type { PrunableStore } from './store.js';

/**
 * `store verify`: read back every stored chunk and blob (decompress + hash), and check that every
 * chunk each version needs is present. Stale temp files of interrupted writes are removed.
 */
export interface ScrubReport {
  ok: boolean;
  chunks: number;
  bytes: number;
  blobs: number;
  versions: number;
  corrupt: Array<{ id: string; path: string; got?: unknown; what: 'chunk' | 'blob' }>;
  missing: Array<{ id: string; image: string; versions: number[]; what: 'chunk' | 'blob' }>;
  tempFilesRemoved: number;
}

const STALE_TEMP_MS = 60 * 60 * 1000;

/** A store to scrub: any prunable store (S3 included); a local one also names files and stale temps. */
export type ScrubbedStore = PrunableStore & { pathOf?(id: string): string; temps?(): AsyncIterable<string> };

export async function scrub(meta: Pick<Meta, 'images'>, chunks: ScrubbedStore, blobs: ScrubbedStore, onProgress?: (n: number) => void): Promise<ScrubReport> {
  const r: ScrubReport = { ok: true, chunks: 0, bytes: 0, blobs: 0, versions: 0, corrupt: [], missing: [], tempFilesRemoved: 0 };
  const present = new Set<string>();

  for (const [store, what] of [[chunks, 'chunk'], [blobs, 'blob']] as const) {
    const ids: string[] = [];
    for await (const id of store.list()) ids.push(id);
    for (let k = 0; k < ids.length; k += 16) {
      await Promise.all(ids.slice(k, k + 16).map(async (id) => {
        try {
          const c = await store.get(id);
          if (what === 'chunk') {
            present.add(id);
            r.chunks++;
            r.bytes += c.frame.length;
            onProgress?.(c.raw.length);
          } else r.blobs++;
        } catch (err) {
          if (!isDeskfuseError(err, 'DF_ERR_CHUNK_CORRUPT')) throw err;
          r.corrupt.push({ id, path: store.pathOf?.(id) ?? id, got: err.fields.got, what });
        }
      }));
    }
    const now = Date.now();
    if (!store.temps) continue;
    for await (const tmp of store.temps()) {
      const st = await fsp.stat(tmp).catch(() => null);
      if (st && now - st.mtimeMs > STALE_TEMP_MS) {
        await fsp.rm(tmp, { force: true });
        r.tempFilesRemoved++;
      }
    }
  }

  const corruptChunks = new Set(r.corrupt.filter((c) => c.what === 'chunk').map((c) => c.id));
  for (const img of await meta.images.listImages()) {
    const needBy = new Map<string, number[]>();
    for (const v of await meta.images.listVersions(img.name, Number.MAX_SAFE_INTEGER)) {
      r.versions++;
      let index: ChunkIndex;
      try {
        if (!(await blobs.has(v.layer))) r.missing.push({ id: v.layer, image: img.name, versions: [v.version], what: 'blob' });
        index = ChunkIndex.decode((await blobs.get(v.index)).raw);
      } catch (err) {
        if (isDeskfuseError(err, 'DF_ERR_CHUNK_NOT_FOUND')) r.missing.push({ id: v.index, image: img.name, versions: [v.version], what: 'blob' });
        else if (!isDeskfuseError(err, 'DF_ERR_CHUNK_CORRUPT')) throw err;
        continue;
      }
      for (const id of index.distinctIds()) {
        if (present.has(id) && !corruptChunks.has(id)) continue;
        const list = needBy.get(id);
        if (list) list.push(v.version);
        else needBy.set(id, [v.version]);
      }
    }
    for (const [id, versions] of needBy) if (!corruptChunks.has(id)) r.missing.push({ id, image: img.name, versions: versions.sort((a, b) => a - b), what: 'chunk' });
  }
  r.ok = r.corrupt.length === 0 && r.missing.length === 0;
  return r;
}
