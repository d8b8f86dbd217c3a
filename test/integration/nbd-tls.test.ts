import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { GREETING_SIZE, OPT, REP, decodeOption, decodeOptionReply } from '../../src/nbd/packet.js';
import { startNbd, type NbdServer } from '../../src/nbd/server.js';
import { ensureServerTls, type ServerTls } from '../../src/tls/pki.js';
import { RawNbd } from '../helpers/nbd-client.js';
import { requireClients, run } from '../helpers/nbd-tools.js';
import { DEFAULT_EXPORTS, MiB, RamProvider } from '../helpers/nbd-ram.js';

/**
 * NBD over TLS (proto.md "TLS support") against real clients on loopback: QEMU (qemu-img, qemu-io
 * with tls-creds-x509 / tls-creds-psk) and libnbd (nbdinfo, nbdcopy with nbds:// URIs). The server
 * certificate comes from src/tls/pki.ts, as in the appliance. A recording TCP proxy shows what
 * crosses the wire in clear.
 */

/** A secret-bearing export name, like a VDI session's `session/ID:SECRET`, and a marker in its bytes. */
const SECRET_NAME = 'session/0123456789:dfv_s3cr3tTOKENthatmustNOTleak';
const MARKER = Buffer.from('DESKFUSE-PLAINTEXT-MARKER-4f1c');
const PSK_ID = 'hypervisor1';
const PSK_HEX = 'a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90';

let dir: string;
let material: ServerTls;
let caDir: string;
let otherCaDir: string;
let pskDir: string;
let required: NbdServer;
let selective: NbdServer;
let p: RamProvider;

const specs = () => [
  ...DEFAULT_EXPORTS,
  { name: SECRET_NAME, size: MiB, description: 'a session', fill: (b: Buffer) => { for (let i = 0; i < b.length; i += 4096) MARKER.copy(b, i); } },
];

const x509 = (d: string) => ['--object', `tls-creds-x509,id=tls0,dir=${d},endpoint=client`];
const psk = () => ['--object', `tls-creds-psk,id=tls0,dir=${pskDir},username=${PSK_ID},endpoint=client`];
const qemuOpts = (port: number, name: string, tls: boolean) =>
  `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=${name.replace(/,/g, ',,')}${tls ? ',tls-creds=tls0' : ''}`;
const nbds = (port: number, name: string, q: string) => `nbds://127.0.0.1:${port}/${name}?${q}`;

beforeAll(async () => {
  requireClients();
  dir = mkdtempSync(path.join(tmpdir(), 'df-nbdtls-'));
  material = await ensureServerTls({ dir: path.join(dir, 'tls'), names: ['localhost', '127.0.0.1'] });
  const other = await ensureServerTls({ dir: path.join(dir, 'other-tls'), names: ['localhost', '127.0.0.1'] });
  // QEMU's tls-creds-x509 reads DIR/ca-cert.pem (a client certificate is optional); libnbd the same names.
  caDir = path.join(dir, 'client');
  otherCaDir = path.join(dir, 'other-client');
  pskDir = path.join(dir, 'psk');
  for (const d of [caDir, otherCaDir, pskDir]) mkdirSync(d);
  writeFileSync(path.join(caDir, 'ca-cert.pem'), material.caPem);
  writeFileSync(path.join(otherCaDir, 'ca-cert.pem'), other.caPem);
  // The format psktool writes and QEMU's tls-creds-psk reads (DIR/keys.psk).
  writeFileSync(path.join(pskDir, 'keys.psk'), `${PSK_ID}:${PSK_HEX}\n`);
  p = new RamProvider(specs());
  p.forbidden.clear();
  const tls = { cert: material, psk: new Map([[PSK_ID, Buffer.from(PSK_HEX, 'hex')]]) };
  required = await startNbd({ host: '127.0.0.1', port: 0, provider: p, log: silentLogger, tls: { mode: 'required', ...tls } });
  selective = await startNbd({ host: '127.0.0.1', port: 0, provider: p, log: silentLogger, tls: { mode: 'on', ...tls } });
});

afterAll(async () => {
  await required?.close();
  await selective?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const roBytes = () => p.data.get('ro')!;

describe('NBD over TLS with QEMU (tls-creds-x509, tls-creds-psk)', () => {
  it('qemu-img info and convert read the same bytes over TLS as the export holds', async () => {
    const info = await run('qemu-img', ['info', '--output=json', ...x509(caDir), '--image-opts', qemuOpts(required.port, 'ro', true)]);
    expect(info.err).toBe('');
    expect(JSON.parse(info.out)['virtual-size']).toBe(MiB);
    const out = path.join(dir, 'ro.raw');
    const conv = await run('qemu-img', ['convert', '-O', 'raw', ...x509(caDir), '--image-opts', qemuOpts(required.port, 'ro', true), out]);
    expect(conv.err).toBe('');
    expect(readFileSync(out).equals(roBytes())).toBe(true);
  });

  it('qemu-io writes over TLS land in the export, and read back over TLS', async () => {
    const w = await run('qemu-io', [...x509(caDir), '--image-opts', qemuOpts(required.port, 'ram', true), '-c', 'write -P 0x5a 65536 131072', '-c', 'flush']);
    expect(w.err).toBe('');
    expect(w.out).toMatch(/wrote 131072\/131072 bytes at offset 65536/);
    expect(p.data.get('ram')!.subarray(65536, 65536 + 131072).every((b) => b === 0x5a)).toBe(true);
    const r = await run('qemu-io', [...x509(caDir), '--image-opts', qemuOpts(required.port, 'ram', true), '-c', 'read -P 0x5a 65536 131072', '-c', 'read -P 0 0 65536']);
    expect(r.err).toBe('');
    expect(r.out).not.toMatch(/Pattern verification failed/);
    expect(r.out.match(/read \d+\/\d+ bytes/g)).toHaveLength(2);
  });

  it('PSK: tls-creds-psk with the identity and key of a psktool file', async () => {
    const out = path.join(dir, 'ro-psk.raw');
    const conv = await run('qemu-img', ['convert', '-O', 'raw', ...psk(), '--image-opts', qemuOpts(required.port, 'ro', true), out]);
    expect(conv.err).toBe('');
    expect(readFileSync(out).equals(roBytes())).toBe(true);
  });

  it('a plaintext client is refused by a server that requires TLS; one trusting another CA fails the handshake', async () => {
    const plain = await run('qemu-img', ['info', `nbd://127.0.0.1:${required.port}/ro`]);
    expect(plain.code).not.toBe(0);
    expect(plain.err).toMatch(/TLS/i);
    const wrongCa = await run('qemu-img', ['info', ...x509(otherCaDir), '--image-opts', qemuOpts(required.port, 'ro', true)]);
    expect(wrongCa.code).not.toBe(0);
    expect(wrongCa.err).toMatch(/certificate|verif|trust/i);
    const wrongKey = path.join(dir, 'wrong-psk');
    mkdirSync(wrongKey, { recursive: true });
    writeFileSync(path.join(wrongKey, 'keys.psk'), `${PSK_ID}:${'00'.repeat(32)}\n`);
    const badPsk = await run('qemu-img', ['info', '--object', `tls-creds-psk,id=tls0,dir=${wrongKey},username=${PSK_ID},endpoint=client`, '--image-opts', qemuOpts(required.port, 'ro', true)]);
    expect(badPsk.code).not.toBe(0);
    // The server is still serving after the failures.
    const ok = await run('qemu-img', ['info', '--output=json', ...x509(caDir), '--image-opts', qemuOpts(required.port, 'ro', true)]);
    expect(JSON.parse(ok.out)['virtual-size']).toBe(MiB);
  });
});

describe('NBD over TLS with libnbd (nbds://)', () => {
  it('nbdinfo and nbdcopy with tls-certificates read the export', async () => {
    const info = await run('nbdinfo', ['--json', nbds(required.port, 'ro', `tls-certificates=${caDir}`)]);
    expect(info.err).toBe('');
    const j = JSON.parse(info.out) as { exports: { 'export-size': number }[] };
    expect(j.exports[0]!['export-size']).toBe(MiB);
    const out = path.join(dir, 'ro-nbdcopy.raw');
    const cp = await run('nbdcopy', [nbds(required.port, 'ro', `tls-certificates=${caDir}`), out]);
    expect(cp.err).toBe('');
    expect(readFileSync(out).equals(roBytes())).toBe(true);
  });

  it('nbdcopy writes over TLS and reads them back', async () => {
    const src = path.join(dir, 'blk-src.raw');
    const data = Buffer.alloc(MiB);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) % 256;
    writeFileSync(src, data);
    const w = await run('nbdcopy', [src, nbds(required.port, 'blk', `tls-certificates=${caDir}`)]);
    expect(w.err).toBe('');
    expect(p.data.get('blk')!.equals(data)).toBe(true);
  });

  it('PSK: tls-psk-file and tls-username', async () => {
    const info = await run('nbdinfo', ['--size', `nbds://${PSK_ID}@127.0.0.1:${required.port}/ro?tls-psk-file=${path.join(pskDir, 'keys.psk')}`]);
    expect(info.err).toBe('');
    expect(info.out.trim()).toBe(String(MiB));
  });

  it('plain nbd:// against required fails with TLS required; another CA fails verification', async () => {
    const plain = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${required.port}/ro`]);
    expect(plain.code).not.toBe(0);
    expect(plain.err).toMatch(/TLS/);
    const other = await run('nbdinfo', ['--size', nbds(required.port, 'ro', `tls-certificates=${otherCaDir}`)]);
    expect(other.code).not.toBe(0);
    expect(other.err).toMatch(/certificate|verif|trust|handshake/i);
  });

  it('mode on (SELECTIVETLS): plaintext and TLS clients are both served', async () => {
    const plain = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${selective.port}/ro`]);
    expect(plain.out.trim()).toBe(String(MiB));
    const tls = await run('nbdinfo', ['--size', nbds(selective.port, 'ro', `tls-certificates=${caDir}`)]);
    expect(tls.err).toBe('');
    expect(tls.out.trim()).toBe(String(MiB));
  });
});

/** A TCP proxy recording each direction of each connection, to see what crosses in clear. */
async function recorder(port: number): Promise<{ port: number; conns: { c: Buffer[]; s: Buffer[] }[]; close: () => Promise<void> }> {
  const conns: { c: Buffer[]; s: Buffer[] }[] = [];
  const socks = new Set<net.Socket>();
  const srv = net.createServer((c) => {
    const rec = { c: [] as Buffer[], s: [] as Buffer[] };
    conns.push(rec);
    const up = net.connect(port, '127.0.0.1');
    socks.add(c).add(up);
    c.on('data', (d: Buffer) => { rec.c.push(d); up.write(d); });
    up.on('data', (d: Buffer) => { rec.s.push(d); c.write(d); });
    c.on('end', () => up.end());
    up.on('end', () => c.end());
    c.on('error', () => up.destroy());
    up.on('error', () => c.destroy());
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  return {
    port: (srv.address() as net.AddressInfo).port,
    conns,
    close: () => { for (const s of socks) s.destroy(); return new Promise((resolve) => srv.close(() => resolve())); },
  };
}

describe('what crosses the wire', () => {
  it('with TLS nothing but the greeting, the flags and STARTTLS is in clear: no export name, no secret, no disk bytes', async () => {
    const rec = await recorder(required.port);
    try {
      const out = path.join(dir, 'secret.raw');
      const conv = await run('qemu-img', ['convert', '-O', 'raw', ...x509(caDir), '--image-opts', qemuOpts(rec.port, SECRET_NAME, true), out]);
      expect(conv.err).toBe('');
      expect(readFileSync(out).equals(p.data.get(SECRET_NAME)!)).toBe(true);
      expect(rec.conns.length).toBeGreaterThan(0);
      for (const k of rec.conns) {
        const c = Buffer.concat(k.c);
        const s = Buffer.concat(k.s);
        // The plaintext part: client flags, then NBD_OPT_STARTTLS (16 bytes, no data); the greeting, then its ACK.
        expect(decodeOption(c.subarray(4, 20))).toEqual({ option: OPT.STARTTLS, data: Buffer.alloc(0) });
        expect(decodeOptionReply(s.subarray(GREETING_SIZE, GREETING_SIZE + 20))).toMatchObject({ option: OPT.STARTTLS, type: REP.ACK });
        // What follows is TLS records (content type 22 = handshake, version 3.x).
        expect([c[20], c[21]]).toEqual([22, 3]);
        expect([s[GREETING_SIZE + 20], s[GREETING_SIZE + 21]]).toEqual([22, 3]);
        for (const secret of ['s3cr3tTOKEN', SECRET_NAME, 'session/']) {
          expect(c.includes(Buffer.from(secret))).toBe(false);
          expect(s.includes(Buffer.from(secret))).toBe(false);
        }
        expect(s.includes(MARKER)).toBe(false);
      }
      // The control: without TLS (mode on lets a plaintext client in) the same check sees the secret.
      const plainRec = await recorder(selective.port);
      try {
        const plain = await run('qemu-img', ['convert', '-O', 'raw', '--image-opts', qemuOpts(plainRec.port, SECRET_NAME, false), out]);
        expect(plain.err).toBe('');
        expect(Buffer.concat(plainRec.conns.flatMap((k) => k.c)).includes(Buffer.from(SECRET_NAME))).toBe(true);
        expect(Buffer.concat(plainRec.conns.flatMap((k) => k.s)).includes(MARKER)).toBe(true);
      } finally {
        await plainRec.close();
      }
    } finally {
      await rec.close();
    }
  });

  it('a raw client: TLS_REQD before STARTTLS, then the same options succeed over TLS', async () => {
    const c = await RawNbd.connect(required.port);
    try {
      await c.greet();
      expect((await c.option({ kind: 'list' })).map((r) => r.type)).toEqual([REP.ERR_TLS_REQD]);
      expect((await c.option({ kind: 'go', name: 'ro', requests: [] })).map((r) => r.type)).toEqual([REP.ERR_TLS_REQD]);
      expect((await c.starttls({ ca: material.caPem, servername: 'localhost' })).map((r) => r.type)).toEqual([REP.ACK]);
      expect((await c.option({ kind: 'list' })).at(-1)!.type).toBe(REP.ACK);
      // A second STARTTLS: ERR_INVALID (proto.md "FORCEDTLS mode").
      expect((await c.option({ kind: 'starttls' })).map((r) => r.type)).toEqual([REP.ERR_INVALID]);
      const opened = await c.open('ro');
      expect(opened.size).toBe(MiB);
      const r = await c.request({ type: 0, offset: 4096, length: 8192 });
      expect(r.error).toBe(0);
      expect(r.data!.equals(roBytes().subarray(4096, 4096 + 8192))).toBe(true);
    } finally {
      c.destroy();
    }
  });
});
