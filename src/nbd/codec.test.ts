import { describe, expect, it } from 'vitest';
import { DeskfuseError } from '../errors.js';
import { mutations, prng, thrown } from '../../test/helpers/expect.js';
import {
  CHUNK, CMD, CMD_FLAG, ERRNO, INFO, OPT, REP, REPLY_FLAG, STATE, TX_FLAG,
  decodeChunk, decodeClientFlags, decodeExportNameReply, decodeGreeting, decodeOption, decodeOptionPayload, decodeOptionReply,
  decodeReplyPayload, decodeRequest, decodeSimpleReply, encodeChunk, encodeClientFlags, encodeExportNameReply, encodeGreeting,
  encodeOption, encodeOptionPayload, encodeOptionReply, encodeReplyPayload, encodeRequest, encodeSimpleReply,
  OptionFramer, ReplyFramer, RequestFramer, type Chunk, type OptionPayload, type ReplyPayload,
} from './packet.js';

const cookie = 0x0102030405060708n;
const flags = TX_FLAG.HAS_FLAGS | TX_FLAG.SEND_FLUSH | TX_FLAG.SEND_FUA | TX_FLAG.SEND_TRIM | TX_FLAG.SEND_WRITE_ZEROES | TX_FLAG.SEND_DF | TX_FLAG.CAN_MULTI_CONN;

const payloads: OptionPayload[] = [
  { kind: 'export-name', name: 'img@main' },
  { kind: 'go', name: 'session/abc', requests: [INFO.EXPORT, INFO.NAME, INFO.DESCRIPTION, INFO.BLOCK_SIZE] },
  { kind: 'info', name: '', requests: [] },
  { kind: 'set-meta-context', name: 'img', queries: ['base:allocation'] },
  { kind: 'list-meta-context', name: 'img', queries: [] },
  { kind: 'list' }, { kind: 'abort' }, { kind: 'structured-reply' }, { kind: 'starttls' },
];
const replies: ReplyPayload[] = [
  { kind: 'ack' }, { kind: 'server', name: 'img@main', description: 'gold image' },
  { kind: 'info', info: 'export', size: 2 ** 40, flags }, { kind: 'info', info: 'name', name: 'img' },
  { kind: 'info', info: 'description', description: 'd' }, { kind: 'info', info: 'block-size', minimum: 1, preferred: 4096, maximum: 1 << 25 },
  { kind: 'meta-context', id: 1, name: 'base:allocation' },
  ...[REP.ERR_UNSUP, REP.ERR_POLICY, REP.ERR_INVALID, REP.ERR_UNKNOWN, REP.ERR_TLS_REQD, REP.ERR_BLOCK_SIZE_REQD].map((type) => ({ kind: 'error' as const, type, message: 'no' })),
];
const chunks: Chunk[] = [
  { flags: REPLY_FLAG.DONE, cookie, kind: 'none' },
  { flags: 0, cookie, kind: 'offset-data', offset: 4096, data: Buffer.alloc(512, 0xab) },
  { flags: 0, cookie, kind: 'offset-hole', offset: 0, size: 4096 },
  { flags: REPLY_FLAG.DONE, cookie, kind: 'block-status', contextId: 1, extents: [{ length: 4096, flags: 0 }, { length: 65536, flags: STATE.HOLE | STATE.ZERO }] },
  { flags: REPLY_FLAG.DONE, cookie, kind: 'error', error: ERRNO.EINVAL, message: 'beyond the end' },
  { flags: REPLY_FLAG.DONE, cookie, kind: 'error-offset', error: ERRNO.EIO, message: '', offset: 512 },
];

describe('NBD codec round trips', () => {
  it('greeting, client flags, export-name reply', () => {
    expect(decodeGreeting(encodeGreeting())).toBe(3);
    expect(decodeClientFlags(encodeClientFlags(3))).toBe(3);
    for (const nz of [true, false]) expect(decodeExportNameReply(encodeExportNameReply({ size: 1 << 20, flags }, nz), nz)).toEqual({ size: 1 << 20, flags });
    expect(encodeExportNameReply({ size: 1, flags }, false).length).toBe(134);
  });

  it.each(payloads)('option $kind', (p) => {
    const o = decodeOption(encodeOption(encodeOptionPayload(p)));
    expect(decodeOptionPayload(o)).toEqual(p);
  });

  it.each(replies)('reply $kind $info $type', (p) => {
    const r = decodeOptionReply(encodeOptionReply(encodeReplyPayload(OPT.GO, p)));
    expect(r.option).toBe(OPT.GO);
    expect(decodeReplyPayload(r)).toEqual(p);
  });

  it.each(chunks)('chunk $kind', (c) => expect(decodeChunk(encodeChunk(c))).toEqual(c));

  it('requests and simple replies', () => {
    const q = { flags: CMD_FLAG.FUA, type: CMD.WRITE, cookie, offset: 2 ** 40, length: 4096 };
    expect(decodeRequest(encodeRequest(q))).toEqual(q);
    expect(decodeSimpleReply(encodeSimpleReply({ error: ERRNO.ENOSPC, cookie: 0xffffffffffffffffn }))).toEqual({ error: 28, cookie: 0xffffffffffffffffn });
  });
});

describe('NBD decode errors name the field and offset', () => {
  it('bad magics, lengths and strings', () => {
    expect(thrown(() => decodeRequest(Buffer.alloc(28))).message).toBe('nbd request: magic at offset 0: 0x0, expected 0x25609513');
    const bad = encodeChunk(chunks[2]!);
    bad.writeUInt32BE(0, 28);
    expect(thrown(() => decodeChunk(bad)).fields).toMatchObject({ field: 'hole size', offset: 28 });
    const go = encodeOption(encodeOptionPayload(payloads[1]!));
    go.writeUInt32BE(1000, 16);
    expect(thrown(() => decodeOptionPayload(decodeOption(go))).fields).toMatchObject({ field: 'name length', offset: 0 });
    expect(thrown(() => decodeOptionPayload({ option: OPT.LIST, data: Buffer.from([1]) })).fields).toMatchObject({ field: 'end' });
    expect(thrown(() => decodeOptionPayload({ option: OPT.EXPORT_NAME, data: Buffer.from([0x66, 0]) })).message).toMatch(/contains NUL/);
    expect(thrown(() => decodeOptionPayload({ option: OPT.EXPORT_NAME, data: Buffer.from([0xff]) })).message).toMatch(/UTF-8/);
    expect(thrown(() => decodeClientFlags(encodeClientFlags(4))).message).toMatch(/unknown bits 0x4/);
    expect(thrown(() => decodeClientFlags(encodeClientFlags(2), 1)).message).toMatch(/NO_ZEROES was not advertised/);
  });

  it('refuses to encode what the wire cannot carry', () => {
    expect(thrown(() => encodeOptionPayload({ kind: 'export-name', name: 'x'.repeat(4097) })).code).toBe('DF_ERR_BAD_REQUEST');
    expect(thrown(() => encodeRequest({ flags: 0, type: 0, cookie: -1n, offset: 0, length: 0 })).fields).toEqual({ field: 'cookie' });
    expect(thrown(() => encodeChunk({ ...chunks[3]!, extents: [] } as Chunk)).fields).toEqual({ field: 'extents' });
    expect(thrown(() => encodeReplyPayload(OPT.GO, { kind: 'error', type: REP.ACK, message: '' })).code).toBe('DF_ERR_BAD_REQUEST');
  });
});

describe('NBD framers bound what they buffer', () => {
  it('refuses an oversized option as soon as its header is in', () => {
    const f = new OptionFramer({ maxOptionLength: 65536 });
    const h = Buffer.concat([encodeClientFlags(3), encodeOption({ option: OPT.GO, data: Buffer.alloc(0) })]);
    h.writeUInt32BE(65537, 16);
    f.push(h);
    expect(f.next()?.kind).toBe('client-flags');
    const err = thrown(() => f.next());
    expect(err.fields).toMatchObject({ field: 'option length', offset: 4, length: 65537 });
    expect(thrown(() => f.next())).toBe(err); // sticky
  });

  it('refuses an oversized WRITE before its data and streams a large one in pieces', () => {
    const big = encodeRequest({ flags: 0, type: CMD.WRITE, cookie, offset: 0, length: (1 << 25) + 1 });
    const f = new RequestFramer();
    f.push(big);
    expect(thrown(() => f.next()).fields).toMatchObject({ field: 'write length', max: 1 << 25 });
    const g = new RequestFramer();
    g.push(encodeRequest({ flags: 0, type: CMD.WRITE, cookie, offset: 0, length: 1 << 20 }));
    expect(g.next()?.kind).toBe('request');
    let got = 0;
    for (let i = 0; i < 16; i++) {
      g.push(Buffer.alloc(65536));
      for (let it = g.next(); it; it = g.next()) if (it.kind === 'data') got += it.data.length;
      expect(g.buffered).toBe(0);
    }
    expect(got).toBe(1 << 20);
    // A big read request carries no payload: framed, left to the server to refuse with EOVERFLOW/EINVAL.
    g.push(encodeRequest({ flags: 0, type: CMD.READ, cookie, offset: 0, length: 0xffffffff }));
    expect(g.next()).toMatchObject({ kind: 'request', request: { length: 0xffffffff } });
  });

  it('refuses an oversized structured chunk', () => {
    const f = new ReplyFramer({ readLength: () => undefined, maxPayload: 4096 });
    f.push(encodeChunk({ ...chunks[1]!, data: Buffer.alloc(8192) } as Chunk).subarray(0, 20));
    expect(thrown(() => f.next()).fields).toMatchObject({ field: 'length' });
  });
});

describe('NBD fuzzing', () => {
  const coded = (fn: () => unknown) => {
    try {
      fn();
    } catch (err) {
      expect(err).toBeInstanceOf(DeskfuseError);
      expect((err as DeskfuseError).code).toBe('DF_ERR_DECODE');
    }
  };
  const rnd = prng(10809);
  const byte = () => Math.floor(rnd() * 256);

  it('decoders throw only DF_ERR_DECODE on truncated and flipped messages', () => {
    const opts = payloads.map((p) => encodeOption(encodeOptionPayload(p)));
    for (const m of mutations(opts, byte)) coded(() => decodeOptionPayload(decodeOption(m)));
    for (const m of mutations(replies.map((p) => encodeOptionReply(encodeReplyPayload(OPT.GO, p))), byte)) coded(() => decodeReplyPayload(decodeOptionReply(m)));
    for (const m of mutations(chunks.map(encodeChunk), byte)) coded(() => decodeChunk(m));
    for (const m of mutations([encodeRequest({ flags: 1, type: 1, cookie, offset: 512, length: 512 })], byte)) coded(() => decodeRequest(m));
    for (const m of mutations([encodeGreeting(), encodeExportNameReply({ size: 1, flags }, false)], byte)) {
      coded(() => decodeGreeting(m));
      coded(() => decodeExportNameReply(m, false));
    }
  });

  it('framers fed random bytes in random pieces throw only coded errors and stay within their limits', () => {
    for (let n = 0; n < 300; n++) {
      const f = [new OptionFramer({ maxOptionLength: 1024 }), new RequestFramer({ payload: 'whole', maxPayload: 4096 }), new ReplyFramer({ readLength: () => 100, maxPayload: 4096 })][n % 3]!;
      const limit = [4 + 16 + 1024, 28 + 4096, 20 + 4096 + 64][n % 3]!;
      // Valid prefixes make the framers go past their headers before the noise starts.
      const prefix = [encodeClientFlags(3), encodeRequest({ flags: 0, type: CMD.WRITE, cookie, offset: 0, length: 10 }), encodeChunk(chunks[0]!)][n % 3]!;
      const stream = Buffer.concat([prefix, Buffer.from(Array.from({ length: Math.floor(rnd() * 6000) }, byte))]);
      coded(() => {
        for (let at = 0; at < stream.length;) {
          const step = 1 + Math.floor(rnd() * 300);
          f.push(stream.subarray(at, at + step));
          at += step;
          while (f.next() !== undefined);
          expect(f.buffered).toBeLessThan(limit);
        }
      });
    }
  });

  it('keeps CHUNK type numbers as proto.md lists them', () => {
    expect([CHUNK.NONE, CHUNK.OFFSET_DATA, CHUNK.OFFSET_HOLE, CHUNK.BLOCK_STATUS, CHUNK.ERROR, CHUNK.ERROR_OFFSET]).toEqual([0, 1, 2, 5, 32769, 32770]);
    expect(Object.values(ERRNO)).toEqual([1, 5, 12, 22, 28, 75, 95, 108]);
  });
});
