import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Logger } from '../../src/log.js';
import {
  CLIENT_FLAG, CMD, ERRNO, IHAVEOPT, INFO, OPT, REP, STATE,
  encodeClientFlags, encodeOption, encodeOptionPayload, encodeRequest,
} from '../../src/nbd/packet.js';
import { startNbd, type NbdServer } from '../../src/nbd/server.js';
import { prng } from '../helpers/expect.js';
import { RawNbd } from '../helpers/nbd-client.js';
import { requireClients, run } from '../helpers/nbd-tools.js';
import { extentsOf, MiB, RamProvider } from '../helpers/nbd-ram.js';

/**
 * The NBD server against real clients on loopback: qemu-img and qemu-io (QEMU's NBD client), nbdinfo
 * and nbdcopy (libnbd). Bad input comes from a raw client built from the codec, and from a seeded
 * fuzzer; after each, a real client must still be served.
 */

/** A logger that counts warnings (the server logs malformed streams at warn) and keeps errors. */
function countingLogger(): Logger & { warns: number; errors: object[] } {
  const l = {
    warns: 0, errors: [] as object[],
    trace: () => undefined, debug: () => undefined, info: () => undefined,
    warn: () => { l.warns++; },
    error: (o: object) => { l.errors.push(o); },
    child: () => l,
  };
  return l;
}

let dir: string;
let server: NbdServer;
let p: RamProvider;
let log: ReturnType<typeof countingLogger>;
const url = (name: string): string => `nbd://127.0.0.1:${server.port}/${name}`;

beforeAll(async () => {
  requireClients();
  dir = mkdtempSync(path.join(tmpdir(), 'df-nbd-'));
  p = new RamProvider();
  log = countingLogger();
  server = await startNbd({ host: '127.0.0.1', port: 0, provider: p, log });
});

afterAll(async () => {
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Waits until every connection ended, then returns the export closes recorded since `from`. */
async function settled(from: number, count: number): Promise<RamProvider['closes']> {
  await p.waitCloses(from + count);
  for (let i = 0; server.connections() > 0 && i < 200; i++) await new Promise((r) => setTimeout(r, 10));
  return p.closes.slice(from);
}

/** A fresh real client is still served. */
async function stillServes(): Promise<void> {
  const r = await run('nbdinfo', ['--size', url('ram')]);
  expect(r).toMatchObject({ code: 0, out: `${4 * MiB}\n` });
}

describe('nbd server with real clients', () => {
  it('nbdinfo lists the exports and describes them', async () => {
    const list = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${server.port}`]);
    expect(list.code).toBe(0);
    const exports = JSON.parse(list.out).exports as Record<string, unknown>[];
    expect(exports.map((e) => [e['export-name'], e.description])).toEqual([
      ['ram', 'scratch RAM disk'], ['ro', 'read-only pattern'], ['blk', '512-byte sectors'],
    ]);
    const ram = JSON.parse((await run('nbdinfo', ['--json', url('ram')])).out);
    expect(ram).toMatchObject({ protocol: 'newstyle-fixed', TLS: false, structured: true });
    expect(ram.exports[0]).toMatchObject({
      'export-name': 'ram', 'export-size': 4 * MiB, is_read_only: false, can_flush: true, can_fua: true, can_trim: true,
      can_zero: true, can_df: true, can_multi_conn: false, contexts: ['base:allocation'],
      block_size_minimum: 1, block_size_preferred: 4096, block_size_maximum: 32 * MiB,
    });
    const ro = JSON.parse((await run('nbdinfo', ['--json', url('ro')])).out).exports[0];
    expect(ro).toMatchObject({ 'export-size': MiB, is_read_only: true, can_trim: false, can_zero: false });
    const blk = JSON.parse((await run('nbdinfo', ['--json', url('blk')])).out).exports[0];
    expect(blk).toMatchObject({ block_size_minimum: 512 });
  });

  it('qemu-io writes and reads odd sizes at odd offsets; the session closes clean with wrote', async () => {
    const from = p.closes.length;
    const r = await run('qemu-io', ['-f', 'raw', url('ram'), '-c', 'write -P 0xab 1000 3333', '-c', 'read -P 0xab 1000 3333', '-c', 'write -z 2000 100']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('wrote 3333/3333 bytes at offset 1000');
    expect(r.out).toContain('read 3333/3333 bytes at offset 1000');
    const ram = p.data.get('ram')!;
    const want = Buffer.alloc(5000);
    want.fill(0xab, 1000, 4333);
    want.fill(0, 2000, 2100);
    expect(ram.subarray(0, 5000).equals(want)).toBe(true);
    expect(await settled(from, 1)).toEqual([{ name: 'ram', purpose: 'serve', clean: true, wrote: true }]);
  });

  it('nbdinfo --map shows data and holes matching what was written', async () => {
    const w = await run('qemu-io', ['-f', 'raw', url('ram'), '-c', `write -P 0x11 ${MiB + 5} 10000`, '-c', `write -P 0x22 ${3 * MiB} 4096`]);
    expect(w.code).toBe(0);
    const map = await run('nbdinfo', ['--map', '--json', url('ram')]);
    expect(map.code).toBe(0);
    const got = (JSON.parse(map.out) as { offset: number; length: number; type: number }[]).map((e) => ({ length: e.length, flags: e.type }));
    expect(got).toEqual(extentsOf(p.data.get('ram')!, 0, 4 * MiB));
    // The extents name the written granules: [0, 8 KiB) from the last test, 1 MiB + 12 KiB, 3 MiB + 4 KiB.
    expect(got).toEqual([
      { length: 8192, flags: 0 }, { length: MiB - 8192, flags: STATE.HOLE | STATE.ZERO },
      { length: 12288, flags: 0 }, { length: 2 * MiB - 12288, flags: STATE.HOLE | STATE.ZERO },
      { length: 4096, flags: 0 }, { length: MiB - 4096, flags: STATE.HOLE | STATE.ZERO },
    ]);
  });

  it('qemu-img convert and compare against a local file; nbdcopy back is byte-exact, pipelined', async () => {
    const src = path.join(dir, 'src.img');
    const rnd = prng(10809);
    const img = Buffer.alloc(4 * MiB);
    for (let i = 0; i < img.length; i += 4) img.writeUInt32LE(Math.floor(rnd() * 2 ** 32), i);
    img.fill(0, MiB, 2 * MiB); // a hole to convert
    writeFileSync(src, img);
    const conv = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, url('ram')]);
    expect(conv).toMatchObject({ code: 0 });
    expect(p.data.get('ram')!.equals(img)).toBe(true);
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, url('ram')]);
    expect(cmp).toMatchObject({ code: 0, out: 'Images are identical.\n' });
    const out = path.join(dir, 'out.img');
    const copy = await run('nbdcopy', [url('ram'), out]);
    expect(copy.code).toBe(0);
    expect(readFileSync(out).equals(img)).toBe(true);
    // Many small requests in flight on one connection: all bytes in place, and they did overlap.
    p.peak = 0;
    const out64 = path.join(dir, 'out64.img');
    const piped = await run('nbdcopy', ['--requests=64', '--request-size=16384', '--connections=1', url('ram'), out64]);
    expect(piped.code).toBe(0);
    expect(readFileSync(out64).equals(img)).toBe(true);
    expect(p.peak).toBeGreaterThan(8);
  });

  it('qemu-io reports out-of-range I/O and refused exports', async () => {
    const beyond = await run('qemu-io', ['-f', 'raw', url('ram'), '-c', `read ${4 * MiB - 100} 4096`]);
    expect(beyond.code).not.toBe(0);
    expect(beyond.out + beyond.err).toMatch(/read failed/);
    const ro = await run('qemu-io', ['-f', 'raw', url('ro'), '-c', 'write 0 512']);
    expect(ro.code).not.toBe(0);
    const unknown = await run('qemu-img', ['info', url('nope')]);
    expect(unknown.code).not.toBe(0);
    expect(unknown.err).toContain('Requested export not available');
    const denied = await run('qemu-img', ['info', url('secret')]);
    expect(denied.code).not.toBe(0);
    expect(denied.err).toContain('Denied by server');
  });

  it('on the wire: EINVAL/ENOSPC beyond the end, EPERM on ro, and the same connection keeps working', async () => {
    const c = await RawNbd.connect(server.port);
    try {
      await c.open('ram');
      expect((await c.request({ type: CMD.READ, offset: 4 * MiB - 10, length: 11 })).error).toBe(ERRNO.EINVAL);
      expect((await c.request({ type: CMD.WRITE, offset: 4 * MiB - 1 }, Buffer.alloc(2))).error).toBe(ERRNO.ENOSPC);
      const ok = await c.request({ type: CMD.READ, offset: 4 * MiB - 10, length: 10 });
      expect(ok).toMatchObject({ error: 0, data: p.data.get('ram')!.subarray(4 * MiB - 10) });
    } finally {
      c.destroy();
    }
    const r = await RawNbd.connect(server.port);
    try {
      await r.open('ro');
      expect((await r.request({ type: CMD.WRITE, offset: 0 }, Buffer.alloc(512, 7))).error).toBe(ERRNO.EPERM);
      expect((await r.request({ type: CMD.READ, offset: 0, length: 4 })).data).toEqual(Buffer.from([0, 1, 2, 3]));
    } finally {
      r.destroy();
    }
  });

  it('unknown export → NBD_REP_ERR_UNKNOWN; STARTTLS → NBD_REP_ERR_POLICY', async () => {
    const c = await RawNbd.connect(server.port);
    try {
      await c.greet();
      expect((await c.option({ kind: 'go', name: 'nope', requests: [INFO.BLOCK_SIZE] })).map((x) => x.type)).toEqual([REP.ERR_UNKNOWN]);
      expect((await c.option({ kind: 'starttls' })).map((x) => x.type)).toEqual([REP.ERR_POLICY]);
      expect((await c.open('ram')).size).toBe(4 * MiB);
    } finally {
      c.destroy();
    }
  });

  it('malformed streams close that socket and the server keeps answering', async () => {
    const go = encodeOption(encodeOptionPayload({ kind: 'go', name: 'ram', requests: [] }));
    const flags = encodeClientFlags(CLIENT_FLAG.FIXED_NEWSTYLE | CLIENT_FLAG.NO_ZEROES);
    const bigOption = Buffer.alloc(16);
    bigOption.writeBigUInt64BE(IHAVEOPT, 0);
    bigOption.writeUInt32BE(OPT.GO, 8);
    bigOption.writeUInt32BE(1 << 20, 12);
    const badRequest = encodeRequest({ type: CMD.READ, flags: 0, cookie: 1n, offset: 0, length: 512 });
    badRequest[0] = 0x26;
    const cases: [string, Buffer, boolean][] = [
      ['unknown client flag bits', encodeClientFlags(0x80), false],
      ['truncated client flags', Buffer.from([0, 0]), false],
      ['bad option magic', Buffer.concat([flags, Buffer.from('IHAVEOPX'), Buffer.alloc(8)]), false],
      ['oversized option length', Buffer.concat([flags, bigOption]), false],
      ['truncated option', Buffer.concat([flags, go.subarray(0, 10)]), false],
      ['bad request magic', badRequest, true],
      ['oversized write length', encodeRequest({ type: CMD.WRITE, flags: 0, cookie: 2n, offset: 0, length: 32 * MiB + 1 }), true],
      ['truncated request', encodeRequest({ type: CMD.READ, flags: 0, cookie: 3n, offset: 0, length: 512 }).subarray(0, 20), true],
    ];
    for (const [what, bytes, afterGo] of cases) {
      const c = await RawNbd.connect(server.port);
      try {
        if (afterGo) await c.open('ram', { structured: false });
        else await c.take(18); // the greeting
        c.write(bytes);
        // Truncation is only visible once the client stops sending.
        if (what.startsWith('truncated')) c.sock.end();
        expect({ what, closed: await c.closedWithin(3000) }).toEqual({ what, closed: true });
      } finally {
        c.destroy();
      }
    }
    await stillServes();
  });

  it('a client that drops mid-write: the export closes unclean, nothing was written', async () => {
    const from = p.closes.length;
    const before = Buffer.from(p.data.get('ram')!.subarray(0, 65536));
    const writes = p.calls.write;
    const c = await RawNbd.connect(server.port);
    await c.open('ram');
    c.write(encodeRequest({ type: CMD.WRITE, flags: 0, cookie: 9n, offset: 0, length: 65536 }));
    c.write(Buffer.alloc(32768, 0xee));
    await new Promise((r) => setTimeout(r, 20));
    c.destroy();
    expect(await settled(from, 1)).toEqual([{ name: 'ram', purpose: 'serve', clean: false, wrote: false }]);
    expect(p.calls.write).toBe(writes);
    expect(p.data.get('ram')!.subarray(0, 65536).equals(before)).toBe(true);
  });

  it('fuzz: hundreds of mutated sessions, then a real client still works and nothing leaked', async () => {
    const fp = new RamProvider();
    const flog = countingLogger();
    const fsrv = await startNbd({ host: '127.0.0.1', port: 0, provider: fp, log: flog, maxPayload: MiB, handshakeTimeoutMs: 5000 });
    const unhandled: unknown[] = [];
    const onErr = (e: unknown): void => { unhandled.push(e); };
    process.on('unhandledRejection', onErr);
    process.on('uncaughtException', onErr);
    try {
      const rnd = prng(0x6e6264);
      const sessions = validSessions();
      const streams: Buffer[] = [];
      for (let i = 0; i < 400; i++) streams.push(mutate(sessions[i % sessions.length]!, rnd));
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < streams.length) await fuzzOne(fsrv.port, streams[next++]!, rnd);
      };
      await Promise.all(Array.from({ length: 16 }, worker));
      for (let i = 0; fsrv.connections() > 0 && i < 300; i++) await new Promise((r) => setTimeout(r, 10));
      expect(fsrv.connections()).toBe(0);
      // Many sessions got past the handshake into requests the export served.
      expect(fp.calls.read + fp.calls.write + fp.calls.zero).toBeGreaterThan(100);
      // Every export opened was closed exactly once, and never used after.
      expect(fp.closes.length).toBe(fp.opens.length);
      expect(fp.opens.length).toBeGreaterThan(50);
      expect(fp.violations).toEqual([]);
      expect(flog.warns).toBeGreaterThan(0); // malformed streams were seen and logged
      expect(flog.errors).toEqual([]);
      const r = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${fsrv.port}/ram`]);
      expect(r).toMatchObject({ code: 0, out: `${4 * MiB}\n` });
      const q = await run('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${fsrv.port}/ram`, '-c', 'write -P 0x42 0 4096', '-c', 'read -P 0x42 0 4096']);
      expect(q.code).toBe(0);
    } finally {
      process.off('unhandledRejection', onErr);
      process.off('uncaughtException', onErr);
      await fsrv.close();
    }
    expect(unhandled).toEqual([]);
    await stillServes();
  });
});

/** Whole client sessions (client flags onward) that a correct server serves to the end. */
function validSessions(): Buffer[] {
  const opt = (p: Parameters<typeof encodeOptionPayload>[0]) => encodeOption(encodeOptionPayload(p));
  const req = (type: number, offset: number, length: number, cookie: bigint, flags = 0) => encodeRequest({ type, flags, cookie, offset, length });
  const flags = encodeClientFlags(CLIENT_FLAG.FIXED_NEWSTYLE | CLIENT_FLAG.NO_ZEROES);
  const requests = Buffer.concat([
    req(CMD.READ, 0, 4096, 1n),
    req(CMD.WRITE, 4096, 512, 2n), Buffer.alloc(512, 0x33),
    req(CMD.BLOCK_STATUS, 0, 65536, 3n),
    req(CMD.TRIM, 8192, 4096, 4n),
    req(CMD.WRITE_ZEROES, 0, 4096, 5n, 1),
    req(CMD.FLUSH, 0, 0, 6n),
    req(CMD.READ, 4 * MiB - 512, 512, 7n, 4),
    req(CMD.DISC, 0, 0, 8n),
  ]);
  return [
    Buffer.concat([flags, opt({ kind: 'structured-reply' }), opt({ kind: 'set-meta-context', name: 'ram', queries: ['base:allocation'] }),
      opt({ kind: 'list' }), opt({ kind: 'info', name: 'ram', requests: [INFO.NAME] }), opt({ kind: 'go', name: 'ram', requests: [INFO.BLOCK_SIZE] }), requests]),
    Buffer.concat([flags, opt({ kind: 'list-meta-context', name: 'ram', queries: [] }), opt({ kind: 'export-name', name: 'ram' }), requests]),
    Buffer.concat([flags, opt({ kind: 'go', name: 'ro', requests: [] }), requests]),
  ];
}

/** One of: truncate, flip bytes, overwrite a 4-byte field, insert junk, splice two places, random tail. */
function mutate(v: Buffer, rnd: () => number): Buffer {
  const at = (n = v.length) => Math.floor(rnd() * n);
  const junk = (n: number) => Buffer.from(Array.from({ length: n }, () => at(256)));
  const m = Buffer.from(v);
  switch (at(6)) {
    case 0: return m.subarray(0, at());
    case 1: for (let k = 1 + at(4); k > 0; k--) { const i = at(); m[i] = m[i]! ^ (1 + at(255)); } return m;
    case 2: { const i = at(m.length - 4); m.writeUInt32BE(rnd() < 0.5 ? 0xffffffff : at(2 ** 32), i); return m; }
    case 3: { const i = at(); return Buffer.concat([m.subarray(0, i), junk(1 + at(64)), m.subarray(i)]); }
    case 4: { const i = at(), j = at(); return Buffer.concat([m.subarray(0, Math.min(i, j)), m.subarray(Math.max(i, j))]); }
    default: { const i = at(); return Buffer.concat([m.subarray(0, i), junk(at(2048))]); }
  }
}

/** Sends `bytes` in random pieces after the greeting, then half-closes; resolves when the server has closed. */
function fuzzOne(port: number, bytes: Buffer, rnd: () => number): Promise<void> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host: '127.0.0.1' });
    const t = setTimeout(() => { sock.destroy(); reject(new Error(`server did not close after ${bytes.toString('hex').slice(0, 200)}`)); }, 10_000);
    sock.on('error', () => undefined); // the server may reset a stream it refused
    sock.on('data', () => undefined); // replies are read and dropped
    sock.once('close', () => { clearTimeout(t); resolve(); });
    sock.once('connect', () => {
      for (let i = 0; i < bytes.length;) {
        const n = 1 + Math.floor(rnd() * 600);
        sock.write(bytes.subarray(i, i + n));
        i += n;
      }
      sock.end();
    });
  });
}
