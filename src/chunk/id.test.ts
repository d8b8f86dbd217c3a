import { describe, expect, it } from 'vitest';
import { DeskfuseError } from '../errors.js';
import { checkIdList, decodeIdList, encodeIdList, hashBytes, ID_BYTES, idHex, isIdHex, isZero, isZeroId, parseId, ZERO_ID } from './id.js';

describe('hashBytes', () => {
  it('is BLAKE3-256: the test vector for "abc"', () => {
    expect(idHex(hashBytes(Buffer.from('abc')))).toBe('6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85');
  });

  it('of the empty input is the BLAKE3 empty hash', () => {
    expect(idHex(hashBytes(Buffer.alloc(0)))).toBe('af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262');
  });

  it('returns 32 bytes', () => {
    expect(hashBytes(Buffer.from('x')).length).toBe(ID_BYTES);
  });
});

describe('idHex', () => {
  it('hexes only the viewed bytes of a subarray', () => {
    const big = Buffer.from(Array.from({ length: 64 }, (_, i) => i));
    expect(idHex(big.subarray(32, 34))).toBe('2021');
    expect(idHex(new Uint8Array(big.buffer, big.byteOffset + 1, 2))).toBe('0102');
  });
});

describe('parseId', () => {
  const good = 'ab'.repeat(32);

  it('parses 64 lowercase hex characters to 32 bytes', () => {
    expect(parseId(good)).toEqual(Buffer.alloc(32, 0xab));
    expect(isIdHex(good)).toBe(true);
  });

  it.each([
    ['empty', ''],
    ['63 characters', good.slice(1)],
    ['65 characters', good + 'a'],
    ['uppercase', good.toUpperCase()],
    ['non-hex', 'g' + good.slice(1)],
    ['whitespace', ' ' + good.slice(1)],
    ['a trailing newline', good + '\n'],
  ])('refuses %s with DF_ERR_BAD_REQUEST naming the field', (_name, s) => {
    expect(isIdHex(s)).toBe(false);
    let err: unknown;
    try {
      parseId(s, 'chunk');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DeskfuseError);
    expect((err as DeskfuseError).code).toBe('DF_ERR_BAD_REQUEST');
    expect((err as DeskfuseError).fields).toEqual({ field: 'chunk' });
    expect((err as DeskfuseError).message).toMatch(/^chunk must be 64 lowercase hex/);
  });

  it('quotes at most 80 characters of a long input', () => {
    try {
      parseId('z'.repeat(10000));
      expect.unreachable();
    } catch (e) {
      expect((e as Error).message).toContain(JSON.stringify('z'.repeat(80)));
      expect((e as Error).message).not.toContain('z'.repeat(81));
    }
  });
});

describe('isZero', () => {
  const PAGE = 4 * 1024 * 1024;

  it.each([0, 1, 3, 7, 511, 4095, 4097, 65537, PAGE - 1, PAGE, PAGE + 3, 2 * PAGE + 5])('size %i: zeros are zero, any one set byte is not', (n) => {
    const b = Buffer.alloc(n);
    expect(isZero(b)).toBe(true);
    if (n === 0) return;
    for (const at of new Set([0, n >> 1, n - 1])) {
      b[at] = 1;
      expect(isZero(b)).toBe(false);
      b[at] = 0;
    }
    expect(isZero(b)).toBe(true);
  });

  it('works on a Uint8Array view with an offset', () => {
    const backing = new Uint8Array(100);
    backing[0] = 9;
    backing[99] = 9;
    expect(isZero(backing.subarray(1, 99))).toBe(true);
    expect(isZero(backing.subarray(0, 99))).toBe(false);
  });
});

describe('isZeroId', () => {
  it('recognises only 32 zero bytes', () => {
    expect(isZeroId(ZERO_ID)).toBe(true);
    expect(isZeroId(Buffer.alloc(32))).toBe(true);
    const one = Buffer.alloc(32);
    one[31] = 1;
    expect(isZeroId(one)).toBe(false);
  });
});

describe('id lists (batch fetch bodies)', () => {
  const a = 'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262'; // BLAKE3 of nothing
  const b = '2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213'; // BLAKE3 of "\0"
  it('golden: raw ids back to back; decoded each once, in order', () => {
    const body = encodeIdList([a, b, a]);
    expect(body.toString('hex')).toBe(a + b + a);
    expect(decodeIdList(checkIdList(body, 3))).toEqual([a, b]);
    expect(encodeIdList(decodeIdList(encodeIdList([b, a])))).toEqual(Buffer.from(b + a, 'hex'));
  });
  it('refuses a torn id, an empty list, too many ids and a bad hex id, with DF_ERR_BAD_REQUEST', () => {
    expect(() => checkIdList(Buffer.alloc(33), 10)).toThrow(/33 bytes is not a list of 32-byte chunk ids/);
    expect(() => checkIdList(Buffer.alloc(0), 10)).toThrow(/0 bytes/);
    expect(() => checkIdList(Buffer.alloc(32 * 3), 2)).toThrow(/3 ids, at most 2/);
    expect(() => encodeIdList([a, 'A'.repeat(64)])).toThrow(expect.objectContaining({ code: 'DF_ERR_BAD_REQUEST', message: expect.stringContaining('ids[1]') }));
  });
});
