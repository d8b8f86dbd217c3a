import { describe, expect, it } from 'vitest';
import { DeskfuseError } from '../errors.js';
import { ChunkIndex } from './chunk-index.js';
import type { Geometry } from './geometry.js';
import { applyLayer, decodeLayer, diffIndexes, encodeLayer, LAYER_MAGIC, layerChunkIds, type Layer } from './layer.js';
import { mutations, prng, thrown } from '../../test/helpers/expect.js';

const id = (byte: number): Buffer => Buffer.alloc(32, byte);

/** 8,704 bytes in 4 KiB chunks = 3 chunks (the last 512 bytes long); no masks. */
const PLAIN: Layer = {
  geometry: { virtualSize: 8704, chunkSize: 4096 },
  hasMasks: false,
  entries: [{ index: 0, id: id(0xaa) }, { index: 2, id: id(0) }],
};
// Written by hand from the diagram in layer.ts, not produced by encodeLayer().
const PLAIN_HEX =
  '44464c59' + //            magic "DFLY"
  '01' + //                  format version 1
  '00' + //                  flags: no masks
  '0000' + //                reserved
  '0000000000002200' + //    virtual size 8704
  '00001000' + //            chunk size 4096
  '00000002' + //            entry count 2
  '00000000' + 'aa'.repeat(32) + // position 0 → aa…
  '00000002' + '00'.repeat(32); //  position 2 → zero chunk

/** 196,608 bytes in 64 KiB chunks = 3 chunks; 16 blocks a chunk → 2 mask bytes. */
const MASKED: Layer = {
  geometry: { virtualSize: 196608, chunkSize: 65536 },
  hasMasks: true,
  entries: [
    { index: 1, id: id(0xcd), mask: Buffer.from([0x05, 0x80]) },
    { index: 2, id: id(0xef), mask: Buffer.from([0xff, 0xff]) },
  ],
};
const MASKED_HEX =
  '44464c59' + '01' +
  '01' + //                  flags: bit 0 = masks
  '0000' +
  '0000000000030000' + //    virtual size 196608
  '00010000' + //            chunk size 65536
  '00000002' +
  '00000001' + 'cd'.repeat(32) + '0580' + // blocks 0, 2 and 15 differ
  '00000002' + 'ef'.repeat(32) + 'ffff';

describe('layer encoding', () => {
  it('encodes a layer without masks to the bytes of the diagram', () => {
    expect(encodeLayer(PLAIN).toString('hex')).toBe(PLAIN_HEX);
  });

  it('encodes a layer with masks to the bytes of the diagram', () => {
    expect(encodeLayer(MASKED).toString('hex')).toBe(MASKED_HEX);
  });

  it('decodes the golden bytes', () => {
    expect(decodeLayer(Buffer.from(PLAIN_HEX, 'hex'))).toEqual(PLAIN);
    expect(decodeLayer(Buffer.from(MASKED_HEX, 'hex'))).toEqual(MASKED);
  });

  it('round-trips with and without masks, including an empty layer', () => {
    const empty: Layer = { geometry: { virtualSize: 4096, chunkSize: 4096 }, hasMasks: true, entries: [] };
    for (const l of [PLAIN, MASKED, empty]) {
      const bytes = encodeLayer(l);
      const back = decodeLayer(bytes);
      expect(back).toEqual(l);
      expect(encodeLayer(back)).toEqual(bytes);
    }
  });

  it('a 4 KiB-chunk layer still carries one mask byte per entry', () => {
    const l: Layer = { geometry: { virtualSize: 8192, chunkSize: 4096 }, hasMasks: true, entries: [{ index: 1, id: id(1), mask: Buffer.from([1]) }] };
    expect(encodeLayer(l).length).toBe(24 + 4 + 32 + 1);
    expect(decodeLayer(encodeLayer(l))).toEqual(l);
  });

  it.each([
    ['positions out of order', { ...PLAIN, entries: [{ index: 2, id: id(1) }, { index: 0, id: id(2) }] }, 'position'],
    ['a repeated position', { ...PLAIN, entries: [{ index: 1, id: id(1) }, { index: 1, id: id(2) }] }, 'position'],
    ['a position beyond the chunk count', { ...PLAIN, entries: [{ index: 3, id: id(1) }] }, 'position'],
    ['a fractional position', { ...PLAIN, entries: [{ index: 0.5, id: id(1) }] }, 'position'],
    ['a short id', { ...PLAIN, entries: [{ index: 0, id: Buffer.alloc(31) }] }, 'id'],
    ['a missing mask', { ...MASKED, entries: [{ index: 0, id: id(1) }] }, 'mask'],
    ['a mask of the wrong length', { ...MASKED, entries: [{ index: 0, id: id(1), mask: Buffer.alloc(3) }] }, 'mask'],
  ])('encode refuses %s', (_name, layer, field) => {
    const err = thrown(() => encodeLayer(layer as Layer));
    expect(err.code).toBe('DF_ERR_DECODE');
    expect(err.fields.field).toBe(field);
  });

  it('encode refuses a bad geometry', () => {
    expect(thrown(() => encodeLayer({ ...PLAIN, geometry: { virtualSize: 8704, chunkSize: 1000 } })).code).toBe('DF_ERR_GEOMETRY');
  });

  it('layerChunkIds lists the non-zero ids', () => {
    expect(layerChunkIds(PLAIN)).toEqual([id(0xaa)]);
  });
});

describe('decodeLayer rejects malformed input with DF_ERR_DECODE', () => {
  const plain = (): Buffer => Buffer.from(PLAIN_HEX, 'hex');
  const masked = (): Buffer => Buffer.from(MASKED_HEX, 'hex');

  it.each([
    ['bad magic', plain, (b: Buffer) => b.write('DFIX', 0), 'magic', 0],
    ['format version 0', plain, (b: Buffer) => b.writeUInt8(0, 4), 'format version', 4],
    ['unknown flag bit', plain, (b: Buffer) => b.writeUInt8(0x02, 5), 'flags', 5],
    ['unknown flag bit beside masks', masked, (b: Buffer) => b.writeUInt8(0x81, 5), 'flags', 5],
    ['out-of-order positions', plain, (b: Buffer) => b.writeUInt32BE(3, 24), 'position', 24],
    ['repeated position', plain, (b: Buffer) => b.writeUInt32BE(0, 60), 'position', 60],
    ['position = chunk count', plain, (b: Buffer) => b.writeUInt32BE(3, 60), 'position', 60],
    ['position far beyond', masked, (b: Buffer) => b.writeUInt32BE(0xffffffff, 62), 'position', 62],
    ['entry count too high', plain, (b: Buffer) => b.writeUInt32BE(3, 20), 'entry count', 20],
    ['entry count too low', plain, (b: Buffer) => b.writeUInt32BE(1, 20), 'entry count', 20],
    ['entry count huge', plain, (b: Buffer) => b.writeUInt32BE(0xffffffff, 20), 'entry count', 20],
    ['masks flagged but absent', plain, (b: Buffer) => b.writeUInt8(1, 5), 'entry count', 20],
    ['masks present but not flagged', masked, (b: Buffer) => b.writeUInt8(0, 5), 'entry count', 20],
    ['geometry: chunk size 2 MiB + 1', plain, (b: Buffer) => b.writeUInt32BE(2 * 1024 * 1024 + 1, 16), 'geometry', undefined],
    ['geometry: virtual size 0', plain, (b: Buffer) => b.writeBigUInt64BE(0n, 8), 'geometry', undefined],
  ])('%s', (_name, make, mutate, field, offset) => {
    const b = make();
    mutate(b);
    const err = thrown(() => decodeLayer(b));
    expect(err.code).toBe('DF_ERR_DECODE');
    expect(err.fields.field).toBe(field);
    if (offset !== undefined) expect(err.fields.offset).toBe(offset);
  });

  it('every truncation and one extra byte', () => {
    for (const b of [plain(), masked()]) {
      for (let n = 0; n < b.length; n++) expect(thrown(() => decodeLayer(b.subarray(0, n))).code).toBe('DF_ERR_DECODE');
      expect(thrown(() => decodeLayer(Buffer.concat([b, Buffer.from([0])]))).code).toBe('DF_ERR_DECODE');
    }
  });
});

describe('diffIndexes / applyLayer', () => {
  function randomIndex(g: Geometry, rnd: () => number, base?: ChunkIndex): ChunkIndex {
    const ix = base ? base.clone() : ChunkIndex.empty(g);
    for (let i = 0; i < ix.count; i++) {
      const p = rnd();
      if (p < 0.3) ix.set(i, Buffer.from(Array.from({ length: 32 }, () => Math.floor(rnd() * 256))));
      else if (p < 0.4) ix.set(i, Buffer.alloc(32));
    }
    return ix;
  }

  it('apply(parent, diff(parent, child)) equals child, also through the wire format', () => {
    const rnd = prng(42);
    const g = { virtualSize: 64 * 4096 + 1024, chunkSize: 4096 };
    for (let k = 0; k < 50; k++) {
      const parent = k % 5 === 0 ? null : randomIndex(g, rnd);
      const child = randomIndex(g, rnd, parent ?? undefined);
      const layer = diffIndexes(parent, child);
      const want = child.encode().toString('hex');
      expect(applyLayer(parent, layer).encode().toString('hex')).toBe(want);
      expect(applyLayer(parent, decodeLayer(encodeLayer(layer))).encode().toString('hex')).toBe(want);
    }
  });

  it('diff holds exactly the changed positions and leaves the parent untouched', () => {
    const g = { virtualSize: 4 * 4096, chunkSize: 4096 };
    const parent = ChunkIndex.empty(g);
    parent.set(0, id(1));
    parent.set(1, id(2));
    const parentBytes = parent.encode();
    const child = parent.clone();
    child.set(1, id(3));
    child.set(0, Buffer.alloc(32));
    child.set(3, id(4));
    const layer = diffIndexes(parent, child);
    expect(layer).toEqual({ geometry: g, hasMasks: false, entries: [{ index: 0, id: Buffer.alloc(32) }, { index: 1, id: id(3) }, { index: 3, id: id(4) }] });
    applyLayer(parent, layer);
    expect(parent.encode()).toEqual(parentBytes);
  });

  it('diff of identical indexes is empty; diff against null lists the non-zero chunks', () => {
    const g = { virtualSize: 3 * 4096, chunkSize: 4096 };
    const ix = ChunkIndex.empty(g);
    ix.set(2, id(9));
    expect(diffIndexes(ix, ix.clone()).entries).toEqual([]);
    expect(diffIndexes(null, ix).entries).toEqual([{ index: 2, id: id(9) }]);
  });

  it('diff refuses indexes of different geometry', () => {
    const a = ChunkIndex.empty({ virtualSize: 8192, chunkSize: 4096 });
    const b = ChunkIndex.empty({ virtualSize: 8192 + 512, chunkSize: 4096 });
    expect(thrown(() => diffIndexes(a, b)).code).toBe('DF_ERR_SIZE_MISMATCH');
  });
});

describe('decodeLayer fuzz', () => {
  it('throws nothing but DF_ERR_DECODE on random, truncated and mutated input', () => {
    const rnd = prng(0xdf2);
    const byte = () => Math.floor(rnd() * 256);
    const randomBytes = (n: number) => Buffer.from(Array.from({ length: n }, byte));
    const valid = [encodeLayer(PLAIN), encodeLayer(MASKED)];
    const inputs: Buffer[] = [];
    for (let k = 0; k < 2000; k++) {
      const tail = randomBytes(Math.floor(rnd() * 200));
      const mode = k % 4;
      if (mode === 0) inputs.push(tail);
      else if (mode === 1) inputs.push(Buffer.concat([LAYER_MAGIC, Buffer.from([1, byte() & 1, 0, 0]), tail]));
      else {
        // A valid header (so entries get parsed) with random entries whose size may fit the count.
        const head = Buffer.from(valid[k & 1]!.subarray(0, 24));
        const per = k & 1 ? 38 : 36;
        const n = Math.floor(rnd() * 4);
        head.writeUInt32BE(n, 20);
        inputs.push(Buffer.concat([head, mode === 2 ? randomBytes(n * per) : tail]));
      }
    }
    for (const m of mutations(valid, byte)) inputs.push(m);
    const bad: string[] = [];
    let accepted = 0;
    for (const input of inputs) {
      try {
        const l = decodeLayer(input);
        accepted++;
        // Whatever decodes must re-encode and decode to the same layer.
        expect(decodeLayer(encodeLayer(l))).toEqual(l);
      } catch (err) {
        if (!(err instanceof DeskfuseError) || err.code !== 'DF_ERR_DECODE') bad.push(`${input.toString('hex')}: ${String(err)}`);
      }
    }
    expect(bad).toEqual([]);
    expect(inputs.length).toBeGreaterThan(2000);
    expect(accepted).toBeGreaterThan(0);
  });
});
