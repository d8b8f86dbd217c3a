import { describe, expect, it } from 'vitest';
import { decode, requestOptions } from './packet.js';
import { FileBlocks, netasciiReader, type ByteReader } from './source.js';
import { DEFAULT_LIMITS, negotiate, RTO_MIN_MS, Transfer, type Outcome } from './transfer.js';

/** A ByteReader over a Buffer (optionally returning short reads, as a real fd may). */
function memReader(data: Buffer, maxRead = Infinity): ByteReader {
  let pos = 0;
  return async (dst, off, n) => {
    let got = 0;
    while (got < n && pos < data.length) {
      const take = Math.min(n - got, data.length - pos, maxRead);
      data.copy(dst, off + got, pos, pos + take);
      pos += take;
      got += take;
    }
    return got;
  };
}

const flush = () => new Promise((r) => setImmediate(r));

/** Drive a Transfer with a fake clock; `sent` records each packet as {op, block}. */
function harness(data: Buffer, opts: { blksize?: number; window?: number; oack?: boolean; retries?: number } = {}) {
  const neg = { blksize: opts.blksize ?? 512, windowsize: opts.window ?? 1, timeoutMs: 1000, oack: undefined };
  const sent: string[] = [];
  const payload: Buffer[] = [];
  let clock = 0;
  let armedAt = -1;
  const ends: Outcome[] = [];
  const t = new Transfer(new FileBlocks(memReader(data), neg.blksize, neg.windowsize), neg, {
    send: (pkt) => {
      const p = decode(pkt);
      if (p.op === 'data') { sent.push(`D${p.block}`); payload.push(Buffer.from(p.data)); } else sent.push(p.op);
    },
    now: () => clock,
    arm: (ms) => { armedAt = clock + ms; },
  }, opts.oack ? Buffer.from('\x00\x06blksize\x00512\x00', 'latin1') : undefined, opts.retries ?? 3, (o) => ends.push(o));
  return {
    t, sent, payload, ends,
    tick: (ms: number) => { clock += ms; if (armedAt >= 0 && clock >= armedAt) { armedAt = -1; t.onTimer(); } },
    take: () => sent.splice(0),
  };
}

describe('negotiate (RFC 2347 §2: answer only what was asked)', () => {
  it('no options, no OACK', () => {
    expect(negotiate({}, DEFAULT_LIMITS, 100)).toEqual({ blksize: 512, windowsize: 1, timeoutMs: 1000, oack: undefined });
  });
  it('caps blksize and windowsize, echoes timeout, answers tsize with the size', () => {
    const n = negotiate(requestOptions([['tsize', '0'], ['blksize', '65464'], ['timeout', '6'], ['windowsize', '999']]),
      { ...DEFAULT_LIMITS, maxBlksize: 1468, maxWindow: 16 }, 12345);
    expect(n).toEqual({
      blksize: 1468, windowsize: 16, timeoutMs: 6000,
      oack: [['blksize', '1468'], ['tsize', '12345'], ['timeout', '6'], ['windowsize', '16']],
    });
  });
  it('netascii (size unknown) and empty files: tsize is not offered', () => {
    expect(negotiate({ tsize: 0 }, DEFAULT_LIMITS, undefined).oack).toBeUndefined();
    expect(negotiate({ tsize: 0, blksize: 512 }, DEFAULT_LIMITS, 0).oack).toEqual([['blksize', '512']]);
  });
});

describe('Transfer', () => {
  it('lockstep: one block per ACK, ends on the ACK of the short last block', async () => {
    const h = harness(Buffer.alloc(1100, 1));
    h.t.start();
    await flush();
    expect(h.take()).toEqual(['D1']);
    h.t.onAck(1);
    expect(h.take()).toEqual(['D2']);
    h.t.onAck(2);
    expect(h.take()).toEqual(['D3']);
    expect(h.payload.map((p) => p.length)).toEqual([512, 512, 76]);
    h.t.onAck(3);
    expect(h.ends).toEqual([{ ok: true, bytes: 1100 }]);
  });

  it('a file of exactly n·blksize ends with an empty block; an empty file is one empty block', async () => {
    for (const [size, blocks] of [[1024, 3], [0, 1]] as const) {
      const h = harness(Buffer.alloc(size));
      h.t.start();
      await flush();
      for (let k = 1; k <= blocks; k++) { expect(h.take()).toEqual([`D${k}`]); h.t.onAck(k); await flush(); }
      expect(h.payload.at(-1)!.length).toBe(0);
      expect(h.ends).toEqual([{ ok: true, bytes: size }]);
    }
  });

  it('never answers a duplicate ACK (Sorcerer\'s Apprentice); only the timer retransmits', async () => {
    const h = harness(Buffer.alloc(2000));
    h.t.start();
    await flush();
    h.t.onAck(1);
    expect(h.take()).toEqual(['D1', 'D2']);
    h.t.onAck(1);
    h.t.onAck(1);
    h.t.onAck(7); // from the future: ignored too
    expect(h.take()).toEqual([]);
    h.tick(RTO_MIN_MS - 1); // the ACK of block 1 measured an RTT of 0: the timeout is at its floor
    expect(h.take()).toEqual([]);
    h.tick(1);
    expect(h.take()).toEqual(['D2']);
  });

  it('retransmits with exponential backoff and gives up after the retry limit', async () => {
    const h = harness(Buffer.alloc(100), { retries: 2 });
    h.t.start();
    await flush();
    h.take();
    h.tick(1000);
    expect(h.take()).toEqual(['D1']);
    h.tick(1999);
    expect(h.take()).toEqual([]);
    h.tick(1);
    expect(h.take()).toEqual(['D1']);
    h.tick(4000);
    expect(h.ends).toMatchObject([{ ok: false, notify: { code: 0 } }]);
  });

  it('adapts the timeout to the measured RTT, with a floor', async () => {
    const h = harness(Buffer.alloc(512 * 20));
    h.t.start();
    await flush();
    for (let k = 1; k <= 10; k++) { h.tick(1); h.t.onAck(k); }
    h.take();
    h.tick(RTO_MIN_MS - 1);
    expect(h.take()).toEqual([]);
    h.tick(1);
    expect(h.take()).toEqual(['D11']);
  });

  it('windowsize (RFC 7440): sends a window, go-back-N after an ACK inside it', async () => {
    const h = harness(Buffer.alloc(512 * 10 + 1), { window: 4 });
    h.t.start();
    await flush();
    expect(h.take()).toEqual(['D1', 'D2', 'D3', 'D4']);
    h.t.onAck(4);
    expect(h.take()).toEqual(['D5', 'D6', 'D7', 'D8']);
    h.t.onAck(6); // 7 was lost
    expect(h.take()).toEqual(['D7', 'D8', 'D9', 'D10']);
    h.t.onAck(6); // a duplicate of the same gap: ignored
    expect(h.take()).toEqual([]);
    h.t.onAck(10);
    expect(h.take()).toEqual(['D11']);
    h.t.onAck(11);
    expect(h.ends).toEqual([{ ok: true, bytes: 512 * 10 + 1 }]);
  });

  it('OACK first: waits for ACK 0, a client ERROR (PXE tsize probe) ends it quietly', async () => {
    const h = harness(Buffer.alloc(10), { oack: true });
    h.t.start();
    expect(h.take()).toEqual(['oack']);
    h.t.onAck(1);
    expect(h.take()).toEqual([]);
    h.t.onPeerError(8, 'tsize probe');
    expect(h.ends).toMatchObject([{ ok: false, error: expect.stringContaining('ERROR 8') }]);
    expect(h.ends[0]).not.toHaveProperty('notify');

    const g = harness(Buffer.alloc(10), { oack: true });
    g.t.start();
    g.tick(1000);
    expect(g.take()).toEqual(['oack', 'oack']);
    g.t.onAck(0);
    await flush();
    expect(g.take()).toEqual(['D1']);
  });

  it('block numbers roll over past 65535 to 0, and ACKs map back', async () => {
    const blocks = 65540;
    const h = harness(Buffer.alloc(8 * (blocks - 1) + 3), { blksize: 8, window: 7 });
    h.t.start();
    let acked = 0;
    let wire: number[] = [];
    while (h.ends.length === 0) {
      await flush();
      const s = h.take();
      if (s.length === 0) continue;
      wire = s.map((x) => Number(x.slice(1)));
      acked += s.length;
      h.t.onAck(wire.at(-1)!);
    }
    expect(acked).toBe(blocks);
    expect(wire.at(-1)).toBe(blocks & 0xffff);
    expect(h.ends).toEqual([{ ok: true, bytes: 8 * (blocks - 1) + 3 }]);
  });
});

describe('FileBlocks', () => {
  it('reads across chunk boundaries with short reads and returns every byte in order', async () => {
    const data = Buffer.from(Array.from({ length: 300_001 }, (_, i) => (i * 7) & 0xff));
    const h = harness(data, { blksize: 1000, window: 3 });
    h.t.start();
    while (h.ends.length === 0) {
      await flush();
      const s = h.take();
      if (s.length) h.t.onAck(Number(s.at(-1)!.slice(1)));
    }
    expect(Buffer.concat(h.payload).equals(data)).toBe(true);
  });

  it('netascii: LF → CR LF, CR → CR NUL (RFC 1350 §1, RFC 764)', async () => {
    const r = netasciiReader(memReader(Buffer.from('a\nb\r\nc\r'), 2), 3);
    const out = Buffer.alloc(32);
    const n = await r(out, 0, 32);
    expect(out.subarray(0, n).toString('latin1')).toBe('a\r\nb\r\0\r\nc\r\0');
  });
});
