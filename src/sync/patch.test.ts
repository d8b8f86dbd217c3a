import { describe, expect, it } from 'vitest';
import { hashBytes, idHex } from '../chunk/id.js';
import { DeskfuseError } from '../errors.js';
import { randomBytes as cryptoBytes } from 'node:crypto';
import { fullMask, MAX_CHUNK_SIZE, type Geometry } from '../image/geometry.js';
import { encodeFrameRecord, FRAME_RAW_MAX, FRAMES_END } from './frames.js';
import { decodePatch, encodePatch, openPatch, PATCH_MAGIC, PATCH_RAW_MAX, rebuild, type PatchRecord } from './patch.js';
import { patchBomb } from '../../test/helpers/bombs.js';
import { prng, thrown } from '../../test/helpers/expect.js';

const B = 4096;
const idOf = (raw: Buffer) => idHex(hashBytes(raw));
const rnd0 = prng(0xba7);
/** Seeded bytes, 4 per PRNG draw. */
const randomBytes = (n: number) => {
  const b = Buffer.alloc(n + 3);
  for (let i = 0; i < n; i += 4) b.writeUInt32LE(Math.floor(rnd0() * 2 ** 32), i);
  return b.subarray(0, n);
};

/** A 100-byte chunk (a short last chunk of a 4 KiB-chunk image) sent whole: mask 0x01. */
const G4: Geometry = { virtualSize: 8192, chunkSize: 4096 };
const SHORT = Buffer.alloc(100, 0x5a);
const GOLDEN: PatchRecord = { id: idOf(SHORT), base: 'cd'.repeat(32), length: 100, mask: Buffer.from([1]), blocks: SHORT };
// Written by hand from the diagrams in patch.ts and frames.ts. The one frame is a zstd frame with a
// single raw block (RFC 8878 §3.1.1): header descriptor 0x20, content size 0xa9 = 169, block header
// 169 << 3 | last = 0x000549 (little-endian), then the 169-byte record.
const GOLDEN_HEX =
  '44465054' + '01' + '000000' + //   "DFPT", version 1, reserved
  '00001000' + //                     chunk size 4096 (mask: 1 byte)
  '000000a9' + '000000b2' + //        frame: raw 169, compressed 178
  '28b52ffd' + '20' + 'a9' + '490500' + //
  GOLDEN.id + //                      new chunk id
  'cd'.repeat(32) + //                base chunk id
  '00000064' + //                     new chunk length 100
  '01' + //                           mask: block 0
  '5a'.repeat(100) + //               block 0 (100 bytes: the chunk is short)
  '00'.repeat(8); //                  end

const summary = (rs: PatchRecord[]) => rs.map((r) => ({ ...r, mask: r.mask.toString('hex'), blocks: `${r.blocks.length}:${idOf(r.blocks)}` }));

describe('patch encoding', () => {
  it('decodes the hand-written golden body', () => {
    const { chunkSize, records } = decodePatch(Buffer.from(GOLDEN_HEX, 'hex'));
    expect(chunkSize).toBe(4096);
    expect(records).toEqual([GOLDEN]);
  });

  it('encodes the header of the diagram; a patch of no records is the header and the end marker', () => {
    const bytes = encodePatch(G4, [GOLDEN]);
    // Header and the frame's raw length; the compressed length is zstd's to choose.
    expect(bytes.subarray(0, 16).toString('hex')).toBe(GOLDEN_HEX.slice(0, 32));
    expect(bytes.subarray(-8).toString('hex')).toBe('00'.repeat(8));
    expect(encodePatch({ virtualSize: 1 << 20, chunkSize: 65536 }, []).toString('hex')).toBe('4446505401000000' + '00010000' + '00'.repeat(8));
    expect(decodePatch(encodePatch(G4, []))).toEqual({ chunkSize: 4096, records: [] });
  });

  it('round-trips records with and without a base, masks of every shape, short chunks', () => {
    const g: Geometry = { virtualSize: 1 << 20, chunkSize: 65536 };
    const records: PatchRecord[] = [];
    for (let k = 0; k < 30; k++) {
      const length = k % 3 === 0 ? 1 + Math.floor(rnd0() * 65536) : 65536;
      const mask = Buffer.from([Math.floor(rnd0() * 256), k % 5 === 0 ? 0xff : Math.floor(rnd0() * 256)]);
      const chunk = randomBytes(length);
      const blocks: Buffer[] = [];
      for (let b = 0; b * B < length; b++) if (mask[b >> 3]! & (1 << (b & 7))) blocks.push(chunk.subarray(b * B, Math.min((b + 1) * B, length)));
      records.push({ id: idOf(chunk), base: k % 4 === 0 ? null : idOf(randomBytes(8)), length, mask, blocks: Buffer.concat(blocks) });
    }
    const bytes = encodePatch(g, records);
    const back = decodePatch(bytes);
    expect(back.chunkSize).toBe(65536);
    expect(summary(back.records)).toEqual(summary(records));
    expect(encodePatch(g, back.records).equals(bytes)).toBe(true);
  });

  it('more than 4 MiB of records spans several frames and still decodes in order', () => {
    const g: Geometry = { virtualSize: 8 << 20, chunkSize: 1 << 20 };
    const mask = Buffer.alloc(32, 0xff);
    const records: PatchRecord[] = Array.from({ length: 6 }, (_, i) => {
      const chunk = Buffer.from(`chunk ${i} `.repeat(150000)).subarray(0, 1 << 20);
      return { id: idOf(chunk), base: null, length: chunk.length, mask, blocks: chunk };
    });
    const bytes = encodePatch(g, records);
    expect(bytes.length).toBeLessThan(1 << 20);
    expect(summary(decodePatch(bytes).records)).toEqual(summary(records));
  });
});

/** The raw lengths of a patch body's frames (after its 12-byte header). */
function frameLengths(body: Buffer): number[] {
  const out: number[] = [];
  for (let off = 12; ; off += 8 + body.readUInt32BE(off + 4)) {
    const raw = body.readUInt32BE(off);
    if (raw === 0) return out;
    out.push(raw);
  }
}

describe('whole chunks of the largest size', () => {
  const g: Geometry = { virtualSize: 3 * MAX_CHUNK_SIZE, chunkSize: MAX_CHUNK_SIZE };
  const HEAD = 32 + 32 + 4 + MAX_CHUNK_SIZE / B / 8; // 196 bytes

  it('a record of exactly a 4 MiB chunk plus its head (incompressible, zero base) encodes, decodes and rebuilds', () => {
    const chunk = cryptoBytes(MAX_CHUNK_SIZE);
    const rec: PatchRecord = { id: idOf(chunk), base: null, length: MAX_CHUNK_SIZE, mask: fullMask(g), blocks: chunk };
    const bytes = encodePatch(g, [rec]);
    expect(frameLengths(bytes)).toEqual([MAX_CHUNK_SIZE + HEAD]);
    const back = decodePatch(bytes);
    expect(back.chunkSize).toBe(MAX_CHUNK_SIZE);
    expect(summary(back.records)).toEqual(summary([rec]));
    expect(rebuild(back.records[0]!, null, back.chunkSize)!.equals(chunk)).toBe(true);
  });

  it('three such records go one per frame, each frame within FRAME_RAW_MAX, and decode in order', () => {
    const chunks = [0, 1, 2].map(() => cryptoBytes(MAX_CHUNK_SIZE));
    const records = chunks.map((c, i): PatchRecord => ({ id: idOf(c), base: i === 1 ? idOf(chunks[0]!) : null, length: c.length, mask: fullMask(g), blocks: c }));
    const bytes = encodePatch(g, records);
    expect(frameLengths(bytes)).toEqual([MAX_CHUNK_SIZE + HEAD, MAX_CHUNK_SIZE + HEAD, MAX_CHUNK_SIZE + HEAD]);
    expect(MAX_CHUNK_SIZE + HEAD).toBeLessThanOrEqual(FRAME_RAW_MAX);
    expect(summary(decodePatch(bytes).records)).toEqual(summary(records));
  });
});

describe('rebuild', () => {
  const CS = 16384; // 4 blocks
  const base = randomBytes(CS);
  /** base with blocks 1 and 3 changed. */
  const next = Buffer.from(base);
  next.fill(0x11, B + 10, B + 20);
  next[3 * B + B - 1] = next[3 * B + B - 1]! ^ 0xff;
  const rec: PatchRecord = { id: idOf(next), base: idOf(base), length: CS, mask: Buffer.from([0b1010]), blocks: Buffer.concat([next.subarray(B, 2 * B), next.subarray(3 * B)]) };

  it('base + blocks that hash to the id give the new chunk', () => {
    expect(rebuild(rec, base, CS)?.equals(next)).toBe(true);
    expect(base.equals(next)).toBe(false); // the base is not modified
  });

  it('null when they do not hash to the id', () => {
    const blocks = Buffer.from(rec.blocks);
    blocks[5] = blocks[5]! ^ 1;
    expect(rebuild({ ...rec, blocks }, base, CS)).toBeNull();
    expect(rebuild({ ...rec, id: idOf(base) }, base, CS)).toBeNull();
    const otherBase = Buffer.from(base);
    otherBase[0] = otherBase[0]! ^ 1; // a block outside the mask differs
    expect(rebuild(rec, otherBase, CS)).toBeNull();
    expect(rebuild(rec, null, CS)).toBeNull();
  });

  it('a zero base (null): zeros with the masked blocks', () => {
    const chunk = Buffer.alloc(CS);
    chunk.fill(7, 2 * B, 2 * B + 300);
    const r: PatchRecord = { id: idOf(chunk), base: null, length: CS, mask: Buffer.from([0b0100]), blocks: chunk.subarray(2 * B, 3 * B) };
    expect(rebuild(r, null, CS)?.equals(chunk)).toBe(true);
  });

  it('a short last chunk: a 512-byte tail block', () => {
    const tailBase = randomBytes(B + 512);
    const tail = Buffer.from(tailBase);
    tail[B + 511] = tail[B + 511]! ^ 0x80;
    const r: PatchRecord = { id: idOf(tail), base: idOf(tailBase), length: B + 512, mask: Buffer.from([0b0010]), blocks: tail.subarray(B) };
    expect(r.blocks.length).toBe(512);
    expect(rebuild(r, tailBase, CS)?.equals(tail)).toBe(true);
    // Round trip through the wire form too.
    const [back] = decodePatch(encodePatch({ virtualSize: CS + B + 512, chunkSize: CS }, [r])).records;
    expect(rebuild(back!, tailBase, CS)?.equals(tail)).toBe(true);
  });

  it('cuts a longer base and extends a shorter one with zeros', () => {
    const short = Buffer.from(base.subarray(0, B + 512));
    expect(rebuild({ id: idOf(short), base: idOf(base), length: B + 512, mask: Buffer.from([0]), blocks: Buffer.alloc(0) }, base, CS)?.equals(short)).toBe(true);
    const long = Buffer.concat([base.subarray(0, B), Buffer.alloc(CS - B)]);
    expect(rebuild({ id: idOf(long), base: idOf(base), length: CS, mask: Buffer.from([0]), blocks: Buffer.alloc(0) }, base.subarray(0, B), CS)?.equals(long)).toBe(true);
  });

  it('null for a length beyond the chunk size', () => {
    const big = Buffer.alloc(CS + B, 1);
    expect(rebuild({ id: idOf(big), base: null, length: CS + B, mask: Buffer.from([0x1f]), blocks: big }, null, CS)).toBeNull();
  });
});

describe('decodePatch rejects malformed input with DF_ERR_DECODE', () => {
  const golden = () => Buffer.from(GOLDEN_HEX, 'hex');
  const header = (chunkSize = 4096) => {
    const h = Buffer.from('4446505401000000' + '00000000', 'hex');
    h.writeUInt32BE(chunkSize, 8);
    return h;
  };

  it.each([
    ['bad magic', (b: Buffer) => b.write('DFDL', 0), 0],
    ['format version 2', (b: Buffer) => b.writeUInt8(2, 4), 0],
    ['reserved byte set', (b: Buffer) => b.writeUInt8(1, 7), 0],
    ['chunk size 1000', (b: Buffer) => b.writeUInt32BE(1000, 8), 8],
    ['chunk size 0', (b: Buffer) => b.writeUInt32BE(0, 8), 8],
    ['chunk size 8 MiB', (b: Buffer) => b.writeUInt32BE(8 << 20, 8), 8],
    ['chunk size 2 KiB', (b: Buffer) => b.writeUInt32BE(2048, 8), 8],
  ])('%s', (_name, mutate, offset) => {
    const b = golden();
    mutate(b);
    const err = thrown(() => decodePatch(b));
    expect(err.code).toBe('DF_ERR_DECODE');
    expect(err.fields).toMatchObject({ what: 'patch', offset });
  });

  it.each([
    ['length 0', 0],
    ['length above the chunk size', 4097],
    ['length 2^32-1', 0xffffffff],
  ])('a record with %s', (_name, length) => {
    const err = thrown(() => decodePatch(encodePatch(G4, [{ ...GOLDEN, length }])));
    expect(err.fields).toMatchObject({ what: 'patch', field: 'length' });
  });

  it('a record head cut short inside its frame', () => {
    const err = thrown(() => decodePatch(Buffer.concat([header(), encodeFrameRecord(Buffer.alloc(68)), FRAMES_END])));
    expect(err.message).toMatch(/truncated record head/);
  });

  it('blocks shorter than the mask and length need', () => {
    const err = thrown(() => decodePatch(encodePatch(G4, [{ ...GOLDEN, length: 4096, blocks: Buffer.alloc(100) }])));
    expect(err.message).toMatch(/blocks are truncated/);
  });

  it('every truncation, and a trailing byte', () => {
    const b = golden();
    for (let n = 0; n < b.length; n++) expect(thrown(() => decodePatch(b.subarray(0, n))).code).toBe('DF_ERR_DECODE');
    expect(thrown(() => decodePatch(Buffer.concat([b, Buffer.from([0])]))).code).toBe('DF_ERR_DECODE');
  });
});

describe('decodePatch fuzz', () => {
  it('throws nothing but DF_ERR_DECODE on random, truncated and mutated input', () => {
    const rnd = prng(0xdf6);
    const byte = () => Math.floor(rnd() * 256);
    const bytes = (n: number) => {
      const b = Buffer.alloc(n + 3);
      for (let i = 0; i < n; i += 4) b.writeUInt32LE(Math.floor(rnd() * 2 ** 32), i);
      return b.subarray(0, n);
    };
    const g: Geometry = { virtualSize: 1 << 20, chunkSize: 16384 };
    const valid = [
      Buffer.from(GOLDEN_HEX, 'hex'),
      encodePatch(g, [
        { id: idOf(Buffer.alloc(16384, 3)), base: null, length: 16384, mask: Buffer.from([0x0f]), blocks: Buffer.alloc(16384, 3) },
        { ...GOLDEN, length: 5000, mask: Buffer.from([0x02]), blocks: bytes(904) },
      ]),
    ];
    const inputs: Buffer[] = [];
    for (let k = 0; k < 2000; k++) {
      const mode = k % 4;
      const hdr = Buffer.concat([PATCH_MAGIC, Buffer.from([1, 0, 0, 0]), Buffer.alloc(4)]);
      hdr.writeUInt32BE([4096, 16384, 65536, byte()][k % 4]!, 8);
      if (mode === 0) inputs.push(bytes(Math.floor(rnd() * 200)));
      else if (mode === 1) inputs.push(Buffer.concat([hdr, bytes(Math.floor(rnd() * 100))]));
      else {
        // Well-framed records with random heads: small lengths, random masks, blocks that may fit.
        const parts: Buffer[] = [];
        for (let j = Math.floor(rnd() * 3); j >= 0; j--) {
          const head = bytes(69);
          head.writeUInt32BE(Math.floor(rnd() * 9000), 64);
          parts.push(head, bytes(Math.floor(rnd() * 9000)));
        }
        inputs.push(Buffer.concat([hdr, encodeFrameRecord(Buffer.concat(parts)), mode === 2 ? FRAMES_END : bytes(4)]));
      }
    }
    for (const v of valid) {
      for (let n = 0; n < v.length; n += v.length > 400 ? 7 : 1) inputs.push(v.subarray(0, n));
      for (let i = 0; i < v.length; i += v.length > 400 ? 3 : 1) {
        const m = Buffer.from(v);
        m[i] = m[i]! ^ (byte() | 1);
        inputs.push(m);
      }
    }
    const bad: string[] = [];
    let accepted = 0;
    for (const input of inputs) {
      try {
        const p = decodePatch(input);
        accepted++;
        // Whatever decodes must re-encode and decode to the same records.
        const g2: Geometry = { virtualSize: p.chunkSize, chunkSize: p.chunkSize };
        expect(summary(decodePatch(encodePatch(g2, p.records)).records)).toEqual(summary(p.records));
      } catch (err) {
        if (!(err instanceof DeskfuseError) || err.code !== 'DF_ERR_DECODE') bad.push(`${input.toString('hex').slice(0, 200)}: ${String(err)}`);
      }
    }
    expect(bad).toEqual([]);
    expect(accepted).toBeGreaterThan(0);
    expect(inputs.length).toBeGreaterThan(2000);
  });
});

describe('a decompression bomb (issue 10 item 8)', () => {
  it('is refused with DF_ERR_TOO_LARGE before more than the budget is decoded, frame by frame', () => {
    const { body, rawPerFrame } = patchBomb(100); // ~10 KiB that decode to ~300 MiB
    expect(body.length).toBeLessThan(32 * 1024);
    const budget = 8 * 1024 * 1024;
    const p = openPatch(body, budget);
    let decoded = 0;
    let records = 0;
    const err = thrown(() => {
      for (const r of p.records) {
        decoded += 2 * 32 + 4 + r.mask.length + r.blocks.length;
        records++;
      }
    });
    expect(err.code).toBe('DF_ERR_TOO_LARGE');
    expect(err.fields).toEqual({ what: 'patch', limit: budget });
    // Records of the frames within the budget were taken before the next frame was opened; the
    // frame that would pass the budget was never decompressed.
    expect(decoded).toBe(Math.floor(budget / rawPerFrame) * rawPerFrame);
    expect(records).toBe(3 * Math.floor(budget / rawPerFrame));
  });

  it('the default budget (PATCH_RAW_MAX) holds the whole bomb to 32 MiB', () => {
    expect(thrown(() => decodePatch(patchBomb(100).body)).code).toBe('DF_ERR_TOO_LARGE');
    expect(decodePatch(patchBomb(10).body).records.length).toBe(30); // 30 MiB: within the budget
    expect(PATCH_RAW_MAX).toBe(32 * 1024 * 1024);
  });
});
