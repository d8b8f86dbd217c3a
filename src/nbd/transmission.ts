import { dfError } from '../errors.js';
import { Reader, Writer } from '../wire/bytes.js';
import { CHUNK, CHUNK_ERR_BIT, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC } from './constants.js';
import { be64, checkCookie, checkUint, str, strBytes, u64n } from './fields.js';

/**
 * NBD transmission phase codec (proto.md "Transmission"), pure.
 *
 *   C: 0x25609513(4) command flags(2) type(2) cookie(8) offset(8) length(4) [length bytes if WRITE]
 *   S: 0x67446698(4) error(4) cookie(8) [read length bytes if READ and error = 0]      simple reply
 *   S: 0x668e33ef(4) flags(2) type(2) cookie(8) length(4) payload(length)             structured chunk
 *
 * Headers decode alone: WRITE and simple-READ data are not part of the header, so a server can stream
 * them (framer.ts). Cookies are opaque, kept as bigint; offsets and sizes are numbers, and values past
 * 2^53 (beyond any export deskfuse serves) are decode errors rather than silently rounded.
 */

export const REQUEST_HEADER = 28;
export const SIMPLE_REPLY_HEADER = 16;
export const CHUNK_HEADER = 20;

export interface Request {
  flags: number;
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
}

export interface SimpleReply {
  error: number;
  cookie: bigint;
}

export function encodeRequest(q: Request): Buffer {
  checkUint(q.flags, 16, 'command flags'); checkUint(q.type, 16, 'type'); checkCookie(q.cookie);
  checkUint(q.offset, 64, 'offset'); checkUint(q.length, 32, 'length');
  return new Writer(REQUEST_HEADER).u32(REQUEST_MAGIC).u16(q.flags).u16(q.type).bytes(be64(q.cookie)).u64(q.offset).u32(q.length).done();
}

export function decodeRequest(buf: Buffer): Request {
  const r = new Reader(buf, 'nbd request');
  const magic = r.u32('magic');
  if (magic !== REQUEST_MAGIC) r.fail('magic', `0x${magic.toString(16)}, expected 0x${REQUEST_MAGIC.toString(16)}`, 0);
  const q = { flags: r.u16('command flags'), type: r.u16('type'), cookie: u64n(r, 'cookie'), offset: r.u64('offset'), length: r.u32('length') };
  r.end();
  return q;
}

export function encodeSimpleReply(s: SimpleReply): Buffer {
  checkUint(s.error, 32, 'error'); checkCookie(s.cookie);
  return new Writer(SIMPLE_REPLY_HEADER).u32(SIMPLE_REPLY_MAGIC).u32(s.error).bytes(be64(s.cookie)).done();
}

export function decodeSimpleReply(buf: Buffer): SimpleReply {
  const r = new Reader(buf, 'nbd simple reply');
  const magic = r.u32('magic');
  if (magic !== SIMPLE_REPLY_MAGIC) r.fail('magic', `0x${magic.toString(16)}, expected 0x${SIMPLE_REPLY_MAGIC.toString(16)}`, 0);
  const s = { error: r.u32('error'), cookie: u64n(r, 'cookie') };
  r.end();
  return s;
}

// ——— structured reply chunks (proto.md "Structured reply chunk message", "Structured reply types") ———

/** One block status descriptor; for `base:allocation` the flags are STATE.HOLE | STATE.ZERO. */
export interface Extent {
  length: number;
  flags: number;
}

export type ChunkBody =
  | { kind: 'none' }
  | { kind: 'offset-data'; offset: number; data: Buffer }
  | { kind: 'offset-hole'; offset: number; size: number }
  | { kind: 'block-status'; contextId: number; extents: Extent[] }
  | { kind: 'error'; error: number; message: string }
  | { kind: 'error-offset'; error: number; message: string; offset: number }
  /** Unknown types, kept whole; one with bit 15 set still means the reply failed. */
  | { kind: 'unknown'; type: number; payload: Buffer };

export type Chunk = { flags: number; cookie: bigint } & ChunkBody;

export interface ChunkHeader {
  flags: number;
  type: number;
  cookie: bigint;
  length: number;
}

export function encodeChunkHeader(h: ChunkHeader): Buffer {
  checkUint(h.flags, 16, 'reply flags'); checkUint(h.type, 16, 'reply type'); checkCookie(h.cookie); checkUint(h.length, 32, 'length');
  return new Writer(CHUNK_HEADER).u32(STRUCTURED_REPLY_MAGIC).u16(h.flags).u16(h.type).bytes(be64(h.cookie)).u32(h.length).done();
}

export function decodeChunkHeader(buf: Buffer): ChunkHeader {
  const r = new Reader(buf, 'nbd structured reply');
  const magic = r.u32('magic');
  if (magic !== STRUCTURED_REPLY_MAGIC) r.fail('magic', `0x${magic.toString(16)}, expected 0x${STRUCTURED_REPLY_MAGIC.toString(16)}`, 0);
  const h = { flags: r.u16('reply flags'), type: r.u16('reply type'), cookie: u64n(r, 'cookie'), length: r.u32('length') };
  r.end();
  return h;
}

/** Header plus offset of an OFFSET_DATA chunk, so a server can send the data after it without a copy. */
export function encodeOffsetDataHead(flags: number, cookie: bigint, offset: number, dataLength: number): Buffer {
  checkUint(flags, 16, 'reply flags'); checkCookie(cookie); checkUint(offset, 64, 'offset'); checkUint(dataLength + 8, 32, 'length');
  // One buffer, written in place: this runs once per READ reply.
  const b = Buffer.allocUnsafe(CHUNK_HEADER + 8);
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(CHUNK.OFFSET_DATA, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeUInt32BE(8 + dataLength, 16);
  b.writeUIntBE(Math.floor(offset / 2 ** 32), 20, 4);
  b.writeUInt32BE(offset % 2 ** 32, 24);
  return b;
}

/** Decodes one whole chunk: header and exactly `length` payload bytes. */
export function decodeChunk(buf: Buffer): Chunk {
  const h = decodeChunkHeader(buf.subarray(0, CHUNK_HEADER));
  const r = new Reader(buf, 'nbd structured reply');
  r.offset = CHUNK_HEADER;
  if (buf.length - CHUNK_HEADER !== h.length) r.fail('payload', `${buf.length - CHUNK_HEADER} bytes, header says ${h.length}`);
  const at = (min: number, exact = false) => {
    if (exact ? h.length !== min : h.length < min) r.fail('length', `${h.length} for reply type ${h.type}, expected ${exact ? '' : 'at least '}${min}`, 16);
  };
  const { flags, cookie } = h;
  let body: ChunkBody;
  switch (h.type) {
    case CHUNK.NONE: at(0, true); body = { kind: 'none' }; break;
    case CHUNK.OFFSET_DATA: at(9); body = { kind: 'offset-data', offset: r.u64('offset'), data: r.bytes(h.length - 8, 'data') }; break;
    case CHUNK.OFFSET_HOLE: {
      at(12, true);
      body = { kind: 'offset-hole', offset: r.u64('offset'), size: r.u32('hole size') };
      if (body.size === 0) r.fail('hole size', 'MUST be nonzero', r.offset - 4);
      break;
    }
    case CHUNK.BLOCK_STATUS: {
      if (h.length < 12 || (h.length - 4) % 8 !== 0) r.fail('length', `${h.length} for block status, expected 4 + a positive multiple of 8`, 16);
      const contextId = r.u32('context id');
      const extents: Extent[] = [];
      while (r.remaining > 0) {
        const e = { length: r.u32('extent length'), flags: r.u32('extent flags') };
        if (e.length === 0) r.fail('extent length', 'MUST be nonzero', r.offset - 8);
        extents.push(e);
      }
      body = { kind: 'block-status', contextId, extents };
      break;
    }
    case CHUNK.ERROR: case CHUNK.ERROR_OFFSET: {
      const tail = h.type === CHUNK.ERROR ? 0 : 8;
      at(6 + tail);
      const error = r.u32('error');
      if (error === 0) r.fail('error', 'MUST be nonzero', r.offset - 4);
      const mlen = r.u16('message length');
      if (mlen !== h.length - 6 - tail) r.fail('message length', `${mlen}, the chunk leaves ${h.length - 6 - tail}`, r.offset - 2);
      const message = str(r, mlen, 'message');
      body = tail ? { kind: 'error-offset', error, message, offset: r.u64('offset') } : { kind: 'error', error, message };
      break;
    }
    default: body = { kind: 'unknown', type: h.type, payload: r.bytes(h.length, 'payload') };
  }
  r.end();
  return { flags, cookie, ...body };
}

export function encodeChunk(c: Chunk): Buffer {
  const head = (type: number, payload: Buffer) => Buffer.concat([encodeChunkHeader({ flags: c.flags, type, cookie: c.cookie, length: payload.length }), payload]);
  switch (c.kind) {
    case 'none': return head(CHUNK.NONE, Buffer.alloc(0));
    case 'offset-data':
      if (c.data.length === 0) throw dfError('DF_ERR_BAD_REQUEST', 'nbd: an OFFSET_DATA chunk needs at least one byte', { field: 'data' });
      return Buffer.concat([encodeOffsetDataHead(c.flags, c.cookie, c.offset, c.data.length), c.data]);
    case 'offset-hole':
      checkUint(c.offset, 64, 'offset'); checkUint(c.size, 32, 'hole size');
      if (c.size === 0) throw dfError('DF_ERR_BAD_REQUEST', 'nbd: hole size must be nonzero', { field: 'hole size' });
      return head(CHUNK.OFFSET_HOLE, new Writer(12).u64(c.offset).u32(c.size).done());
    case 'block-status': {
      checkUint(c.contextId, 32, 'context id');
      if (c.extents.length === 0) throw dfError('DF_ERR_BAD_REQUEST', 'nbd: block status needs at least one extent', { field: 'extents' });
      const w = new Writer(4 + 8 * c.extents.length).u32(c.contextId);
      for (const e of c.extents) {
        checkUint(e.length, 32, 'extent length'); checkUint(e.flags, 32, 'extent flags');
        if (e.length === 0) throw dfError('DF_ERR_BAD_REQUEST', 'nbd: extent length must be nonzero', { field: 'extent length' });
        w.u32(e.length).u32(e.flags);
      }
      return head(CHUNK.BLOCK_STATUS, w.done());
    }
    case 'error': case 'error-offset': {
      checkUint(c.error, 32, 'error');
      if (c.error === 0) throw dfError('DF_ERR_BAD_REQUEST', 'nbd: an error chunk needs a nonzero error', { field: 'error' });
      const m = strBytes(c.message, 'message');
      const tail = c.kind === 'error-offset' ? 8 : 0;
      const w = new Writer(6 + m.length + tail).u32(c.error).u16(m.length).bytes(m);
      if (c.kind === 'error-offset') { checkUint(c.offset, 64, 'offset'); w.u64(c.offset); }
      return head(tail ? CHUNK.ERROR_OFFSET : CHUNK.ERROR, w.done());
    }
    case 'unknown': checkUint(c.type, 16, 'reply type'); return head(c.type, c.payload);
  }
}

/** True for chunk types in the error category (bit 15), known or not. */
export const isErrorChunk = (type: number): boolean => (type & CHUNK_ERR_BIT) !== 0;
