import { existsSync, promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { hashBytes, idHex, isZero, isZeroId, ZERO_ID } from '../../src/chunk/id.js';
import type { PrunableStore } from '../../src/chunk/store.js';
import { isDeskfuseError } from '../../src/errors.js';
import { runGc, type GcDeps, type GcResult } from '../../src/gc/gc.js';
import { commitGuard } from '../../src/gc/guard.js';
import { gcStoreOf } from '../../src/gc/stores.js';
import { Catalog } from '../../src/image/catalog.js';
import { encodeLayer } from '../../src/image/layer.js';
import type { Meta } from '../../src/meta/repo.js';

/**
 * A small catalog world for garbage-collection tests: one image of CHUNKS chunks of 4 KiB, content
 * drawn from a small pool (so new versions reuse chunks old, unreferenced ones had), a publisher that
 * uploads, stages and commits as the CLI does (uploading again what a commit reports missing), and
 * an export that reads a version back chunk by chunk.
 */
export const CHUNK = 4096;
export const CHUNKS = 6;
export const G = { virtualSize: CHUNKS * CHUNK, chunkSize: CHUNK };

export class Rng {
  constructor(private s: number) {}
  next(): number {
    // mulberry32
    let t = (this.s = (this.s + 0x6d2b79f5) | 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
}

export function poolChunk(k: number, salt: number): Buffer {
  if (k === 0) return Buffer.alloc(CHUNK);
  const b = Buffer.alloc(CHUNK);
  b.writeUInt32BE(k, 0);
  b.writeUInt32BE(salt, 4);
  b.fill(k & 0xff, 8);
  return b;
}

export interface World {
  meta: Meta;
  chunks: PrunableStore;
  blobs: PrunableStore;
  catalog: Catalog;
  image: string;
  /** Every version made: its expected content. */
  expected: Map<number, Buffer[]>;
}

export function makeCatalog(meta: Meta, chunks: PrunableStore, blobs: PrunableStore): Catalog {
  return new Catalog({ images: meta.images, chunks, blobs, guard: commitGuard(meta.gc, { waitMs: 5_000 }) });
}

/** Upload, stage and commit `content` on `ref` over its head; retried as a client does when GC took something meanwhile. */
export async function publish(w: World, ref: string, content: Buffer[], yieldFn: () => Promise<void> = async () => {}): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    try {
      const head = await w.meta.images.getRef(w.image, ref);
      const parent = head ? w.expected.get(head.version) : undefined;
      const entries = [];
      for (let i = 0; i < CHUNKS; i++) {
        if (parent && parent[i]!.equals(content[i]!)) continue;
        const zero = isZero(content[i]!);
        const id = zero ? ZERO_ID : hashBytes(content[i]!);
        if (!zero) await w.chunks.put(idHex(id), { raw: content[i]! });
        entries.push({ index: i, id });
        await yieldFn();
      }
      const { layer } = await w.catalog.stageLayer(w.image, encodeLayer({ geometry: G, hasMasks: false, entries }));
      await yieldFn();
      const out = await w.catalog.commit({ image: w.image, parent: head?.version ?? null, ref, layer, kind: 'publish', author: 't', message: '' });
      w.expected.set(out.version.version, content);
      return out.version.version;
    } catch (err) {
      const again = ['DF_ERR_CHUNKS_MISSING', 'DF_ERR_LAYER_NOT_FOUND', 'DF_ERR_VERSION_NOT_FOUND', 'DF_ERR_CHUNK_NOT_FOUND'].some((c) => isDeskfuseError(err, c as never));
      if (!again || attempt > 20) throw err;
    }
  }
}

/** Every version row left exports byte-exact. Returns how many were checked. */
export async function checkExports(w: World): Promise<number> {
  const versions = await w.meta.images.listVersions(w.image, 1_000_000);
  for (const v of versions) {
    const want = w.expected.get(v.version);
    if (!want) throw new Error(`version ${v.version} has no expected content`);
    const idx = await w.catalog.index(w.image, v.version);
    for (let i = 0; i < CHUNKS; i++) {
      const id = idx.idAt(i);
      const got = isZeroId(id) ? Buffer.alloc(CHUNK) : (await w.chunks.get(idHex(id))).raw;
      if (!got.equals(want[i]!)) throw new Error(`version ${v.version} chunk ${i} differs`);
    }
  }
  return versions.length;
}

/** What retention (part A of the lifecycle) does, crudely: version rows no ref points to go. */
export async function dropUnreferencedVersions(w: World): Promise<number> {
  return w.meta.engine.run('DELETE FROM versions WHERE image = ? AND version NOT IN (SELECT version FROM refs WHERE image = ?)', [w.image, w.image]);
}

export function gcDeps(w: World, over: Partial<GcDeps> & { tmpDir: string }): GcDeps {
  return {
    repo: w.meta.gc, images: w.meta.images, chunks: gcStoreOf(w.chunks), blobs: gcStoreOf(w.blobs),
    readBlob: async (id) => (await w.blobs.get(id)).raw, holder: 'test', graceMs: 0, ...over,
  };
}

export function gc(w: World, over: Partial<GcDeps> & { tmpDir: string }, dryRun = false): Promise<GcResult> {
  return runGc(gcDeps(w, over), { dryRun });
}

/** A temp folder, in memory when the machine has /dev/shm (these tests fsync a lot and check logic, not disks). */
export async function tmpDir(prefix: string): Promise<string> {
  const base = existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  return fsp.mkdtemp(path.join(base, prefix));
}
