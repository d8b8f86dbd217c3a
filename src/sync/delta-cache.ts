import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { blakeLib } from '../chunk/native-libs.js';
import type { ChunkReader } from '../chunk/store.js';
import { writeDurable } from '../fs/durable.js';
import { HeldFiles } from '../fs/held-files.js';
import { decodeLayer } from '../image/layer.js';
import { dfError } from '../errors.js';
import { deltaPieces } from './delta.js';

/** A delta on disk, ready to be streamed. */
export interface DeltaFile {
  path: string;
  size: number;
}

/**
 * Where deltas are shared between servers (the S3 bucket, src/sync/delta-bucket.ts): one object per
 * layer, written once by whichever server builds it first.
 */
export interface DeltaBucket {
  /** The layer's delta from the bucket into a file of `dir` named as the cache names it (verified against its hash), or undefined when absent. */
  fetch(layerId: string, dir: string): Promise<DeltaFile | undefined>;
  /** Store a built delta unless one is there: true when this call stored it, else the stored one's hash. */
  store(layerId: string, f: DeltaFile & { hash: string; md5: string }): Promise<true | { hash: string | undefined }>;
  /** Delete the layer's delta (its version was pruned); absent is fine. */
  remove(layerId: string): Promise<void>;
  /** Every delta in the bucket (layer id, size, LastModified in epoch ms), for garbage collection. */
  list?(): AsyncIterable<{ layer: string; size: number; mtime: number }>;
}

/** A delta file's name: `<layer id>.<BLAKE3 of the delta>.dfdl`. */
const DELTA_NAME = /^([0-9a-f]{64})\.([0-9a-f]{64})\.dfdl$/;
/** A served delta's file gets its mtime set at most this often: the mark `dropIdle` reads across restarts. */
const TOUCH_MS = 3600_000;

/**
 * Deltas are a pure function of a layer (and its chunks), so they are made once and kept as files
 * named `<layer id>.<delta BLAKE3>.dfdl`. A delta is built straight into a temp file (frame by
 * frame, hashed as it goes, fdatasync, rename, fsync of the folder) and served as a file stream:
 * however large a delta, the server holds about one frame of it. The first use in a process checks
 * the file against its name (a corrupt one is rebuilt from verified chunks); the page cache then
 * serves the 8 a.m. crowd.
 *
 * With a bucket (several servers on one S3 store) the folder is a local cache of the bucket: a delta
 * not here is fetched from the bucket, and only when the bucket has none is it built, then stored
 * with `If-None-Match: *`. Two servers building the same delta at once end with one object; the one
 * whose write lost serves the stored object's bytes (its own file when the hashes agree, else the
 * bucket's), so every server answers the same bytes.
 */
export class DeltaCache {
  private readonly building = new Map<string, Promise<DeltaFile>>();
  /** Files checked against their name since this process started. */
  private readonly checked = new Map<string, DeltaFile>();
  /** Descriptors kept open for `acquire`. */
  private readonly held = new HeldFiles();

  /** When each delta was last asked for in this process (its file's mtime is set from it, at most hourly). */
  private readonly used = new Map<string, number>();

  /** Deltas built here, fetched from the bucket, and stored in it by this cache. */
  readonly stats = { built: 0, fetched: 0, stored: 0 };

  constructor(private readonly dir: string, private readonly blobs: ChunkReader, private readonly chunks: ChunkReader, private readonly bucket?: DeltaBucket) {}

  /** Build a new version's delta in the background, so the first endpoint does not wait for it. */
  warm(layerId: string, onError: (err: unknown) => void): void {
    this.get(layerId).then(() => {}, onError);
  }

  /**
   * The layer's delta file, opened (the caller closes it). A file removed behind the cache's back (by
   * an admin or a scrub) is made again; once open, the bytes stay readable whatever happens to the name.
   */
  async open(layerId: string): Promise<{ size: number; fh: FileHandle }> {
    for (let attempt = 0; ; attempt++) {
      const f = await this.get(layerId);
      let fh: FileHandle;
      try {
        fh = await fsp.open(f.path, 'r');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || attempt > 0) throw err;
        this.checked.delete(layerId);
        continue;
      }
      return { size: f.size, fh };
    }
  }

  /**
   * The layer's delta file, held open between requests (call `release` once done with `fd`; a storm
   * asks for the same delta hundreds of times): as `open`, without a thread-pool open and close each time.
   */
  async acquire(layerId: string): Promise<{ fd: number; size: number; release: () => void }> {
    for (let attempt = 0; ; attempt++) {
      const f = await this.get(layerId);
      const h = await this.held.acquire(f.path);
      if (!h || h.size !== f.size) {
        h?.release();
        if (attempt > 0) throw Object.assign(new Error(`the delta file ${f.path} is missing or not ${f.size} bytes`), { code: 'ENOENT' });
        this.checked.delete(layerId);
        continue;
      }
      return h;
    }
  }

  /** Closes the descriptors held for `acquire` (the server stops). */
  close(): void {
    this.held.close();
  }

  /** The delta files in this cache's folder (layer id, file name, size, modification time in epoch ms), for garbage collection. */
  async *files(): AsyncIterable<{ layer: string; name: string; size: number; mtime: number }> {
    const names = await fsp.readdir(this.dir).catch(() => [] as string[]);
    for (const name of names.sort()) {
      const m = DELTA_NAME.exec(name);
      if (!m) continue;
      const st = await fsp.stat(path.join(this.dir, name)).catch(() => undefined);
      if (st) yield { layer: m[1]!, name, size: st.size, mtime: Math.floor(st.mtimeMs) };
    }
  }

  /** Remove a delta file (its layer is gone); an open handle keeps its bytes until closed. */
  async removeFile(name: string): Promise<void> {
    const m = DELTA_NAME.exec(name);
    if (!m) return;
    this.checked.delete(m[1]!);
    this.used.delete(m[1]!);
    await fsp.rm(path.join(this.dir, name), { force: true });
  }

  /** The shared bucket's deltas, when there is one. */
  get shared(): DeltaBucket | undefined {
    return this.bucket;
  }

  /** The layer's delta file (found and checked, or built). */
  async get(layerId: string): Promise<DeltaFile> {
    const known = this.checked.get(layerId);
    if (known) {
      this.noteUse(layerId, known);
      return known;
    }
    let p = this.building.get(layerId);
    if (!p) {
      p = (async () => (await this.find(layerId)) ?? (await this.fromBucket(layerId)) ?? (await this.build(layerId)))()
        .then((f) => (this.checked.set(layerId, f), this.noteUse(layerId, f), f))
        .finally(() => this.building.delete(layerId));
      this.building.set(layerId, p);
    }
    return p;
  }

  /**
   * Deltas are a cache (issue 13): the files of these layers go (their versions were pruned), here and
   * in the bucket; a later ask builds them again. Resolves to the bytes the local files took.
   */
  async drop(layerIds: readonly string[]): Promise<number> {
    const gone = new Set(layerIds);
    let bytes = 0;
    for await (const f of this.files()) {
      if (!gone.has(f.layer)) continue;
      await fsp.rm(path.join(this.dir, f.name), { force: true });
      bytes += f.size;
    }
    for (const id of gone) {
      this.checked.delete(id);
      this.used.delete(id);
      if (this.bucket) await this.bucket.remove(id);
    }
    return bytes;
  }

  /** The bytes the local files of these layers' deltas take (for a prune's estimate). */
  async sizeOf(layerIds: readonly string[]): Promise<number> {
    const want = new Set(layerIds);
    let bytes = 0;
    for await (const f of this.files()) if (want.has(f.layer)) bytes += f.size;
    return bytes;
  }

  /**
   * Local delta files no one asked for since `before` (epoch ms; this process's asks, else the file's
   * mtime, which a served delta's file gets at most hourly) are deleted. With a bucket the objects
   * stay (the bucket is the shared copy; they go with their versions). Resolves to files and bytes.
   */
  async dropIdle(before: number): Promise<{ files: number; bytes: number }> {
    let files = 0;
    let bytes = 0;
    for await (const f of this.files()) {
      const last = Math.max(this.used.get(f.layer) ?? 0, f.mtime);
      if (last >= before || this.building.has(f.layer)) continue;
      await fsp.rm(path.join(this.dir, f.name), { force: true });
      this.checked.delete(f.layer);
      this.used.delete(f.layer);
      files++;
      bytes += f.size;
    }
    return { files, bytes };
  }

  private noteUse(layerId: string, f: DeltaFile): void {
    const now = Date.now();
    const last = this.used.get(layerId);
    this.used.set(layerId, now);
    if (last !== undefined && now - last < TOUCH_MS) return;
    const t = new Date(now);
    fsp.utimes(f.path, t, t).catch(() => {}); // gone meanwhile: open() makes it again
  }

  private async find(layerId: string): Promise<DeltaFile | undefined> {
    const names = await fsp.readdir(this.dir).catch(() => [] as string[]);
    for (const n of names) {
      const m = DELTA_NAME.exec(n);
      if (!m || m[1] !== layerId) continue;
      const file = path.join(this.dir, n);
      const h = new (blakeLib().Blake3Hasher)();
      let size = 0;
      for await (const piece of createReadStream(file, { highWaterMark: 1024 * 1024 })) {
        h.update(piece as Buffer);
        size += (piece as Buffer).length;
      }
      if (h.digest('hex') === m[2]) return { path: file, size };
      await fsp.rm(file, { force: true }); // corrupt: rebuild from verified chunks
    }
    return undefined;
  }

  private async fromBucket(layerId: string): Promise<DeltaFile | undefined> {
    if (!this.bucket) return undefined;
    await fsp.mkdir(this.dir, { recursive: true });
    const f = await this.bucket.fetch(layerId, this.dir);
    if (f) this.stats.fetched++;
    return f;
  }

  private async build(layerId: string): Promise<DeltaFile> {
    const layer = decodeLayer((await this.blobs.get(layerId)).raw);
    await fsp.mkdir(this.dir, { recursive: true });
    // Written frame by frame and hashed as it goes: the file is named by its hash once it is complete.
    const h = new (blakeLib().Blake3Hasher)();
    const md5 = createHash('md5'); // the bucket checks the upload against it (Content-MD5)
    let size = 0;
    const chunks = this.chunks;
    async function* hashed(): AsyncIterable<Buffer> {
      for await (const piece of deltaPieces(layerId, layer, chunks)) {
        h.update(piece);
        md5.update(piece);
        size += piece.length;
        yield piece;
      }
    }
    let hash = '';
    const file = await writeDurable({ dir: this.dir, name: () => `${layerId}.${(hash = h.digest('hex'))}.dfdl` }, hashed(), true, `the delta of layer ${layerId}`);
    this.stats.built++;
    if (!this.bucket) return { path: file, size };
    const r = await this.bucket.store(layerId, { path: file, size, hash, md5: md5.digest('base64') });
    if (r === true) {
      this.stats.stored++;
      return { path: file, size };
    }
    if (r.hash === hash) return { path: file, size }; // another server stored the same bytes first
    // Another server stored different bytes first (another build of the server): serve those, as it does.
    await fsp.rm(file, { force: true });
    const theirs = await this.fromBucket(layerId);
    if (!theirs) throw dfError('DF_ERR_S3', `the delta of layer ${layerId} was in the bucket and is gone`, { layer: layerId });
    return theirs;
  }
}
