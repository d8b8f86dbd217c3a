import type { ChunkReader } from './store.js';

/**
 * Raw chunk bytes, verified once on their way from the store (every ChunkReader verifies) and kept in
 * memory, least recently used first out, within a byte budget. NBD reads are small and random (4 KiB
 * reads of 64 KiB chunks): without it every read would decompress and hash a whole chunk. Concurrent
 * misses of one id share one store read. Cached buffers are shared: callers must not modify them.
 */
export class RawChunkCache {
  private readonly lru = new Map<string, Buffer>();
  private readonly loading = new Map<string, Promise<Buffer>>();
  private used = 0;
  hits = 0;
  misses = 0;

  constructor(private readonly store: ChunkReader, readonly budget: number) {}

  get bytes(): number {
    return this.used;
  }

  async get(id: string): Promise<Buffer> {
    const hit = this.lru.get(id);
    if (hit) {
      this.hits++;
      this.lru.delete(id);
      this.lru.set(id, hit);
      return hit;
    }
    const pending = this.loading.get(id);
    if (pending) return pending;
    this.misses++;
    const p = this.store.get(id).then(
      (c) => {
        this.loading.delete(id);
        this.remember(id, c.raw);
        return c.raw;
      },
      (err: unknown) => {
        this.loading.delete(id);
        throw err;
      },
    );
    this.loading.set(id, p);
    return p;
  }

  private remember(id: string, raw: Buffer): void {
    if (raw.length > this.budget || this.lru.has(id)) return;
    this.lru.set(id, raw);
    this.used += raw.length;
    for (const [k, v] of this.lru) {
      if (this.used <= this.budget) break;
      this.lru.delete(k);
      this.used -= v.length;
    }
  }
}
