import { dfError } from '../errors.js';
import { Reader } from '../wire/bytes.js';

/**
 * TFTP packet codec (RFC 1350 §5, RFC 2347 §2), pure. All integers are big-endian u16.
 *
 *   RRQ/WRQ  opcode(1|2) filename NUL mode NUL [optname NUL optvalue NUL]…   (RFC 2347 §2)
 *   DATA     opcode(3) block data(0..blksize)          a block shorter than blksize ends the file
 *   ACK      opcode(4) block
 *   ERROR    opcode(5) code message NUL
 *   OACK     opcode(6) [optname NUL optvalue NUL]…     (RFC 2347 §2)
 *
 * Option names are case-insensitive (RFC 2347 §2) and decoded to lower case; modes too (RFC 1350 §5).
 * Strings are decoded as UTF-8. `requestOptions` turns the raw option list of a request into the
 * options deskfuse understands, dropping values it cannot use (RFC 2347 §2 lets a server ignore them).
 */

export const OP = { RRQ: 1, WRQ: 2, DATA: 3, ACK: 4, ERROR: 5, OACK: 6 } as const;

/** RFC 1350 §5 error codes; 8 is RFC 2347 §2 (option negotiation refused). */
export const ERR = {
  UNDEFINED: 0, NOT_FOUND: 1, ACCESS: 2, DISK_FULL: 3, ILLEGAL_OP: 4, UNKNOWN_TID: 5, EXISTS: 6, NO_USER: 7, OPTIONS: 8,
} as const;

/** RFC 2348 §2 block size range; RFC 1350's fixed size is the default. */
export const BLKSIZE_MIN = 8;
export const BLKSIZE_MAX = 65464;
export const BLKSIZE_DEFAULT = 512;

export type Options = [name: string, value: string][];

export type Packet =
  | { op: 'rrq' | 'wrq'; filename: string; mode: string; options: Options }
  | { op: 'data'; block: number; data: Buffer }
  | { op: 'ack'; block: number }
  | { op: 'error'; code: number; message: string }
  | { op: 'oack'; options: Options };

/** Read a NUL-terminated string; an unterminated string is a decode error at its start. */
function cstring(r: Reader, field: string): string {
  const at = r.offset;
  const end = r.buf.indexOf(0, at);
  if (end < 0) r.fail(field, 'no terminating NUL', at);
  const s = r.buf.toString('utf8', at, end);
  r.offset = end + 1;
  return s;
}

function options(r: Reader): Options {
  const out: Options = [];
  while (r.remaining > 0) {
    // Some clients pad requests with NULs after the last option: an empty name ends the list.
    if (r.buf[r.offset] === 0 && r.buf.subarray(r.offset).every((b) => b === 0)) { r.offset = r.buf.length; break; }
    const at = r.offset;
    const name = cstring(r, 'option name').toLowerCase();
    if (name === '') r.fail('option name', 'empty', at);
    const value = cstring(r, `option ${name} value`);
    out.push([name, value]);
  }
  return out;
}

export function decode(buf: Buffer): Packet {
  const r = new Reader(buf, 'tftp');
  const op = r.u16('opcode');
  switch (op) {
    case OP.RRQ:
    case OP.WRQ: {
      const filename = cstring(r, 'filename');
      const mode = cstring(r, 'mode').toLowerCase();
      return { op: op === OP.RRQ ? 'rrq' : 'wrq', filename, mode, options: options(r) };
    }
    case OP.DATA: {
      const block = r.u16('block');
      if (r.remaining > BLKSIZE_MAX) r.fail('data', `${r.remaining} bytes, at most ${BLKSIZE_MAX}`);
      return { op: 'data', block, data: r.bytes(r.remaining, 'data') };
    }
    case OP.ACK: {
      const block = r.u16('block');
      r.end();
      return { op: 'ack', block };
    }
    case OP.ERROR: {
      const code = r.u16('error code');
      // Tolerate a missing terminator: the message is all that is left (some clients omit the NUL).
      const end = buf.indexOf(0, r.offset);
      const message = buf.toString('utf8', r.offset, end < 0 ? buf.length : end);
      return { op: 'error', code, message };
    }
    case OP.OACK:
      return { op: 'oack', options: options(r) };
    default:
      return r.fail('opcode', `unknown opcode ${op}`, 0);
  }
}

const bad = (field: string, why: string): never => {
  throw dfError('DF_ERR_BAD_REQUEST', `tftp: ${field} ${why}`, { field });
};
const u16 = (v: number, field: string): number =>
  (Number.isInteger(v) && v >= 0 && v <= 0xffff ? v : bad(field, `${v} is not a u16`));
const str = (s: string, field: string): Buffer => {
  if (s.includes('\0')) bad(field, 'contains NUL');
  return Buffer.from(s + '\0', 'utf8');
};
const head = (op: number, n: number): Buffer => { const b = Buffer.alloc(4); b.writeUInt16BE(op, 0); b.writeUInt16BE(n, 2); return b; };

/** Encode any packet. Refuses (DF_ERR_BAD_REQUEST) what the wire cannot carry before building bytes. */
export function encode(p: Packet): Buffer {
  switch (p.op) {
    case 'rrq':
    case 'wrq': {
      const parts = [str(p.filename, 'filename'), str(p.mode, 'mode'), ...encodeOptions(p.options)];
      const op = Buffer.alloc(2);
      op.writeUInt16BE(p.op === 'rrq' ? OP.RRQ : OP.WRQ);
      return Buffer.concat([op, ...parts]);
    }
    case 'data':
      if (p.data.length > BLKSIZE_MAX) bad('data', `${p.data.length} bytes, at most ${BLKSIZE_MAX}`);
      return Buffer.concat([head(OP.DATA, u16(p.block, 'block')), p.data]);
    case 'ack':
      return head(OP.ACK, u16(p.block, 'block'));
    case 'error':
      return encodeError(p.code, p.message);
    case 'oack': {
      const op = Buffer.alloc(2);
      op.writeUInt16BE(OP.OACK);
      return Buffer.concat([op, ...encodeOptions(p.options)]);
    }
  }
}

function encodeOptions(opts: Options): Buffer[] {
  return opts.flatMap(([n, v]) => {
    if (n === '') bad('option name', 'is empty');
    return [str(n, 'option name'), str(v, `option ${n} value`)];
  });
}

export function encodeError(code: number, message: string): Buffer {
  return Buffer.concat([head(OP.ERROR, u16(code, 'error code')), str(message, 'error message')]);
}

/** Write a DATA header in place: the transfer keeps packets in preallocated slots (no copy per send). */
export function writeDataHeader(buf: Buffer, at: number, block: number): void {
  buf.writeUInt16BE(OP.DATA, at);
  buf.writeUInt16BE(block & 0xffff, at + 2);
}

/** The options of a request deskfuse understands; absent = not asked or unusable (ignored). */
export interface RequestOptions {
  blksize?: number;     // RFC 2348 §2: 8..65464 octets
  tsize?: number;       // RFC 2349 §4: a reading client sends 0
  timeout?: number;     // RFC 2349 §3: 1..255 seconds
  windowsize?: number;  // RFC 7440 §3: 1..65535 blocks
}

const RANGES = {
  blksize: [BLKSIZE_MIN, BLKSIZE_MAX], tsize: [0, Number.MAX_SAFE_INTEGER], timeout: [1, 255], windowsize: [1, 65535],
} as const satisfies Record<keyof RequestOptions, readonly [number, number]>;

/**
 * Pick the known options with valid decimal values. Anything else is ignored rather than refused:
 * atftp 0.8 sends `tsize enable`, which a strict server would answer with ERROR 8 and fail the boot.
 * The first occurrence of a repeated option wins.
 */
export function requestOptions(opts: Options): RequestOptions {
  const out: RequestOptions = {};
  for (const [name, value] of opts) {
    if (!Object.hasOwn(RANGES, name)) continue;
    const key = name as keyof RequestOptions;
    if (out[key] !== undefined || !/^[0-9]{1,16}$/.test(value)) continue;
    const n = Number(value);
    const [lo, hi] = RANGES[key];
    if (n >= lo && n <= hi) out[key] = n;
  }
  return out;
}
