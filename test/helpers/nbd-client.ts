import net from 'node:net';
import tls from 'node:tls';
import {
  CLIENT_FLAG, CMD, REPLY_FLAG, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC,
  decodeChunk, decodeChunkHeader, decodeGreeting, decodeOptionReply, decodeReplyPayload, decodeSimpleReply,
  encodeClientFlags, encodeOption, encodeOptionPayload, encodeRequest, isErrorChunk, isFinalReply,
  type Chunk, type OptionPayload, type ReplyPayload,
} from '../../src/nbd/packet.js';

/**
 * A raw NBD client built from the codec, for asserting the wire: exact option replies, errnos, which
 * bytes close a connection. Pipelines requests: each request() resolves when its reply is complete.
 */

export interface Reply {
  /** 0, or the errno of the simple reply or of the first error chunk. */
  error: number;
  /** READ data, reassembled from OFFSET_DATA chunks (or the simple reply's payload). */
  data?: Buffer;
  chunks: Chunk[];
  /** Whether the reply was a simple one. */
  simple: boolean;
}

export interface Req { type: number; flags?: number; offset?: number; length?: number }

interface Pending { q: Required<Req>; resolve: (r: Reply) => void; reject: (e: Error) => void; chunks: Chunk[] }

export class RawNbd {
  private buf: Buffer = Buffer.alloc(0);
  private eof = false;
  private waiter: (() => void) | undefined;
  private readonly pending = new Map<bigint, Pending>();
  private cookie = 1n;
  private replyLoop: Promise<void> | undefined;
  readonly closed: Promise<void>;
  structured = false;
  private greeted = false;

  private readonly onData = (b: Buffer): void => { this.buf = this.buf.length ? Buffer.concat([this.buf, b]) : b; this.poke(); };
  private readonly onEnd = (): void => { this.eof = true; this.poke(); };
  private onClose!: () => void;

  /** The TCP socket, then the TLS socket over it after starttls(). */
  sock: net.Socket;

  private constructor(sock: net.Socket) {
    this.sock = sock;
    this.closed = new Promise((resolve) => { this.onClose = () => { this.eof = true; this.poke(); resolve(); }; });
    sock.on('data', this.onData);
    sock.on('error', () => undefined);
    sock.once('close', this.onClose);
    sock.on('end', this.onEnd);
  }

  /**
   * NBD_OPT_STARTTLS, then (on NBD_REP_ACK) the TLS handshake over the same connection. Returns the
   * replies; rejects when the handshake fails. `opts` are tls.connect's (ca, servername, psk…).
   */
  async starttls(opts: tls.ConnectionOptions): Promise<{ option: number; type: number; payload: ReplyPayload }[]> {
    const replies = await this.option({ kind: 'starttls' });
    if (replies[0]?.payload.kind !== 'ack') return replies;
    const raw = this.sock;
    raw.off('data', this.onData);
    raw.off('end', this.onEnd);
    raw.off('close', this.onClose);
    const t = tls.connect({ ...opts, socket: raw });
    this.sock = t;
    t.on('data', this.onData);
    t.on('end', this.onEnd);
    t.once('close', this.onClose);
    await new Promise<void>((resolve, reject) => {
      t.once('secureConnect', () => { t.off('error', reject); resolve(); });
      t.once('error', reject);
    });
    t.on('error', () => undefined);
    return replies;
  }

  static connect(port: number, host = '127.0.0.1'): Promise<RawNbd> {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ port, host, noDelay: true }, () => { sock.off('error', reject); resolve(new RawNbd(sock)); });
      sock.once('error', reject);
    });
  }

  write(b: Buffer): void { this.sock.write(b); }

  destroy(): void { this.sock.destroy(); }

  /** True when the server closed the connection within `ms`. */
  async closedWithin(ms: number): Promise<boolean> {
    let t: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => { t = setTimeout(() => resolve(false), ms); });
    const r = await Promise.race([this.closed.then(() => true), timeout]);
    clearTimeout(t);
    return r;
  }

  private poke(): void { const w = this.waiter; this.waiter = undefined; w?.(); }

  async take(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.eof) throw new Error(`connection closed with ${this.buf.length} of ${n} bytes`);
      await new Promise<void>((resolve) => { this.waiter = resolve; });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Reads the greeting, sends the client flags; returns the handshake flags. */
  async greet(flags = CLIENT_FLAG.FIXED_NEWSTYLE | CLIENT_FLAG.NO_ZEROES): Promise<number> {
    this.greeted = true;
    const hs = decodeGreeting(await this.take(18));
    this.write(encodeClientFlags(flags));
    return hs;
  }

  async readOptionReply(): Promise<{ option: number; type: number; payload: ReplyPayload }> {
    const head = await this.take(20);
    const len = head.readUInt32BE(16);
    const r = decodeOptionReply(Buffer.concat([head, await this.take(len)]));
    return { option: r.option, type: r.type, payload: decodeReplyPayload(r) };
  }

  /** Sends an option (a payload or raw bytes) and reads replies through the final one. */
  async option(p: OptionPayload | Buffer): Promise<{ option: number; type: number; payload: ReplyPayload }[]> {
    this.write(Buffer.isBuffer(p) ? p : encodeOption(encodeOptionPayload(p)));
    const out = [];
    for (;;) {
      const r = await this.readOptionReply();
      out.push(r);
      if (isFinalReply(r.type)) return out;
    }
  }

  /** Handshake (greeting unless done) through NBD_OPT_GO; throws with the reply type when GO fails. */
  async open(name: string, o: { structured?: boolean; meta?: boolean; requests?: number[] } = {}): Promise<{ size: number; flags: number; replies: ReplyPayload[] }> {
    if (!this.greeted) await this.greet();
    if (o.structured ?? true) {
      await this.option({ kind: 'structured-reply' });
      this.structured = true;
      if (o.meta ?? true) await this.option({ kind: 'set-meta-context', name, queries: ['base:allocation'] });
    }
    const replies = (await this.option({ kind: 'go', name, requests: o.requests ?? [] })).map((r) => r.payload);
    const last = replies[replies.length - 1]!;
    if (last.kind !== 'ack') throw new Error(`GO ${name} failed: ${JSON.stringify(last)}`);
    const e = replies.find((r) => r.kind === 'info' && r.info === 'export') as { size: number; flags: number };
    return { size: e.size, flags: e.flags, replies };
  }

  /** Sends a request (with WRITE data) and resolves with its complete reply. */
  request(r: Req, data?: Buffer): Promise<Reply> {
    const q = { flags: 0, offset: 0, length: data?.length ?? 0, ...r };
    const cookie = this.cookie++;
    this.replyLoop ??= this.readReplies();
    const p = new Promise<Reply>((resolve, reject) => this.pending.set(cookie, { q, resolve, reject, chunks: [] }));
    this.write(data ? Buffer.concat([encodeRequest({ ...q, cookie }), data]) : encodeRequest({ ...q, cookie }));
    return p;
  }

  /** NBD_CMD_DISC: no reply; the server answers what is in flight and closes. */
  disconnect(): void {
    this.write(encodeRequest({ type: CMD.DISC, flags: 0, cookie: this.cookie++, offset: 0, length: 0 }));
  }

  private async readReplies(): Promise<void> {
    try {
      for (;;) {
        const magic = (await this.take(4)).readUInt32BE(0);
        if (magic === SIMPLE_REPLY_MAGIC) {
          const s = decodeSimpleReply(Buffer.concat([Buffer.from([0x67, 0x44, 0x66, 0x98]), await this.take(12)]));
          const p = this.claim(s.cookie);
          const data = s.error === 0 && p.q.type === CMD.READ ? Buffer.from(await this.take(p.q.length)) : undefined;
          this.pending.delete(s.cookie);
          p.resolve({ error: s.error, data, chunks: [], simple: true });
        } else if (magic === STRUCTURED_REPLY_MAGIC) {
          const head = Buffer.concat([Buffer.from([0x66, 0x8e, 0x33, 0xef]), await this.take(16)]);
          const h = decodeChunkHeader(head);
          const c = decodeChunk(Buffer.concat([head, await this.take(h.length)]));
          const p = this.claim(c.cookie);
          p.chunks.push(c);
          if (c.flags & REPLY_FLAG.DONE) {
            this.pending.delete(c.cookie);
            p.resolve(assemble(p));
          }
        } else {
          throw new Error(`bad reply magic 0x${magic.toString(16)}`);
        }
      }
    } catch (err) {
      for (const p of this.pending.values()) p.reject(err as Error);
      this.pending.clear();
    }
  }

  private claim(cookie: bigint): Pending {
    const p = this.pending.get(cookie);
    if (!p) throw new Error(`reply for unknown cookie ${cookie}`);
    return p;
  }
}

function assemble(p: Pending): Reply {
  const err = p.chunks.find((c) => isErrorChunk(chunkType(c)));
  const error = err && (err.kind === 'error' || err.kind === 'error-offset') ? err.error : 0;
  let data: Buffer | undefined;
  if (p.q.type === CMD.READ && !error) {
    data = Buffer.alloc(p.q.length);
    let covered = 0;
    for (const c of p.chunks) {
      if (c.kind === 'offset-data') { c.data.copy(data, c.offset - p.q.offset); covered += c.data.length; }
      if (c.kind === 'offset-hole') covered += c.size;
    }
    if (covered !== p.q.length) throw new Error(`read reply covers ${covered} of ${p.q.length} bytes`);
  }
  return { error, data, chunks: p.chunks, simple: false };
}

function chunkType(c: Chunk): number {
  return c.kind === 'error' ? 0x8001 : c.kind === 'error-offset' ? 0x8002 : c.kind === 'unknown' ? c.type : 0;
}
