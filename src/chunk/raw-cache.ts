import { closeSync, mkdirSync, openSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';
import { readExactSync } from '../fs/read.js';
import type { ChunkReader } from './store.js';

/**
 * Raw chunk bytes for NBD, kept in cache files beside the store so that a read is one pread, as a
 * plain file server's is. NBD reads are many and small (4 KiB reads of 64 KiB chunks, or a whole disk
 * in order): without it every read would decompress and hash a whole chunk (measured: 0.24x the reads
 * of `nbdkit file`).
 *
 *   <dir>/slots-<S>.raw   fixed slots of S bytes (S = the chunk's length rounded up to a power of two);
 *                         chunk id → slot is kept in memory, least recently used first out
 *
 * A chunk enters the cache only from the store, which verifies it against its id (decompress + hash);
 * the files are made anew at every start and never read across restarts, so the bytes served are ones
 * this process verified and wrote. Memory is the page cache's, not the server's: RSS stays flat.
 * I/O is synchronous on purpose: slots are reused at once, and a page-cache hit costs microseconds
 * (reading on the thread pool instead was measured slower: 0.58x nbdkit against 0.66x).
 * Concurrent misses of one id share one store read.
 */
interface Entry {
  file: SlotFile;
  slot: number;
  length: number;
}

interface SlotFile {
  fd: number;
  size: number;
  free: number[];
  next: number;
}

export class RawChunkCache {
  private readonly lru = new Map<string, Entry>();
  private readonly loading = new Map<string, Promise<Buffer>>();
  private readonly files = new Map<number, SlotFile>();
  private used = 0;
  private closed = false;
  hits = 0;
  misses = 0;

  /** `budget`: bytes of slots at most (disk, and page cache while hot). */
  constructor(private readonly store: ChunkReader, private readonly dir: string, readonly budget: number) {
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  get bytes(): number {
    return this.used;
  }

  /** Bytes [within, within+n) of the chunk into `out` at `at` (no allocation on a hit). */
  async readInto(id: string, within: number, n: number, out: Buffer, at: number): Promise<void> {
    const e = this.touch(id);
    if (e) {
      readExactSync(e.file.fd, out, at, n, e.slot * e.file.size + within, 'raw chunk cache');
      return;
    }
    (await this.load(id)).copy(out, at, within, within + n);
  }

  /**
   * Where a cached chunk's bytes are (marking it used), or undefined: for callers that read several
   * chunks in one pread when their slots are adjacent (chunks cached in disk order usually are).
   */
  locate(id: string): { fd: number; at: number; length: number } | undefined {
    const e = this.touch(id);
    return e && { fd: e.file.fd, at: e.slot * e.file.size, length: e.length };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const f of this.files.values()) closeSync(f.fd);
    this.files.clear();
    this.lru.clear();
    rmSync(this.dir, { recursive: true, force: true });
  }

  private touch(id: string): Entry | undefined {
    const e = this.lru.get(id);
    if (!e) return undefined;
    this.hits++;
    this.lru.delete(id);
    this.lru.set(id, e);
    return e;
  }

  private load(id: string): Promise<Buffer> {
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
    if (this.closed || this.lru.has(id)) return;
    const size = Math.max(4096, 2 ** Math.ceil(Math.log2(Math.max(1, raw.length))));
    if (size > this.budget) return;
    while (this.used + size > this.budget) this.evictOldest();
    const f = this.fileFor(size);
    const slot = f.free.pop() ?? f.next++;
    let done = 0;
    while (done < raw.length) done += writeSync(f.fd, raw, done, raw.length - done, slot * size + done);
    this.lru.set(id, { file: f, slot, length: raw.length });
    this.used += size;
  }

  private evictOldest(): void {
    const [id, e] = this.lru.entries().next().value as [string, Entry];
    this.lru.delete(id);
    e.file.free.push(e.slot);
    this.used -= e.file.size;
  }

  private fileFor(size: number): SlotFile {
    let f = this.files.get(size);
    if (!f) {
      f = { fd: openSync(path.join(this.dir, `slots-${size}.raw`), 'w+', 0o600), size, free: [], next: 0 };
      this.files.set(size, f);
    }
    return f;
  }
}
