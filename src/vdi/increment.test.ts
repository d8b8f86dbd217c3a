import { promises as fsp } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FsChunkStore } from '../chunk/fs-store.js';
import { hashBytes, idHex } from '../chunk/id.js';
import { RawChunkCache } from '../chunk/raw-cache.js';
import { ChunkIndex } from '../image/chunk-index.js';
import { chunkLength, type Geometry } from '../image/geometry.js';
import { STATE } from '../nbd/constants.js';
import { BASE, CloudIncrement, DATA, MAP, ZERO } from './increment.js';

const g: Geometry = { virtualSize: 8 * 65536 + 4096, chunkSize: 65536 }; // 9 chunks, the last one short
const dirs: string[] = [];
afterEach(() => { for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true }); });

/** A base version: chunks 0, 2, 3, 8 hold patterned bytes, the rest are zero. */
async function setup() {
  const dir = mkdtempSync(path.join(tmpdir(), 'df-inc-'));
  dirs.push(dir);
  const store = await FsChunkStore.open(path.join(dir, 'chunks'), 4 << 20);
  const index = ChunkIndex.empty(g);
  const model = Buffer.alloc(g.virtualSize);
  for (const i of [0, 2, 3, 8]) {
    const raw = Buffer.alloc(chunkLength(g, i), 0x10 + i);
    raw.write(`chunk ${i}`, 7);
    const id = hashBytes(raw);
    await store.put(idHex(id), { raw });
    index.set(i, id);
    raw.copy(model, i * g.chunkSize);
  }
  const cache = new RawChunkCache(store, path.join(dir, 'cache'), 1 << 20);
  const incDir = path.join(dir, 'vdi', 's1');
  await CloudIncrement.create(incDir, g);
  return { dir: incDir, index, cache, model };
}

/** The whole disk, read both ways (pieces, and into one buffer as the NBD server does), which must agree. */
const all = async (inc: CloudIncrement) => {
  const a = Buffer.concat(await inc.read(0, g.virtualSize));
  const b = Buffer.alloc(g.virtualSize, 0xee);
  await inc.readInto(0, b);
  expect(b.equals(a)).toBe(true);
  return a;
};

describe('CloudIncrement', () => {
  it('reads the base until written; writes copy on write at chunk granularity, odd offsets and sizes', async () => {
    const { dir, index, cache, model } = await setup();
    const inc = await CloudIncrement.open(dir, index, cache);
    expect((await all(inc)).equals(model)).toBe(true);
    const w = Buffer.alloc(70001, 0xab);
    await inc.write(65536 * 2 - 1000, w); // spans chunks 1 (zero base), 2 and 3 (data base)
    w.copy(model, 65536 * 2 - 1000);
    await inc.write(3, Buffer.from('xyz'));
    model.write('xyz', 3);
    expect((await all(inc)).equals(model)).toBe(true);
    expect(inc.changedPositions()).toEqual([0, 1, 2, 3]);
    expect([0, 1, 2, 3, 4].map((i) => inc.stateAt(i))).toEqual([DATA, DATA, DATA, DATA, BASE]);
    await inc.close();
  });

  it('zeroes whole chunks without I/O and partial ones by writing; extents report holes', async () => {
    const { dir, index, cache, model } = await setup();
    const inc = await CloudIncrement.open(dir, index, cache);
    await inc.zero(65536 * 2 + 100, 65536 * 2); // part of 2, all of 3, part of 4
    model.fill(0, 65536 * 2 + 100, 65536 * 4 + 100);
    expect(inc.stateAt(3)).toBe(ZERO);
    expect((await all(inc)).equals(model)).toBe(true);
    await inc.write(65536 * 3 + 5, Buffer.from('back')); // zero → data again: the rest stays zero
    model.write('back', 65536 * 3 + 5);
    expect((await all(inc)).equals(model)).toBe(true);
    await inc.zero(0, 65536); // a base data chunk zeroed whole
    model.fill(0, 0, 65536);
    const ex = inc.extents(0, g.virtualSize);
    expect(ex.reduce((s, e) => s + e.length, 0)).toBe(g.virtualSize);
    expect(ex[0]).toEqual({ length: 2 * 65536, flags: STATE.HOLE | STATE.ZERO }); // chunk 0 zeroed, chunk 1 zero base
    await inc.close();
  });

  it('keeps everything written before a flush across a reopen and loses only the unflushed tail', async () => {
    const { dir, index, cache, model } = await setup();
    let inc = await CloudIncrement.open(dir, index, cache);
    await inc.write(65536 * 5, Buffer.alloc(65536, 0x55));
    await inc.zero(65536 * 8, chunkLength(g, 8));
    await inc.flush();
    model.fill(0x55, 65536 * 5, 65536 * 6);
    model.fill(0, 65536 * 8);
    await inc.write(65536 * 6 + 7, Buffer.from('not flushed'));
    await inc.close(); // as if the server died: no flush
    inc = await CloudIncrement.open(dir, index, cache);
    expect((await all(inc)).equals(model)).toBe(true);
    expect(inc.changedPositions()).toEqual([5, 8]);
    await inc.close();
  });

  it('ignores a torn or corrupt tail of the map and appends after the last good record', async () => {
    const { dir, index, cache, model } = await setup();
    let inc = await CloudIncrement.open(dir, index, cache);
    await inc.write(65536 * 4, Buffer.alloc(10, 0x44));
    await inc.flush();
    model.fill(0x44, 65536 * 4, 65536 * 4 + 10);
    await inc.close();
    const map = path.join(dir, MAP);
    await fsp.appendFile(map, Buffer.from([0, 0, 0, 6, 0, 0, 0, 1, 9, 9, 9, 9, 1, 2])); // bad CRC + torn bytes
    inc = await CloudIncrement.open(dir, index, cache);
    expect(inc.changedPositions()).toEqual([4]);
    expect((await fsp.stat(map)).size).toBe(20 + 12);
    await inc.write(65536 * 7, Buffer.alloc(1, 0x77));
    await inc.flush();
    model[65536 * 7] = 0x77;
    await inc.close();
    inc = await CloudIncrement.open(dir, index, cache);
    expect(inc.changedPositions()).toEqual([4, 7]);
    expect((await all(inc)).equals(model)).toBe(true);
    await inc.close();
  });

  it('matches a byte model under many concurrent random writes, zeroes and flushes', async () => {
    const { dir, index, cache, model } = await setup();
    let inc = await CloudIncrement.open(dir, index, cache);
    let seed = 7;
    const rnd = (n: number) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
    for (let round = 0; round < 20; round++) {
      // Non-overlapping ops in one round may run at once (as pipelined NBD requests would).
      const ops: Promise<void>[] = [];
      const used: Array<[number, number]> = [];
      for (let k = 0; k < 8; k++) {
        const off = rnd(g.virtualSize - 1);
        const len = 1 + rnd(Math.min(150000, g.virtualSize - off));
        if (used.some(([a, b]) => off < b && a < off + len)) continue;
        used.push([off, off + len]);
        if (rnd(4) === 0) { ops.push(inc.zero(off, len)); model.fill(0, off, off + len); }
        else { const d = Buffer.alloc(len, rnd(256)); ops.push(inc.write(off, d)); d.copy(model, off); }
      }
      await Promise.all(ops);
      if (round % 5 === 4) await inc.flush();
    }
    await inc.flush();
    expect((await all(inc)).equals(model)).toBe(true);
    await inc.close();
    inc = await CloudIncrement.open(dir, index, cache);
    expect((await all(inc)).equals(model)).toBe(true);
    await inc.close();
  });

  it('refuses a map made for another geometry with a coded error', async () => {
    const { dir, cache } = await setup();
    const other = ChunkIndex.empty({ virtualSize: 65536 * 4, chunkSize: 65536 });
    await expect(CloudIncrement.open(dir, other, cache)).rejects.toMatchObject({ code: 'DF_ERR_STATE_CORRUPT' });
  });
});

describe('VersionExport', () => {
  it('reads and describes a version: extents from cached run bounds agree with a chunk-by-chunk walk, reads match', async () => {
    const { VersionExport, zeroChunkExtents } = await import('./version-export.js');
    const { index, cache, model } = await setup();
    const exp = new VersionExport('win@main', 'test', index, cache);
    for (const [off, len] of [[0, g.virtualSize], [1, 5], [65536 * 2 - 1, 65536 * 3], [65536 * 8 + 100, 4096 - 100], [65536 * 4, 65536]] as const) {
      const want = zeroChunkExtents(index, off, len, (i) => index.isZeroAt(i));
      // Extents may run past the request (the server trims the last one): compare what the request covers.
      const trim = (ex: Array<{ length: number; flags: number }>) => {
        const o: typeof ex = [];
        for (let left = len, k = 0; left > 0; k++) { o.push({ flags: ex[k]!.flags, length: Math.min(left, ex[k]!.length) }); left -= ex[k]!.length; }
        return o;
      };
      expect(trim(await exp.extents(off, len))).toEqual(trim(want));
      const out = Buffer.alloc(len, 0xee);
      await exp.readInto(off, out);
      expect(out.equals(model.subarray(off, off + len))).toBe(true);
      expect(Buffer.concat(await exp.read(off, len)).equals(model.subarray(off, off + len))).toBe(true);
    }
    // Again, now from the cache (adjacent slots are read with one pread).
    const out = Buffer.alloc(g.virtualSize);
    await exp.readInto(0, out);
    expect(out.equals(model)).toBe(true);
  });
});

describe('CloudIncrement snapshots (checkpoints)', () => {
  it('are one instant: writes after it, racing the reads, never show; they are the next snapshot\'s chunks', async () => {
    const { dir, index, cache } = await setup();
    const inc = await CloudIncrement.open(dir, index, cache);
    await inc.write(10, Buffer.alloc(100, 0xa1)); // chunk 0 (data base)
    await inc.write(65536 + 5, Buffer.alloc(65536, 0xa2)); // chunks 1 and 2
    await inc.zero(3 * 65536, 65536); // chunk 3 zeroed whole
    expect(inc.dirtyCount).toBe(4);
    const before = await Promise.all([0, 1, 2].map((i) => inc.chunk(i)));
    const snap = await inc.snapshot(false);
    expect(snap.positions).toEqual([0, 1, 2, 3]);
    expect(inc.dirtyCount).toBe(0);
    // Writes land on chunks 0-2 and 5 while the snapshot is read: each chunk is read as it was.
    const writes = Promise.all([inc.write(0, Buffer.alloc(65536 * 3, 0xb3)), inc.write(5 * 65536, Buffer.alloc(10, 0xb5))]);
    const took = await Promise.all(snap.positions.map((i) => snap.take(i)));
    await writes;
    snap.release(false);
    for (const i of [0, 1, 2]) expect(took[i]).toEqual({ state: DATA, bytes: before[i] });
    expect(took[3]).toEqual({ state: ZERO, bytes: null });
    expect((await inc.chunk(1)).every((b) => b === 0xb3)).toBe(true);
    const next = await inc.snapshot(false);
    expect(next.positions).toEqual([0, 1, 2, 5]);
    expect((await next.take(5)).bytes!.subarray(0, 10).every((b) => b === 0xb5)).toBe(true);
    next.release(true); // failed: its chunks stay for the next one
    expect(inc.dirtyCount).toBe(4);
    const whole = await inc.snapshot(true);
    expect(whole.positions).toEqual([0, 1, 2, 3, 5]);
    whole.release(false);
    await inc.close();
  });
});
