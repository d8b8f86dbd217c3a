import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
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
 * A chunk enters the cache only from the store, which verifies it against its id (decompress + hash;
 * with a local store in its worker threads, which write the verified bytes into the slot themselves);
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
  /** Evicted: its slot may already hold another chunk. */
  dead?: boolean;
  /** Kept from before a restart: hashed again (in a worker) before its first read. */
  unverified?: boolean;
}

interface SlotFile {
  fd: number;
  size: number;
  free: number[];
  next: number;
}

/**
 * A store that can open and verify chunks in its worker threads and write their raw bytes straight
 * into a slot (FsChunkStore.fillRaw): a miss then costs the main thread no copy, and a batch of
 * chunks one message. Other stores (an S3 store's cache) load through get().
 */
export interface RawFiller {
  fillRaw(items: Array<{ id: string; length: number; fd: number; position: number }>): Promise<Array<Error | undefined>>;
  verifyRaw(items: Array<{ id: string; length: number; fd: number; position: number }>): Promise<boolean[]>;
}
const canFill = (s: object): s is RawFiller => typeof (s as Partial<RawFiller>).fillRaw === 'function' && typeof (s as Partial<RawFiller>).verifyRaw === 'function';

/** `<dir>/index`: what the slots held at the last clean stop, LRU order: magic, then records. */
const INDEX_MAGIC = Buffer.from('DFRAWC01');
/** A record: chunk id (32 bytes), slot size, slot number, raw length (u32 BE each). */
const RECORD = 44;

/** Chunks per worker task: one message for several, and the pool's threads still share a burst. */
const FILL_BATCH = 8;
/** Background re-hash batches in the workers at once (each FILL_BATCH * 2 slots): one per worker of a small pool. */
const REHASH_IN_FLIGHT = 2;

/** What an NBD export reads chunks through: the cache itself, or a worker thread's view of it (src/vdi/thread-chunks.ts). */
export interface RawChunks {
  readInto(id: string, within: number, n: number, out: Buffer, at: number, length?: number): Promise<void>;
  locate(id: string): { fd: number; at: number; length: number } | undefined;
  has(id: string): boolean;
  prefetch(items: Array<{ id: string; length: number }>): void;
  /** After a synchronous read through locate(): true when a slot it handed out changed meanwhile (read again). */
  stale?(): boolean;
  /** Optional: learn where those of `items` already cached are, loading nothing (a worker thread's view). */
  warm?(items: Array<{ id: string; length: number }>): void;
  /** Optional: locations told by the main thread (a worker thread's view, VersionExport.learn). */
  learn?(known: Array<{ id: string; fd: number; at: number; length: number; slot: number; gens: Int32Array; gen: number }>): void;
}

export class RawChunkCache implements RawChunks {
  private readonly lru = new Map<string, Entry>();
  private readonly loading = new Map<string, Promise<Entry | Buffer>>();
  private readonly files = new Map<number, SlotFile>();
  private readonly filler: RawFiller | undefined;
  /** Misses asked for in this tick, sent to the workers together (a microtask later). */
  private queued: Array<{ id: string; length: number; check?: Entry; resolve: (e: Entry | Buffer) => void; reject: (err: unknown) => void }> = [];
  /** Worker fills writing into the slot files: the files are closed only after the last one. */
  private filling = 0;
  private used = 0;
  private closed = false;
  hits = 0;
  misses = 0;
  /** Chunks loaded ahead of a read (prefetch), of `misses`. */
  prefetched = 0;
  /** Slots kept from before the restart: found still good / found bad (dropped, loaded again). */
  kept = 0;
  keptBad = 0;

  /** `budget`: bytes of slots at most (disk, and page cache while hot). */
  constructor(private readonly store: ChunkReader, private readonly dir: string, readonly budget: number) {
    this.filler = canFill(store) ? store : undefined;
    // Slots are kept across a restart only where the store's workers can hash them again lazily.
    if (!this.filler || !this.restore()) {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true, mode: 0o700 });
    } else {
      // Slot order is fill order, which for a disk read once in order is disk order: a reader going
      // in order after the restart finds the chunks ahead of it verified (or on their way).
      this.rehash = [...this.lru].filter(([, e]) => e.unverified).sort(([, a], [, b]) => a.file.size - b.file.size || a.slot - b.slot).map(([id]) => id);
      queueMicrotask(() => this.pumpRehash());
    }
  }

  /** Kept slots to hash again in the background (pumpRehash), in slot order; `rehashAt` the next. */
  private rehash: string[] = [];
  private rehashAt = 0;
  private rehashing = 0;

  /**
   * Hashes the slots kept from before the restart in the store's workers from the start on, a few
   * batches at a time (REHASH_IN_FLIGHT): the first read of a version after a restart then finds its
   * chunks verified or on their way instead of asking for each, and a read's own miss waits behind
   * at most those few batches. Each chunk is still served only once hashed again (restore()).
   */
  private pumpRehash(): void {
    while (!this.closed && this.rehashing < REHASH_IN_FLIGHT && this.rehashAt < this.rehash.length) {
      const batch: Array<Promise<unknown>> = [];
      while (batch.length < FILL_BATCH * 2 && this.rehashAt < this.rehash.length) {
        const id = this.rehash[this.rehashAt++]!;
        const e = this.lru.get(id);
        if (!e?.unverified || this.loading.has(id)) continue;
        batch.push(this.load(id, e.length).catch(() => undefined));
      }
      if (this.rehashAt === this.rehash.length) this.rehash = [];
      if (batch.length === 0) continue;
      this.rehashing++;
      void Promise.all(batch).then(() => { this.rehashing--; this.pumpRehash(); });
    }
  }

  /**
   * The slots of the last clean stop (`<dir>/index`), every one unverified: served only after a
   * worker hashed its bytes against the id again (a damaged or altered slot file is dropped and the
   * chunk read from the store). The index is removed at once: a crash leaves none, and slots written
   * after this start are not trusted by the next one. False: nothing usable, start empty.
   */
  private restore(): boolean {
    const at = path.join(this.dir, 'index');
    let buf: Buffer;
    try {
      buf = readFileSync(at);
      unlinkSync(at);
    } catch {
      return false;
    }
    if (buf.length < INDEX_MAGIC.length || !buf.subarray(0, INDEX_MAGIC.length).equals(INDEX_MAGIC) || (buf.length - INDEX_MAGIC.length) % RECORD !== 0) return false;
    const lengths = new Map<number, number>();
    try {
      for (let o = INDEX_MAGIC.length; o < buf.length; o += RECORD) {
        const id = buf.toString('hex', o, o + 32);
        const size = buf.readUInt32BE(o + 32), slot = buf.readUInt32BE(o + 36), length = buf.readUInt32BE(o + 40);
        if (size < 4096 || (size & (size - 1)) !== 0 || length === 0 || length > size || this.slotSize(length) !== size) continue;
        if (this.lru.has(id) || this.used + size > this.budget) continue;
        let f = this.files.get(size);
        if (!f) {
          const file = path.join(this.dir, `slots-${size}.raw`);
          if (!existsSync(file)) continue;
          const fd = openSync(file, 'r+');
          f = { fd, size, free: [], next: 0 };
          this.files.set(size, f);
          lengths.set(size, fstatSync(fd).size);
        }
        if (slot * size + length > lengths.get(size)!) continue;
        this.lru.set(id, { file: f, slot, length, unverified: true });
        f.next = Math.max(f.next, slot + 1);
        this.used += size;
      }
    } catch {
      for (const f of this.files.values()) closeSync(f.fd);
      this.files.clear(); this.lru.clear(); this.used = 0;
      return false;
    }
    // Two records naming one slot: neither is kept (only one can hold its bytes).
    const bySlot = new Map<string, string[]>();
    for (const [id, e] of this.lru) {
      const k = `${e.file.size}:${e.slot}`;
      bySlot.set(k, [...(bySlot.get(k) ?? []), id]);
    }
    for (const ids of bySlot.values()) if (ids.length > 1) for (const id of ids) { this.used -= this.lru.get(id)!.file.size; this.lru.delete(id); }
    for (const f of this.files.values()) {
      const taken = new Set<number>();
      for (const e of this.lru.values()) if (e.file === f) taken.add(e.slot);
      for (let k = 0; k < f.next; k++) if (!taken.has(k)) f.free.push(k);
    }
    for (const name of readdirSync(this.dir)) {
      const m = /^slots-(\d+)\.raw$/.exec(name);
      if (!m || !this.files.has(Number(m[1]))) rmSync(path.join(this.dir, name), { recursive: true, force: true });
    }
    return true;
  }

  /** Writes `<dir>/index` (what the slots hold, least recently used first) for the next start. */
  private persist(): void {
    if (!this.filler) return;
    const out = Buffer.allocUnsafe(INDEX_MAGIC.length + this.lru.size * RECORD);
    INDEX_MAGIC.copy(out, 0);
    let o = INDEX_MAGIC.length;
    for (const [id, e] of this.lru) {
      out.write(id, o, 32, 'hex');
      out.writeUInt32BE(e.file.size, o + 32);
      out.writeUInt32BE(e.slot, o + 36);
      out.writeUInt32BE(e.length, o + 40);
      o += RECORD;
    }
    try {
      writeFileSync(path.join(this.dir, 'index.tmp'), out, { mode: 0o600 });
      renameSync(path.join(this.dir, 'index.tmp'), path.join(this.dir, 'index'));
    } catch {
      // The next start is then a cold one: nothing is lost but time.
    }
  }

  get bytes(): number {
    return this.used;
  }

  /**
   * Bytes [within, within+n) of the chunk into `out` at `at` (no allocation on a hit). `length`, the
   * chunk's raw length when the caller knows it (from the index), lets a miss load in a worker.
   */
  async readInto(id: string, within: number, n: number, out: Buffer, at: number, length?: number): Promise<void> {
    for (let tries = 0; ; tries++) {
      const hit = this.touch(id);
      const got = hit && !hit.unverified ? hit : await this.load(id, length ?? hit?.length);
      if (Buffer.isBuffer(got)) { got.copy(out, at, within, within + n); return; }
      // Evicted while this read waited (its slot may be another chunk's by now): look again.
      if (!got.dead) { readExactSync(got.file.fd, out, at, n, got.slot * got.file.size + within, 'raw chunk cache'); return; }
      if (tries >= 2) { (await this.store.get(id)).raw.copy(out, at, within, within + n); return; }
    }
  }

  /**
   * Loads chunks ahead of the reads that will want them (a version read in order asks along its
   * index): those neither cached nor loading, verified in the store's workers. Errors are left for
   * the read that wants the chunk (it loads it again and reports).
   */
  prefetch(items: Array<{ id: string; length: number }>): void {
    if (!this.filler || this.closed) return;
    for (const x of items) {
      const e = this.lru.get(x.id);
      if (this.loading.has(x.id) || (e && !e.unverified)) continue;
      this.prefetched++;
      this.load(x.id, x.length).catch(() => undefined);
    }
  }

  /** Whether the chunk is cached (and verified) or on its way (callers deciding what to prefetch). */
  has(id: string): boolean {
    const e = this.lru.get(id);
    return (e !== undefined && !e.unverified) || this.loading.has(id);
  }

  /**
   * Where a cached chunk's bytes are (marking it used), or undefined: for callers that read several
   * chunks in one pread when their slots are adjacent (chunks cached in disk order usually are).
   */
  locate(id: string): { fd: number; at: number; length: number } | undefined {
    const e = this.lru.get(id);
    if (!e || e.unverified) return undefined;
    this.touch(id);
    return { fd: e.file.fd, at: e.slot * e.file.size, length: e.length };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const q of this.queued.splice(0)) q.reject(new Error('raw chunk cache closed'));
    this.persist();
    this.lru.clear();
    // A worker may still be writing into a slot file: its descriptor must not be reused meanwhile.
    if (this.filling === 0) this.release();
  }

  private release(): void {
    for (const f of this.files.values()) closeSync(f.fd);
    this.files.clear();
    // Without an index the slot files are of no use to the next start.
    if (!this.filler) rmSync(this.dir, { recursive: true, force: true });
  }

  private touch(id: string): Entry | undefined {
    const e = this.lru.get(id);
    if (!e) return undefined;
    this.hits++;
    this.lru.delete(id);
    this.lru.set(id, e);
    return e;
  }

  private load(id: string, length: number | undefined): Promise<Entry | Buffer> {
    const pending = this.loading.get(id);
    if (pending) return pending;
    this.misses++;
    const kept = this.lru.get(id);
    const check = kept?.unverified ? kept : undefined;
    const p = this.filler && length !== undefined && !this.closed
      ? new Promise<Entry | Buffer>((resolve, reject) => {
        if (this.queued.push({ id, length: check?.length ?? length, ...(check ? { check } : {}), resolve, reject }) === 1) queueMicrotask(() => this.sendFills());
      })
      : this.fromStore(id);
    const done = p.then(
      (got) => { this.loading.delete(id); return got; },
      (err: unknown) => { this.loading.delete(id); throw err; },
    );
    this.loading.set(id, done);
    return done;
  }

  /** The old way: the verified chunk from the store, copied into a slot here. */
  private async fromStore(id: string): Promise<Entry | Buffer> {
    const c = await this.store.get(id);
    return this.remember(id, c.raw) ?? c.raw;
  }

  /** Queued misses to the store's workers, FILL_BATCH at a time, each into a slot reserved for it. */
  private sendFills(): void {
    const queued = this.queued.splice(0);
    this.sendChecks(queued.filter((q) => q.check));
    const all = queued.filter((q) => !q.check);
    for (let k = 0; k < all.length; k += FILL_BATCH) {
      const batch: Array<{ q: (typeof all)[number]; e: Entry }> = [];
      for (const q of all.slice(k, k + FILL_BATCH)) {
        const e = this.reserve(q.length);
        if (e) batch.push({ q, e });
        else this.fromStore(q.id).then(q.resolve, q.reject);
      }
      if (this.rehashAt === this.rehash.length) this.rehash = [];
      if (batch.length === 0) continue;
      this.filling++;
      this.filler!.fillRaw(batch.map(({ q, e }) => ({ id: q.id, length: q.length, fd: e.file.fd, position: e.slot * e.file.size })))
        .then(
          (errs) => batch.forEach(({ q, e }, j) => this.filled(q, e, errs[j])),
          (err: unknown) => batch.forEach(({ q, e }) => this.filled(q, e, err as Error)),
        )
        .finally(() => { if (--this.filling === 0 && this.closed) this.release(); });
    }
  }

  /** Slots kept from before the restart, hashed in the workers: good ones are served, bad ones dropped and loaded again. */
  private sendChecks(all: typeof this.queued): void {
    for (let k = 0; k < all.length; k += FILL_BATCH * 2) {
      const batch = all.slice(k, k + FILL_BATCH * 2);
      this.filling++;
      this.filler!.verifyRaw(batch.map((q) => ({ id: q.id, length: q.check!.length, fd: q.check!.file.fd, position: q.check!.slot * q.check!.file.size })))
        .then(
          (ok) => batch.forEach((q, j) => this.checked(q, ok[j] === true)),
          () => batch.forEach((q) => this.checked(q, false)),
        )
        .finally(() => { if (--this.filling === 0 && this.closed) this.release(); });
    }
  }

  private checked(q: (typeof this.queued)[number], ok: boolean): void {
    const e = q.check!;
    if (ok && !e.dead) {
      e.unverified = false;
      this.kept++;
      q.resolve(e);
      return;
    }
    if (!ok) {
      this.keptBad++;
      if (!e.dead) { this.lru.delete(q.id); this.unreserve(e); }
    }
    if (this.closed) { q.reject(new Error('raw chunk cache closed')); return; }
    // Damaged (or evicted meanwhile): from the store, as any miss.
    this.queued.push({ id: q.id, length: q.length, resolve: q.resolve, reject: q.reject });
    if (this.queued.length === 1) queueMicrotask(() => this.sendFills());
  }

  private filled(q: { id: string; resolve: (e: Entry | Buffer) => void; reject: (err: unknown) => void }, e: Entry, err: Error | undefined): void {
    if (err || this.closed || this.lru.has(q.id)) {
      this.unreserve(e);
      // The store reads it again and reports as get() does (a corrupt chunk is quarantined there).
      if (err || !this.closed) { this.fromStore(q.id).then(q.resolve, q.reject); return; }
      q.reject(new Error('raw chunk cache closed'));
      return;
    }
    this.lru.set(q.id, e);
    q.resolve(e);
  }

  private slotSize(length: number): number {
    return Math.max(4096, 2 ** Math.ceil(Math.log2(Math.max(1, length))));
  }

  /** A slot for `length` bytes, not yet in the LRU (nothing serves it until it is filled). */
  private reserve(length: number): Entry | undefined {
    const size = this.slotSize(length);
    if (this.closed || size > this.budget) return undefined;
    while (this.used + size > this.budget) if (!this.evictOldest()) return undefined;
    const f = this.fileFor(size);
    const slot = f.free.pop() ?? f.next++;
    this.used += size;
    return { file: f, slot, length };
  }

  /**
   * Per slot file, a counter per slot bumped whenever the slot is let go (shared memory): a worker
   * thread that preads a slot it was told about checks the counter afterwards, and reads again when
   * the slot changed hands meanwhile (NBD threads, src/vdi/thread-chunks.ts).
   */
  private readonly gens = new Map<number, Int32Array>();

  private gensFor(size: number): Int32Array {
    let g = this.gens.get(size);
    if (!g) this.gens.set(size, (g = new Int32Array(new SharedArrayBuffer(4 * Math.max(1, Math.ceil(this.budget / size))))));
    return g;
  }

  /**
   * Where a chunk's verified bytes are, for another thread to pread (loading it first on a miss):
   * the slot and its counter now (see gensFor); or the bytes themselves when they have no slot.
   */
  async where(id: string, length: number): Promise<{ fd: number; at: number; length: number; slot: number; gens: Int32Array; gen: number } | { raw: Buffer }> {
    for (let tries = 0; tries < 3; tries++) {
      const hit = this.touch(id);
      const got = hit && !hit.unverified ? hit : await this.load(id, length);
      if (Buffer.isBuffer(got)) return { raw: got };
      if (got.dead) continue;
      const g = this.gensFor(got.file.size);
      if (got.slot >= g.length) break;
      return { fd: got.file.fd, at: got.slot * got.file.size, length: got.length, slot: got.slot, gens: g, gen: Atomics.load(g, got.slot) };
    }
    return { raw: (await this.store.get(id)).raw };
  }

  /** where() for a chunk cached and verified now, else undefined: nothing loads, the LRU order stays. */
  whereNow(id: string): { fd: number; at: number; length: number; slot: number; gens: Int32Array; gen: number } | undefined {
    const e = this.lru.get(id);
    if (!e || e.unverified || e.dead) return undefined;
    const g = this.gensFor(e.file.size);
    if (e.slot >= g.length) return undefined;
    return { fd: e.file.fd, at: e.slot * e.file.size, length: e.length, slot: e.slot, gens: g, gen: Atomics.load(g, e.slot) };
  }

  private unreserve(e: Entry): void {
    e.dead = true;
    const g = this.gens.get(e.file.size);
    if (g && e.slot < g.length) Atomics.add(g, e.slot, 1);
    e.file.free.push(e.slot);
    this.used -= e.file.size;
  }

  private remember(id: string, raw: Buffer): Entry | undefined {
    if (this.closed) return undefined;
    const had = this.lru.get(id);
    if (had) return had;
    const e = this.reserve(raw.length);
    if (!e) return undefined;
    let done = 0;
    while (done < raw.length) done += writeSync(e.file.fd, raw, done, raw.length - done, e.slot * e.file.size + done);
    this.lru.set(id, e);
    return e;
  }

  private evictOldest(): boolean {
    const first = this.lru.entries().next();
    if (first.done) return false;
    const [id, e] = first.value;
    this.lru.delete(id);
    this.unreserve(e);
    return true;
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
