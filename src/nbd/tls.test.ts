import { promises as fsp, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger, type Logger } from '../log.js';
import { ensureServerTls, type ServerTls } from '../tls/pki.js';
import { RawNbd } from '../../test/helpers/nbd-client.js';
import { MiB, RamProvider } from '../../test/helpers/nbd-ram.js';
import { CLIENT_FLAG, OPT, REP, decodeOption, decodeOptionReply, encodeOption, encodeOptionPayload, type OptionPayload } from './packet.js';
import { startNbd, type NbdServer } from './server.js';
import { parsePskFile, type NbdTlsOptions } from './tls.js';

/**
 * The TLS rules of proto.md ("TLS support", "NBD_OPT_STARTTLS") on the wire, with a raw client built
 * from the codec that upgrades with Node's TLS client. Real clients: test/integration/nbd-tls.test.ts.
 */

const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'df-nbd-tls-'));
let material: ServerTls;
const servers: NbdServer[] = [];
const clients: RawNbd[] = [];
const providers: RamProvider[] = [];

beforeAll(async () => { material = await ensureServerTls({ dir: path.join(root, 'tls'), names: ['localhost', '127.0.0.1'] }); });
afterAll(() => fsp.rm(root, { recursive: true, force: true }));
afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await Promise.all(servers.splice(0).map((s) => s.close()));
  for (const p of providers.splice(0)) {
    expect(p.violations).toEqual([]);
    expect(p.closes.length).toBe(p.opens.length);
  }
});

async function serve(mode: NbdTlsOptions['mode'], log: Logger = silentLogger): Promise<{ port: number; p: RamProvider }> {
  const p = new RamProvider();
  const s = await startNbd({ host: '127.0.0.1', port: 0, provider: p, log, tls: { mode, cert: material } });
  servers.push(s);
  providers.push(p);
  return { port: s.port, p };
}

async function client(port: number): Promise<RawNbd> {
  const c = await RawNbd.connect(port);
  clients.push(c);
  return c;
}

const trust = () => ({ ca: material.caPem, servername: 'localhost' });
const types = (rs: { type: number }[]) => rs.map((r) => r.type);

describe('FORCEDTLS (nbd.tls required)', () => {
  it('answers every option but STARTTLS and ABORT with TLS_REQD, unknown ones included', async () => {
    const { port, p } = await serve('required');
    const c = await client(port);
    await c.greet();
    const opts: OptionPayload[] = [{ kind: 'list' }, { kind: 'structured-reply' }, { kind: 'info', name: 'ro', requests: [] }, { kind: 'go', name: 'ro', requests: [] }];
    for (const o of opts) {
      expect(types(await c.option(o))).toEqual([REP.ERR_TLS_REQD]);
    }
    expect(types(await c.option(encodeOption({ option: 99, data: Buffer.from('x') })))).toEqual([REP.ERR_TLS_REQD]);
    // STARTTLS carries no data: ERR_INVALID, and TLS is still available afterwards.
    expect(types(await c.option(encodeOption({ option: OPT.STARTTLS, data: Buffer.from('x') })))).toEqual([REP.ERR_INVALID]);
    expect(types(await c.starttls(trust()))).toEqual([REP.ACK]);
    expect((await c.open('ro')).size).toBe(MiB);
    expect(p.opens.map((o) => o.name)).toEqual(['ro']);
  });

  it('EXPORT_NAME before TLS ends the session without a reply (it has no error reply)', async () => {
    const { port, p } = await serve('required');
    const c = await client(port);
    await c.greet();
    c.write(encodeOption(encodeOptionPayload({ kind: 'export-name', name: 'ro' })));
    expect(await c.closedWithin(2000)).toBe(true);
    expect(p.opens).toEqual([]);
  });

  it('ABORT before TLS is acknowledged', async () => {
    const { port } = await serve('required');
    const c = await client(port);
    await c.greet();
    expect(types(await c.option({ kind: 'abort' }))).toEqual([REP.ACK]);
    expect(await c.closedWithin(2000)).toBe(true);
  });

  it('a client without fixed newstyle cannot upgrade, so it is hung up on', async () => {
    const { port } = await serve('required');
    const c = await client(port);
    await c.greet(CLIENT_FLAG.NO_ZEROES);
    expect(await c.closedWithin(2000)).toBe(true);
  });

  it('bytes sent in clear right behind STARTTLS are never taken as options: the server hangs up', async () => {
    const { port, p } = await serve('required');
    const c = await client(port);
    await c.greet();
    // An attacker's option injected behind the client's STARTTLS (cf. CVE-2021-3716).
    c.write(Buffer.concat([encodeOption(encodeOptionPayload({ kind: 'starttls' })), encodeOption(encodeOptionPayload({ kind: 'go', name: 'ro', requests: [] }))]));
    expect((await c.readOptionReply()).type).toBe(REP.ACK);
    expect(await c.closedWithin(2000)).toBe(true);
    expect(p.opens).toEqual([]);
  });

  it('a failed TLS handshake ends the session, logged with its reason; the server keeps serving', async () => {
    const lines: { level: string; obj: Record<string, unknown>; msg: string | undefined }[] = [];
    const at = (level: string) => (obj: object, msg?: string) => { lines.push({ level, obj: obj as Record<string, unknown>, msg }); };
    const log: Logger = { trace: at('trace'), debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), child: () => log };
    const { port } = await serve('required', log);
    const c = await client(port);
    await c.greet();
    await expect(c.starttls({ ca: (await ensureServerTls({ dir: path.join(root, 'other') })).caPem, servername: 'localhost' })).rejects.toThrow(/certificate/);
    expect(await c.closedWithin(2000)).toBe(true);
    for (let i = 0; i < 200 && !lines.some((l) => l.msg === 'nbd tls failed'); i++) await new Promise((r) => setTimeout(r, 10));
    expect(lines.find((l) => l.msg === 'nbd tls failed')).toMatchObject({ level: 'info', obj: { reason: expect.stringMatching(/^TLS handshake failed: /) } });
    // The session ended at once (not at the handshake timeout).
    for (let i = 0; i < 200 && !lines.some((l) => l.msg === 'nbd disconnect'); i++) await new Promise((r) => setTimeout(r, 10));
    expect(lines.some((l) => l.msg === 'nbd disconnect')).toBe(true);
    const ok = await client(port);
    await ok.greet();
    await ok.starttls(trust());
    expect((await ok.open('ro')).size).toBe(MiB);
  });
});

describe('the captured conversations of nbdkit --tls=require (test/fixtures/nbd/tls-*)', () => {
  const hexOf = (name: string) => Buffer.from(readFileSync(path.resolve(import.meta.dirname, `../../test/fixtures/nbd/${name}`), 'utf8').trim(), 'hex');
  /** Option requests of a client stream, and the reply types of the server stream, in order. */
  function conversation(name: string): { options: Buffer[]; replies: number[]; flags: Buffer } {
    const c = hexOf(`${name}.client.hex`);
    const sv = hexOf(`${name}.server.hex`);
    const options: Buffer[] = [];
    for (let at = 4; at < c.length; at += 16 + c.readUInt32BE(at + 12)) options.push(c.subarray(at, at + 16 + c.readUInt32BE(at + 12)));
    const replies: number[] = [];
    for (let at = 18; at < sv.length; at += 20 + sv.readUInt32BE(at + 16)) replies.push(decodeOptionReply(sv.subarray(at, at + 20 + sv.readUInt32BE(at + 16))).type);
    return { options, replies, flags: c.subarray(0, 4) };
  }

  it.each(['tls-required-plain-nbdinfo-c0', 'tls-qemu-img-info-c0', 'tls-nbdinfo-c0'])('%s: our server answers the same client bytes with the same replies', async (name) => {
    const { port } = await serve('required');
    const conv = conversation(name);
    const c = await client(port);
    await c.greet(conv.flags.readUInt32BE(0));
    const got: number[] = [];
    for (const o of conv.options) {
      if (decodeOption(o).option === OPT.STARTTLS) got.push(...types(await c.starttls(trust())));
      else got.push(...types(await c.option(o)));
    }
    expect(got).toEqual(conv.replies);
  });
});

describe('SELECTIVETLS (nbd.tls on)', () => {
  it('serves in clear, or upgrades on request; state negotiated before STARTTLS is dropped', async () => {
    const { port } = await serve('on');
    const plain = await client(port);
    await plain.greet();
    expect((await plain.open('ro')).size).toBe(MiB);

    const c = await client(port);
    await c.greet();
    expect(types(await c.option({ kind: 'structured-reply' }))).toEqual([REP.ACK]);
    expect(types(await c.starttls(trust()))).toEqual([REP.ACK]);
    // proto.md "NBD_OPT_STARTTLS": structured replies must be negotiated again.
    expect(types(await c.option({ kind: 'set-meta-context', name: 'ro', queries: ['base:allocation'] }))).toEqual([REP.ERR_INVALID]);
    expect(types(await c.option({ kind: 'structured-reply' }))).toEqual([REP.ACK]);
    expect(types(await c.option({ kind: 'starttls' }))).toEqual([REP.ERR_INVALID]);
    await c.open('ram', { structured: false });
    c.structured = true;
    const w = await c.request({ type: 1, offset: 4096 }, Buffer.alloc(4096, 7));
    expect(w.error).toBe(0);
    const r = await c.request({ type: 0, offset: 4096, length: 4096 });
    expect(r.data!.every((b) => b === 7)).toBe(true);
  });
});

describe('PSK files (psktool format)', () => {
  it('reads identity:hexkey lines', () => {
    const keys = parsePskFile(`alice:${'ab'.repeat(32)}\n\nbob:${'01'.repeat(16)}\r\n`);
    expect([...keys.keys()]).toEqual(['alice', 'bob']);
    expect(keys.get('bob')!.equals(Buffer.alloc(16, 1))).toBe(true);
  });

  it.each([
    ['', /no IDENTITY:HEXKEY/],
    ['alice\n', /line 1: expected IDENTITY:HEXKEY/],
    [`:${'ab'.repeat(32)}`, /line 1: expected/],
    ['alice:xyz', /line 1: the key of "alice" must be 16-64 bytes of hex/],
    [`alice:${'ab'.repeat(8)}`, /16-64 bytes/],
    [`a:${'ab'.repeat(16)}\na:${'cd'.repeat(16)}`, /line 2: identity "a" appears twice/],
  ])('refuses %j', (text, msg) => {
    expect(() => parsePskFile(text, 'keys.psk')).toThrow(msg);
    try { parsePskFile(text); } catch (err) { expect((err as { code: string }).code).toBe('DF_ERR_CONFIG'); }
  });
});
