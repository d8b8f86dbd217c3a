import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { prng } from '../../test/helpers/expect.js';
import {
  CLIENT_FLAG, CMD, CMD_NAME, OPT, OPT_NAME, REP, REP_NAME,
  decodeClientFlags, decodeExportNameReply, decodeGreeting, decodeOption, decodeOptionPayload, decodeOptionReply, decodeReplyPayload,
  encodeChunk, encodeClientFlags, encodeExportNameReply, encodeGreeting, encodeOption, encodeOptionPayload, encodeOptionReply,
  encodeReplyPayload, encodeRequest, encodeSimpleReply, exportNameReplySize, GREETING_SIZE, isFinalReply, OPTION_REPLY_HEADER,
  OptionFramer, REPLY_FLAG, ReplyFramer, RequestFramer, type HandshakeItem, type ReplyItem, type RequestItem,
} from './packet.js';

/**
 * Golden tests over streams captured from real clients and servers (test/fixtures/nbd/capture.mjs):
 * each connection is walked message by message, the decoded conversation is compared with its JSON,
 * every message re-encodes to its exact bytes, and the framers give the same messages whatever the
 * split of the stream.
 */

const FIXTURES = path.resolve(import.meta.dirname, '../../test/fixtures/nbd');
const CAPTURES = readdirSync(FIXTURES).filter((f) => f.endsWith('.client.hex')).map((f) => f.slice(0, -'.client.hex'.length)).sort();
const hex = (name: string, dir: 'client' | 'server') => Buffer.from(readFileSync(path.join(FIXTURES, `${name}.${dir}.hex`), 'utf8').trim(), 'hex');

/** JSON view: bigints as hex strings, small buffers as hex, large ones by size and digest. */
function view(v: unknown): unknown {
  return JSON.parse(JSON.stringify(v, (_k, x: unknown) => {
    if (typeof x === 'bigint') return `0x${x.toString(16)}`;
    if (x && typeof x === 'object' && (x as { type?: string }).type === 'Buffer') {
      const b = Buffer.from((x as { data: number[] }).data);
      return b.length <= 32 ? b.toString('hex') : `${b.length} bytes sha256:${createHash('sha256').update(b).digest('hex').slice(0, 16)}`;
    }
    return x;
  }));
}

interface Walk {
  messages: { from: 'C' | 'S'; what: string; value: unknown; bytes: Buffer; again: Buffer }[];
  /** Client stream offset where the transmission phase starts (or the end). */
  clientTx: number;
  serverTx: number;
  requests: RequestItem[];
  replies: ReplyItem[];
}

/** Walks one connection: handshake by the client's options, then both transmission streams. */
function walk(client: Buffer, server: Buffer): Walk {
  const messages: Walk['messages'] = [];
  const greet = server.subarray(0, GREETING_SIZE);
  const hsFlags = decodeGreeting(greet);
  messages.push({ from: 'S', what: 'greeting', value: { handshakeFlags: hsFlags }, bytes: greet, again: encodeGreeting(hsFlags) });
  const cflags = decodeClientFlags(client.subarray(0, 4), hsFlags);
  messages.push({ from: 'C', what: 'client flags', value: { flags: cflags }, bytes: client.subarray(0, 4), again: encodeClientFlags(cflags) });
  let c = 4;
  let s = GREETING_SIZE;
  let tx = false;
  while (!tx && c < client.length) {
    const len = client.readUInt32BE(c + 12);
    const bytes = client.subarray(c, c + 16 + len);
    c += bytes.length;
    const o = decodeOption(bytes);
    const payload = decodeOptionPayload(o);
    const again = payload.kind === 'abort' ? encodeOption(o) : encodeOption(encodeOptionPayload(payload));
    messages.push({ from: 'C', what: `option ${OPT_NAME[o.option]}`, value: payload, bytes, again });
    if (o.option === OPT.EXPORT_NAME) {
      const noZeroes = (cflags & CLIENT_FLAG.NO_ZEROES) !== 0;
      const b = server.subarray(s, s + exportNameReplySize(noZeroes));
      s += b.length;
      const e = decodeExportNameReply(b, noZeroes);
      messages.push({ from: 'S', what: 'export name reply', value: e, bytes: b, again: encodeExportNameReply(e, noZeroes) });
      tx = true;
      break;
    }
    while (s < server.length) {
      const b = server.subarray(s, s + OPTION_REPLY_HEADER + server.readUInt32BE(s + 16));
      s += b.length;
      const r = decodeOptionReply(b);
      expect(r.option).toBe(o.option);
      const p = decodeReplyPayload(r);
      messages.push({ from: 'S', what: `reply ${REP_NAME[r.type]}`, value: p, bytes: b, again: encodeOptionReply(encodeReplyPayload(r.option, p)) });
      if (isFinalReply(r.type)) {
        tx = o.option === OPT.GO && r.type === REP.ACK;
        break;
      }
    }
  }
  const requests = frame(new RequestFramer({ payload: 'whole' }), [client.subarray(c)]);
  const replies = frame(replyFramer(requests), [server.subarray(s)]);
  for (const i of requests) {
    if (i.kind !== 'request') continue;
    const again = Buffer.concat([encodeRequest(i.request), i.data ?? Buffer.alloc(0)]);
    messages.push({ from: 'C', what: `request ${CMD_NAME[i.request.type]}`, value: i, bytes: again, again });
  }
  for (const i of replies) {
    const again = i.kind === 'simple' ? Buffer.concat([encodeSimpleReply(i.reply), i.data ?? Buffer.alloc(0)]) : encodeChunk(i.chunk);
    messages.push({ from: 'S', what: i.kind === 'simple' ? 'simple reply' : `chunk ${i.chunk.kind}`, value: i, bytes: again, again });
  }
  return { messages, clientTx: c, serverTx: s, requests, replies };
}

/**
 * The client's side of reply framing: clients reuse a cookie once its reply is in, so each cookie's
 * requests are answered in order (true of these captures). A structured reply retires its request
 * on the DONE chunk; a simple reply when the framer asks for its read length.
 */
function replyFramer(requests: RequestItem[]): { push(b: Buffer): void; next(): ReplyItem | undefined; buffered: number } {
  const q = new Map<bigint, (number | undefined)[]>();
  for (const i of requests) {
    if (i.kind !== 'request' || i.request.type === CMD.DISC) continue;
    q.set(i.request.cookie, [...(q.get(i.request.cookie) ?? []), i.request.type === CMD.READ ? i.request.length : undefined]);
  }
  const f = new ReplyFramer({ readLength: (cookie) => q.get(cookie)?.shift() });
  return {
    push: (b) => f.push(b),
    get buffered() { return f.buffered; },
    next: () => {
      const i = f.next();
      if (i?.kind === 'chunk' && i.chunk.flags & REPLY_FLAG.DONE) q.get(i.chunk.cookie)?.shift();
      return i;
    },
  };
}

/** A cheap comparable signature of framed items (deep-equal on big Buffers is slow). */
const sig = (items: unknown[]): string => JSON.stringify(items, function (this: Record<string, unknown>, k, x: unknown) {
  const orig = this[k]; // before Buffer.toJSON turned it into an array
  if (Buffer.isBuffer(orig)) return createHash('sha256').update(orig).digest('hex');
  return typeof x === 'bigint' ? x.toString() : x;
});

function frame<T>(f: { push(b: Buffer): void; next(): T | undefined; buffered: number }, chunks: Buffer[]): T[] {
  const out: T[] = [];
  for (const ch of chunks) {
    f.push(ch);
    for (let it = f.next(); it !== undefined; it = f.next()) out.push(it);
  }
  expect(f.buffered).toBe(0);
  return out;
}

describe('NBD codec on real captures', () => {
  it('has captures', () => expect(CAPTURES.length).toBeGreaterThanOrEqual(5));

  it.each(CAPTURES)('%s decodes to its golden JSON', async (name) => {
    const w = walk(hex(name, 'client'), hex(name, 'server'));
    const text = JSON.stringify(w.messages.map((m) => ({ from: m.from, what: m.what, ...(m.bytes.length <= 64 ? { hex: m.bytes.toString('hex') } : {}), value: view(m.value) })), null, 1);
    await expect(text + '\n').toMatchFileSnapshot(path.join(FIXTURES, `${name}.json`));
  });

  it.each(CAPTURES)('%s: every message re-encodes to its bytes, and the messages cover both streams', (name) => {
    const [client, server] = [hex(name, 'client'), hex(name, 'server')];
    const w = walk(client, server);
    for (const m of w.messages) expect(m.again.toString('hex'), m.what).toBe(m.bytes.toString('hex'));
    const total = (from: 'C' | 'S') => w.messages.filter((m) => m.from === from).reduce((n, m) => n + m.bytes.length, 0);
    expect(total('C')).toBe(client.length);
    expect(total('S')).toBe(server.length);
  });

  it.each(CAPTURES)('%s: framers split at every byte give the same messages', (name) => {
    const [client, server] = [hex(name, 'client'), hex(name, 'server')];
    const w = walk(client, server);
    const hs = client.subarray(0, w.clientTx);
    const whole = frame(new OptionFramer(), [hs]);
    // Transmission streams can be large: every byte in the first 512, then 64 seeded random positions.
    const rnd = prng(10809);
    const points = (b: Buffer) => [...Array.from({ length: Math.min(b.length, 512) }, (_, k) => k + 1), ...Array.from({ length: 64 }, () => Math.floor(rnd() * b.length))];
    const split = (b: Buffer, i: number) => [b.subarray(0, i), b.subarray(i)];
    for (let i = 1; i < hs.length; i++) expect(frame<HandshakeItem>(new OptionFramer(), split(hs, i))).toEqual(whole);
    const reqs = client.subarray(w.clientTx);
    for (const i of points(reqs)) {
      expect(sig(frame<RequestItem>(new RequestFramer({ payload: 'whole' }), split(reqs, i)))).toBe(sig(w.requests));
    }
    const reps = server.subarray(w.serverTx);
    for (const i of points(reps)) {
      expect(sig(frame<ReplyItem>(replyFramer(w.requests), split(reps, i)))).toBe(sig(w.replies));
    }
  });

  it.each(CAPTURES)('%s: the request framer in pieces mode gives the same writes, one byte at a time', (name) => {
    const client = hex(name, 'client');
    const w = walk(client, hex(name, 'server'));
    const bytes = client.subarray(w.clientTx, w.clientTx + 64 * 1024);
    const f = new RequestFramer();
    const rebuilt: RequestItem[] = [];
    for (const b of bytes) {
      f.push(Buffer.from([b]));
      for (let i = f.next(); i !== undefined; i = f.next()) {
        if (i.kind === 'request') rebuilt.push(i.request.type === CMD.WRITE ? { ...i, data: Buffer.alloc(0) } : i);
        else {
          const last = rebuilt.at(-1) as { request: { cookie: bigint }; data: Buffer };
          expect([i.cookie, i.at]).toEqual([last.request.cookie, last.data.length]);
          last.data = Buffer.concat([last.data, i.data]);
        }
      }
      expect(f.buffered).toBeLessThan(28); // never more than a partial header
    }
    const n = Math.max(0, rebuilt.length - 1); // the last one may be cut short by the 64 KiB window
    expect(sig(rebuilt.slice(0, n))).toBe(sig(w.requests.slice(0, n)));
  });
});
