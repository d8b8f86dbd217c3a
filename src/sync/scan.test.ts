import { closeSync, openSync, promises as fsp, readFileSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashBytes, isZero } from '../chunk/id.js';
import { ChunkIndex } from '../image/chunk-index.js';
import { chunkCount, chunkLength, type Geometry } from '../image/geometry.js';
import { blockHashes } from './blockhash.js';
import { scanRange } from './scan-core.js';
import { scanDisk } from './scan.js';
import { scanByFingerprints } from './scan-fast.js';
import { prng } from '../../test/helpers/expect.js';
import { makeDisk } from '../../test/helpers/disk.js';

const rnd = prng(0x5ca7);
/** Seeded bytes, 4 per PRNG draw. */
const randomBytes = (n: number) => {
  const b = Buffer.alloc(n + 3);
  for (let i = 0; i < n; i += 4) b.writeUInt32LE(Math.floor(rnd() * 2 ** 32), i);
  return b.subarray(0, n);
};
type Extent = { start: number; length: number };

let dir: string;
beforeAll(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'deskfuse-scan-'));
});
afterAll(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

/** A sparse file of `size` bytes with `regions` written; everything else a hole. */
function sparse(name: string, size: number, regions: Array<{ at: number; data: Buffer }>): string {
  const file = path.join(dir, name);
  makeDisk(file, size, regions);
  return file;
}

function write(file: string, at: number, data: Buffer): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, data, 0, data.length, at);
  } finally {
    closeSync(fd);
  }
}

/** What a scan should find, computed straight from the file bytes. */
function truth(file: string, g: Geometry): { index: ChunkIndex; raws: Buffer[] } {
  const all = readFileSync(file);
  const index = ChunkIndex.empty(g);
  const raws: Buffer[] = [];
  for (let pos = 0; pos < chunkCount(g); pos++) {
    const raw = all.subarray(pos * g.chunkSize, pos * g.chunkSize + chunkLength(g, pos));
    raws.push(raw);
    if (!isZero(raw)) index.set(pos, hashBytes(raw));
  }
  return { index, raws };
}

/** 10 chunks of 64 KiB, the last 4,608 bytes; the file runs on past the image, like a disk. */
const CS = 65536;
const G: Geometry = { virtualSize: 9 * CS + 4608, chunkSize: CS };
const EXTENTS: Extent[] = [
  { start: CS, length: CS }, //                chunk 1: random
  { start: 4 * CS + 100, length: 4900 }, //    chunk 4: a few blocks
  { start: 6 * CS, length: CS }, //            chunk 6: written zeros (allocated, still a zero chunk)
  { start: 9 * CS, length: 4608 + 8192 }, //   chunk 9 (short), then bytes past the image
];
let disk: string;
beforeAll(() => {
  disk = sparse('disk.img', G.virtualSize + 65536, [
    { at: CS, data: randomBytes(CS) },
    { at: 4 * CS + 100, data: randomBytes(4900) },
    { at: 6 * CS, data: Buffer.alloc(CS) },
    { at: 9 * CS, data: randomBytes(4608) },
    { at: G.virtualSize, data: randomBytes(8192) }, // not part of the image: must not change chunk 9's id
  ]);
});

describe('scanDisk', () => {
  it('ids are the hashes of the chunks (zero for zero chunks); without expected ids every non-zero chunk is changed', async () => {
    const { index, raws } = truth(disk, G);
    const r = await scanDisk(disk, G, null, null, 1);
    expect(r.index.encode().toString('hex')).toBe(index.encode().toString('hex'));
    expect(r.index.isZeroAt(6)).toBe(true);
    expect(r.changed).toEqual([1, 4, 9]);
    expect([...r.hints.keys()]).toEqual([1, 4, 9]);
    for (const pos of r.changed) expect(r.hints.get(pos)).toEqual(blockHashes(raws[pos]!, G));
    // Without extents the file's holes (SEEK_DATA/SEEK_HOLE) are not read: its allocated 4 KiB blocks inside the image.
    expect(r.bytesRead).toBe(CS + 8192 + CS + 4608);
    expect(r.seconds).toBeGreaterThanOrEqual(0);
  });

  it('with extents reads only allocated bytes inside the image, and finds the same ids', async () => {
    const { index } = truth(disk, G);
    const r = await scanDisk(disk, G, EXTENTS, null, 1);
    expect(r.index.encode().toString('hex')).toBe(index.encode().toString('hex'));
    expect(r.changed).toEqual([1, 4, 9]);
    expect(r.bytesRead).toBe(CS + 4900 + CS + 4608);
  });

  it('several ranges (in-process under vitest: the .js worker is absent) give the same result as one', async () => {
    const one = await scanDisk(disk, G, EXTENTS, null, 1);
    for (const threads of [2, 3, 4, 16]) {
      for (const extents of [EXTENTS, null]) {
        const r = await scanDisk(disk, G, extents, null, threads, 2 * CS); // small batches: several stripes
        expect(r.index.encode()).toEqual(one.index.encode());
        expect(r.changed).toEqual(one.changed);
        expect([...r.hints.entries()]).toEqual([...one.hints.entries()]);
      }
    }
  });

  it('against expected ids, changed lists exactly the positions that differ, zeroed chunks included', async () => {
    const file = sparse('changed.img', G.virtualSize, [{ at: 0, data: readFileSync(disk).subarray(0, G.virtualSize) }]);
    const expected = truth(file, G).index;
    expect((await scanDisk(file, G, null, expected, 3)).changed).toEqual([]);
    write(file, CS, Buffer.alloc(CS)); //                      chunk 1 → zero
    write(file, 2 * CS + 4096 * 3, randomBytes(10)); //        chunk 2: was zero
    write(file, 9 * CS + 4607, Buffer.from([0xff])); //        chunk 9: last byte
    write(file, 5 * CS, Buffer.alloc(100)); //                 chunk 5: zeros over zeros, unchanged
    const { index, raws } = truth(file, G);
    for (const threads of [1, 4]) {
      const r = await scanDisk(file, G, null, expected, threads);
      expect(r.changed).toEqual([1, 2, 9]);
      expect(r.index.encode()).toEqual(index.encode());
      expect(r.index.isZeroAt(1)).toBe(true);
      for (const pos of r.changed) expect(r.hints.get(pos)).toEqual(blockHashes(raws[pos]!, G));
    }
  });

  it('4 KiB chunks across read batches (1,024 chunks a batch), with and without extents', async () => {
    const g: Geometry = { virtualSize: 2100 * 4096 + 512, chunkSize: 4096 };
    const regions = [0, 1023, 1024, 2047, 2048, 2098].map((pos) => ({ at: pos * 4096 + 7, data: randomBytes(4096) }));
    regions.push({ at: 2100 * 4096, data: randomBytes(512) }); // the short last chunk
    const file = sparse('small-chunks.img', g.virtualSize, regions);
    const { index } = truth(file, g);
    const extents = regions.map((r) => ({ start: r.at, length: r.data.length }));
    for (const [ext, threads] of [[null, 1], [extents, 1], [extents, 3], [null, 8]] as const) {
      const r = await scanDisk(file, g, ext, null, threads);
      expect(r.index.encode().equals(index.encode())).toBe(true);
      expect(r.changed).toEqual([0, 1, 1023, 1024, 1025, 2047, 2048, 2049, 2098, 2099, 2100]);
    }
  });

  it('random sparse files: scanning by extents equals scanning everything', async () => {
    for (let k = 0; k < 8; k++) {
      const cs = [4096, 16384, 65536][k % 3]!;
      const g: Geometry = { virtualSize: 512 * (1 + Math.floor(rnd() * 8192)), chunkSize: cs };
      const extents: Extent[] = [];
      for (let at = Math.floor(rnd() * 20000); at < g.virtualSize; at += 1 + Math.floor(rnd() * 200000)) {
        const length = Math.min(1 + Math.floor(rnd() * 70000), g.virtualSize - at);
        extents.push({ start: at, length });
        at += length;
      }
      const file = sparse(`random-${k}.img`, g.virtualSize, extents.map((e) => ({ at: e.start, data: randomBytes(e.length) })));
      const { index } = truth(file, g);
      for (const threads of [1, 4]) {
        const r = await scanDisk(file, g, extents, null, threads);
        expect(r.index.encode().equals(index.encode())).toBe(true);
        expect(r.bytesRead).toBe(extents.reduce((s, e) => s + e.length, 0));
      }
      expect((await scanDisk(file, g, null, index, 2)).changed).toEqual([]);
    }
  });

  it('holes are skipped exactly: a chunk in a hole is the zero chunk, a chunk partly in one hashes with zeros there', async () => {
    const g: Geometry = { virtualSize: 64 * CS, chunkSize: CS };
    const data = randomBytes(3 * CS);
    // chunk 3 half written (its second half a hole), chunks 10-11 whole, chunk 40's last block
    const file = sparse('holes.img', g.virtualSize, [
      { at: 3 * CS, data: data.subarray(0, CS / 2) },
      { at: 10 * CS, data: data.subarray(CS, 3 * CS) },
      { at: 41 * CS - 4096, data: randomBytes(4096) },
    ]);
    const { index } = truth(file, g);
    for (const threads of [1, 3]) {
      const r = await scanDisk(file, g, null, null, threads, 2 * CS);
      expect(r.index.encode().equals(index.encode())).toBe(true);
      expect(r.changed).toEqual([3, 10, 11, 40]);
      expect(r.bytesRead).toBe(CS / 2 + 2 * CS + 4096);
      expect(r.hashed).toBe(4);
    }
  });

  it('a block device (a loop device over the same sparse file) has no hole map: read whole, same ids, no error', async () => {
    // Linux answers SEEK_DATA on a block device with EINVAL; the boot stage scans /dev/vda, not a file.
    const g: Geometry = { virtualSize: 16 * CS, chunkSize: CS };
    const file = sparse('loop.img', g.virtualSize, [{ at: 2 * CS, data: randomBytes(CS) }, { at: 9 * CS + 4096, data: randomBytes(4096) }]);
    const { index } = truth(file, g);
    const dev = (await execa('losetup', ['-f', '--show', file])).stdout.trim();
    try {
      for (const threads of [1, 2]) {
        const r = await scanDisk(dev, g, null, null, threads);
        expect(r.index.encode().equals(index.encode())).toBe(true);
        expect(r.changed).toEqual([2, 9]);
        expect(r.bytesRead).toBe(g.virtualSize); // every byte read: a device reports no holes
      }
    } finally {
      await execa('losetup', ['-d', dev], { reject: false });
    }
  });

  it('fingerprints: unchanged chunks keep their ids without BLAKE3, a 1-byte change anywhere is found', async () => {
    const g: Geometry = { virtualSize: 24 * CS + 1024, chunkSize: CS };
    const regions = Array.from({ length: 24 }, (_, pos) => ({ at: pos * CS, data: randomBytes(pos === 5 ? 4096 : CS) }));
    regions.push({ at: 24 * CS, data: randomBytes(1024) });
    const file = sparse('fp.img', g.virtualSize, regions);
    const first = await scanDisk(file, g, null, null, 2, 4 * CS);
    expect(first.hashed).toBe(25);
    const expected = first.index;
    const fps = first.fingerprints;
    expect(fps.length).toBe(25 * 16);
    // Nothing changed: nothing hashed, same ids, nothing changed.
    for (const threads of [1, 2, 3]) {
      const r = await scanDisk(file, g, null, expected, threads, 4 * CS, null, fps);
      expect(r.changed).toEqual([]);
      expect(r.hashed).toBe(0);
      expect(r.index.encode().equals(expected.encode())).toBe(true);
      expect(r.fingerprints.equals(fps)).toBe(true);
    }
    // One byte flipped in each of several chunks, at the first, a middle and the last byte; one chunk zeroed; one written in a hole.
    write(file, 0, Buffer.from([readFileSync(file)[0]! ^ 1]));
    write(file, 7 * CS + 30_000, Buffer.from([readFileSync(file)[7 * CS + 30_000]! ^ 0x80]));
    write(file, 24 * CS + 1023, Buffer.from([readFileSync(file)[24 * CS + 1023]! ^ 0xff]));
    write(file, 12 * CS, Buffer.alloc(CS));
    write(file, 5 * CS + 8192, Buffer.from([1]));
    const { index, raws } = truth(file, g);
    for (const threads of [1, 2]) {
      const r = await scanDisk(file, g, null, expected, threads, 4 * CS, null, fps);
      expect(r.changed).toEqual([0, 5, 7, 12, 24]);
      expect(r.index.encode().equals(index.encode())).toBe(true);
      expect(r.hashed).toBe(4); // 12 is zero now: no BLAKE3 for it
      for (const pos of r.changed) expect(r.hints.get(pos)).toEqual(blockHashes(raws[pos]!, g));
      // the next scan, against what this one found, sees no change
      const again = await scanDisk(file, g, null, r.index, threads, 4 * CS, null, r.fingerprints);
      expect(again.changed).toEqual([]);
      expect(again.hashed).toBe(0);
    }
  });

  it('fingerprints: an unknown (zero) or wrong entry, or a list of the wrong size, means BLAKE3, never a trusted id', async () => {
    const g: Geometry = { virtualSize: 8 * CS, chunkSize: CS };
    const file = sparse('fp2.img', g.virtualSize, Array.from({ length: 8 }, (_, pos) => ({ at: pos * CS, data: randomBytes(CS) })));
    const first = await scanDisk(file, g, null, null, 1);
    const fps = Buffer.from(first.fingerprints);
    fps.fill(0, 2 * 16, 3 * 16); // position 2 unknown
    fps[4 * 16 + 3]! ^= 1; // position 4: a fingerprint that does not match the bytes
    const r = await scanDisk(file, g, null, first.index, 1, undefined, null, fps);
    expect(r.hashed).toBe(2);
    expect(r.changed).toEqual([]);
    expect(r.fingerprints.equals(first.fingerprints)).toBe(true);
    // a wrong-size list is ignored: everything hashed
    expect((await scanDisk(file, g, null, first.index, 1, undefined, null, fps.subarray(16))).hashed).toBe(8);
    // expected ids that lie about a chunk whose fingerprint matches are believed: the fingerprint is
    // the whole test (which is why the state area keeps them with the ids they were made with)
    const lying = first.index.clone();
    lying.set(6, Buffer.alloc(32, 7));
    expect((await scanDisk(file, g, null, lying, 1, undefined, null, first.fingerprints)).changed).toEqual([]);
  });

  it("fingerprints: the addon's pass (scan-fast.ts) finds what the worker scan finds, reads no hole, and falls back past maxSuspects", async () => {
    const g: Geometry = { virtualSize: 300 * CS + 512, chunkSize: CS };
    const regions = Array.from({ length: 40 }, () => Math.floor(rnd() * 300)).map((pos) => ({ at: pos * CS + Math.floor(rnd() * CS / 2), data: randomBytes(1 + Math.floor(rnd() * CS)) }));
    const file = sparse('fast.img', g.virtualSize + CS, regions);
    const first = await scanDisk(file, g, null, null, 2, 4 * CS); // no fingerprints: the workers' scan
    const allocated = Number((await execa('du', ['-B1', file])).stdout.split('\t')[0]);
    const fast = await scanByFingerprints(file, g, first.index, first.fingerprints, null, 2, 1000);
    expect(fast).not.toBeNull();
    expect(fast!.changed).toEqual([]);
    expect(fast!.hashed).toBe(0);
    expect(fast!.ids.equals(first.index.ids)).toBe(true);
    expect(fast!.fingerprints.equals(first.fingerprints)).toBe(true);
    expect(fast!.bytesRead).toBeLessThanOrEqual(allocated + 40 * CS); // whole chunks around the data, never the holes
    // changes: bytes in a hole, a chunk zeroed, a byte flipped; the same as the workers find with no fingerprints
    write(file, 150 * CS + 77, randomBytes(3000));
    write(file, regions[0]!.at - (regions[0]!.at % CS), Buffer.alloc(CS));
    write(file, 300 * CS + 511, Buffer.from([readFileSync(file)[300 * CS + 511]! ^ 0x41]));
    const want = await scanDisk(file, g, null, first.index, 2, 4 * CS); // no fingerprints: everything hashed
    const got = await scanByFingerprints(file, g, first.index, first.fingerprints, null, 2, 1000);
    expect(got!.changed).toEqual(want.changed);
    expect(got!.ids.equals(want.index.ids)).toBe(true);
    expect(got!.fingerprints.equals(want.fingerprints)).toBe(true);
    for (const pos of want.changed) expect(got!.hints.get(pos)).toEqual(want.hints.get(pos));
    // more chunks to hash than allowed: null, and scanDisk's answer is the workers' (same result)
    expect(await scanByFingerprints(file, g, first.index, first.fingerprints, null, 2, 1)).toBeNull();
    // a read error is the system's, with its errno code (the agent turns it into DF_ERR_DISK_IO)
    await expect(scanByFingerprints(dir, g, first.index, first.fingerprints, null, 2, 1000)).rejects.toMatchObject({ code: 'EISDIR' });
  });

  it('scanRange scans one range with positions relative to the whole disk', () => {
    const { index } = truth(disk, G);
    const r = scanRange({ path: disk, geometry: G, first: 3, end: 10, stripe: 0, stripes: 1, extents: null, expected: null });
    expect(Buffer.from(r.ids).equals(index.ids.subarray(3 * 32))).toBe(true);
    expect([...r.changed]).toEqual([4, 9]);
    expect(r.hints.length).toBe(2 * 16 * 4);
  });
});

describe('scan of only the positions a tracker marked (scanDisk only=)', () => {
  it('reads only the marked chunks, finds their changes, and keeps the expected id and fingerprint of the rest', async () => {
    const g: Geometry = { virtualSize: 4 * 1024 * 1024, chunkSize: 65536 };
    const file = sparse('only.img', g.virtualSize, [{ at: 0, data: randomBytes(g.virtualSize) }]);
    const first = await scanDisk(file, g, null, null, 1, 256 * 1024);
    write(file, 5 * 65536 + 100, randomBytes(300));
    write(file, 40 * 65536, randomBytes(70_000)); // positions 40 and 41
    const only = new Uint8Array(chunkCount(g));
    for (const pos of [5, 40, 41, 63]) only[pos] = 1;
    for (const threads of [1, 2]) {
      const s = await scanDisk(file, g, null, first.index, threads, 256 * 1024, null, first.fingerprints, only);
      expect(s.changed).toEqual([5, 40, 41]);
      expect(s.bytesRead).toBe(4 * 65536);
      const t = truth(file, g);
      for (const pos of [5, 40, 41, 63]) expect(s.index.idAt(pos)).toEqual(t.index.idAt(pos));
      for (let pos = 0; pos < chunkCount(g); pos++) {
        if (only[pos]) continue;
        expect(s.index.idAt(pos)).toEqual(first.index.idAt(pos));
        expect(s.fingerprints.subarray(pos * 16, pos * 16 + 16)).toEqual(first.fingerprints.subarray(pos * 16, pos * 16 + 16));
      }
    }
  });
});
