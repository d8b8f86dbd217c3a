import { afterEach, describe, expect, it } from 'vitest';
import { dfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { RawNbd } from '../../test/helpers/nbd-client.js';
import { MiB, RamProvider } from '../../test/helpers/nbd-ram.js';
import {
  BASE_ALLOCATION, CLIENT_FLAG, CMD, CMD_FLAG, ERRNO, HS_FLAG, INFO, OPT, REP, STATE, TX_FLAG,
  encodeExportNameReply, encodeOption, encodeOptionPayload, encodeRequest,
} from './packet.js';
import { errnoOf, shapeExtents, startNbd, type NbdOptions, type NbdServer } from './server.js';

/**
 * The NBD server against a raw client built from the codec: exact option replies and errnos,
 * pipelining, backpressure, ordering and the export's close({clean, wrote}). Real clients (qemu,
 * libnbd) are in test/integration/nbd-server.test.ts.
 */

const servers: NbdServer[] = [];
const clients: RawNbd[] = [];
const providers: RamProvider[] = [];

async function serve(o: Partial<NbdOptions> = {}, provider = new RamProvider()): Promise<{ port: number; p: RamProvider; server: NbdServer }> {
  const server = await startNbd({ host: '127.0.0.1', port: 0, provider, log: silentLogger, ...o });
  servers.push(server);
  providers.push(provider);
  return { port: server.port, p: provider, server };
}

async function client(port: number): Promise<RawNbd> {
  const c = await RawNbd.connect(port);
  clients.push(c);
  return c;
}

const gates: (() => void)[] = [];

/** A promise a test releases by hand (to hold export calls open); afterEach releases the rest. */
function gate(): { wait: Promise<void>; release: () => void } {
  let release!: () => void;
  const wait = new Promise<void>((resolve) => { release = resolve; });
  gates.push(release);
  return { wait, release };
}

const until = async (cond: () => boolean, ms = 2000): Promise<void> => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
};

afterEach(async () => {
  for (const g of gates.splice(0)) g();
  for (const c of clients.splice(0)) c.destroy();
  await Promise.all(servers.splice(0).map((s) => s.close()));
  // Once the server is closed, every export it opened was closed exactly once, with nothing running.
  for (const p of providers.splice(0)) {
    expect(p.violations).toEqual([]);
    expect(p.closes.length).toBe(p.opens.length);
  }
});

describe('nbd server: option haggling', () => {
  it('greets fixed newstyle, lists exports, and keeps negotiating after a malformed LIST', async () => {
    const { port } = await serve();
    const c = await client(port);
    expect(await c.greet()).toBe(HS_FLAG.FIXED_NEWSTYLE | HS_FLAG.NO_ZEROES);
    const list = await c.option({ kind: 'list' });
    expect(list.map((r) => r.payload)).toEqual([
      { kind: 'server', name: 'ram', description: 'scratch RAM disk' },
      { kind: 'server', name: 'ro', description: 'read-only pattern' },
      { kind: 'server', name: 'blk', description: '512-byte sectors' },
      { kind: 'ack' },
    ]);
    // proto.md "NBD_OPT_LIST": data with the option → ERR_INVALID, and haggling goes on.
    const bad = await c.option(encodeOption({ option: OPT.LIST, data: Buffer.from('x') }));
    expect(bad.map((r) => r.type)).toEqual([REP.ERR_INVALID]);
    expect((await c.option({ kind: 'list' })).length).toBe(4);
  });

  it('maps provider refusals to option errors (export.ts)', async () => {
    const p = new RamProvider();
    p.openError.set('bad', dfError('DF_ERR_BAD_REQUEST', 'bad name'));
    p.openError.set('boom', new Error('secret internals'));
    p.openError.set('expired', dfError('DF_ERR_TOKEN_EXPIRED'));
    const { port } = await serve({}, p);
    const c = await client(port);
    await c.greet();
    const go = async (name: string) => (await c.option({ kind: 'go', name, requests: [] })).map((r) => r.payload);
    expect(await go('nope')).toEqual([{ kind: 'error', type: REP.ERR_UNKNOWN, message: 'no export named nope' }]);
    expect(await go('secret')).toEqual([{ kind: 'error', type: REP.ERR_POLICY, message: 'export secret needs a secret' }]);
    expect((await go('expired'))[0]).toMatchObject({ type: REP.ERR_POLICY });
    expect(await go('bad')).toEqual([{ kind: 'error', type: REP.ERR_INVALID, message: 'bad name' }]);
    expect(await go('boom')).toEqual([{ kind: 'error', type: REP.ERR_UNKNOWN, message: 'the export is not available' }]);
    p.refuseList = true;
    expect((await c.option({ kind: 'list' })).map((r) => r.type)).toEqual([REP.ERR_POLICY]);
    expect(await c.option({ kind: 'starttls' })).toMatchObject([{ type: REP.ERR_POLICY }]);
    expect(await c.option(encodeOption({ option: 99, data: Buffer.from('whatever') }))).toMatchObject([{ option: 99, type: REP.ERR_UNSUP }]);
    expect(p.opens).toEqual([]);
  });

  it('INFO describes an export and closes it at once; flags follow structured replies and read-only', async () => {
    const { port, p } = await serve();
    const c = await client(port);
    await c.greet();
    const info = (await c.option({ kind: 'info', name: 'ram', requests: [INFO.NAME, INFO.DESCRIPTION] })).map((r) => r.payload);
    const rw = TX_FLAG.HAS_FLAGS | TX_FLAG.SEND_FLUSH | TX_FLAG.SEND_FUA | TX_FLAG.SEND_TRIM | TX_FLAG.SEND_WRITE_ZEROES;
    expect(info).toEqual([
      { kind: 'info', info: 'export', size: 4 * MiB, flags: rw },
      { kind: 'info', info: 'name', name: 'ram' },
      { kind: 'info', info: 'description', description: 'scratch RAM disk' },
      { kind: 'info', info: 'block-size', minimum: 1, preferred: 4096, maximum: 32 * MiB },
      { kind: 'ack' },
    ]);
    expect(p.closes).toEqual([{ name: 'ram', purpose: 'info', clean: true, wrote: false }]);
    expect(await c.option({ kind: 'structured-reply' })).toMatchObject([{ type: REP.ACK }]);
    // A second STRUCTURED_REPLY is a repeated state change: ERR_INVALID ("Fixed newstyle negotiation").
    expect(await c.option({ kind: 'structured-reply' })).toMatchObject([{ type: REP.ERR_INVALID }]);
    const ro = (await c.option({ kind: 'info', name: 'ro', requests: [] })).map((r) => r.payload);
    // Block size is sent even unasked; NAME/DESCRIPTION only when asked.
    expect(ro).toEqual([
      { kind: 'info', info: 'export', size: MiB, flags: TX_FLAG.HAS_FLAGS | TX_FLAG.SEND_FLUSH | TX_FLAG.READ_ONLY | TX_FLAG.SEND_DF },
      { kind: 'info', info: 'block-size', minimum: 1, preferred: 4096, maximum: 32 * MiB },
      { kind: 'ack' },
    ]);
    // A smaller server limit is what the client is told.
    const small = await serve({ maxPayload: MiB });
    const c2 = await client(small.port);
    await c2.greet();
    expect((await c2.option({ kind: 'info', name: 'blk', requests: [INFO.BLOCK_SIZE] }))[1]!.payload)
      .toEqual({ kind: 'info', info: 'block-size', minimum: 512, preferred: 4096, maximum: MiB });
  });

  it('meta contexts: only base:allocation, SET needs structured replies and binds to the export', async () => {
    const { port } = await serve();
    const c = await client(port);
    await c.greet();
    const list = async (queries: string[]) => (await c.option({ kind: 'list-meta-context', name: 'ram', queries })).map((r) => r.payload);
    expect(await list([])).toEqual([{ kind: 'meta-context', id: 0, name: BASE_ALLOCATION }, { kind: 'ack' }]);
    expect(await list(['base:'])).toEqual([{ kind: 'meta-context', id: 0, name: BASE_ALLOCATION }, { kind: 'ack' }]);
    expect(await list(['x-other:thing', 'base:nothing'])).toEqual([{ kind: 'ack' }]);
    expect(await c.option({ kind: 'set-meta-context', name: 'ram', queries: [BASE_ALLOCATION] })).toMatchObject([{ type: REP.ERR_INVALID }]);
    await c.option({ kind: 'structured-reply' });
    expect((await c.option({ kind: 'set-meta-context', name: 'ram', queries: ['base:', 'qemu:dirty-bitmap:x'] })).map((r) => r.payload)).toEqual([{ kind: 'ack' }]);
    const set = (await c.option({ kind: 'set-meta-context', name: 'ram', queries: ['qemu:x', BASE_ALLOCATION] })).map((r) => r.payload);
    expect(set).toEqual([{ kind: 'meta-context', id: 1, name: BASE_ALLOCATION }, { kind: 'ack' }]);
    // Malformed query data: ERR_INVALID, and the earlier selection is gone (SET replaces, even failing).
    const bad = encodeOptionPayload({ kind: 'set-meta-context', name: 'ram', queries: ['base:allocation'] });
    expect(await c.option(encodeOption({ option: bad.option, data: bad.data.subarray(0, bad.data.length - 3) }))).toMatchObject([{ type: REP.ERR_INVALID }]);
    await c.option({ kind: 'go', name: 'ram', requests: [] });
    c.structured = true;
    expect((await c.request({ type: CMD.BLOCK_STATUS, length: 4096 })).error).toBe(ERRNO.EINVAL);
  });

  it('a context selected for another export does not carry over to GO', async () => {
    const { port } = await serve();
    const c = await client(port);
    await c.greet();
    await c.option({ kind: 'structured-reply' });
    await c.option({ kind: 'set-meta-context', name: 'ro', queries: [BASE_ALLOCATION] });
    await c.option({ kind: 'go', name: 'ram', requests: [] });
    expect((await c.request({ type: CMD.BLOCK_STATUS, length: 4096 })).error).toBe(ERRNO.EINVAL);
    expect((await c.request({ type: CMD.READ, length: 4096 })).error).toBe(0);
  });

  it('GO with malformed data is ERR_INVALID, then GO works', async () => {
    const { port } = await serve();
    const c = await client(port);
    await c.greet();
    const go = encodeOptionPayload({ kind: 'go', name: 'ram', requests: [] });
    go.data.writeUInt32BE(1000, 0); // name length beyond the option
    expect(await c.option(encodeOption(go))).toMatchObject([{ type: REP.ERR_INVALID }]);
    const bad = Buffer.from(encodeOption(encodeOptionPayload({ kind: 'go', name: 'ram', requests: [] })));
    bad[20] = 0xff; // 'r' → invalid UTF-8
    expect(await c.option(bad)).toMatchObject([{ type: REP.ERR_INVALID }]);
    await c.open('ram', { structured: false });
    expect((await c.request({ type: CMD.READ, length: 10 })).data).toEqual(Buffer.alloc(10));
  });

  it('EXPORT_NAME: size and flags (with or without zeroes); an unknown name hangs up without a reply', async () => {
    const { port, p } = await serve();
    for (const noZeroes of [true, false]) {
      const c = await client(port);
      await c.greet(CLIENT_FLAG.FIXED_NEWSTYLE | (noZeroes ? CLIENT_FLAG.NO_ZEROES : 0));
      c.write(encodeOption(encodeOptionPayload({ kind: 'export-name', name: 'ro' })));
      const flags = TX_FLAG.HAS_FLAGS | TX_FLAG.SEND_FLUSH | TX_FLAG.READ_ONLY;
      expect(await c.take(noZeroes ? 10 : 134)).toEqual(encodeExportNameReply({ size: MiB, flags }, noZeroes));
      const r = await c.request({ type: CMD.READ, offset: 251, length: 3 });
      expect(r).toMatchObject({ error: 0, simple: true, data: Buffer.from([0, 1, 2]) });
    }
    const c = await client(port);
    await c.greet();
    c.write(encodeOption(encodeOptionPayload({ kind: 'export-name', name: 'nope' })));
    expect(await c.closedWithin(2000)).toBe(true);
    await expect(c.take(1)).rejects.toThrow(/closed/);
    expect(p.opens.map((o) => o.name)).toEqual(['ro', 'ro']);
  });

  it('ABORT is acknowledged, then the connection closes', async () => {
    const { port, server } = await serve();
    const c = await client(port);
    await c.greet();
    expect(await c.option({ kind: 'abort' })).toMatchObject([{ option: OPT.ABORT, type: REP.ACK }]);
    expect(await c.closedWithin(2000)).toBe(true);
    await until(() => server.connections() === 0);
  });

  it('an export that finishes opening after the client left is closed unused', async () => {
    const { port, p, server } = await serve();
    const g = gate();
    p.openHook = () => g.wait;
    const c = await client(port);
    await c.greet();
    c.write(encodeOption(encodeOptionPayload({ kind: 'go', name: 'ram', requests: [] })));
    await new Promise((r) => setTimeout(r, 20));
    c.destroy();
    await new Promise((r) => setTimeout(r, 20));
    expect(server.connections()).toBe(1); // waiting for the open
    g.release();
    expect(await p.waitCloses(1)).toEqual([{ name: 'ram', purpose: 'serve', clean: false, wrote: false }]);
    await until(() => server.connections() === 0);
  });

  it('a handshake that takes too long is closed', async () => {
    const { port } = await serve({ handshakeTimeoutMs: 150 });
    const c = await client(port);
    await c.greet();
    expect(await c.closedWithin(2000)).toBe(true);
  });
});

describe('nbd server: transmission', () => {
  it('reads and writes with structured replies (split into chunks, one with DF) and simple replies', async () => {
    const { port, p } = await serve();
    const c = await client(port);
    const { flags } = await c.open('ram');
    expect(flags & TX_FLAG.SEND_DF).toBe(TX_FLAG.SEND_DF);
    const data = Buffer.alloc(600_000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) % 256;
    expect(await c.request({ type: CMD.WRITE, offset: 100_000, flags: CMD_FLAG.FUA }, data)).toMatchObject({ error: 0 });
    expect(p.data.get('ram')!.subarray(100_000, 700_000).equals(data)).toBe(true);
    const r = await c.request({ type: CMD.READ, offset: 100_000, length: data.length });
    expect(r.data!.equals(data)).toBe(true);
    // The RAM export cuts reads at 256 KiB boundaries: one OFFSET_DATA chunk per piece, DONE on the last.
    expect(r.chunks.map((ch) => [ch.kind, ch.flags, ch.kind === 'offset-data' && ch.offset])).toEqual([
      ['offset-data', 0, 100_000], ['offset-data', 0, 262_144], ['offset-data', 1, 524_288],
    ]);
    const df = await c.request({ type: CMD.READ, offset: 100_000, length: data.length, flags: CMD_FLAG.DF });
    expect(df.chunks.length).toBe(1);
    expect(df.data!.equals(data)).toBe(true);

    const s = await client(port);
    await s.open('ram', { structured: false });
    const sr = await s.request({ type: CMD.READ, offset: 100_000, length: data.length });
    expect(sr.simple).toBe(true);
    expect(sr.data!.equals(data)).toBe(true);
    expect(await s.request({ type: CMD.READ, length: 512, flags: CMD_FLAG.DF })).toMatchObject({ error: ERRNO.EINVAL, simple: true });
  });

  it('refuses invalid requests with the errno proto.md names and keeps the connection', async () => {
    const { port, p } = await serve({ maxPayload: 2 * MiB });
    const c = await client(port);
    await c.open('ram');
    const size = 4 * MiB;
    const cases: [string, Parameters<RawNbd['request']>[0], number, Buffer?][] = [
      ['read beyond the end', { type: CMD.READ, offset: size - 10, length: 20 }, ERRNO.EINVAL],
      ['read past 2^32', { type: CMD.READ, offset: 2 ** 40, length: 1 }, ERRNO.EINVAL],
      ['write beyond the end', { type: CMD.WRITE, offset: size - 1 }, ERRNO.ENOSPC, Buffer.alloc(2)],
      ['zero beyond the end', { type: CMD.WRITE_ZEROES, offset: size, length: 512 }, ERRNO.ENOSPC],
      ['trim beyond the end', { type: CMD.TRIM, offset: size, length: 512 }, ERRNO.EINVAL],
      ['block status beyond the end', { type: CMD.BLOCK_STATUS, offset: size, length: 1 }, ERRNO.EINVAL],
      ['zero-length read', { type: CMD.READ, offset: 0, length: 0 }, ERRNO.EINVAL],
      ['zero-length write', { type: CMD.WRITE, offset: 0, length: 0 }, ERRNO.EINVAL],
      ['read above the maximum payload', { type: CMD.READ, offset: 0, length: 2 * MiB + 1 }, ERRNO.EINVAL],
      ['unknown command', { type: 42, offset: 0, length: 1 }, ERRNO.EINVAL],
      ['RESIZE (not offered)', { type: CMD.RESIZE, offset: 0, length: 0 }, ERRNO.EINVAL],
      ['flag not valid for the command', { type: CMD.WRITE, flags: CMD_FLAG.REQ_ONE, offset: 0 }, ERRNO.EINVAL, Buffer.alloc(4)],
      ['FAST_ZERO (not offered)', { type: CMD.WRITE_ZEROES, flags: CMD_FLAG.FAST_ZERO, offset: 0, length: 4096 }, ERRNO.EINVAL],
      ['unknown flag bit', { type: CMD.READ, flags: 1 << 9, offset: 0, length: 1 }, ERRNO.EINVAL],
      ['flush with a range', { type: CMD.FLUSH, offset: 0, length: 1 }, ERRNO.EINVAL],
    ];
    for (const [what, q, errno, data] of cases) {
      const r = await c.request(q, data);
      expect({ what, error: r.error }).toEqual({ what, error: errno });
      // With structured replies, errors come as an error chunk with a message for people.
      expect(r.chunks[0]).toMatchObject({ kind: 'error', flags: 1 });
    }
    expect(p.calls).toMatchObject({ read: 0, write: 0, zero: 0 });
    expect((await c.request({ type: CMD.READ, offset: size - 10, length: 10 })).data).toEqual(Buffer.alloc(10));

    const b = await client(port);
    await b.open('blk', { structured: false });
    for (const q of [{ offset: 1, length: 512 }, { offset: 0, length: 100 }]) {
      expect(await b.request({ type: CMD.READ, ...q })).toMatchObject({ error: ERRNO.EINVAL, simple: true });
    }
    expect((await b.request({ type: CMD.WRITE, offset: 512 }, Buffer.alloc(512, 9))).error).toBe(0);
    expect(await b.request({ type: CMD.WRITE, offset: 100 }, Buffer.alloc(512, 9))).toMatchObject({ error: ERRNO.EINVAL });
    expect((await b.request({ type: CMD.READ, offset: 0, length: 1024 })).data).toEqual(Buffer.concat([Buffer.alloc(512), Buffer.alloc(512, 9)]));
  });

  it('a read-only export refuses writes, trims and zeroes with EPERM and still reads', async () => {
    const { port, p } = await serve();
    const c = await client(port);
    const { flags } = await c.open('ro', { meta: false });
    expect(flags & TX_FLAG.READ_ONLY).toBe(TX_FLAG.READ_ONLY);
    expect((await c.request({ type: CMD.WRITE, offset: 0 }, Buffer.alloc(512, 1))).error).toBe(ERRNO.EPERM);
    expect((await c.request({ type: CMD.TRIM, offset: 0, length: 512 })).error).toBe(ERRNO.EPERM);
    expect((await c.request({ type: CMD.WRITE_ZEROES, offset: 0, length: 512 })).error).toBe(ERRNO.EPERM);
    expect((await c.request({ type: CMD.FLUSH })).error).toBe(0);
    expect((await c.request({ type: CMD.READ, offset: 250, length: 3 })).data).toEqual(Buffer.from([250, 0, 1]));
    expect(p.data.get('ro')![0]).toBe(0);
    c.disconnect();
    expect(await p.waitCloses(1)).toEqual([{ name: 'ro', purpose: 'serve', clean: true, wrote: false }]);
  });

  it('maps export errors to errnos and keeps serving', async () => {
    const { port, p } = await serve();
    p.hook = (op, offset) => {
      if (offset === 4096) throw new Error('disk on fire');
      if (offset === 8192) throw dfError('DF_ERR_BAD_REQUEST', 'export says no');
      if (offset === 12288) throw Object.assign(new Error('no space'), { code: 'ENOSPC' });
      if (offset === 16384) throw dfError('DF_ERR_FORBIDDEN', 'lease gone');
    };
    const c = await client(port);
    await c.open('ram');
    expect((await c.request({ type: CMD.READ, offset: 4096, length: 10 })).chunks[0]).toMatchObject({ kind: 'error', error: ERRNO.EIO, message: 'EIO' });
    expect((await c.request({ type: CMD.WRITE, offset: 8192 }, Buffer.alloc(10))).chunks[0]).toMatchObject({ error: ERRNO.EINVAL, message: 'export says no' });
    expect((await c.request({ type: CMD.WRITE_ZEROES, offset: 12288, length: 10 })).error).toBe(ERRNO.ENOSPC);
    expect((await c.request({ type: CMD.BLOCK_STATUS, offset: 16384, length: 10 })).error).toBe(ERRNO.EPERM);
    expect((await c.request({ type: CMD.READ, offset: 0, length: 10 })).error).toBe(0);
    expect([errnoOf(undefined), errnoOf(null), errnoOf('x'), errnoOf(dfError('DF_ERR_INTERNAL'))]).toEqual([ERRNO.EIO, ERRNO.EIO, ERRNO.EIO, ERRNO.EIO]);
  });

  it('block status: base:allocation extents for the range, one with REQ_ONE', async () => {
    const { port, p } = await serve();
    const c = await client(port);
    await c.open('ram');
    p.data.get('ram')!.fill(1, 8192, 8192 + 5000); // granules 2 and 3 hold data
    const all = await c.request({ type: CMD.BLOCK_STATUS, offset: 0, length: 65536 });
    expect(all.chunks).toEqual([{ kind: 'block-status', flags: 1, cookie: expect.any(BigInt), contextId: 1, extents: [
      { length: 8192, flags: STATE.HOLE | STATE.ZERO }, { length: 8192, flags: 0 }, { length: 65536 - 16384, flags: STATE.HOLE | STATE.ZERO },
    ] }]);
    const one = await c.request({ type: CMD.BLOCK_STATUS, offset: 8192, length: 1000, flags: CMD_FLAG.REQ_ONE });
    expect(one.chunks[0]).toMatchObject({ extents: [{ length: 1000, flags: 0 }] });
    expect(shapeExtents([{ length: 0, flags: 3 }, { length: 10, flags: 3 }, { length: 10, flags: 3 }, { length: 50, flags: 0 }], 25, false))
      .toEqual([{ length: 20, flags: 3 }, { length: 5, flags: 0 }]);
  });

  it('runs requests concurrently and replies out of order', async () => {
    const { port, p } = await serve();
    const g = gate();
    p.hook = async (op, offset) => { if (op === 'read' && offset === 0) await g.wait; };
    const c = await client(port);
    await c.open('ram');
    const order: number[] = [];
    const slow = c.request({ type: CMD.READ, offset: 0, length: 512 }).then((r) => { order.push(0); return r; });
    const fast = c.request({ type: CMD.READ, offset: 4096, length: 512 }).then((r) => { order.push(4096); return r; });
    await fast;
    g.release();
    await slow;
    expect(order).toEqual([4096, 0]);
  });

  it('caps requests in flight at maxInFlight, then serves the rest', async () => {
    const { port, p } = await serve({ maxInFlight: 4 });
    const g = gate();
    p.hook = () => g.wait;
    const c = await client(port);
    await c.open('ram');
    const replies = Array.from({ length: 20 }, (_, i) => c.request({ type: CMD.READ, offset: i * 512, length: 512 }));
    await until(() => p.active === 4);
    await new Promise((r) => setTimeout(r, 50));
    expect(p.calls.read).toBe(4);
    g.release();
    expect((await Promise.all(replies)).map((r) => r.error)).toEqual(Array(20).fill(0));
    expect(p.peak).toBe(4);
  });

  it('FLUSH reaches the export only after the writes received before it completed', async () => {
    const { port, p } = await serve();
    const g = gate();
    p.hook = async (op) => { if (op === 'write') await g.wait; };
    const c = await client(port);
    await c.open('ram');
    const w = c.request({ type: CMD.WRITE, offset: 0 }, Buffer.alloc(4096, 5));
    const f = c.request({ type: CMD.FLUSH });
    const r = c.request({ type: CMD.READ, offset: 8192, length: 10 });
    await r; // later requests are not held up by the flush
    await new Promise((res) => setTimeout(res, 30));
    expect(p.events).not.toContain('flush:start');
    g.release();
    expect((await w).error).toBe(0);
    expect((await f).error).toBe(0);
    expect(p.events.indexOf('write 0+4096:end')).toBeLessThan(p.events.indexOf('flush:start'));
  });

  it('CAN_MULTI_CONN only where the export allows it; a FLUSH on one connection covers writes completed on another', async () => {
    const { port, p } = await serve({}, new RamProvider([
      { name: 'mc', size: MiB, multiConn: true, description: 'shared' },
      { name: 'ram', size: MiB },
    ]));
    const a = await client(port);
    const b = await client(port);
    const other = await client(port);
    expect((await a.open('mc')).flags & TX_FLAG.CAN_MULTI_CONN).toBe(TX_FLAG.CAN_MULTI_CONN);
    expect((await b.open('mc')).flags & TX_FLAG.CAN_MULTI_CONN).toBe(TX_FLAG.CAN_MULTI_CONN);
    expect((await other.open('ram')).flags & TX_FLAG.CAN_MULTI_CONN).toBe(0);
    // proto.md "NBD_FLAG_CAN_MULTI_CONN": a write that completed on A is durable once B's FLUSH replies.
    expect((await a.request({ type: CMD.WRITE, offset: 4096 }, Buffer.alloc(4096, 7))).error).toBe(0);
    expect(p.durable.get('mc')).toBeUndefined();
    expect((await b.request({ type: CMD.FLUSH })).error).toBe(0);
    expect(p.durable.get('mc')!.subarray(4096, 8192).equals(Buffer.alloc(4096, 7))).toBe(true);
    // And B reads what A wrote (one set of bytes, not a cache per connection).
    const r = await b.request({ type: CMD.READ, offset: 4096, length: 4096 });
    expect(r.error).toBe(0);
  });

  it('stops reading requests while the client does not read its replies', async () => {
    const { port, p } = await serve({ maxInFlight: 8 });
    const c = await client(port);
    await c.open('ram', { meta: false });
    c.sock.pause();
    const n = 200;
    const replies = Array.from({ length: n }, (_, i) => c.request({ type: CMD.READ, offset: (i % 4) * MiB, length: MiB }));
    await new Promise((r) => setTimeout(r, 300));
    const served = p.calls.read;
    expect(served).toBeGreaterThan(0);
    expect(served).toBeLessThan(n / 2);
    c.sock.resume();
    expect((await Promise.all(replies)).every((r) => r.error === 0 && r.data!.length === MiB)).toBe(true);
    expect(p.calls.read).toBe(n);
  });

  it('DISC answers what is in flight, then closes the export cleanly and hangs up', async () => {
    const { port, p, server } = await serve();
    const g = gate();
    p.hook = async (op) => { if (op === 'zero') await g.wait; };
    const c = await client(port);
    await c.open('ram');
    const z = c.request({ type: CMD.WRITE_ZEROES, offset: 0, length: 4096, flags: CMD_FLAG.NO_HOLE | CMD_FLAG.FUA });
    c.disconnect();
    await new Promise((r) => setTimeout(r, 30));
    expect(p.closes).toEqual([]);
    g.release();
    expect((await z).error).toBe(0);
    expect(await c.closedWithin(2000)).toBe(true);
    expect(p.closes).toEqual([{ name: 'ram', purpose: 'serve', clean: true, wrote: true }]);
    await until(() => server.connections() === 0);
  });

  it('a client that drops with requests in flight: the export closes unclean once they settled', async () => {
    const { port, p, server } = await serve();
    const g = gate();
    p.hook = async (op) => { if (op === 'write') await g.wait; };
    const c = await client(port);
    await c.open('ram');
    void c.request({ type: CMD.WRITE, offset: 0 }, Buffer.alloc(512, 3)).catch(() => undefined);
    await until(() => p.active === 1);
    c.sock.resetAndDestroy(); // RST: the server sees the socket close at once, not after its replies
    await new Promise((r) => setTimeout(r, 30));
    expect(p.closes).toEqual([]);
    g.release();
    expect(await p.waitCloses(1)).toEqual([{ name: 'ram', purpose: 'serve', clean: false, wrote: true }]);
    expect(p.violations).toEqual([]);
    await until(() => server.connections() === 0);
  });

  it('a client that pipelines past the cap, sends DISC and half-closes gets every reply; the close is clean', async () => {
    const { port, p } = await serve({ maxInFlight: 2 });
    const g = gate();
    p.hook = () => g.wait;
    const c = await client(port);
    await c.open('ram');
    const replies = Array.from({ length: 6 }, (_, i) => c.request({ type: CMD.READ, offset: i * 512, length: 512 }));
    c.disconnect();
    c.sock.end();
    await until(() => p.active === 2);
    g.release();
    expect((await Promise.all(replies)).map((r) => r.error)).toEqual(Array(6).fill(0));
    expect(await p.waitCloses(1)).toEqual([{ name: 'ram', purpose: 'serve', clean: true, wrote: false }]);
  });

  it('a client that half-closes without DISC still gets its replies; the export closes unclean', async () => {
    const { port, p } = await serve();
    const c = await client(port);
    await c.open('ram');
    const r = c.request({ type: CMD.READ, offset: 0, length: 100 });
    c.sock.end();
    expect((await r).data).toEqual(Buffer.alloc(100));
    expect(await p.waitCloses(1)).toEqual([{ name: 'ram', purpose: 'serve', clean: false, wrote: false }]);
  });

  it('close() answers requests in flight, hangs up everyone and closes their exports unclean', async () => {
    const { port, p, server } = await serve();
    servers.pop();
    const g = gate();
    p.hook = async (op) => { if (op === 'read') await g.wait; };
    const a = await client(port);
    await a.open('ram');
    const w = await a.request({ type: CMD.WRITE, offset: 0 }, Buffer.alloc(10, 1));
    expect(w.error).toBe(0);
    const r = a.request({ type: CMD.READ, offset: 0, length: 10 });
    const h = await client(port);
    await h.greet(); // still haggling
    await until(() => p.active === 1 && server.connections() === 2);
    let closed = false;
    const done = server.close().then(() => { closed = true; });
    expect(await h.closedWithin(2000)).toBe(true);
    await new Promise((res) => setTimeout(res, 30));
    expect(closed).toBe(false);
    g.release();
    expect((await r).data).toEqual(Buffer.alloc(10, 1));
    await done;
    expect(await a.closedWithin(2000)).toBe(true);
    expect(server.connections()).toBe(0);
    expect(p.closes).toEqual([{ name: 'ram', purpose: 'serve', clean: false, wrote: true }]);
    await expect(RawNbd.connect(port)).rejects.toThrow();
  });

  it('logs connection state changes as data, with counters', async () => {
    const lines: { level: string; obj: object; msg?: string; bindings: Record<string, unknown> }[] = [];
    const mk = (bindings: Record<string, unknown>): Logger => {
      const at = (level: string) => (obj: object, msg?: string) => { lines.push({ level, obj, msg, bindings }); };
      return { trace: at('trace'), debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), child: (b) => mk({ ...bindings, ...b }) };
    };
    const { port, p } = await serve({ log: mk({}) });
    const c = await client(port);
    await c.open('ram');
    const remote = `127.0.0.1:${c.sock.localPort}`;
    await c.request({ type: CMD.WRITE, offset: 0 }, Buffer.alloc(300));
    await c.request({ type: CMD.READ, offset: 0, length: 200 });
    c.disconnect();
    await p.waitCloses(1);
    await until(() => lines.some((l) => l.msg === 'nbd disconnect'));
    const info = lines.filter((l) => l.level === 'info' && l.bindings.nbd === remote);
    expect(info.map((l) => l.msg)).toEqual(['nbd connect', 'nbd export opened', 'nbd disconnect']);
    expect(info[2]!.obj).toMatchObject({ export: 'ram', clean: true, requests: 3, bytesRead: 200, bytesWritten: 300, errors: 0 });
    expect(lines.filter((l) => l.level === 'debug' && l.msg === 'nbd option').map((l) => l.obj)).toEqual([
      { opt: { option: 'STRUCTURED_REPLY' } }, { opt: { option: 'SET_META_CONTEXT', name: 'ram' } }, { opt: { option: 'GO', name: 'ram' } },
    ]);
  });

  it('writes a request header as one piece and its payload split anywhere', async () => {
    const { port, p } = await serve();
    const c = await client(port);
    await c.open('ram');
    const data = Buffer.alloc(3000, 0x5a);
    const bytes = Buffer.concat([encodeRequest({ type: CMD.WRITE, flags: 0, cookie: 77n, offset: 10, length: data.length }), data]);
    for (let i = 0; i < bytes.length; i += 97) { c.write(bytes.subarray(i, i + 97)); await new Promise((r) => setImmediate(r)); }
    await until(() => p.calls.write === 1);
    await until(() => p.data.get('ram')![3009] === 0x5a);
    expect(p.data.get('ram')!.subarray(10, 3010).equals(data)).toBe(true);
  });
});
