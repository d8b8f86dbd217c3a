import { constants as FS, promises as fsp } from 'node:fs';
import path from 'node:path';
import { dfError, isDeskfuseError } from '../errors.js';
import { fsyncDir, writeDurable } from '../fs/durable.js';
import { storeIoError } from '../fs/io-errors.js';
import { encodeFrame } from './frame.js';
import { isIdHex } from './id.js';
import type { PackPlan, PackReader, PrunableStore, StoredChunk } from './store.js';
import { chunkWorkers, type ChunkWorkers } from './workers.js';

/**
 * Local filesystem store. Layout (fan-out by the first three hex digits, at most 4,096 folders):
 *
 *   <root>/<id[0..3]>/<id>.zst     one zstd frame of the chunk's raw bytes
 *   <root>/<id[0..3]>/.tmp-…       a write in progress (ignored by readers, removed by scrubs)
 *
 * A write is: temp file → fdatasync → rename → fsync of the folder, so a name never points at
 * bytes that a crash could lose. Reads always decompress and hash (in a worker thread, workers.ts):
 * a corrupt file is never served.
 */
export class FsChunkStore implements PrunableStore, PackReader {
  /** Fan-out folders known to exist (saves a mkdir per chunk). */
  private readonly dirs = new Set<string>();

  /** Reads go through `workers` (the process's pool unless given). */
  constructor(readonly root: string, readonly maxChunkSize: number, private readonly workers: ChunkWorkers = chunkWorkers()) {}

  static async open(root: string, maxChunkSize: number, workers?: ChunkWorkers): Promise<FsChunkStore> {
    await fsp.mkdir(root, { recursive: true });
    return new FsChunkStore(root, maxChunkSize, workers);
  }

  pathOf(id: string): string {
    if (!isIdHex(id)) throw dfError('DF_ERR_BAD_REQUEST', `invalid chunk id ${JSON.stringify(id.slice(0, 80))}`, { id });
    return path.join(this.root, id.slice(0, 3), `${id}.zst`);
  }

  /** Only ENOENT is "absent": EIO, EMFILE, EACCES… are errors (else a caller would re-upload or report a loss). */
  async has(id: string): Promise<boolean> {
    if (!isIdHex(id)) return false; // no chunk has that name
    const file = this.pathOf(id);
    try {
      await fsp.access(file, FS.F_OK);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw storeIoError(err, 'lookup', `chunk ${id}`);
    }
  }

  async get(id: string): Promise<StoredChunk> {
    const file = this.pathOf(id);
    try {
      // Read, decompress and hash in a worker thread: the event loop serves everyone else meanwhile.
      return await this.workers.read(file, id, this.maxChunkSize);
    } catch (cause) {
      if ((cause as NodeJS.ErrnoException).code === 'ENOENT') throw dfError('DF_ERR_CHUNK_NOT_FOUND', `chunk ${id} is not in the store`, { id });
      if (isDeskfuseError(cause, 'DF_ERR_CHUNK_INVALID')) {
        throw dfError('DF_ERR_CHUNK_CORRUPT', `stored chunk ${id} is corrupt: ${cause.message}`, { id, got: cause.fields.got, path: file }, cause);
      }
      throw cause;
    }
  }

  /**
   * Chunks opened and verified in a worker and their raw bytes written to `fd` at `position` (the NBD
   * raw-chunk cache's slots, raw-cache.ts): per chunk undefined when done, else the error (the caller
   * reads that chunk through get(), which names it as get() does).
   */
  fillRaw(items: Array<{ id: string; length: number; fd: number; position: number }>): Promise<Array<Error | undefined>> {
    return this.workers.fill(items.map((x) => ({ ...x, path: this.pathOf(x.id) })), this.maxChunkSize);
  }

  /** Raw bytes already in the cache's slots hashed against their ids in a worker (a slot kept across a restart). */
  verifyRaw(items: Array<{ id: string; length: number; fd: number; position: number }>): Promise<boolean[]> {
    return this.workers.verify(items);
  }

  /** Pack reads in flight, by what they read: endpoints provisioning one image ask for the same batches. */
  private readonly packsInFlight = new Map<string, Promise<Buffer>>();

  /**
   * A batch fetch's pack, read in a worker and served as stored: frames are verified when they come in
   * (put, putMany's callers, scrub) and by whoever receives them, not again on every read. Identical
   * requests in flight share one read (and one buffer: a pack is never written to once made).
   */
  readPack(ids: string[], maxFrameBytes: number): Promise<Buffer> {
    const key = `${maxFrameBytes}:${ids.join(',')}`;
    let p = this.packsInFlight.get(key);
    if (!p) {
      p = this.readPackOnce(ids, maxFrameBytes).finally(() => this.packsInFlight.delete(key));
      this.packsInFlight.set(key, p);
    }
    return p;
  }

  private async readPackOnce(ids: string[], maxFrameBytes: number): Promise<Buffer> {
    const r = await this.overFiles(ids, (files) => this.workers.pack(files, maxFrameBytes, this.maxChunkSize));
    if ('tooLarge' in r) {
      throw dfError('DF_ERR_TOO_LARGE', `these ${ids.length} chunks are more than ${maxFrameBytes} bytes: ask for fewer at a time`, { limit: maxFrameBytes, ids: ids.length });
    }
    return r.body;
  }

  /**
   * Each stored frame's [file size, declared raw length], learnt once from its first bytes: chunk
   * files never change, so a storm of endpoints asking for the same batches costs one look each.
   * Bounded (the oldest go first); `forget` drops ids whose file was found gone or changed.
   */
  private readonly heads = new Map<string, [size: number, raw: number]>();
  private readonly headsInFlight = new Map<string, Promise<Map<string, [number, number]>>>();
  static readonly HEADS_KEPT = 100_000;

  async packPlan(ids: string[], maxFrameBytes: number): Promise<PackPlan> {
    const miss = ids.filter((id) => !this.heads.has(id));
    const learnt = miss.length ? await this.learnHeads(miss) : undefined;
    const meta = Buffer.allocUnsafe(8 + 40 * ids.length + 36); // header, record heads, trailer (pack.ts)
    meta.write('DFPK', 0, 'latin1');
    meta.writeUInt32BE(0x01000000, 4);
    let frames = 0;
    for (let k = 0; k < ids.length; k++) {
      const id = ids[k]!;
      const h = learnt?.get(id) ?? this.heads.get(id);
      if (!h) return this.packPlan(ids, maxFrameBytes); // dropped meanwhile (bounded, or forgotten): look again
      frames += h[0];
      if (frames > maxFrameBytes) {
        throw dfError('DF_ERR_TOO_LARGE', `these ${ids.length} chunks are more than ${maxFrameBytes} bytes: ask for fewer at a time`, { limit: maxFrameBytes, ids: ids.length });
      }
      const at = 8 + 40 * k;
      meta.write(id, at, 'hex');
      meta.writeUInt32BE(h[1], at + 32);
      meta.writeUInt32BE(h[0], at + 36);
    }
    const end = 8 + 40 * ids.length;
    meta.fill(0, end, end + 32);
    meta.writeUInt32BE(ids.length, end + 32);
    return { size: meta.length + frames, meta, root: this.root };
  }

  /** Forget what was learnt of these ids; `onForget` (the server's sender thread) lets go of their files. */
  forget(ids: string[]): void {
    for (const id of ids) this.heads.delete(id);
    this.onForget?.();
  }

  /** Called when files were forgotten or removed: whoever keeps chunk files open closes them. */
  onForget?: () => void;

  private learnHeads(ids: string[]): Promise<Map<string, [number, number]>> {
    const key = ids.join(',');
    let p = this.headsInFlight.get(key);
    if (!p) {
      p = this.learnHeadsOnce(ids).finally(() => this.headsInFlight.delete(key));
      this.headsInFlight.set(key, p);
    }
    return p;
  }

  private async learnHeadsOnce(ids: string[]): Promise<Map<string, [number, number]>> {
    const r = await this.overFiles(ids, (files) => this.workers.heads(files, this.maxChunkSize));
    const out = new Map<string, [number, number]>();
    ids.forEach((id, k) => out.set(id, [r.sizes[k]!, r.raws[k]!]));
    if (this.heads.size + out.size > FsChunkStore.HEADS_KEPT) {
      let drop = this.heads.size + out.size - FsChunkStore.HEADS_KEPT + (FsChunkStore.HEADS_KEPT >> 4);
      for (const id of this.heads.keys()) {
        if (drop-- <= 0) break;
        this.heads.delete(id);
      }
    }
    for (const [id, h] of out) this.heads.set(id, h);
    return out;
  }

  /**
   * A worker task over these ids' stored files: a frame without a sane header is
   * DF_ERR_CHUNK_CORRUPT, the first absent file DF_ERR_CHUNK_NOT_FOUND.
   */
  private async overFiles<T extends object>(ids: string[], task: (files: Array<{ id: string; path: string }>) => Promise<T | { missing: string }>): Promise<Exclude<T, { missing: string }>> {
    let r: T | { missing: string };
    try {
      r = await task(ids.map((id) => ({ id, path: this.pathOf(id) })));
    } catch (cause) {
      if (isDeskfuseError(cause, 'DF_ERR_CHUNK_INVALID')) {
        const id = cause.fields.id as string;
        throw dfError('DF_ERR_CHUNK_CORRUPT', `stored chunk ${id} is corrupt: ${cause.message}`, { id, path: this.pathOf(id) }, cause);
      }
      throw cause;
    }
    if ('missing' in r) throw dfError('DF_ERR_CHUNK_NOT_FOUND', `chunk ${r.missing} is not in the store`, { id: r.missing });
    return r as Exclude<T, { missing: string }>;
  }

  async put(id: string, chunk: { frame: Buffer } | { raw: Buffer }): Promise<boolean> {
    const frame = 'frame' in chunk ? chunk.frame : encodeFrame(chunk.raw);
    const r = await this.putMany([{ id, frame }]);
    return r.stored === 1;
  }

  async putMany(chunks: Array<{ id: string; frame: Buffer }>): Promise<{ stored: number; existing: number }> {
    const dirs = new Set<string>();
    let stored = 0;
    let existing = 0;
    // Parallel fdatasyncs let the journal commit many files at once (measured ~0.4 ms per chunk).
    const unique = new Map(chunks.map((c) => [c.id, c.frame]));
    existing += chunks.length - unique.size;
    // Every write settles (and cleans its temp file) before the batch answers, even when one fails.
    const writes = await Promise.allSettled(
      [...unique].map(async ([id, frame]) => {
        const final = this.pathOf(id);
        // Stored already: its modification time becomes now, so a garbage collection that marked it
        // (unreferenced and old) sees it written again and keeps it (src/gc/gc.ts).
        if (await this.touch(final)) {
          existing++;
          return;
        }
        const dir = path.dirname(final);
        if (!this.dirs.has(dir)) {
          await fsp.mkdir(dir, { recursive: true }).catch((err) => { throw storeIoError(err, 'mkdir', `chunk ${id}`); });
          this.dirs.add(dir);
        }
        await writeDurable(final, frame, false, `chunk ${id}`); // the folders are synced once for the batch
        dirs.add(dir);
        stored++;
      }),
    );
    const syncs = await Promise.allSettled([...dirs].map((d) => fsyncDir(d)));
    // The first failure answers for the batch; a full store first (the client can act on it).
    const failed = [...writes, ...syncs].flatMap((r) => (r.status === 'rejected' ? [storeIoError(r.reason, 'write', 'a chunk')] : []));
    if (failed.length) throw failed.find((e) => e.code === 'DF_ERR_NO_SPACE') ?? failed[0]!;
    return { stored, existing };
  }

  async *list(): AsyncIterable<string> {
    const fans = (await fsp.readdir(this.root)).filter((d) => /^[0-9a-f]{3}$/.test(d)).sort();
    for (const fan of fans) {
      const names = (await fsp.readdir(path.join(this.root, fan))).sort();
      for (const n of names) {
        if (n.endsWith('.zst') && isIdHex(n.slice(0, -4))) yield n.slice(0, -4);
      }
    }
  }

  /** Leftover temp files from interrupted writes (a scrub removes them). */
  async *temps(): AsyncIterable<string> {
    const fans = (await fsp.readdir(this.root)).filter((d) => /^[0-9a-f]{3}$/.test(d));
    for (const fan of fans) {
      for (const n of await fsp.readdir(path.join(this.root, fan))) if (n.startsWith('.tmp-')) yield path.join(this.root, fan, n);
    }
  }

  /** Set a stored file's modification time to now: false when there is no such file. */
  private async touch(file: string): Promise<boolean> {
    const now = new Date();
    try {
      await fsp.utimes(file, now, now);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw storeIoError(err, 'lookup', path.basename(file));
    }
  }

  /** Every stored chunk in id order, with its size and modification time (epoch ms), for garbage collection. */
  async *objects(): AsyncIterable<{ id: string; size: number; mtime: number }> {
    for await (const id of this.list()) {
      const st = await fsp.stat(this.pathOf(id)).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return undefined; // removed meanwhile
        throw err;
      });
      if (st) yield { id, size: st.size, mtime: Math.floor(st.mtimeMs) };
    }
  }

  /**
   * Remove a chunk unless it was written (or touched by a put) after `mtime`: the name is first
   * renamed away (atomic: a put from then on finds no file and writes a new one), then the file's
   * time is checked; a newer one is linked back (unless a put already wrote the name again).
   */
  async removeIfUnchanged(id: string, mtime: number): Promise<'removed' | 'newer' | 'absent'> {
    const file = this.pathOf(id);
    const tomb = `${file}.gc`;
    try {
      await fsp.rename(file, tomb);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw storeIoError(err, 'remove', `chunk ${id}`);
      // A crash may have left the renamed file (a rerun finishes what it started).
      const left = await fsp.stat(tomb).catch(() => undefined);
      if (!left) return 'absent';
    }
    const st = await fsp.stat(tomb);
    if (Math.floor(st.mtimeMs) > mtime) {
      await fsp.link(tomb, file).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'EEXIST') throw err;
      });
      await fsp.rm(tomb, { force: true });
      return 'newer';
    }
    this.heads.delete(id); // the sender and the pack cache are told once per batch (afterRemovals)
    await fsp.rm(tomb, { force: true });
    return 'removed';
  }

  /** After a batch of removeIfUnchanged: whoever keeps chunk files open (the sender, the pack cache) lets go of them. */
  afterRemovals(): void {
    this.onForget?.();
  }

  async remove(id: string): Promise<void> {
    this.forget([id]);
    await fsp.rm(this.pathOf(id), { force: true });
  }

  async size(): Promise<{ chunks: number; bytes: number }> {
    let chunks = 0;
    let bytes = 0;
    for await (const o of this.objects()) {
      chunks++;
      bytes += o.size;
    }
    return { chunks, bytes };
  }
}
