import { describe, expect, it } from 'vitest';
import { DeskfuseError } from '../errors.js';
import { ChunkIndex, INDEX_MAGIC } from './chunk-index.js';
import { mutations, prng, thrown } from '../../test/helpers/expect.js';

const id = (byte: number): Buffer => Buffer.alloc(32, byte);
const SEQ_ID = Buffer.from(Array.from({ length: 32 }, (_, i) => i));

/** 10,240 bytes in 4 KiB chunks = 3 chunks: [0x11…, zero, 00 01 … 1f]. */
function tinyIndex(): ChunkIndex {
  const ix = ChunkIndex.empty({ virtualSize: 10240, chunkSize: 4096 });
  ix.set(0, id(0x11));
  ix.set(2, SEQ_ID);
  return ix;
}

// Written by hand from the diagram in chunk-index.ts, not produced by encode().
const TINY_HEX =
  '44464958' + //            magic "DFIX"
  '01' + //                  format version 1
  '01' + //                  hash algorithm 1 = BLAKE3-256
  '0000' + //                reserved
  '0000000000002800' + //    virtual size 10240
  '00001000' + //            chunk size 4096
  '00000003' + //            chunk count ceil(10240 / 4096) = 3
  '11'.repeat(32) + //       chunk 0
  '00'.repeat(32) + //       chunk 1: all-zero chunk
  '000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f'; // chunk 2

describe('ChunkIndex encoding', () => {
  it('encodes a tiny index to the bytes of the format diagram', () => {
    expect(tinyIndex().encode().toString('hex')).toBe(TINY_HEX);
  });

  it('decodes the golden bytes', () => {
    const ix = ChunkIndex.decode(Buffer.from(TINY_HEX, 'hex'));
    expect(ix.geometry).toEqual({ virtualSize: 10240, chunkSize: 4096 });
    expect(ix.count).toBe(3);
    expect(ix.idAt(0)).toEqual(id(0x11));
    expect(ix.isZeroAt(1)).toBe(true);
    expect(ix.idAt(2)).toEqual(SEQ_ID);
    expect(ix.nonZeroCount()).toBe(2);
    expect(ix.distinctIds()).toEqual(new Set(['11'.repeat(32), SEQ_ID.toString('hex')]));
  });

  it('round-trips decode(encode(x)) for several geometries', () => {
    const rnd = prng(7);
    for (const g of [
      { virtualSize: 512, chunkSize: 4096 },
      { virtualSize: 4096, chunkSize: 4096 },
      { virtualSize: 65536 * 5 + 512, chunkSize: 65536 },
      { virtualSize: 4 * 1024 * 1024 * 3, chunkSize: 4 * 1024 * 1024 },
    ]) {
      const ix = ChunkIndex.empty(g);
      for (let i = 0; i < ix.count; i++) if (rnd() < 0.6) ix.set(i, Buffer.from(Array.from({ length: 32 }, () => Math.floor(rnd() * 256))));
      const bytes = ix.encode();
      const back = ChunkIndex.decode(bytes);
      expect(back.geometry).toEqual(g);
      expect(back.count).toBe(ix.count);
      expect(back.encode()).toEqual(bytes);
    }
  });

  it('decode copies the ids: later changes to the input do not leak in', () => {
    const buf = Buffer.from(TINY_HEX, 'hex');
    const ix = ChunkIndex.decode(buf);
    buf.fill(0xee, 24);
    expect(ix.idAt(0)).toEqual(id(0x11));
  });

  it('clone is independent of the original', () => {
    const a = tinyIndex();
    const b = a.clone();
    b.set(1, id(0x22));
    expect(a.isZeroAt(1)).toBe(true);
    expect(b.idAt(1)).toEqual(id(0x22));
  });

  it('empty() refuses a bad geometry', () => {
    expect(thrown(() => ChunkIndex.empty({ virtualSize: 1000, chunkSize: 4096 })).code).toBe('DF_ERR_GEOMETRY');
  });
});

describe('ChunkIndex.decode rejects malformed input with DF_ERR_DECODE', () => {
  const golden = (): Buffer => Buffer.from(TINY_HEX, 'hex');

  it.each([
    ['bad magic', (b: Buffer) => b.write('DFIY', 0), 'magic', 0],
    ['format version 2', (b: Buffer) => b.writeUInt8(2, 4), 'format version', 4],
    ['hash algorithm 2', (b: Buffer) => b.writeUInt8(2, 5), 'hash algorithm', 5],
    ['count too low', (b: Buffer) => b.writeUInt32BE(2, 20), 'chunk count', 20],
    ['count too high', (b: Buffer) => b.writeUInt32BE(4, 20), 'chunk count', 20],
    ['virtual size not a multiple of 512', (b: Buffer) => b.writeBigUInt64BE(10241n, 8), 'geometry', undefined],
    ['chunk size not a power of two', (b: Buffer) => b.writeUInt32BE(6144, 16), 'geometry', undefined],
    ['virtual size above 2^53', (b: Buffer) => b.writeBigUInt64BE(1n << 60n, 8), 'virtual size', 8],
  ])('%s', (_name, mutate, field, offset) => {
    const b = golden();
    mutate(b);
    const err = thrown(() => ChunkIndex.decode(b));
    expect(err.code).toBe('DF_ERR_DECODE');
    expect(err.fields.field).toBe(field);
    if (offset !== undefined) expect(err.fields.offset).toBe(offset);
  });

  it('every truncation', () => {
    const b = golden();
    for (let n = 0; n < b.length; n++) {
      const err = thrown(() => ChunkIndex.decode(b.subarray(0, n)));
      expect(err.code).toBe('DF_ERR_DECODE');
    }
  });

  it('a truncation inside the ids names the ids field and offset 24', () => {
    const err = thrown(() => ChunkIndex.decode(golden().subarray(0, 24 + 95)));
    expect(err.fields).toMatchObject({ field: 'chunk ids', offset: 24 });
  });

  it('trailing bytes', () => {
    const err = thrown(() => ChunkIndex.decode(Buffer.concat([golden(), Buffer.from([0])])));
    expect(err.code).toBe('DF_ERR_DECODE');
    expect(err.fields).toMatchObject({ field: 'end', offset: 120 });
  });
});

describe('ChunkIndex.decode fuzz', () => {
  it('throws nothing but DF_ERR_DECODE on random, truncated and mutated input', () => {
    const rnd = prng(0xdf1);
    const byte = () => Math.floor(rnd() * 256);
    const randomBytes = (n: number) => Buffer.from(Array.from({ length: n }, byte));
    const valid = [tinyIndex().encode(), ChunkIndex.empty({ virtualSize: 512, chunkSize: 4096 }).encode()];
    const inputs: Buffer[] = [];
    for (let k = 0; k < 2000; k++) {
      const tail = randomBytes(Math.floor(rnd() * 200));
      const mode = k % 4;
      if (mode === 0) inputs.push(tail);
      else if (mode === 1) inputs.push(Buffer.concat([INDEX_MAGIC, Buffer.from([1, 1, 0, 0]), tail]));
      else inputs.push(Buffer.concat([valid[0]!.subarray(0, mode === 2 ? 24 : 8 + Math.floor(rnd() * 16)), tail]));
    }
    for (const m of mutations(valid, byte)) inputs.push(m);
    const bad: string[] = [];
    let accepted = 0;
    for (const input of inputs) {
      try {
        const ix = ChunkIndex.decode(input);
        accepted++;
        // Whatever decodes must re-encode and decode to the same index.
        expect(ChunkIndex.decode(ix.encode()).encode()).toEqual(ix.encode());
      } catch (err) {
        if (!(err instanceof DeskfuseError) || err.code !== 'DF_ERR_DECODE') bad.push(`${input.toString('hex')}: ${String(err)}`);
      }
    }
    expect(bad).toEqual([]);
    expect(inputs.length).toBeGreaterThan(2000);
    // Mutations of ids (and of reserved bytes) decode; the fuzz must exercise the accepting path too.
    expect(accepted).toBeGreaterThan(0);
  });
});
