import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FsChunkStore } from './fs-store.js';
import { hashBytes, idHex } from './id.js';
import { RawChunkCache } from './raw-cache.js';
import type { ChunkReader } from './store.js';

const dirs: string[] = [];

/** Bytes of a chunk read the way the NBD exports read them (into a buffer given). */
async function part(c: RawChunkCache, id: string, within: number, n: number): Promise<Buffer> {
  const out = Buffer.alloc(n, 0xee);
  await c.readInto(id, within, n, out, 0);
  return out;
}
const whole = (c: RawChunkCache, k: { id: string; raw: Buffer }) => part(c, k.id, 0, k.raw.length);
afterEach(() => { for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true }); });

async function store(n: number, len = 65536) {
  const dir = mkdtempSync(path.join(tmpdir(), 'df-rawc-'));
  dirs.push(dir);
  const s = await FsChunkStore.open(path.join(dir, 'chunks'), 4 << 20);
  const chunks = [];
  for (let i = 0; i < n; i++) {
    const raw = Buffer.alloc(len - i, i + 1);
    raw.writeUInt32BE(i * 7919, 100);
    const id = idHex(hashBytes(raw));
    await s.put(id, { raw });
    chunks.push({ id, raw });
  }
  return { dir, s, chunks };
}

describe('RawChunkCache', () => {
  it('serves chunk bytes and ranges from its slot files after one verified store read', async () => {
    const { dir, s, chunks } = await store(3);
    let gets = 0;
    const counting: ChunkReader = { has: (id) => s.has(id), get: (id) => { gets++; return s.get(id); } };
    const c = new RawChunkCache(counting, path.join(dir, 'cache'), 1 << 20);
    for (let round = 0; round < 3; round++) {
      for (const k of chunks) {
        expect((await whole(c, k)).equals(k.raw)).toBe(true);
        expect((await part(c, k.id, 1000, 333)).equals(k.raw.subarray(1000, 1333))).toBe(true);
      }
    }
    expect(gets).toBe(3);
    expect(c.misses).toBe(3);
    expect(readdirSync(path.join(dir, 'cache'))).toEqual(['slots-65536.raw']);
    c.close();
  });

  it('shares one store read between concurrent misses and evicts least recently used within its budget', async () => {
    const { dir, s, chunks } = await store(5);
    let gets = 0;
    const c = new RawChunkCache({ has: (id) => s.has(id), get: (id) => { gets++; return s.get(id); } }, path.join(dir, 'cache'), 3 * 65536);
    const same = await Promise.all([part(c, chunks[0]!.id, 0, 10), part(c, chunks[0]!.id, 10, 10), whole(c, chunks[0]!)]);
    expect(gets).toBe(1);
    expect(Buffer.concat([same[0], same[1]]).equals(chunks[0]!.raw.subarray(0, 20))).toBe(true);
    for (const k of chunks.slice(1)) await whole(c, k); // 0 is evicted first
    expect(c.bytes).toBe(3 * 65536);
    gets = 0;
    for (const k of chunks.slice(2)) expect((await whole(c, k)).equals(k.raw)).toBe(true);
    expect(gets).toBe(0);
    expect((await whole(c, chunks[0]!)).equals(chunks[0]!.raw)).toBe(true);
    expect(gets).toBe(1);
    c.close();
  });

  it('never caches what the store refused: a corrupt chunk fails every read', async () => {
    const { dir, s, chunks } = await store(1);
    const c = new RawChunkCache(s, path.join(dir, 'cache'), 1 << 20);
    const { writeFileSync, readFileSync } = await import('node:fs');
    const file = s.pathOf(chunks[0]!.id);
    const b = readFileSync(file);
    b[b.length - 5]! ^= 0xff;
    writeFileSync(file, b);
    await expect(part(c, chunks[0]!.id, 0, 10)).rejects.toMatchObject({ code: expect.stringMatching(/DF_ERR_CHUNK_(CORRUPT|INVALID)/) });
    await expect(whole(c, chunks[0]!)).rejects.toBeTruthy();
    c.close();
  });
});
