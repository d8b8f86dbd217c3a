import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { decode, encode } from '../../src/tftp/packet.js';
import { startTftp, type TftpEvent, type TftpServer } from '../../src/tftp/server.js';
import { prng } from '../helpers/expect.js';
import { CLIENTS, fetchWith, rawPeer, requireTools, run, sha256File, type Client } from '../helpers/tftp.js';

const MiB = 1024 * 1024;
let dir: string;
let root: string;
let srv: TftpServer;
const events: TftpEvent[] = [];
const sums = new Map<string, string>();
let n = 0;
const out = () => path.join(dir, `out-${n++}`);

function put(name: string, data: Buffer): void {
  const f = path.join(root, name);
  mkdirSync(path.dirname(f), { recursive: true });
  writeFileSync(f, data);
}

beforeAll(async () => {
  requireTools('tftp', 'atftp', 'curl');
  dir = mkdtempSync(path.join(tmpdir(), 'df-tftp-'));
  root = path.join(dir, 'root');
  const rnd = prng(1350);
  const bytes = (len: number) => Buffer.from(Uint8Array.from({ length: len }, () => Math.floor(rnd() * 256)));
  put('empty', Buffer.alloc(0));
  for (const size of [511, 512, 513]) put(`s${size}`, bytes(size));
  put('boot/m1', bytes(MiB));
  // > 65535 blocks of 512 bytes: block numbers roll over (and not a multiple of 512).
  const big = Buffer.alloc(32 * MiB + 1000);
  for (let i = 0; i < big.length; i += 4096) big.writeUInt32BE(i >>> 0, i);
  put('big', big);
  put('menu.cfg', Buffer.from('default linux\nlabel linux\r\n  kernel vmlinuz\rend\n'));
  symlinkSync('/etc/passwd', path.join(root, 'escape'));
  symlinkSync('s511', path.join(root, 'inner'));
  mkdirSync(path.join(dir, 'outside'));
  writeFileSync(path.join(dir, 'outside', 'secret'), 'secret');
  for (const f of ['empty', 's511', 's512', 's513', 'boot/m1', 'big']) sums.set(f, await sha256File(path.join(root, f)));
  srv = await startTftp({ host: '127.0.0.1', port: 0, root, log: silentLogger, onEvent: (e) => events.push(e) });
});

afterAll(async () => {
  await srv?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function expectFetch(c: Client, remote: string, file = remote): Promise<void> {
  const local = out();
  const r = await fetchWith(c, srv.port, remote, local);
  expect(r, r.out).toMatchObject({ ok: true });
  expect(await sha256File(local)).toBe(sums.get(file));
}

const SMALL = ['empty', 's511', 's512', 's513', 'boot/m1'];
const clients: Client[] = [
  CLIENTS.hpa, CLIENTS.atftp, CLIENTS.atftpBlk, CLIENTS.atftpTsize, CLIENTS.atftpWin4, CLIENTS.curl, CLIENTS.curlBlk,
];

describe('real clients fetch byte-exact copies', () => {
  it.each(clients.map((c) => [c.name, c] as const))('%s: 0, 511, 512, 513 bytes and 1 MiB', async (_name, c) => {
    for (const f of SMALL) await expectFetch(c, f);
  });

  it.each([CLIENTS.hpa, CLIENTS.atftpWin16, CLIENTS.curl].map((c) => [c.name, c] as const))(
    '%s: 32 MiB + 1000 bytes at 512-byte blocks (block numbers roll over past 65535)',
    async (_name, c) => { await expectFetch(c, 'big'); },
    300_000,
  );

  it('a leading slash is relative to the root; a symlink inside the root is followed', async () => {
    await expectFetch(CLIENTS.atftp, '/boot/m1', 'boot/m1');
    await expectFetch(CLIENTS.curl, '/s513', 's513');
    await expectFetch(CLIENTS.hpa, 'inner', 's511');
  });

  it('netascii: tftp-hpa ascii mode gets the text back after its own CR LF conversion', async () => {
    const local = out();
    expect(await fetchWith(CLIENTS.hpaAscii, srv.port, 'menu.cfg', local)).toMatchObject({ ok: true });
    expect(readFileSync(local, 'latin1')).toBe(readFileSync(path.join(root, 'menu.cfg'), 'latin1'));
  });

  it('10 transfers at once, mixed clients', async () => {
    const mix = [CLIENTS.hpa, CLIENTS.atftpWin4, CLIENTS.curl, CLIENTS.curlBlk, CLIENTS.atftpBlk];
    await Promise.all(Array.from({ length: 10 }, (_, i) => expectFetch(mix[i % mix.length]!, 'boot/m1')));
  });

  it('reports start and done events with the bytes sent', () => {
    const done = events.filter((e) => e.kind === 'done' && e.file === 'boot/m1');
    expect(done.length).toBeGreaterThan(10);
    expect(done[0]).toMatchObject({ phase: 'tftp', ip: '127.0.0.1', bytes: MiB, ms: expect.any(Number) });
    expect(events.filter((e) => e.kind === 'start').length).toBeGreaterThanOrEqual(events.filter((e) => e.kind === 'done').length);
  });
});

describe('refusals are ERROR packets the client reports', () => {
  it.each([
    ['tftp-hpa', CLIENTS.hpa, '../etc/passwd', /Error code 2/],
    ['atftp', CLIENTS.atftp, 'a/../../outside/secret', /access violation/],
    ['curl', CLIENTS.curl, '../outside/secret', /.*/],
    ['tftp-hpa', CLIENTS.hpa, '..\\outside\\secret', /Error code 2/],
    ['tftp-hpa', CLIENTS.hpa, 'escape', /Error code 2/],
    ['atftp', CLIENTS.atftp, '/etc/passwd', /file not found/],
    ['tftp-hpa', CLIENTS.hpa, 'nope', /Error code 1/],
  ] as const)('%s %s → %s', async (_n, c, remote, msg) => {
    const r = await fetchWith(c, srv.port, remote, out());
    expect(r.ok).toBe(false);
    expect(r.out).toMatch(msg);
    if (c === CLIENTS.curl) expect(r.code).toBe(69); // CURLE_TFTP_PERM
  });

  it('curl: a missing file is CURLE_TFTP_NOTFOUND; a symlink out of the root is CURLE_TFTP_PERM', async () => {
    expect((await fetchWith(CLIENTS.curl, srv.port, 'nope', out())).code).toBe(68);
    expect((await fetchWith(CLIENTS.curl, srv.port, 'escape', out())).code).toBe(69);
  });

  it('a write request is an access violation (read-only server)', async () => {
    const src = path.join(root, 's511');
    const r = await run('tftp', ['-m', 'binary', '127.0.0.1', String(srv.port), '-c', 'put', src, 'uploaded']);
    expect(r.out).toMatch(/Error code 2/);
  });
});

describe('protocol corners (raw peer)', () => {
  const rrq = (filename: string, options: [string, string][] = []) => encode({ op: 'rrq', filename, mode: 'octet', options });

  it('PXE tsize probe: OACK with the size, client ERROR 8 aborts, the re-request is served', async () => {
    const p = await rawPeer();
    try {
      p.send(rrq('s513', [['tsize', '0'], ['blksize', '1432']]), srv.port);
      const oack = await p.next();
      expect(decode(oack.msg)).toEqual({ op: 'oack', options: [['blksize', '1432'], ['tsize', '513']] });
      p.send(encode({ op: 'error', code: 8, message: 'probe done' }), oack.port);
      p.send(rrq('s513', [['blksize', '1432']]), srv.port);
      const o2 = await p.next();
      expect(decode(o2.msg)).toEqual({ op: 'oack', options: [['blksize', '1432']] });
      expect(o2.port).not.toBe(oack.port); // a new TID per transfer (RFC 1350 §4)
      p.send(encode({ op: 'ack', block: 0 }), o2.port);
      const d = decode((await p.next()).msg);
      expect(d).toMatchObject({ op: 'data', block: 1 });
      expect(d.op === 'data' && d.data.length).toBe(513);
      p.send(encode({ op: 'ack', block: 1 }), o2.port);
    } finally {
      p.close();
    }
  });

  it('a packet from an unknown TID gets ERROR 5 and the transfer carries on', async () => {
    const a = await rawPeer();
    const b = await rawPeer();
    try {
      a.send(rrq('s513'), srv.port);
      const d1 = await a.next();
      expect(decode(d1.msg)).toMatchObject({ op: 'data', block: 1 });
      b.send(encode({ op: 'ack', block: 1 }), d1.port);
      expect(decode((await b.next()).msg)).toMatchObject({ op: 'error', code: 5 });
      a.send(encode({ op: 'ack', block: 1 }), d1.port);
      const d2 = decode((await a.next()).msg);
      expect(d2.op === 'data' && d2.block === 2 && d2.data.length).toBe(1);
      a.send(encode({ op: 'ack', block: 2 }), d1.port);
    } finally {
      a.close();
      b.close();
    }
  });

  it('2000 random and truncated datagrams leave the service up for a real client', async () => {
    const rnd = prng(7440);
    const p = await rawPeer();
    const valid = [rrq('s511', [['blksize', '1468']]), encode({ op: 'ack', block: 3 }), encode({ op: 'error', code: 0, message: 'x' })];
    try {
      for (let i = 0; i < 2000; i++) {
        let b: Buffer;
        if (i % 2 === 0) {
          b = Buffer.from(Uint8Array.from({ length: Math.floor(rnd() * 80) }, () => Math.floor(rnd() * 256)));
          if (b.length >= 2 && rnd() < 0.5) { b[0] = 0; b[1] = 1 + Math.floor(rnd() * 6); }
        } else {
          const v = valid[i % valid.length]!;
          b = Buffer.from(v.subarray(0, Math.floor(rnd() * v.length)));
        }
        p.send(b, srv.port);
        if (i % 100 === 0) await new Promise((r) => setImmediate(r));
      }
    } finally {
      p.close();
    }
    await expectFetch(CLIENTS.atftpWin4, 'boot/m1');
    await expectFetch(CLIENTS.hpa, 's513');
  });
});
