import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { isDeskfuseError } from '../errors.js';
import type { FsChunkStore } from './fs-store.js';

export interface ScrubPass {
  chunks: number;
  /** Stored (compressed) bytes read. */
  bytes: number;
  /** Ids found corrupt and moved to the quarantine folder. */
  quarantined: string[];
  /** The pass was stopped (the server closing) before the end. */
  stopped: boolean;
}

export interface ScrubPassOptions {
  /** Read rate, stored bytes per second: serving keeps the disk and the chunk workers. */
  bytesPerSecond: number;
  /** Where corrupt chunk files go (same filesystem: a rename). */
  quarantine: string;
  signal?: AbortSignal;
  onCorrupt?: (id: string, movedTo: string) => void;
  /** While this says so (endpoints are being served heavy transfers), the pass waits: a storm comes first. */
  busy?: () => boolean;
}

/**
 * One background pass over the local chunk store: every chunk read back, decompressed and hashed (in
 * the chunk workers, as `store verify` does), at a bounded rate. Batch fetches serve frames as stored
 * (FsChunkStore.readPack), so this is what finds a chunk the disk damaged before an endpoint trips
 * over it: the file is moved to the quarantine folder, so the chunk reads as missing (a batch fetch
 * answers DF_ERR_CHUNK_NOT_FOUND, never the bad bytes again; the next publish or commit that has the
 * chunk uploads it anew, as `missing` now names it).
 */
export async function scrubLocalStore(store: Pick<FsChunkStore, 'list' | 'get' | 'pathOf' | 'forget'>, opts: ScrubPassOptions): Promise<ScrubPass> {
  const pass: ScrubPass = { chunks: 0, bytes: 0, quarantined: [], stopped: false };
  let start = performance.now();
  for await (const id of store.list()) {
    if (opts.signal?.aborted) {
      pass.stopped = true;
      break;
    }
    const waitFrom = performance.now();
    while (opts.busy?.() && !opts.signal?.aborted) await sleep(1000, undefined, opts.signal ? { signal: opts.signal } : {}).catch(() => {});
    start += performance.now() - waitFrom; // time waited is not time to catch up on
    if (opts.signal?.aborted) {
      pass.stopped = true;
      break;
    }
    try {
      const c = await store.get(id);
      pass.chunks++;
      pass.bytes += c.frame.length;
    } catch (err) {
      if (isDeskfuseError(err, 'DF_ERR_CHUNK_NOT_FOUND')) continue; // removed since the listing
      if (!isDeskfuseError(err, 'DF_ERR_CHUNK_CORRUPT')) throw err;
      await fsp.mkdir(opts.quarantine, { recursive: true });
      const to = path.join(opts.quarantine, `${id}.zst`);
      await fsp.rename(store.pathOf(id), to);
      store.forget([id]); // batch fetches stop planning to send its file
      pass.quarantined.push(id);
      opts.onCorrupt?.(id, to);
    }
    const ahead = (pass.bytes / opts.bytesPerSecond) * 1000 - (performance.now() - start);
    if (ahead > 1) await sleep(ahead, undefined, opts.signal ? { signal: opts.signal } : {}).catch(() => {});
  }
  return pass;
}
