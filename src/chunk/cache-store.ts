import { promises as fsp } from 'node:fs';
import { isDeskfuseError } from '../errors.js';
import { encodeFrame } from './frame.js';
import { FsChunkStore } from './fs-store.js';
import { isIdHex } from './id.js';
import type { PrunableStore, StoredChunk } from './store.js';
import type { ChunkWorkers } from './workers.js';

/**
 * A remote store (S3) with a bounded local disk cache in front: a hot chunk costs one remote GET per
 * server, however many endpoints ask for it at once.
 *
 *   <dir>/<id[0..3]>/<id>.zst     a cached zstd frame (fs-store's layout and writes: temp → fdatasync → rename)
 *
 * - Entry: only bytes the remote store verified against their id (its get decompresses and hashes)
 *   or that a put was given (already verified by the caller); every read of a cached file is verified
 *   again (fs-store), and a damaged or vanished file is dropped and fetched anew.
 * - Bound: least recently used out first, by frame bytes; the space is counted before the write, so
 *   concurrent misses never take the cache past `budget` (what does not fit is served, not cached).
 * - Coalescing: concurrent misses of one id share one remote GET; a chunk being written to the cache
 *   is served from memory meanwhile, so no second GET happens between the fetch and the write.
 * - Writes go through to the remote first (the remote is the store of record; the put answers as
 *   it does), then into the cache. A cache write that fails (its disk is full) loses only the cache
 *   entry, never the put or the get.
 * - list, remove and size are the remote's; remove also drops the cached copy.
 * - A restart keeps the cache: `open` finds what is there (oldest modified first out).
 */
export class CacheStore implements PrunableStore {
  /** id → frame bytes, least recently used first. */
  private readonly lru = new Map<string, number>();
  /** Misses in flight (and chunks being written to the cache): every caller of one id shares it. */
  private readonly loading = new Map<string, Promise<StoredChunk>>();
  private used = 0;
  /** Reads answered from a cache file, from a miss already in flight, and reads that went to the remote store. */
  readonly stats = { hits: 0, shared: 0, misses: 0, admitFailures: 0 };
  /** Cache writes after misses, running in the background. */
  private readonly admitting = new Set<Promise<void>>();

  private constructor(readonly remote: PrunableStore, private readonly local: FsChunkStore, readonly budget: number) {}

  /** `budget`: bytes of frames at most in `dir`. */
  static async open(remote: PrunableStore, dir: string, budget: number, maxChunkSize: number, workers?: ChunkWorkers): Promise<CacheStore> {
    const local = await FsChunkStore.open(dir, maxChunkSize, workers);
    const c = new CacheStore(remote, local, budget);
    for await (const tmp of local.temps()) await fsp.rm(tmp, { force: true }); // writes a crash cut short
    const found: Array<{ id: string; size: number; at: number }> = [];
    for await (const id of local.list()) {
      const st = await fsp.stat(local.pathOf(id)).catch(() => undefined);
      if (st) found.push({ id, size: st.size, at: st.mtimeMs });
    }
    found.sort((a, b) => a.at - b.at);
    for (const f of found) {
      c.lru.set(f.id, f.size);
      c.used += f.size;
    }
    await c.evict(0);
    return c;
  }

  /** Bytes of cached frames. */
  get bytes(): number {
    return this.used;
  }

  /** Whether the chunk is in the local cache (not the remote). */
  cached(id: string): boolean {
    return this.lru.has(id);
  }

  /** The cache file of a chunk (tests damage it). */
  pathOf(id: string): string {
    return this.local.pathOf(id);
  }

  async has(id: string): Promise<boolean> {
    if (!isIdHex(id)) return false;
    return this.lru.has(id) || this.remote.has(id);
  }

  async get(id: string): Promise<StoredChunk> {
    const pending = this.loading.get(id);
    if (pending) {
      this.stats.shared++;
      return pending;
    }
    const size = this.lru.get(id);
    if (size !== undefined) {
      this.lru.delete(id); // most recently used now
      this.lru.set(id, size);
      try {
        const c = await this.local.get(id);
        this.stats.hits++;
        return c;
      } catch (err) {
        // A cache file evicted meanwhile, removed or damaged behind our back: drop it, ask the remote.
        if (!isDeskfuseError(err) || !['DF_ERR_CHUNK_NOT_FOUND', 'DF_ERR_CHUNK_CORRUPT', 'DF_ERR_STORE_IO'].includes(err.code)) throw err;
        await this.forget(id);
      }
    }
    return this.fetch(id);
  }

  private fetch(id: string): Promise<StoredChunk> {
    const pending = this.loading.get(id);
    if (pending) return pending;
    this.stats.misses++;
    const p = this.remote.get(id);
    this.loading.set(id, p);
    // Callers get the chunk as soon as it is verified; the entry stays until the cache file is written.
    const admitted: Promise<void> = p.then((c) => this.admit([{ id, frame: c.frame }]), () => {}).finally(() => {
      this.loading.delete(id);
      this.admitting.delete(admitted);
    });
    this.admitting.add(admitted);
    return p;
  }

  /** Resolves once the cache writes of past misses are done (before a shutdown; tests). */
  async idle(): Promise<void> {
    while (this.admitting.size) await Promise.all([...this.admitting]);
  }

  async put(id: string, chunk: { frame: Buffer } | { raw: Buffer }): Promise<boolean> {
    const frame = 'frame' in chunk ? chunk.frame : encodeFrame(chunk.raw);
    const stored = await this.remote.put(id, { frame });
    await this.admit([{ id, frame }]);
    return stored;
  }

  async putMany(chunks: Array<{ id: string; frame: Buffer }>): Promise<{ stored: number; existing: number }> {
    const r = await this.remote.putMany(chunks);
    await this.admit(chunks);
    return r;
  }

  list(): AsyncIterable<string> {
    return this.remote.list();
  }

  async remove(id: string): Promise<void> {
    await this.remote.remove(id);
    await this.forget(id);
  }

  size(): Promise<{ chunks: number; bytes: number }> {
    return this.remote.size();
  }

  /**
   * Write verified frames into the cache (one batched fsync), making room first. The bytes are
   * counted from before the write (so concurrent admissions keep the bound) but an entry joins the
   * LRU only once its file is complete. Never throws: a failed cache write only loses the entry.
   */
  private async admit(chunks: Array<{ id: string; frame: Buffer }>): Promise<void> {
    const fresh = new Map<string, Buffer>();
    for (const c of chunks) if (!this.lru.has(c.id)) fresh.set(c.id, c.frame);
    let need = 0;
    for (const f of fresh.values()) need += f.length;
    if (fresh.size === 0 || need > this.budget) return; // a batch larger than the cache would evict itself
    await this.evict(need);
    if (this.used + need > this.budget) return; // the rest is being written by others: not cached this time
    this.used += need;
    try {
      await this.local.putMany([...fresh].map(([id, frame]) => ({ id, frame })));
    } catch {
      this.stats.admitFailures++;
      this.used -= need;
      await Promise.all([...fresh.keys()].map((id) => this.local.remove(id).catch(() => {})));
      return;
    }
    for (const [id, f] of fresh) {
      if (this.lru.has(id)) this.used -= f.length; // admitted meanwhile by another path: counted once
      else this.lru.set(id, f.length);
    }
  }

  /** Remove least recently used entries until `room` more bytes fit (or nothing is left to remove). */
  private async evict(room: number): Promise<void> {
    const victims: string[] = [];
    for (const [id, size] of this.lru) {
      if (this.used + room <= this.budget) break;
      this.lru.delete(id);
      this.used -= size;
      victims.push(id);
    }
    await Promise.all(victims.map((id) => this.local.remove(id).catch(() => {})));
  }

  /** Drop this server's cached copy (the remote object was removed, by garbage collection). */
  drop(id: string): Promise<void> {
    return this.forget(id);
  }

  private async forget(id: string): Promise<void> {
    const size = this.lru.get(id);
    if (size !== undefined) {
      this.lru.delete(id);
      this.used -= size;
    }
    await this.local.remove(id).catch(() => {});
  }
}
