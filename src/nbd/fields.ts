import { dfError } from '../errors.js';
import type { Reader } from '../wire/bytes.js';
import { MAX_STRING } from './constants.js';

/** Field helpers shared by the NBD codecs: 64-bit magics and cookies as bigint, and checked strings. */

const utf8 = new TextDecoder('utf-8', { fatal: true });

export function u64n(r: Reader, field: string): bigint {
  return r.bytes(8, field).readBigUInt64BE(0);
}

export function be64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  return b;
}

export function magic64(r: Reader, field: string, want: bigint): void {
  const at = r.offset;
  const got = u64n(r, field);
  if (got !== want) r.fail(field, `0x${got.toString(16)}, expected 0x${want.toString(16)}`, at);
}

/**
 * proto.md "Conventions": a string is UTF-8 without NUL, at most 4096 bytes. Invalid UTF-8 is refused
 * rather than replaced, so that encode(decode(x)) gives back x.
 */
export function str(r: Reader, n: number, field: string, max = MAX_STRING): string {
  const at = r.offset;
  if (n > max) r.fail(field, `length ${n} exceeds ${max}`, at);
  const b = r.bytes(n, field);
  if (b.includes(0)) r.fail(field, 'contains NUL', at);
  try {
    return utf8.decode(b);
  } catch {
    return r.fail(field, 'is not valid UTF-8', at);
  }
}

/** Encodes a string, refusing what the protocol cannot carry before any byte is written. */
export function strBytes(s: string, field: string, max = MAX_STRING): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length > max) throw dfError('DF_ERR_BAD_REQUEST', `nbd: ${field} is ${b.length} bytes, at most ${max} allowed`, { field });
  if (b.includes(0)) throw dfError('DF_ERR_BAD_REQUEST', `nbd: ${field} contains NUL`, { field });
  return b;
}

/** Refuses integers a field cannot hold (encoders check before writing). */
export function checkUint(v: number, bits: 16 | 32 | 64, field: string): void {
  const max = bits === 64 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1;
  if (!Number.isInteger(v) || v < 0 || v > max) throw dfError('DF_ERR_BAD_REQUEST', `nbd: ${field} ${v} does not fit in ${bits} bits`, { field });
}

export function checkCookie(v: bigint): void {
  if (v < 0n || v > 0xffffffffffffffffn) throw dfError('DF_ERR_BAD_REQUEST', `nbd: cookie ${v} does not fit in 64 bits`, { field: 'cookie' });
}
