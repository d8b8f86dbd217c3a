import { randomBytes } from 'node:crypto';
import { dfError } from '../errors.js';
import type { GcRepo } from './model.js';

/**
 * What a commit does so that garbage collection never takes what it is about to reference
 * (src/gc/gc.ts explains why this is enough): record a hold on its staged layer and cancel candidates
 * among its chunks, in one transaction, BEFORE it checks that they are stored; drop the hold once its
 * version row is in. Objects a sweep is removing right now are waited for (a batch takes moments);
 * when they are gone the commit's own check finds them missing and the client uploads them again.
 */
export interface CommitGuard {
  hold(image: string, layer: string, parentIndex: string | null, chunks: string[]): Promise<() => Promise<void>>;
}

export interface GuardOptions {
  /** How long a hold protects if its commit never drops it (a crash). Default 1 h: longer than any commit's checks. */
  holdMs?: number;
  /** How long to wait for a sweep batch that is removing some of the commit's objects. Default 30 s. */
  waitMs?: number;
  now?: () => number;
}

export function commitGuard(repo: GcRepo, opts: GuardOptions = {}): CommitGuard {
  const now = opts.now ?? (() => Date.now());
  const holdMs = opts.holdMs ?? 3600_000;
  const waitMs = opts.waitMs ?? 30_000;
  return {
    async hold(image, layer, parentIndex, chunks) {
      const id = `${now()}-${randomBytes(6).toString('hex')}`;
      const blobs = parentIndex ? [layer, parentIndex] : [layer];
      let { deleting } = await repo.hold({ id, image, layer, parentIndex }, chunks, blobs, now() + holdMs);
      const release = () => repo.unhold(id);
      const until = now() + waitMs;
      while (deleting.length && now() < until) {
        const ids = new Set(deleting);
        // A live run finishes its batch in moments; rows a dead run left are taken back at once.
        deleting = [...await repo.reclaimStale('chunk', chunks.filter((c) => ids.has(c)), now()), ...await repo.reclaimStale('blob', blobs.filter((b) => ids.has(b)), now())];
        if (deleting.length) await new Promise((r) => setTimeout(r, 20));
      }
      if (deleting.length) {
        await release();
        throw dfError('DF_ERR_CHUNKS_MISSING', `${deleting.length} of the commit's chunks are being removed by garbage collection: upload them again`, { image, missing: deleting });
      }
      return release;
    },
  };
}
