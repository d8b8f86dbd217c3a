import { dfError } from '../errors.js';
import { Reader } from '../wire/bytes.js';
import { CMD, DEFAULT_MAX_PAYLOAD, HS_FLAG, IHAVEOPT, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC } from './constants.js';
import { decodeClientFlags, decodeOption, OPTION_HEADER, type OptionRequest } from './handshake.js';
import { CHUNK_HEADER, decodeChunk, decodeChunkHeader, decodeRequest, decodeSimpleReply, REQUEST_HEADER, SIMPLE_REPLY_HEADER, type Chunk, type Request, type SimpleReply } from './transmission.js';

/**
 * Stream framers: they take a TCP stream split anywhere and hand out whole messages. Use: `push(chunk)`
 * then call `next()` until it returns undefined. Pull, not push, so that a server can stop after
 * NBD_OPT_GO succeeds and hand `takeRest()` to the request framer. Each framer checks a length as soon
 * as its header is complete, before waiting for the data, so once `next()` has returned undefined it
 * holds at most one header plus its limit. The first error is sticky: the stream is beyond repair.
 */

/** A byte queue over the received chunks; copies only when a message spans chunks. */
class ByteQueue {
  private chunks: Buffer[] = [];
  length = 0;

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.length += b.length;
  }

  /** The first n bytes (n <= length), without consuming them. */
  peek(n: number): Buffer {
    const first = this.chunks[0];
    if (first && first.length >= n) return first.subarray(0, n);
    const out = Buffer.alloc(n);
    let at = 0;
    for (const c of this.chunks) {
      if (at >= n) break;
      at += c.copy(out, at, 0, Math.min(c.length, n - at));
    }
    return out;
  }

  take(n: number): Buffer {
    const out = this.peek(n);
    this.skip(n);
    return out;
  }

  /** Up to n bytes from the first chunk, without copying. */
  takeSome(n: number): Buffer {
    const first = this.chunks[0]!;
    const out = first.subarray(0, Math.min(n, first.length));
    this.skip(out.length);
    return out;
  }

  takeAll(): Buffer {
    const out = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks = [];
    this.length = 0;
    return out;
  }

  private skip(n: number): void {
    this.length -= n;
    while (n > 0) {
      const c = this.chunks[0]!;
      if (c.length <= n) { this.chunks.shift(); n -= c.length; } else { this.chunks[0] = c.subarray(n); n = 0; }
    }
  }
}

abstract class Framer<T> {
  protected q = new ByteQueue();
  /** Bytes consumed so far, so errors can name the stream offset. */
  protected consumed = 0;
  private failed: unknown;

  push(chunk: Buffer): void { this.q.push(chunk); }

  get buffered(): number { return this.q.length; }

  next(): T | undefined {
    if (this.failed) throw this.failed;
    try {
      return this.step();
    } catch (err) {
      this.failed = err;
      throw err;
    }
  }

  /** Everything received and not yet framed (for the next phase's framer). */
  takeRest(): Buffer { return this.q.takeAll(); }

  protected take(n: number): Buffer { this.consumed += n; return this.q.take(n); }

  protected takeSome(n: number): Buffer { const b = this.q.takeSome(n); this.consumed += b.length; return b; }

  protected tooBig(what: string, field: string, length: number, max: number): never {
    throw dfError('DF_ERR_DECODE', `${what}: ${field} ${length} at stream offset ${this.consumed} exceeds the limit ${max}`, { what, field, offset: this.consumed, length, max });
  }

  protected abstract step(): T | undefined;
}

// ——— client → server, handshake (proto.md "Newstyle negotiation") ———

export type HandshakeItem = { kind: 'client-flags'; flags: number } | ({ kind: 'option' } & OptionRequest);

export interface OptionFramerOptions {
  /** Largest option data accepted; proto.md strings are ≤ 4096 bytes, so 64 KiB is ample. */
  maxOptionLength?: number;
  /** Whether the stream starts with the 4-byte client flags (it does, right after the greeting). */
  clientFlags?: boolean;
  /** The handshake flags the server sent, to check the client's flags against. */
  advertised?: number;
}

export class OptionFramer extends Framer<HandshakeItem> {
  private readonly max: number;
  private readonly advertised: number;
  private wantFlags: boolean;

  constructor(o: OptionFramerOptions = {}) {
    super();
    this.max = o.maxOptionLength ?? 64 * 1024;
    this.wantFlags = o.clientFlags ?? true;
    this.advertised = o.advertised ?? HS_FLAG.FIXED_NEWSTYLE | HS_FLAG.NO_ZEROES;
  }

  protected step(): HandshakeItem | undefined {
    if (this.wantFlags) {
      if (this.q.length < 4) return undefined;
      this.wantFlags = false;
      return { kind: 'client-flags', flags: decodeClientFlags(this.take(4), this.advertised) };
    }
    if (this.q.length < OPTION_HEADER) return undefined;
    const head = new Reader(this.q.peek(OPTION_HEADER), 'nbd option');
    const magic = head.bytes(8, 'IHAVEOPT').readBigUInt64BE(0);
    if (magic !== IHAVEOPT) throw dfError('DF_ERR_DECODE', `nbd option: IHAVEOPT at stream offset ${this.consumed}: 0x${magic.toString(16)}`, { what: 'nbd option', field: 'IHAVEOPT', offset: this.consumed });
    head.u32('option');
    const len = head.u32('option length');
    if (len > this.max) this.tooBig('nbd option', 'option length', len, this.max);
    if (this.q.length < OPTION_HEADER + len) return undefined;
    const o = decodeOption(this.take(OPTION_HEADER + len));
    return { kind: 'option', ...o };
  }
}

// ——— client → server, transmission (proto.md "Request message") ———

export type RequestItem =
  /** In 'whole' mode a WRITE's payload comes here; in 'pieces' mode 'data' items follow. */
  | { kind: 'request'; request: Request; data?: Buffer }
  | { kind: 'data'; cookie: bigint; at: number; data: Buffer; last: boolean };

export interface RequestFramerOptions {
  /** Largest WRITE payload accepted (proto.md "Size constraints": 32 MiB by default). */
  maxPayload?: number;
  /** 'pieces': WRITE data as it arrives, nothing buffered; 'whole': one Buffer per WRITE. */
  payload?: 'pieces' | 'whole';
}

export class RequestFramer extends Framer<RequestItem> {
  private readonly max: number;
  private readonly whole: boolean;
  /** The WRITE whose payload is still arriving ('pieces' mode). */
  private pending: { cookie: bigint; at: number; length: number } | undefined;

  constructor(o: RequestFramerOptions = {}) {
    super();
    this.max = o.maxPayload ?? DEFAULT_MAX_PAYLOAD;
    this.whole = o.payload === 'whole';
  }

  protected step(): RequestItem | undefined {
    const p = this.pending;
    if (p) {
      if (this.q.length === 0) return undefined;
      const data = this.takeSome(p.length - p.at);
      const item = { kind: 'data' as const, cookie: p.cookie, at: p.at, data, last: p.at + data.length === p.length };
      p.at += data.length;
      if (item.last) this.pending = undefined;
      return item;
    }
    if (this.q.length < REQUEST_HEADER) return undefined;
    const at = this.consumed;
    let request: Request;
    try {
      request = decodeRequest(this.q.peek(REQUEST_HEADER));
    } catch (err) {
      throw dfError('DF_ERR_DECODE', `${(err as Error).message} (request at stream offset ${at})`, { ...(err as { fields?: object }).fields, streamOffset: at });
    }
    const write = request.type === CMD.WRITE;
    if (write && request.length > this.max) this.tooBig('nbd request', 'write length', request.length, this.max);
    if (write && this.whole) {
      if (this.q.length < REQUEST_HEADER + request.length) return undefined;
      this.take(REQUEST_HEADER);
      return { kind: 'request', request, data: this.take(request.length) };
    }
    this.take(REQUEST_HEADER);
    if (write && request.length > 0) this.pending = { cookie: request.cookie, at: 0, length: request.length };
    return { kind: 'request', request };
  }
}

// ——— server → client, transmission (proto.md "Simple reply message", "Structured reply chunk message") ———

export type ReplyItem = { kind: 'simple'; reply: SimpleReply; data?: Buffer } | { kind: 'chunk'; chunk: Chunk };

export interface ReplyFramerOptions {
  /**
   * Simple replies do not say whether data follows (proto.md "Transmission"): the length of the READ
   * the cookie belongs to, or undefined when it was not a READ. Called once per simple reply, in order.
   */
  readLength: (cookie: bigint) => number | undefined;
  maxPayload?: number;
}

export class ReplyFramer extends Framer<ReplyItem> {
  private readonly max: number;
  private asked: { len: number | undefined } | undefined;

  constructor(private readonly o: ReplyFramerOptions) {
    super();
    this.max = o.maxPayload ?? DEFAULT_MAX_PAYLOAD;
  }

  protected step(): ReplyItem | undefined {
    if (this.q.length < 4) return undefined;
    const magic = this.q.peek(4).readUInt32BE(0);
    if (magic === SIMPLE_REPLY_MAGIC) {
      if (this.q.length < SIMPLE_REPLY_HEADER) return undefined;
      const reply = decodeSimpleReply(this.q.peek(SIMPLE_REPLY_HEADER));
      // Asked once per reply: callers may retire the cookie when asked (cookies get reused).
      if (!this.asked) this.asked = { len: reply.error === 0 ? this.o.readLength(reply.cookie) : undefined };
      const len = this.asked.len;
      if (len === undefined) { this.take(SIMPLE_REPLY_HEADER); this.asked = undefined; return { kind: 'simple', reply }; }
      if (len > this.max) this.tooBig('nbd simple reply', 'read length', len, this.max);
      if (this.q.length < SIMPLE_REPLY_HEADER + len) return undefined;
      this.take(SIMPLE_REPLY_HEADER);
      this.asked = undefined;
      return { kind: 'simple', reply, data: this.take(len) };
    }
    if (magic === STRUCTURED_REPLY_MAGIC) {
      if (this.q.length < CHUNK_HEADER) return undefined;
      const h = decodeChunkHeader(this.q.peek(CHUNK_HEADER));
      // The payload may exceed the maximum by a chunk type's fixed overhead (proto.md "Structured reply types").
      if (h.length > this.max + 64) this.tooBig('nbd structured reply', 'length', h.length, this.max + 64);
      if (this.q.length < CHUNK_HEADER + h.length) return undefined;
      return { kind: 'chunk', chunk: decodeChunk(this.take(CHUNK_HEADER + h.length)) };
    }
    throw dfError('DF_ERR_DECODE', `nbd reply: magic at stream offset ${this.consumed}: 0x${magic.toString(16)} is neither simple nor structured`, { what: 'nbd reply', field: 'magic', offset: this.consumed });
  }
}
