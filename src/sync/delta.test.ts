import { describe, expect, it } from 'vitest';
import { encodeFrame } from '../chunk/frame.js';
import { hashBytes, idHex, ZERO_ID } from '../chunk/id.js';
import type { ChunkReader, StoredChunk } from '../chunk/store.js';
import { DeskfuseError, dfError } from '../errors.js';
import { fullMask as allMask, MAX_CHUNK_SIZE, type Geometry } from '../image/geometry.js';
import { encodeLayer, type Layer } from '../image/layer.js';
import { buildDelta, DELTA_MAGIC, deltaEntries, deltaPieces, readDelta } from './delta.js';
import { FrameReader } from './frames.js';
import { prng, rejection } from '../../test/helpers/expect.js';

/** An in-memory ChunkReader (the interface in chunk/store.ts), recording what was read. */
class MemChunks implements ChunkReader {
  private readonly raws = new Map<string, Buffer>();
  readonly reads: string[] = [];
  add(raw: Buffer): Buffer {
    const id = hashBytes(raw);
    this.raws.set(idHex(id), raw);
    return id;
  }
  async has(id: string): Promise<boolean> {
    return this.raws.has(id);
  }
  async get(id: string): Promise<StoredChunk> {
    const raw = this.raws.get(id);
    if (!raw) throw dfError('DF_ERR_CHUNK_NOT_FOUND', `chunk ${id} not found`, { id });
    this.reads.push(id);
    return { raw, frame: encodeFrame(raw) };
  }
}

/** The body as an async iterable of fresh Uint8Arrays whose sizes `size()` picks. */
async function* pieces(body: Buffer, size: () => number): AsyncGenerator<Uint8Array> {
  for (let off = 0; off < body.length;) {
    const n = Math.min(body.length - off, Math.max(1, size()));
    yield Uint8Array.from(body.subarray(off, off + n));
    off += n;
  }
}

/** [position, blocks as hex] of every item, in order. */
async function items(layerId: string, layer: Layer, body: AsyncIterable<Uint8Array>): Promise<Array<[number, string]>> {
  const out: Array<[number, string]> = [];
  for await (const it of readDelta(layerId, layer, body)) {
    if (it.entry.mask) expect(it.mask).toBe(it.entry.mask);
    out.push([it.entry.index, it.blocks.toString('hex')]);
  }
  return out;
}

const B = 4096;
const rnd0 = prng(0xde1);
/** Seeded bytes, 4 per PRNG draw. */
const randomBytes = (n: number) => {
  const b = Buffer.alloc(n + 3);
  for (let i = 0; i < n; i += 4) b.writeUInt32LE(Math.floor(rnd0() * 2 ** 32), i);
  return b.subarray(0, n);
};

/** 4 chunks of 16 KiB (4 blocks, one mask byte); the last is 4,608 bytes (a block and 512 bytes). */
const G: Geometry = { virtualSize: 3 * 16384 + 4608, chunkSize: 16384 };
const chunks = new MemChunks();
const c0 = randomBytes(16384);
const c2 = randomBytes(16384);
const c3 = randomBytes(4608);
const MASKED: Layer = {
  geometry: G,
  hasMasks: true,
  entries: [
    { index: 0, id: chunks.add(c0), mask: Buffer.from([0b0101]) }, // blocks 0 and 2
    { index: 1, id: Buffer.from(ZERO_ID), mask: Buffer.from([0b1111]) }, // a zero chunk: not in the delta
    { index: 2, id: chunks.add(c2), mask: Buffer.from([0b1111]) },
    { index: 3, id: chunks.add(c3), mask: Buffer.from([0b0010]) }, // the 512-byte tail block
  ],
};
/** The masked blocks, cut by hand from the chunks (not by extractBlocks). */
const MASKED_ITEMS: Array<[number, string]> = [
  [0, Buffer.concat([c0.subarray(0, B), c0.subarray(2 * B, 3 * B)]).toString('hex')],
  [2, c2.toString('hex')],
  [3, c3.subarray(B).toString('hex')],
];
const LAYER_ID = 'ab'.repeat(32);
// Written by hand from the diagram in delta.ts.
const GOLDEN_HEADER_HEX =
  '4446444c' + //         magic "DFDL"
  '01' + //               format version 1
  '000000' + //           reserved
  'ab'.repeat(32) + //    layer id
  '00000003'; //          entry count: the 3 non-zero entries

async function built(layerId: string, layer: Layer, store: ChunkReader = chunks): Promise<Buffer> {
  return Buffer.concat(await buildDelta(layerId, layer, store));
}

describe('whole chunks of the largest size', () => {
  it('two incompressible 4 MiB chunks sent whole go one per frame and read back in 64 KiB pieces', async () => {
    const g: Geometry = { virtualSize: 3 * MAX_CHUNK_SIZE, chunkSize: MAX_CHUNK_SIZE };
    const store = new MemChunks();
    const raws = [randomBytes(MAX_CHUNK_SIZE), randomBytes(MAX_CHUNK_SIZE)];
    const layer: Layer = { geometry: g, hasMasks: false, entries: raws.map((raw, i) => ({ index: i * 2, id: store.add(raw) })) };
    const body = await built(LAYER_ID, layer, store);
    const r = new FrameReader('test');
    r.push(body);
    r.take(44);
    const sizes: number[] = [];
    for (let f = r.next(); f; f = r.next()) sizes.push(f.length);
    expect(sizes).toEqual([MAX_CHUNK_SIZE, MAX_CHUNK_SIZE]);
    expect(await items(LAYER_ID, layer, pieces(body, () => 65536))).toEqual([[0, raws[0]!.toString('hex')], [2, raws[1]!.toString('hex')]]);
  });
});

describe('buildDelta', () => {
  it('writes the header of the diagram, then frames holding exactly the masked blocks, then the end marker', async () => {
    const body = await built(LAYER_ID, MASKED);
    expect(body.subarray(0, 44).toString('hex')).toBe(GOLDEN_HEADER_HEX);
    expect(body.subarray(body.length - 8).toString('hex')).toBe('00'.repeat(8));
    const r = new FrameReader('test');
    r.push(body);
    r.take(44);
    const raw: Buffer[] = [];
    for (let f = r.next(); f; f = r.next()) raw.push(f);
    r.finish();
    expect(Buffer.concat(raw).toString('hex')).toBe(MASKED_ITEMS.map(([, h]) => h).join(''));
  });

  it('reads each non-zero chunk once from the store, and never the zero chunk', async () => {
    const store = new MemChunks();
    for (const raw of [c0, c2, c3]) store.add(raw);
    await built(LAYER_ID, MASKED, store);
    expect(store.reads).toEqual([0, 2, 3].map((i) => idHex(MASKED.entries[i]!.id)));
  });

  it('a layer with no non-zero entry is the header and the end marker alone', async () => {
    const layer: Layer = { geometry: G, hasMasks: false, entries: [{ index: 1, id: Buffer.from(ZERO_ID) }] };
    expect((await built(LAYER_ID, layer)).toString('hex')).toBe('4446444c' + '01000000' + 'ab'.repeat(32) + '00000000' + '00'.repeat(8));
    expect(await items(LAYER_ID, layer, pieces(await built(LAYER_ID, layer), () => 1))).toEqual([]);
  });

  it('deltaPieces hands over each full frame before reading the chunks after it (a delta is never held whole)', async () => {
    const store = new MemChunks();
    const g: Geometry = { virtualSize: 4 * 4 * 1024 * 1024, chunkSize: 4 * 1024 * 1024 };
    const raws = [0, 1, 2, 3].map(() => randomBytes(2 * 1024 * 1024 + B)); // two never share a 4 MiB frame
    const layer: Layer = { geometry: g, hasMasks: false, entries: raws.map((raw, index) => ({ index, id: store.add(raw) })) };
    const events: string[] = [];
    const seen = store.reads;
    let bytes = 0;
    const parts: Buffer[] = [];
    for await (const piece of deltaPieces(LAYER_ID, layer, store)) {
      events.push(`piece after ${seen.length} reads`);
      bytes += piece.length;
      parts.push(piece);
    }
    // The header goes out with the first chunk, frame 1 once chunk 2 shows it is full, and so on.
    expect(events).toEqual(['piece after 1 reads', 'piece after 2 reads', 'piece after 3 reads', 'piece after 4 reads', 'piece after 4 reads', 'piece after 4 reads']);
    expect(Buffer.concat(parts).equals(Buffer.concat(await buildDelta(LAYER_ID, layer, store)))).toBe(true);
    expect(bytes).toBeGreaterThan(4 * 2 * 1024 * 1024);
  });

  it('a chunk missing from the store rejects with the store error', async () => {
    const layer: Layer = { geometry: G, hasMasks: false, entries: [{ index: 0, id: Buffer.alloc(32, 7) }] };
    expect((await rejection(built(LAYER_ID, layer))).code).toBe('DF_ERR_CHUNK_NOT_FOUND');
  });

  it('allMask sets one bit per block; deltaEntries drops zero chunks', () => {
    expect(allMask(G).toString('hex')).toBe('0f');
    expect(allMask({ virtualSize: 1 << 20, chunkSize: 64 * 1024 }).toString('hex')).toBe('ffff');
    expect(allMask({ virtualSize: 1 << 20, chunkSize: 4096 }).toString('hex')).toBe('01');
    expect(deltaEntries(MASKED).map((e) => e.index)).toEqual([0, 2, 3]);
  });
});

describe('readDelta', () => {
  it('yields exactly the masked blocks, in 1-byte pieces', async () => {
    const body = await built(LAYER_ID, MASKED);
    expect(await items(LAYER_ID, MASKED, pieces(body, () => 1))).toEqual(MASKED_ITEMS);
  });

  it('yields exactly the masked blocks over random splits, 100 times', async () => {
    const rnd = prng(0x5e1);
    const body = await built(LAYER_ID, MASKED);
    for (let k = 0; k < 100; k++) {
      const max = [3, 50, 1000, 20000, 100000][k % 5]!;
      expect(await items(LAYER_ID, MASKED, pieces(body, () => Math.floor(rnd() * max) + 1))).toEqual(MASKED_ITEMS);
    }
  });

  it('a layer without masks carries whole chunks, the short last one included', async () => {
    const layer: Layer = { geometry: G, hasMasks: false, entries: [{ index: 0, id: MASKED.entries[0]!.id }, { index: 3, id: MASKED.entries[3]!.id }] };
    const layerId = idHex(hashBytes(encodeLayer(layer)));
    const body = await built(layerId, layer);
    expect(await items(layerId, layer, pieces(body, () => 7))).toEqual([[0, c0.toString('hex')], [3, c3.toString('hex')]]);
  });

  it('more than 4 MiB of blocks: several frames, no entry straddling two', async () => {
    const g: Geometry = { virtualSize: 6 * 1024 * 1024, chunkSize: 1024 * 1024 };
    const store = new MemChunks();
    const raws = Array.from({ length: 6 }, (_, i) => Buffer.from(`chunk ${i}, compressible; `.repeat(50000)).subarray(0, g.chunkSize));
    const layer: Layer = { geometry: g, hasMasks: false, entries: raws.map((raw, index) => ({ index, id: store.add(raw) })) };
    const body = await built(LAYER_ID, layer, store);
    // Four whole chunks fill the first frame's 4 MiB; the other two go to the second.
    const r = new FrameReader('test');
    r.push(body);
    r.take(44);
    const sizes: number[] = [];
    for (let f = r.next(); f; f = r.next()) sizes.push(f.length);
    expect(sizes).toEqual([4 * g.chunkSize, 2 * g.chunkSize]);
    const rnd = prng(0x5e2);
    const got: string[] = [];
    for await (const it of readDelta(LAYER_ID, layer, pieces(body, () => Math.floor(rnd() * 65536) + 1))) got.push(idHex(hashBytes(it.blocks)));
    expect(got).toEqual(layer.entries.map((e) => idHex(e.id)));
  });
});

describe('readDelta rejects a delta that does not fit the layer with DF_ERR_DECODE', () => {
  const golden = () => built(LAYER_ID, MASKED);

  it('made for another layer', async () => {
    const err = await rejection(items('cd'.repeat(32), MASKED, pieces(await golden(), () => 5)));
    expect(err.code).toBe('DF_ERR_DECODE');
    expect(err.fields).toMatchObject({ what: 'delta', field: 'layer id', offset: 8 });
  });

  it('a wrong entry count in the header', async () => {
    const body = await golden();
    body.writeUInt32BE(2, 40);
    const err = await rejection(items(LAYER_ID, MASKED, pieces(body, () => 1000)));
    expect(err.fields).toMatchObject({ what: 'delta', field: 'entry count', offset: 40 });
  });

  it('a layer with one entry more than the delta counts', async () => {
    const body = await built(LAYER_ID, { ...MASKED, entries: MASKED.entries.slice(0, 3) });
    const err = await rejection(items(LAYER_ID, MASKED, pieces(body, () => 100)));
    expect(err.fields).toMatchObject({ field: 'entry count', offset: 40 });
  });

  it.each([
    ['bad magic', (b: Buffer) => b.write('DFLY', 0)],
    ['format version 2', (b: Buffer) => b.writeUInt8(2, 4)],
  ])('%s', async (_name, mutate) => {
    const body = await golden();
    mutate(body);
    expect((await rejection(items(LAYER_ID, MASKED, pieces(body, () => 3)))).fields).toMatchObject({ what: 'delta', offset: 0 });
  });

  it('an empty body, or one shorter than the header', async () => {
    for (const body of [Buffer.alloc(0), Buffer.from(GOLDEN_HEADER_HEX, 'hex').subarray(0, 43)]) {
      const err = await rejection(items(LAYER_ID, MASKED, pieces(body, () => 10)));
      expect(err.code).toBe('DF_ERR_DECODE');
      expect(err.message).toMatch(/empty body/);
    }
  });

  it('every truncation, and a trailing byte', async () => {
    const body = await golden();
    for (let n = 0; n < body.length; n += n < 80 || n > body.length - 80 ? 1 : 97) {
      expect((await rejection(items(LAYER_ID, MASKED, pieces(body.subarray(0, n), () => 4096)))).code).toBe('DF_ERR_DECODE');
    }
    expect((await rejection(items(LAYER_ID, MASKED, pieces(Buffer.concat([body, Buffer.from([0])]), () => 4096)))).code).toBe('DF_ERR_DECODE');
  });

  it('more blocks than the masks name', async () => {
    const wide: Layer = { geometry: G, hasMasks: true, entries: [{ index: 0, id: MASKED.entries[0]!.id, mask: Buffer.from([0b0011]) }] };
    const narrow: Layer = { ...wide, entries: [{ ...wide.entries[0]!, mask: Buffer.from([0b0001]) }] };
    const err = await rejection(items(LAYER_ID, narrow, pieces(await built(LAYER_ID, wide), () => 1 << 20)));
    expect(err.message).toMatch(/more blocks than entries/);
  });

  it('fewer blocks than the masks name', async () => {
    const narrow: Layer = { geometry: G, hasMasks: true, entries: [{ index: 0, id: MASKED.entries[0]!.id, mask: Buffer.from([0b0001]) }] };
    const wide: Layer = { ...narrow, entries: [{ ...narrow.entries[0]!, mask: Buffer.from([0b0011]) }] };
    const err = await rejection(items(LAYER_ID, wide, pieces(await built(LAYER_ID, narrow), () => 1 << 20)));
    expect(err.message).toMatch(/straddles a frame/);
  });
});
