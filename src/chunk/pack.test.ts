import { describe, expect, it } from 'vitest';
import { DeskfuseError } from '../errors.js';
import { encodeFrame, openFrame } from './frame.js';
import { hashBytes, idHex } from './id.js';
import { decodePack, encodePack, frameBound, PACK_MAGIC, PackReader, type PackRecord } from './pack.js';
import { mutations, prng, thrown } from '../../test/helpers/expect.js';

const MAX = 64 * 1024;

// The codec does not look inside frames, so the golden pack carries made-up frame bytes.
const GOLDEN: PackRecord[] = [
  { id: '01'.repeat(32), rawLength: 5, frame: Buffer.from('deadbeef', 'hex') },
  { id: 'ab'.repeat(32), rawLength: 0x10000, frame: Buffer.from('00', 'hex') },
];
// Written by hand from the diagram in pack.ts, not produced by encodePack().
const GOLDEN_HEX =
  '4446504b' + '01' + '000000' + //               header: "DFPK", version 1, reserved
  '01'.repeat(32) + '00000005' + '00000004' + 'deadbeef' + // record 1
  'ab'.repeat(32) + '00010000' + '00000001' + '00' + //       record 2: raw length 65536 (= MAX)
  '00'.repeat(32) + '00000002'; //                trailer: zero id, 2 records

describe('pack encoding', () => {
  it('encodes to the bytes of the diagram', () => {
    const bytes = encodePack(GOLDEN);
    expect(bytes.toString('hex')).toBe(GOLDEN_HEX);
  });

  it('decodes the golden bytes', () => {
    expect(decodePack(Buffer.from(GOLDEN_HEX, 'hex'), MAX)).toEqual(GOLDEN);
  });

  it('an empty pack is a header and a trailer', () => {
    const bytes = encodePack([]);
    expect(bytes.toString('hex')).toBe('4446504b01000000' + '00'.repeat(32) + '00000000');
    expect(decodePack(bytes, MAX)).toEqual([]);
  });

  it('round-trips real chunk frames that then open against their ids', () => {
    const raws = [Buffer.from('hello'), Buffer.alloc(MAX, 7), Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 251))];
    const records = raws.map((raw) => ({ id: idHex(hashBytes(raw)), rawLength: raw.length, frame: encodeFrame(raw) }));
    const back = decodePack(encodePack(records), MAX);
    expect(back.map((r) => [r.id, r.rawLength, r.frame.toString('hex')])).toEqual(records.map((r) => [r.id, r.rawLength, r.frame.toString('hex')]));
    back.forEach((r, i) => expect(openFrame(r.id, r.frame, MAX).equals(raws[i]!)).toBe(true));
  });
});

describe('decodePack rejects malformed input with DF_ERR_DECODE', () => {
  const golden = (): Buffer => Buffer.from(GOLDEN_HEX, 'hex');
  const TRAILER_COUNT = golden().length - 4;

  it.each([
    ['bad magic', (b: Buffer) => b.write('DFPX', 0), 'magic', 0],
    ['format version 2', (b: Buffer) => b.writeUInt8(2, 4), 'format version', 4],
    ['trailer count too low', (b: Buffer) => b.writeUInt32BE(1, TRAILER_COUNT), 'record count', TRAILER_COUNT],
    ['trailer count too high', (b: Buffer) => b.writeUInt32BE(3, TRAILER_COUNT), 'record count', TRAILER_COUNT],
    ['raw length 0', (b: Buffer) => b.writeUInt32BE(0, 8 + 32), 'raw length', 40],
    ['raw length above the maximum', (b: Buffer) => b.writeUInt32BE(MAX + 1, 8 + 32), 'raw length', 40],
    ['frame length past the end', (b: Buffer) => b.writeUInt32BE(0xffffffff, 8 + 36), 'frame', 48],
  ])('%s', (_name, mutate, field, offset) => {
    const b = golden();
    mutate(b);
    const err = thrown(() => decodePack(b, MAX));
    expect(err.code).toBe('DF_ERR_DECODE');
    expect(err.fields).toMatchObject({ what: 'pack', field, offset });
  });

  it('every truncation (a cut body never passes for a shorter pack)', () => {
    const b = golden();
    for (let n = 0; n < b.length; n++) expect(thrown(() => decodePack(b.subarray(0, n), MAX)).code).toBe('DF_ERR_DECODE');
  });

  it('a body cut between records, with no trailer', () => {
    const b = golden().subarray(0, 8 + 44);
    expect(thrown(() => decodePack(b, MAX)).fields).toMatchObject({ field: 'record id', offset: 52 });
  });

  it('bytes after the trailer', () => {
    const b = Buffer.concat([golden(), Buffer.from('00', 'hex')]);
    expect(thrown(() => decodePack(b, MAX)).fields).toMatchObject({ field: 'end', offset: b.length - 1 });
  });
});

describe('decodePack fuzz', () => {
  it('throws nothing but DF_ERR_DECODE on random, truncated and mutated input', () => {
    const rnd = prng(0xdf3);
    const byte = () => Math.floor(rnd() * 256);
    const randomBytes = (n: number) => Buffer.from(Array.from({ length: n }, byte));
    const real = [Buffer.from('abc'), Buffer.alloc(300, 1)].map((raw) => ({ id: idHex(hashBytes(raw)), rawLength: raw.length, frame: encodeFrame(raw) }));
    const valid = [encodePack(GOLDEN), encodePack(real), encodePack([])];
    const inputs: Buffer[] = [];
    for (let k = 0; k < 2000; k++) {
      const tail = randomBytes(Math.floor(rnd() * 200));
      const mode = k % 4;
      if (mode === 0) inputs.push(tail);
      else if (mode === 1) inputs.push(Buffer.concat([PACK_MAGIC, Buffer.from([1, 0, 0, 0]), tail]));
      else {
        // Plausible records with small lengths, then a trailer (mode 2) or random bytes (mode 3).
        const parts: Buffer[] = [PACK_MAGIC, Buffer.from([1, 0, 0, 0])];
        const n = Math.floor(rnd() * 4);
        for (let j = 0; j < n; j++) {
          const flen = Math.floor(rnd() * 8);
          const head = Buffer.alloc(40);
          randomBytes(32).copy(head);
          head.writeUInt32BE(Math.floor(rnd() * 3), 32);
          head.writeUInt32BE(flen + (rnd() < 0.2 ? 1 : 0), 36);
          parts.push(head, randomBytes(flen));
        }
        if (mode === 2) {
          const t = Buffer.alloc(36);
          t.writeUInt32BE(rnd() < 0.7 ? n : byte(), 32);
          parts.push(t);
        } else parts.push(tail);
        inputs.push(Buffer.concat(parts));
      }
    }
    for (const m of mutations(valid, byte)) inputs.push(m);
    const bad: string[] = [];
    let accepted = 0;
    for (const input of inputs) {
      try {
        const recs = decodePack(input, MAX);
        accepted++;
        expect(decodePack(encodePack(recs), MAX)).toEqual(recs);
      } catch (err) {
        if (!(err instanceof DeskfuseError) || err.code !== 'DF_ERR_DECODE') bad.push(`${input.toString('hex')}: ${String(err)}`);
      }
    }
    expect(bad).toEqual([]);
    expect(inputs.length).toBeGreaterThan(2000);
    expect(accepted).toBeGreaterThan(0);
  });
});

/** `n` pseudo-random bytes (incompressible: frames a little longer than their raw bytes). */
const bytes = (seed: number, n: number) => {
  const r = prng(seed);
  return Buffer.from(Array.from({ length: n }, () => Math.floor(r() * 256)));
};

/** A pack through PackReader in pieces of the given sizes (cycled): the records it gave, frames copied out. */
function streamed(body: Buffer, sizes: number[], skip = new Set<string>()): { records: PackRecord[]; count: number } {
  const records: PackRecord[] = [];
  let filled = 0;
  const r = new PackReader(MAX, {
    record(id, rawLength, frameLength) {
      if (skip.has(id)) return null;
      const frame = Buffer.alloc(frameLength);
      records.push({ id, rawLength, frame });
      return frame;
    },
    filled() {
      filled++;
    },
  });
  for (let at = 0, k = 0; at < body.length; k++) {
    const n = sizes[k % sizes.length]!;
    r.push(body.subarray(at, at + n));
    at += n;
  }
  const count = r.end();
  expect(filled).toBe(records.length);
  return { records, count };
}

describe('PackReader (a pack decoded as it streams)', () => {
  const frames = [0, 1, 2, 3].map((k) => encodeFrame(bytes(k + 1, 3000 + k * 7000)));
  const recs: PackRecord[] = frames.map((frame, k) => ({ id: idHex(hashBytes(Buffer.from([k]))), rawLength: 3000 + k * 7000, frame }));
  const body = encodePack(recs);

  it('gives what decodePack gives, however the body is cut into pieces', () => {
    for (const sizes of [[body.length], [1], [3, 7, 40, 1], [8, 32, 8], [4096], [39, 41]]) {
      expect(streamed(body, sizes)).toEqual({ records: decodePack(body, MAX), count: recs.length });
    }
  });

  it('skips the frames the sink does not want (null), still counting them against the trailer', () => {
    const { records, count } = streamed(body, [100], new Set([recs[1]!.id, recs[3]!.id]));
    expect(records.map((r) => r.id)).toEqual([recs[0]!.id, recs[2]!.id]);
    expect(records[1]!.frame.equals(frames[2]!)).toBe(true);
    expect(count).toBe(4);
  });

  it('refuses a truncated body, trailing bytes and a bad count with DF_ERR_DECODE', () => {
    for (let n = 0; n < body.length; n += 97) expect(thrown(() => streamed(body.subarray(0, n), [13])).code).toBe('DF_ERR_DECODE');
    expect(thrown(() => streamed(Buffer.concat([body, Buffer.alloc(1)]), [64])).fields).toMatchObject({ field: 'end', offset: body.length });
    const miscounted = Buffer.from(body);
    miscounted.writeUInt32BE(9, miscounted.length - 4);
    expect(thrown(() => streamed(miscounted, [64])).fields).toMatchObject({ field: 'record count' });
    const magic = Buffer.from(body);
    magic[0] = 0x45;
    expect(thrown(() => streamed(magic, [5])).fields).toMatchObject({ field: 'magic' });
  });

  it('refuses a frame longer than any frame of MAX raw bytes before the sink is asked for room', () => {
    const huge = Buffer.from(body);
    huge.writeUInt32BE(frameBound(MAX) + 1, 8 + 36); // the first record's frame length
    let asked = 0;
    const r = new PackReader(MAX, { record: () => { asked++; return null; }, filled: () => {} });
    expect(thrown(() => r.push(huge)).fields).toMatchObject({ field: 'frame length', offset: 8 + 36 });
    expect(asked).toBe(0);
    // A frame of MAX incompressible bytes fits the bound.
    expect(encodeFrame(bytes(9, MAX)).length).toBeLessThanOrEqual(frameBound(MAX));
  });
});
