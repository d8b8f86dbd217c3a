import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FsChunkStore } from '../chunk/fs-store.js';
import { hashBytes } from '../chunk/id.js';
import { RawChunkCache } from '../chunk/raw-cache.js';
import { ChunkIndex } from '../image/chunk-index.js';
import { ThreadChunks } from './thread-chunks.js';
import { VersionExport, type KnownAt, type VersionCall } from './version-export.js';

/**
 * A version export as an NBD worker thread runs it (src/vdi/nbd-thread.ts), in this thread: the
 * handoff's data and call, a ThreadChunks over them. What crosses to the main thread is counted.
 */
const dirs: string[] = [];
afterEach(() => { for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true }); });

const CS = 65536;

async function version(n: number) {
  const dir = mkdtempSync(path.join(tmpdir(), 'df-thrc-'));
  dirs.push(dir);
  const s = await FsChunkStore.open(path.join(dir, 'chunks'), 4 << 20);
  const ids = Buffer.alloc(n * 32);
  const disk = Buffer.alloc(n * CS);
  for (let i = 0; i < n; i++) {
    if (i % 4 === 3) continue; // a hole
    const raw = Buffer.alloc(CS, i + 1);
    raw.writeUInt32BE(i * 7919, 100);
    const id = hashBytes(raw);
    await s.put(id.toString('hex'), { raw });
    id.copy(ids, i * 32);
    raw.copy(disk, i * CS);
  }
  const index = ChunkIndex.over({ virtualSize: n * CS, chunkSize: CS }, ids);
  const cache = new RawChunkCache(s, path.join(dir, 'cache'), 64 << 20);
  const main = new VersionExport('v', 'a version', index, cache);
  return { index, cache, main, disk };
}

/** The thread's copy from a handoff, with the calls it makes to the main thread recorded. */
function inThread(main: VersionExport, index: ChunkIndex) {
  const h = main.handoff()!;
  const calls: VersionCall[] = [];
  const chunks = new ThreadChunks((req) => { calls.push(req); return h.call(req); });
  const d = h.data as { name: string; description: string; known: KnownAt[] };
  const exp = new VersionExport(d.name, d.description, index, chunks);
  return { exp, calls, known: d.known };
}

async function read(exp: VersionExport, offset: number, length: number): Promise<Buffer> {
  const out = Buffer.alloc(length, 0xee);
  await exp.readInto(offset, out);
  return out;
}

describe('a version export in an NBD worker thread', () => {
  it('reads what was cached at the handoff without asking the main thread', async () => {
    const { index, cache, main, disk } = await version(8);
    expect((await read(main, 0, disk.length)).equals(disk)).toBe(true); // everything cached now
    const { exp, calls, known } = inThread(main, index);
    expect(known.map((k) => k.i)).toEqual([0, 1, 2, 4, 5, 6]);
    exp.learn(known);
    for (const [o, n] of [[0, disk.length], [5 * CS + 100, 3000], [CS - 10, 20]] as const) {
      expect((await read(exp, o, n)).equals(disk.subarray(o, o + n))).toBe(true);
    }
    expect(calls).toEqual([]);
    cache.close();
  });

  it('after a miss learns the cached chunks around it in one message, loading none of them', async () => {
    const { index, cache, main, disk } = await version(12);
    // Cached on the main thread: chunks 0-6 (through the cache: the export's read-ahead would load 8-10).
    for (const i of [0, 1, 2, 4, 5, 6]) await cache.readInto(index.idAt(i).toString('hex'), 0, 10, Buffer.alloc(10), 0, CS);
    expect(cache.whereNow(index.idAt(8).toString('hex'))).toBeUndefined();
    const { exp, calls } = inThread(main, index);
    expect((await read(exp, 2 * CS + 5, 100)).equals(disk.subarray(2 * CS + 5, 2 * CS + 105))).toBe(true);
    // One `where` for the miss, one `known` for its window; the read-ahead of a random reader: none.
    expect(calls.map((c) => c.op).sort()).toEqual(['known', 'where']);
    const known = calls.find((c) => c.op === 'known')!;
    await new Promise((r) => setTimeout(r, 20));
    const before = cache.misses;
    for (const i of [0, 1, 4, 5, 6]) expect((await read(exp, i * CS, CS)).equals(disk.subarray(i * CS, (i + 1) * CS))).toBe(true);
    expect(calls.length).toBe(2);
    expect(cache.misses).toBe(before); // `known` loaded nothing: 8-10 are still not cached
    expect(known.items.length).toBe(8); // the window's data chunks but the one asked for
    expect(cache.whereNow(index.idAt(8).toString('hex'))).toBeUndefined();
    expect((await read(exp, 8 * CS, 3 * CS)).equals(disk.subarray(8 * CS, 11 * CS))).toBe(true);
    cache.close();
  });
});
