import { decompress } from 'zstd-napi';
import { describe, expect, it } from 'vitest';
import { hashBytes } from '../chunk/id.js';
import { DeskfuseError } from '../errors.js';
import { randomBytes } from 'node:crypto';
import { MAX_CHUNK_SIZE, maskBytes } from '../image/geometry.js';
import { encodeFrameRecord, FRAME_RAW_MAX, FRAME_Z_MAX, FrameReader, FrameWriter, FRAMES_END } from './frames.js';
import { prng, thrown } from '../../test/helpers/expect.js';

const hex = (s: string) => Buffer.from(s, 'hex');
/** Frames compared as length + digest (toEqual on large Buffers is slow). */
const digests = (fs: Buffer[]) => fs.map((f) => `${f.length}:${hashBytes(f).toString('hex').slice(0, 16)}`);

/**
 * A zstd frame written by hand (RFC 8878 §3.1.1): magic, frame header descriptor 0x20 (single
 * segment, 1-byte content size, no checksum), content size, then one raw block whose 3-byte header
 * is last-block | raw type | size << 3 — exactly what zstd itself emits for input this short.
 */
function rawZstd(data: Buffer, declared = data.length): Buffer {
  const blockHead = Buffer.alloc(3);
  blockHead.writeUIntLE(1 | (data.length << 3), 0, 3);
  return Buffer.concat([hex('28b52ffd'), Buffer.from([0x20, declared]), blockHead, data]);
}

function record(raw: number, z: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(raw, 0);
  head.writeUInt32BE(z.length, 4);
  return Buffer.concat([head, z]);
}

// Written by hand from the diagram in frames.ts: two records then the end marker.
const GOLDEN_HEX =
  '00000005' + '0000000e' + '28b52ffd' + '20' + '05' + '290000' + '68656c6c6f' + // "hello"
  '00000003' + '0000000c' + '28b52ffd' + '20' + '03' + '190000' + '616263' + //     "abc"
  '0000000000000000'; //                                                            end

/** Push `stream` in pieces whose sizes `size()` picks, draining frames after each push. */
function readSplit(stream: Buffer, size: () => number, what = 'test'): Buffer[] {
  const r = new FrameReader(what);
  const out: Buffer[] = [];
  for (let off = 0; off < stream.length;) {
    const n = Math.min(stream.length - off, Math.max(1, size()));
    // Copy each piece, as a socket would hand over fresh buffers.
    r.push(new Uint8Array(stream.subarray(off, off + n)));
    off += n;
    for (let f = r.next(); f; f = r.next()) out.push(Buffer.from(f));
  }
  r.finish();
  return out;
}

describe('frame records', () => {
  it('the hand-written golden stream decodes to its two frames', () => {
    expect(rawZstd(Buffer.from('hello')).toString('hex')).toBe('28b52ffd200529000068656c6c6f');
    expect(readSplit(hex(GOLDEN_HEX), () => 1 << 20).map(String)).toEqual(['hello', 'abc']);
  });

  it('encodeFrameRecord writes raw length, compressed length, then one zstd frame of the raw bytes', () => {
    const raw = Buffer.from('a block of disk '.repeat(500));
    const rec = encodeFrameRecord(raw);
    expect(rec.readUInt32BE(0)).toBe(raw.length);
    expect(rec.readUInt32BE(4)).toBe(rec.length - 8);
    expect(rec.length).toBeLessThan(raw.length);
    expect(decompress(rec.subarray(8))).toEqual(raw);
  });

  it('the end marker is 8 zero bytes', () => {
    expect(FRAMES_END.toString('hex')).toBe('00'.repeat(8));
  });
});

describe('FrameReader over arbitrarily split input', () => {
  const rnd = prng(0xf4a);
  /** Seeded bytes, 4 per PRNG draw. */
  const randomBytes = (n: number) => {
    const b = Buffer.alloc(n + 3);
    for (let i = 0; i < n; i += 4) b.writeUInt32LE(Math.floor(rnd() * 2 ** 32), i);
    return b.subarray(0, n);
  };
  const frames = [
    Buffer.from('x'),
    Buffer.from('compressible '.repeat(5000)),
    randomBytes(3000),
    Buffer.alloc(70000, 0),
    Buffer.from('last'),
  ];
  const stream = Buffer.concat([...frames.map(encodeFrameRecord), FRAMES_END]);

  it('1-byte pieces', () => {
    expect(digests(readSplit(stream, () => 1))).toEqual(digests(frames));
    expect(readSplit(hex(GOLDEN_HEX), () => 1).map(String)).toEqual(['hello', 'abc']);
  });

  it('a 256 KiB incompressible frame in 1-byte pieces stays linear (no re-concatenation per push)', () => {
    const big = randomBytes(256 * 1024);
    const t0 = performance.now();
    const out = readSplit(Buffer.concat([encodeFrameRecord(big), FRAMES_END]), () => 1);
    expect(digests(out)).toEqual(digests([big]));
    // Linear takes well under a second here; the quadratic peek took minutes.
    expect(performance.now() - t0).toBeLessThan(20_000);
  });

  it('random pieces, small and large, 200 times', () => {
    for (let k = 0; k < 200; k++) {
      const max = [2, 9, 100, 5000, 200000][k % 5]!;
      expect(digests(readSplit(stream, () => Math.floor(rnd() * max) + 1))).toEqual(digests(frames));
    }
  });

  it('every single cut point', () => {
    const small = hex(GOLDEN_HEX);
    for (let cut = 0; cut <= small.length; cut++) {
      const r = new FrameReader('test');
      const got: string[] = [];
      for (const piece of [small.subarray(0, cut), small.subarray(cut)]) {
        r.push(piece);
        for (let f = r.next(); f; f = r.next()) got.push(String(f));
      }
      r.finish();
      expect(got).toEqual(['hello', 'abc']);
    }
  });

  it('take() hands over a format header before the frames, across pieces', () => {
    const header = Buffer.from('HEADER-12345');
    const body = Buffer.concat([header, hex(GOLDEN_HEX)]);
    const r = new FrameReader('test');
    r.push(body.subarray(0, 5));
    expect(r.take(12)).toBeUndefined();
    expect(r.next()).toBeUndefined();
    r.push(body.subarray(5, 13));
    expect(r.take(12)).toEqual(header);
    expect(r.next()).toBeUndefined();
    r.push(body.subarray(13));
    expect(String(r.next())).toBe('hello');
    expect(String(r.next())).toBe('abc');
    expect(r.next()).toBeNull();
    expect(r.next()).toBeNull();
    expect(r.ended).toBe(true);
    r.finish();
  });

  it('an empty stream is the end marker alone', () => {
    expect(readSplit(FRAMES_END, () => 3)).toEqual([]);
  });

  it('a frame of FRAME_RAW_MAX bytes is accepted', () => {
    const big = Buffer.alloc(FRAME_RAW_MAX, 7);
    const out = readSplit(Buffer.concat([encodeFrameRecord(big), FRAMES_END]), () => 65536);
    expect(out).toHaveLength(1);
    expect(out[0]!.equals(big)).toBe(true);
  });
});

/** The largest record a format writes: a patch record of a whole 4 MiB chunk (ids, length, mask, blocks). */
const PATCH_HEAD_AT_MAX = 32 + 32 + 4 + maskBytes({ virtualSize: MAX_CHUNK_SIZE, chunkSize: MAX_CHUNK_SIZE });
/** The frames of a FrameWriter's output (after a 4-byte header): their raw lengths and decoded bytes. */
function written(w: FrameWriter): Buffer[] {
  const r = new FrameReader('test');
  r.push(Buffer.concat(w.end()));
  expect(r.take(4)?.toString()).toBe('HEAD');
  const out: Buffer[] = [];
  for (let f = r.next(); f; f = r.next()) out.push(f);
  r.finish();
  return out;
}

describe('the largest record: a whole max-size chunk plus its record head', () => {
  it('a patch head at 4 MiB chunks is 196 bytes; a frame holds a whole max chunk plus it', () => {
    expect(PATCH_HEAD_AT_MAX).toBe(196);
    expect(FRAME_RAW_MAX).toBeGreaterThanOrEqual(MAX_CHUNK_SIZE + PATCH_HEAD_AT_MAX);
  });

  it('FrameWriter puts a record of exactly 4 MiB + 196 incompressible bytes in one frame; the reader takes it', () => {
    const head = randomBytes(PATCH_HEAD_AT_MAX);
    const chunk = randomBytes(MAX_CHUNK_SIZE); // compresses to more than its size: the compressed bound counts too
    const w = new FrameWriter(Buffer.from('HEAD'));
    w.add(head, chunk);
    const frames = written(w);
    expect(frames.map((f) => f.length)).toEqual([MAX_CHUNK_SIZE + PATCH_HEAD_AT_MAX]);
    expect(frames[0]!.equals(Buffer.concat([head, chunk]))).toBe(true);
  });

  it('FrameWriter groups small records with a big one up to FRAME_RAW_MAX, never splitting a record', () => {
    const w = new FrameWriter(Buffer.from('HEAD'));
    const small = Buffer.alloc(FRAME_RAW_MAX - MAX_CHUNK_SIZE - PATCH_HEAD_AT_MAX, 1);
    w.add(small);
    w.add(Buffer.alloc(PATCH_HEAD_AT_MAX, 2), Buffer.alloc(MAX_CHUNK_SIZE, 3)); // fits exactly after `small`
    w.add(Buffer.alloc(1, 4)); // does not
    expect(written(w).map((f) => f.length)).toEqual([FRAME_RAW_MAX, 1]);
  });

  it('FrameWriter refuses a record above FRAME_RAW_MAX (no reader would take its frame)', () => {
    const w = new FrameWriter(Buffer.from('HEAD'));
    const err = thrown(() => w.add(Buffer.alloc(FRAME_RAW_MAX - 10), Buffer.alloc(11)));
    expect(err.code).toBe('DF_ERR_INTERNAL');
    expect(err.fields).toEqual({ bytes: FRAME_RAW_MAX + 1, max: FRAME_RAW_MAX });
    expect(written(w)).toEqual([]);
  });

  it('FrameReader takes an incompressible frame of FRAME_RAW_MAX bytes in 64 KiB pieces', () => {
    const big = randomBytes(FRAME_RAW_MAX);
    const rec = encodeFrameRecord(big);
    expect(rec.length - 8).toBeGreaterThan(FRAME_RAW_MAX);
    const out = readSplit(Buffer.concat([rec, FRAMES_END]), () => 65536);
    expect(out).toHaveLength(1);
    expect(out[0]!.equals(big)).toBe(true);
  });
});

describe('FrameReader rejects malformed streams with DF_ERR_DECODE', () => {
  const golden = () => hex(GOLDEN_HEX);

  it('trailing bytes in the same piece as the end marker', () => {
    const r = new FrameReader('delta');
    r.push(Buffer.concat([golden(), Buffer.from([0])]));
    expect(String(r.next())).toBe('hello');
    expect(String(r.next())).toBe('abc');
    const err = thrown(() => r.next());
    expect(err.code).toBe('DF_ERR_DECODE');
    expect(err.message).toMatch(/1 bytes after the end marker/);
    expect(err.fields).toEqual({ what: 'delta' });
  });

  it('trailing bytes arriving after the end marker was read', () => {
    const r = new FrameReader('patch');
    r.push(golden());
    while (r.next()) { /* drain */ }
    r.push(Buffer.from('late'));
    expect(r.next()).toBeNull();
    expect(thrown(() => r.finish()).code).toBe('DF_ERR_DECODE');
  });

  it('every truncation: finish() refuses a stream without its end marker', () => {
    const b = golden();
    for (let n = 0; n < b.length; n++) {
      const r = new FrameReader('test');
      r.push(b.subarray(0, n));
      for (let f = r.next(); f; f = r.next()) { /* frames before the cut are fine */ }
      const err = thrown(() => r.finish());
      expect(err.code).toBe('DF_ERR_DECODE');
      expect(err.fields).toEqual({ what: 'test' });
    }
  });

  it.each([
    ['raw length 0 with a body', 0, 14],
    ['compressed length 0', 5, 0],
    ['raw length above a max chunk plus its record head', FRAME_RAW_MAX + 1, 14],
    ['compressed length above the bound of a FRAME_RAW_MAX frame', 5, FRAME_Z_MAX + 1],
    ['both lengths huge', 0xffffffff, 0xffffffff],
  ])('bad lengths: %s (refused from the 8 head bytes alone)', (_name, raw, zl) => {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(raw, 0);
    head.writeUInt32BE(zl, 4);
    const r = new FrameReader('test');
    r.push(head);
    const err = thrown(() => r.next());
    expect(err.code).toBe('DF_ERR_DECODE');
    expect(err.message).toMatch(/out of range/);
  });

  it('a record whose raw length differs from the size its zstd frame declares', () => {
    for (const raw of [4, 6]) {
      const r = new FrameReader('test');
      r.push(Buffer.concat([record(raw, rawZstd(Buffer.from('hello'))), FRAMES_END]));
      expect(thrown(() => r.next()).message).toMatch(new RegExp(`does not declare its ${raw} bytes`));
    }
  });

  it('a zstd frame declaring a size it does not hold', () => {
    // Declares 6 bytes, holds 5; declares 5, holds 4. The record agrees with the declaration.
    for (const [data, declared] of [[Buffer.from('hello'), 6], [Buffer.from('hell'), 5]] as const) {
      const r = new FrameReader('test');
      r.push(Buffer.concat([record(declared, rawZstd(data, declared)), FRAMES_END]));
      expect(thrown(() => r.next()).code).toBe('DF_ERR_DECODE');
    }
  });

  it('a zstd frame without a declared content size, or not zstd at all', () => {
    const noSize = Buffer.concat([hex('28b52ffd'), Buffer.from([0x00, 0x58]), hex('290000'), Buffer.from('hello')]);
    for (const z of [noSize, Buffer.from('not a zstd frame')]) {
      const r = new FrameReader('test');
      r.push(Buffer.concat([record(5, z), FRAMES_END]));
      expect(thrown(() => r.next()).code).toBe('DF_ERR_DECODE');
    }
  });

  it('corrupt compressed bytes behind a valid frame header', () => {
    const rec = encodeFrameRecord(Buffer.from('some text that compresses, some text that compresses'.repeat(50)));
    const r = new FrameReader('test');
    const bad = Buffer.from(rec);
    for (let i = 16; i < bad.length; i++) bad[i] = bad[i]! ^ 0x5a;
    r.push(Buffer.concat([bad, FRAMES_END]));
    expect(thrown(() => r.next()).code).toBe('DF_ERR_DECODE');
  });
});

describe('FrameReader fuzz', () => {
  it('throws nothing but DF_ERR_DECODE on random, truncated and mutated streams in random pieces', () => {
    const rnd = prng(0xdf5);
    const byte = () => Math.floor(rnd() * 256);
    const randomBytes = (n: number) => Buffer.from(Array.from({ length: n }, byte));
    const valid = [hex(GOLDEN_HEX), Buffer.concat([encodeFrameRecord(Buffer.from('fuzz '.repeat(100))), encodeFrameRecord(randomBytes(50)), FRAMES_END])];
    const inputs: Buffer[] = [];
    for (let k = 0; k < 1500; k++) {
      const mode = k % 3;
      if (mode === 0) inputs.push(randomBytes(Math.floor(rnd() * 120)));
      else if (mode === 1) {
        // Plausible small lengths, so the zstd path is reached with junk.
        const z = randomBytes(Math.floor(rnd() * 30));
        if (rnd() < 0.5 && z.length >= 4) z.writeUInt32LE(0xfd2fb528, 0);
        inputs.push(Buffer.concat([record(Math.floor(rnd() * 40) + 1, z), rnd() < 0.5 ? FRAMES_END : randomBytes(3)]));
      } else {
        const m = Buffer.from(valid[k & 1]!);
        const i = Math.floor(rnd() * m.length);
        m[i] = m[i]! ^ (byte() | 1);
        inputs.push(m);
      }
    }
    for (const v of valid) for (let n = 0; n < v.length; n++) inputs.push(v.subarray(0, n));
    const bad: string[] = [];
    let accepted = 0;
    for (const input of inputs) {
      try {
        readSplit(input, () => Math.floor(rnd() * 16) + 1);
        accepted++;
      } catch (err) {
        if (!(err instanceof DeskfuseError) || err.code !== 'DF_ERR_DECODE') bad.push(`${input.toString('hex')}: ${String(err)}`);
      }
    }
    expect(bad).toEqual([]);
    expect(accepted).toBeGreaterThan(0);
  });
});
