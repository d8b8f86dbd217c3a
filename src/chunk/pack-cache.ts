import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { PackReader } from './store.js';
import { decodeIdList, encodeIdList } from './id.js';

/**
 * Batch-fetch answers kept as files, for storms: endpoints provisioning one version ask for the same
 * batches (the agent cuts a version's chunk list the same way for every empty disk), so the second
 * request for a batch builds its pack once into `<dir>/<key>.pack` and every later one is a single
 * sendfile(2) of one file, as a static web server would send it, instead of thousands of chunk files
 * gathered per request. A pack is named by the ids it holds, in order (content addressing: it never
 * goes stale); the first request of a batch is served from the chunk files, so one-off batches (an
 * update's missing chunks) cost no disk writes. Bounded by bytes, least recently used first out;
 * emptied at start and whenever the store drops or quarantines chunks (`clear`).
 */
export class PackFileCache {
  /** Cached packs, least recently used first (a Map keeps insertion order: a hit moves to the end). */
  private readonly files = new Map<string, Entry>();
  /** Batches asked for once, not (yet) cached: the next ask builds. Bounded. */
  private readonly asked = new Map<string, true>();
  private readonly building = new Map<string, Promise<void>>();
  private bytes = 0;
  private generation = 0;
  readonly stats = { hits: 0, misses: 0, built: 0, evicted: 0 };
  static readonly ASKED_KEPT = 16_384;
  /** Builds at once: each holds one pack (≤ 32 MiB) in memory while it is written. */
  static readonly BUILDS = 2;

  private constructor(private readonly dir: string, private readonly maxBytes: number, private readonly store: PackReader, private readonly maxFrameBytes: number, private readonly onError: (err: unknown) => void) {}

  /** The cache in `dir`, emptied (its files are rebuilt on demand). */
  static async open(dir: string, maxBytes: number, store: PackReader, maxFrameBytes: number, onError: (err: unknown) => void): Promise<PackFileCache> {
    await fsp.rm(dir, { recursive: true, force: true });
    await fsp.mkdir(dir, { recursive: true, mode: 0o750 });
    return new PackFileCache(dir, maxBytes, store, maxFrameBytes, onError);
  }

  /** A batch's key: of its raw id list (src/chunk/id.ts), so a hit makes no string per id. */
  static key(batch: readonly string[] | Buffer): string {
    const raw = Buffer.isBuffer(batch) ? batch : encodeIdList(batch);
    return createHash('sha256').update(raw).digest('hex').slice(0, 40);
  }

  /**
   * The batch's pack file, held open (call `release` when done with `fd`), or undefined: serve it
   * from the chunk files. A second ask for a batch starts building its file in the background. The
   * descriptor stays open while the pack is cached, so a hit costs no open or close.
   */
  async acquire(batch: readonly string[] | Buffer): Promise<{ fd: number; size: number; release: () => void } | undefined> {
    if (this.maxBytes === 0 || batch.length === 0) return undefined;
    const key = PackFileCache.key(batch);
    const e = this.files.get(key);
    if (e) {
      e.users++; // held while it opens: a clear() meanwhile closes it after us
      try {
        e.fh ??= fsp.open(this.pathOf(key), 'r');
        const fh = await e.fh;
        this.files.delete(key);
        if (!e.dropped) this.files.set(key, e); // most recently used
        this.stats.hits++;
        let done = false;
        return { fd: fh.fd, size: e.size, release: () => { if (!done) { done = true; this.unuse(e); } } };
      } catch {
        this.unuse(e);
        this.drop(key); // removed behind the cache's back: built again now
        this.asked.set(key, true);
      }
    }
    this.stats.misses++;
    if (this.asked.has(key)) this.build(key, Buffer.isBuffer(batch) ? decodeIdList(batch) : batch);
    else {
      this.asked.set(key, true);
      if (this.asked.size > PackFileCache.ASKED_KEPT) this.asked.delete(this.asked.keys().next().value!);
    }
    return undefined;
  }

  /** Forget every pack (chunks were removed or found corrupt: a pack may hold their old bytes). */
  clear(): void {
    this.generation++;
    for (const key of [...this.files.keys()]) this.drop(key);
    this.asked.clear();
  }

  get size(): { files: number; bytes: number } {
    return { files: this.files.size, bytes: this.bytes };
  }

  /** Resolves when no build is running (tests). */
  async settled(): Promise<void> {
    while (this.building.size) await Promise.allSettled([...this.building.values()]);
  }

  private pathOf(key: string): string {
    return path.join(this.dir, `${key}.pack`);
  }

  private build(key: string, ids: readonly string[]): void {
    if (this.building.has(key) || this.building.size >= PackFileCache.BUILDS) return; // asked again later
    const gen = this.generation;
    const p = (async () => {
      const body = await this.store.readPack([...ids], this.maxFrameBytes);
      if (body.length > this.maxBytes) return;
      const tmp = path.join(this.dir, `.tmp-${key}`);
      await fsp.writeFile(tmp, body); // no fsync: a cache, emptied at every start
      if (gen !== this.generation) { // cleared while building: these frames may be the dropped ones
        await fsp.rm(tmp, { force: true });
        return;
      }
      await fsp.rename(tmp, this.pathOf(key));
      this.asked.delete(key);
      this.files.set(key, { size: body.length, users: 0, dropped: false });
      this.bytes += body.length;
      this.stats.built++;
      for (const old of this.files.keys()) {
        if (this.bytes <= this.maxBytes) break;
        if (old === key) continue;
        this.drop(old);
        this.stats.evicted++;
      }
    })().catch((err: unknown) => {
      this.asked.delete(key); // two more asks before another try: a batch that cannot be read is not read on every ask
      this.onError(err);
    }).finally(() => this.building.delete(key));
    this.building.set(key, p);
  }

  private drop(key: string): void {
    const e = this.files.get(key);
    if (!e) return;
    this.files.delete(key);
    this.bytes -= e.size;
    e.dropped = true;
    if (e.users === 0) closeEntry(e);
    fsp.rm(this.pathOf(key), { force: true }).catch(() => {}); // an open descriptor keeps its bytes readable
  }

  private unuse(e: Entry): void {
    if (--e.users === 0 && e.dropped) closeEntry(e);
  }
}

interface Entry {
  size: number;
  /** Opened on the first hit, closed when the pack is dropped and no send uses it. */
  fh?: Promise<FileHandle>;
  users: number;
  dropped: boolean;
}

function closeEntry(e: Entry): void {
  e.fh?.then((fh) => fh.close()).catch(() => {});
  e.fh = undefined;
}
