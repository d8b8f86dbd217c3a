import { createReadStream, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { blakeLib } from '../chunk/native-libs.js';
import type { ChunkReader } from '../chunk/store.js';
import { writeDurable } from '../fs/durable.js';
import { decodeLayer } from '../image/layer.js';
import { deltaPieces } from './delta.js';

/** A delta on disk, ready to be streamed. */
export interface DeltaFile {
  path: string;
  size: number;
}

/**
 * Deltas are a pure function of a layer (and its chunks), so they are made once and kept as files
 * named `<layer id>.<delta BLAKE3>.dfdl`. A delta is built straight into a temp file (frame by
 * frame, hashed as it goes, fdatasync, rename, fsync of the folder) and served as a file stream:
 * however large a delta, the server holds about one frame of it. The first use in a process checks
 * the file against its name (a corrupt one is rebuilt from verified chunks); the page cache then
 * serves the 8 a.m. crowd.
 */
export class DeltaCache {
  private readonly building = new Map<string, Promise<DeltaFile>>();
  /** Files checked against their name since this process started. */
  private readonly checked = new Map<string, DeltaFile>();

  constructor(private readonly dir: string, private readonly blobs: ChunkReader, private readonly chunks: ChunkReader) {}

  /** Build a new version's delta in the background, so the first endpoint does not wait for it. */
  warm(layerId: string, onError: (err: unknown) => void): void {
    this.get(layerId).then(() => {}, onError);
  }

  /**
   * The layer's delta, opened for streaming. A file removed behind the cache's back (by an admin or
   * a scrub) is made again; once open, the bytes stay readable whatever happens to the name.
   */
  async open(layerId: string): Promise<{ size: number; stream: NodeJS.ReadableStream }> {
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
      return { size: f.size, stream: fh.createReadStream({ highWaterMark: 1024 * 1024 }) };
    }
  }

  /** The layer's delta file (found and checked, or built). */
  async get(layerId: string): Promise<DeltaFile> {
    const known = this.checked.get(layerId);
    if (known) return known;
    let p = this.building.get(layerId);
    if (!p) {
      p = (async () => (await this.find(layerId)) ?? (await this.build(layerId)))()
        .then((f) => (this.checked.set(layerId, f), f))
        .finally(() => this.building.delete(layerId));
      this.building.set(layerId, p);
    }
    return p;
  }

  private async find(layerId: string): Promise<DeltaFile | undefined> {
    const names = await fsp.readdir(this.dir).catch(() => [] as string[]);
    for (const n of names) {
      const m = /^([0-9a-f]{64})\.([0-9a-f]{64})\.dfdl$/.exec(n);
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

  private async build(layerId: string): Promise<DeltaFile> {
    const layer = decodeLayer((await this.blobs.get(layerId)).raw);
    await fsp.mkdir(this.dir, { recursive: true });
    // Written frame by frame and hashed as it goes: the file is named by its hash once it is complete.
    const h = new (blakeLib().Blake3Hasher)();
    let size = 0;
    const chunks = this.chunks;
    async function* hashed(): AsyncIterable<Buffer> {
      for await (const piece of deltaPieces(layerId, layer, chunks)) {
        h.update(piece);
        size += piece.length;
        yield piece;
      }
    }
    const file = await writeDurable({ dir: this.dir, name: () => `${layerId}.${h.digest('hex')}.dfdl` }, hashed(), true, `the delta of layer ${layerId}`);
    return { path: file, size };
  }
}
