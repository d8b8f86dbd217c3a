import { promises as fsp, readdirSync, readSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { encodeFrame } from './frame.js';
import { FsChunkStore } from './fs-store.js';
import { hashBytes, idHex } from './id.js';
import { encodePack } from './pack.js';
import { PackFileCache } from './pack-cache.js';

const MAX = 64 * 1024;
let dir: string;
let store: FsChunkStore;
const errors: unknown[] = [];

function chunkOf(text: string) {
  const raw = Buffer.from(text.repeat(100));
  return { id: idHex(hashBytes(raw)), raw, frame: encodeFrame(raw) };
}
const packOf = (cs: Array<ReturnType<typeof chunkOf>>) => encodePack(cs.map((c) => ({ id: c.id, rawLength: c.raw.length, frame: c.frame })));

beforeEach(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'deskfuse-pack-cache-'));
  store = await FsChunkStore.open(path.join(dir, 'chunks'), MAX);
  errors.length = 0;
});
afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

async function read(c: PackFileCache, ids: string[]): Promise<Buffer | undefined> {
  const r = await c.acquire(ids);
  if (!r) return undefined;
  try {
    const b = Buffer.alloc(r.size);
    readSync(r.fd, b, 0, r.size, 0);
    return b;
  } finally {
    r.release();
  }
}

describe('PackFileCache (batch fetches asked for twice, kept as pack files)', () => {
  it('the first ask is served from the chunk files, the second builds the file, later asks get it byte for byte', async () => {
    const cs = ['a', 'b', 'c'].map(chunkOf);
    for (const c of cs) await store.put(c.id, { frame: c.frame });
    const cache = await PackFileCache.open(path.join(dir, 'packs'), 1 << 20, store, 1 << 20, (e) => errors.push(e));
    const ids = [cs[2]!.id, cs[0]!.id];
    expect(await read(cache, ids)).toBeUndefined();
    await cache.settled();
    expect(cache.size.files).toBe(0); // one ask builds nothing
    expect(await read(cache, ids)).toBeUndefined();
    await cache.settled();
    expect(cache.size).toEqual({ files: 1, bytes: packOf([cs[2]!, cs[0]!]).length });
    expect((await read(cache, ids))!.equals(packOf([cs[2]!, cs[0]!]))).toBe(true);
    expect(await read(cache, [cs[0]!.id, cs[2]!.id])).toBeUndefined(); // another order is another batch
    expect(cache.stats).toMatchObject({ hits: 1, misses: 3, built: 1 });
    expect(errors).toEqual([]);
  });

  it('stays within its bytes (least recently used out), is emptied by clear() and at open, and 0 turns it off', async () => {
    const cs = ['p', 'q', 'r', 's'].map(chunkOf);
    for (const c of cs) await store.put(c.id, { frame: c.frame });
    const one = packOf([cs[0]!]).length;
    const cache = await PackFileCache.open(path.join(dir, 'packs'), 2 * one + 10, store, 1 << 20, (e) => errors.push(e));
    const warm = async (c: ReturnType<typeof chunkOf>) => {
      await read(cache, [c.id]);
      await read(cache, [c.id]);
      await cache.settled();
    };
    await warm(cs[0]!);
    await warm(cs[1]!);
    expect(await read(cache, [cs[0]!.id])).toBeDefined(); // cs[0] is now the most recently used
    await warm(cs[2]!);
    expect(cache.size.files).toBe(2);
    expect(await read(cache, [cs[1]!.id])).toBeUndefined(); // the least recently used went
    expect(await read(cache, [cs[0]!.id])).toBeDefined();
    for (let i = 0; i < 50 && (await fsp.readdir(path.join(dir, 'packs'))).length !== 2; i++) await new Promise((r) => setTimeout(r, 10)); // its file goes in the background
    expect((await fsp.readdir(path.join(dir, 'packs'))).length).toBe(2);
    cache.clear();
    expect(cache.size).toEqual({ files: 0, bytes: 0 });
    expect(await read(cache, [cs[0]!.id])).toBeUndefined();
    await warm(cs[3]!);
    // a new cache on the same folder starts empty
    const again = await PackFileCache.open(path.join(dir, 'packs'), 1 << 20, store, 1 << 20, (e) => errors.push(e));
    expect(await fsp.readdir(path.join(dir, 'packs'))).toEqual([]);
    expect(await read(again, [cs[3]!.id])).toBeUndefined();
    const off = await PackFileCache.open(path.join(dir, 'off'), 0, store, 1 << 20, (e) => errors.push(e));
    for (let i = 0; i < 3; i++) expect(await read(off, [cs[3]!.id])).toBeUndefined();
    await off.settled();
    expect(off.size.files).toBe(0);
    expect(errors).toEqual([]);
  });

  it('a pack file removed behind its back is built again; a batch that cannot be read is reported and not cached', async () => {
    const c = chunkOf('x');
    await store.put(c.id, { frame: c.frame });
    const cache = await PackFileCache.open(path.join(dir, 'packs'), 1 << 20, store, 1 << 20, (e) => errors.push(e));
    await read(cache, [c.id]);
    await read(cache, [c.id]);
    await cache.settled();
    for (const f of await fsp.readdir(path.join(dir, 'packs'))) await fsp.rm(path.join(dir, 'packs', f));
    expect(await read(cache, [c.id])).toBeUndefined();
    await cache.settled();
    expect((await read(cache, [c.id]))!.equals(packOf([c]))).toBe(true);
    const absent = chunkOf('absent').id;
    await read(cache, [absent]);
    await read(cache, [absent]);
    await cache.settled();
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ code: 'DF_ERR_CHUNK_NOT_FOUND' });
    expect(cache.size.files).toBe(1);
  });

  it('holds one descriptor per cached pack (no open per hit), closed when dropped; a send in progress keeps its bytes through a clear', async () => {
    const c = chunkOf('held');
    await store.put(c.id, { frame: c.frame });
    const cache = await PackFileCache.open(path.join(dir, 'packs'), 1 << 20, store, 1 << 20, (e) => errors.push(e));
    const fds = () => readdirSync('/proc/self/fd').length;
    await read(cache, [c.id]);
    await read(cache, [c.id]);
    await cache.settled();
    const before = fds();
    const a = (await cache.acquire([c.id]))!;
    const b = (await cache.acquire([c.id]))!;
    expect(b.fd).toBe(a.fd);
    expect(fds()).toBe(before + 1);
    a.release();
    cache.clear(); // b is still sending
    const got = Buffer.alloc(b.size);
    readSync(b.fd, got, 0, b.size, 0);
    expect(got.equals(packOf([c]))).toBe(true);
    b.release();
    b.release(); // twice: released once
    for (let i = 0; i < 50 && fds() !== before; i++) await new Promise((r) => setTimeout(r, 10));
    expect(fds()).toBe(before);
  });
});
