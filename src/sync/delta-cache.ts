import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { hashBytes, idHex } from '../chunk/id.js';
import type { ChunkReader } from '../chunk/store.js';
import { writeDurable } from '../chunk/fs-store.js';
import { decodeLayer } from '../image/layer.js';
import { buildDelta } from './delta.js';

/**
 * Deltas are a pure function of a layer (and its chunks), so they are made once and kept as files
 * named `<layer id>.<delta BLAKE3>.dfdl`; a read checks the bytes against the name. The server then
 * serves every endpoint the same static bytes.
 */
export class DeltaCache {
  private readonly building = new Map<string, Promise<Buffer>>();
  /** Verified deltas kept in memory (most recent last), so the 8 a.m. crowd costs one read. */
  private readonly hot = new Map<string, Buffer>();
  private hotBytes = 0;

  constructor(private readonly dir: string, private readonly blobs: ChunkReader, private readonly chunks: ChunkReader, private readonly hotLimit = 512 * 1024 * 1024) {}

  /** Build a new version's delta in the background, so the first endpoint does not wait for it. */
  warm(layerId: string, onError: (err: unknown) => void): void {
    this.get(layerId).then(() => {}, onError);
  }

  async get(layerId: string): Promise<Buffer> {
    const hot = this.hot.get(layerId);
    if (hot) {
      this.hot.delete(layerId);
      this.hot.set(layerId, hot);
      return hot;
    }
    let p = this.building.get(layerId);
    if (!p) {
      p = (async () => (await this.read(layerId)) ?? (await this.build(layerId)))().then((b) => this.keep(layerId, b)).finally(() => this.building.delete(layerId));
      this.building.set(layerId, p);
    }
    return p;
  }

  private keep(layerId: string, bytes: Buffer): Buffer {
    if (bytes.length > this.hotLimit / 2) return bytes;
    this.hot.set(layerId, bytes);
    this.hotBytes += bytes.length;
    for (const [k, v] of this.hot) {
      if (this.hotBytes <= this.hotLimit) break;
      this.hot.delete(k);
      this.hotBytes -= v.length;
    }
    return bytes;
  }

  private async read(layerId: string): Promise<Buffer | undefined> {
    const names = await fsp.readdir(this.dir).catch(() => [] as string[]);
    for (const n of names) {
      const m = /^([0-9a-f]{64})\.([0-9a-f]{64})\.dfdl$/.exec(n);
      if (!m || m[1] !== layerId) continue;
      const bytes = await fsp.readFile(path.join(this.dir, n));
      if (idHex(hashBytes(bytes)) === m[2]) return bytes;
      await fsp.rm(path.join(this.dir, n), { force: true }); // corrupt: rebuild from verified chunks
    }
    return undefined;
  }

  private async build(layerId: string): Promise<Buffer> {
    const layer = decodeLayer((await this.blobs.get(layerId)).raw);
    const bytes = Buffer.concat(await buildDelta(layerId, layer, this.chunks));
    await fsp.mkdir(this.dir, { recursive: true });
    await writeDurable(path.join(this.dir, `${layerId}.${idHex(hashBytes(bytes))}.dfdl`), bytes);
    return bytes;
  }
}
