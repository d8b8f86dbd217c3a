import { describe, expect, it } from 'vitest';
import { DeskfuseError } from '../errors.js';
import { Reader, Writer } from './bytes.js';
import { thrown } from '../../test/helpers/expect.js';

/** Run fn, which must throw; return the error. */
describe('Reader', () => {
  it('reads big-endian integers and byte runs in order', () => {
    const r = new Reader(Buffer.from('01' + '0203' + '04050607' + '0000000000000100' + 'aabb', 'hex'), 'test');
    expect(r.u8('a')).toBe(0x01);
    expect(r.u16('b')).toBe(0x0203);
    expect(r.u32('c')).toBe(0x04050607);
    expect(r.u64('d')).toBe(256);
    expect(r.remaining).toBe(2);
    expect(r.bytes(2, 'e').toString('hex')).toBe('aabb');
    expect(r.offset).toBe(17);
    expect(() => r.end()).not.toThrow();
  });

  it('reads u64 up to Number.MAX_SAFE_INTEGER', () => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt(Number.MAX_SAFE_INTEGER));
    expect(new Reader(b, 'test').u64('v')).toBe(Number.MAX_SAFE_INTEGER);
  });

  it.each([
    ['u8', 0, (r: Reader) => r.u8('flag')],
    ['u16', 1, (r: Reader) => r.u16('flag')],
    ['u32', 3, (r: Reader) => r.u32('flag')],
    ['u64', 7, (r: Reader) => r.u64('flag')],
    ['bytes', 9, (r: Reader) => r.bytes(10, 'flag')],
  ])('%s past the end is DF_ERR_DECODE naming field and offset', (_name, avail, read) => {
    const r = new Reader(Buffer.alloc(2 + avail), 'thing');
    r.u16('head');
    const err = thrown(() => read(r));
    expect(err.code).toBe('DF_ERR_DECODE');
    expect(err.fields).toEqual({ what: 'thing', field: 'flag', offset: 2 });
    expect(err.message).toContain('thing');
    expect(err.message).toContain('flag');
    expect(err.message).toContain('offset 2');
    expect(err.message).toContain(`only ${avail} left`);
    // A failed read does not move the cursor.
    expect(r.offset).toBe(2);
  });

  it('rejects a u64 above MAX_SAFE_INTEGER at the offset where it starts', () => {
    const b = Buffer.alloc(12);
    b.writeBigUInt64BE(BigInt(Number.MAX_SAFE_INTEGER) + 1n, 4);
    const r = new Reader(b, 'thing');
    r.u32('head');
    const err = thrown(() => r.u64('size'));
    expect(err.code).toBe('DF_ERR_DECODE');
    expect(err.fields).toEqual({ what: 'thing', field: 'size', offset: 4 });
    expect(err.message).toContain('too large');
  });

  it('end() reports trailing bytes with the offset where they start', () => {
    const r = new Reader(Buffer.alloc(5), 'thing');
    r.u16('head');
    const err = thrown(() => r.end());
    expect(err.code).toBe('DF_ERR_DECODE');
    expect(err.fields).toEqual({ what: 'thing', field: 'end', offset: 2 });
    expect(err.message).toContain('3 trailing bytes');
  });

  it('fail() names the field and the given offset', () => {
    const r = new Reader(Buffer.alloc(8), 'thing');
    r.u32('x');
    const err = thrown(() => r.fail('magic', 'expected "X"', 0));
    expect(err.code).toBe('DF_ERR_DECODE');
    expect(err.fields).toEqual({ what: 'thing', field: 'magic', offset: 0 });
    expect(err.message).toBe('thing: magic at offset 0: expected "X"');
    // Default offset is the cursor.
    expect(thrown(() => r.fail('y', 'bad')).fields.offset).toBe(4);
  });

  it('a zero-length read at the end succeeds', () => {
    const r = new Reader(Buffer.alloc(0), 'thing');
    expect(r.bytes(0, 'none').length).toBe(0);
    expect(() => r.end()).not.toThrow();
  });
});

describe('Writer', () => {
  it('writes big-endian integers and bytes, chained', () => {
    const out = new Writer(17).u8(1).u16(0x0203).u32(0x04050607).u64(2 ** 40 + 1).bytes(Buffer.from([0xaa, 0xbb])).done();
    expect(out.toString('hex')).toBe('01' + '0203' + '04050607' + '0000010000000001' + 'aabb');
  });

  it('done() refuses a buffer the encoder did not fill', () => {
    const w = new Writer(4).u16(1);
    expect(() => w.done()).toThrow(/wrote 2 of 4 bytes/);
  });

  it('round-trips through Reader', () => {
    const buf = new Writer(15).u8(255).u16(65535).u32(2 ** 32 - 1).u64(Number.MAX_SAFE_INTEGER).done();
    const r = new Reader(buf, 'rt');
    expect([r.u8('a'), r.u16('b'), r.u32('c'), r.u64('d')]).toEqual([255, 65535, 2 ** 32 - 1, Number.MAX_SAFE_INTEGER]);
    r.end();
  });
});
