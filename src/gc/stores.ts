import { CacheStore } from '../chunk/cache-store.js';
import { FsChunkStore } from '../chunk/fs-store.js';
import { S3ChunkStore } from '../chunk/s3-store.js';
import type { PrunableStore } from '../chunk/store.js';
import { dfError } from '../errors.js';
import type { GcStore } from './gc.js';

/**
 * The garbage-collection view of a server's store: the local store itself; for the S3 store the
 * bucket (the truth), a removal also dropping this server's cached copy.
 */
export function gcStoreOf(store: PrunableStore): GcStore {
  if (store instanceof FsChunkStore || store instanceof S3ChunkStore) return store;
  if (store instanceof CacheStore) {
    const inner = gcStoreOf(store.remote);
    return {
      objects: () => inner.objects(),
      removeIfUnchanged: async (id, mtime) => {
        const r = await inner.removeIfUnchanged(id, mtime);
        if (r === 'removed') await store.drop(id);
        return r;
      },
    };
  }
  throw dfError('DF_ERR_INTERNAL', 'this store cannot be garbage collected (no listing with modification times)', {});
}
