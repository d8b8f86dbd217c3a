import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, cli, freePort, startProcess, stopProcess, tempDir } from '../helpers/server.js';
import { requireNbdClients } from '../helpers/vdi.js';
import { RawNbd } from '../helpers/nbd-client.js';
import { REP } from '../../src/nbd/packet.js';
import { readFileSync } from 'node:fs';

/**
 * `deskfuse server --nbd-tls required` as a process: the composition root loads the TLS material
 * (<data>/tls, made at first start), the PSK file of nbd.tlsPskFile, and serves NBD over TLS only.
 */
const PSK_ID = 'hv1';
const PSK_HEX = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff';
let tmp: ReturnType<typeof tempDir>;
let proc: Awaited<ReturnType<typeof startProcess>>['proc'] | undefined;
let nbdPort: number;
let admin: Record<string, string>;
const f = (n: string) => path.join(tmp.dir, n);

const run = (cmd: string, args: string[]) => new Promise<{ code: number; out: string; err: string }>((resolve) => {
  execFile(cmd, args, { timeout: 30_000 }, (e, out, err) => resolve({ code: e ? (typeof e.code === 'number' ? e.code : -1) : 0, out, err }));
});

async function listening(port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect(port, '127.0.0.1', () => { c.destroy(); resolve(true); });
      c.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`NBD never listened on ${port}`);
}

beforeAll(async () => {
  requireNbdClients();
  tmp = tempDir('df-nbdtls-srv-');
  writeFileSync(f('keys.psk'), `${PSK_ID}:${PSK_HEX}\n`);
  nbdPort = await freePort();
  const s = await startProcess(f('data'), undefined, nbdPort, { args: ['--nbd-tls', 'required'], env: { DESKFUSE_NBD_TLS_PSK_FILE: f('keys.psk') } });
  proc = s.proc;
  admin = { DESKFUSE_SERVER: s.url, DESKFUSE_TOKEN: s.token };
  await listening(nbdPort);
  // The server's private CA, where hypervisors get it from.
  expect(existsSync(f('data/tls/ca.crt'))).toBe(true);
  mkdirSync(f('ca'));
  copyFileSync(f('data/tls/ca.crt'), f('ca/ca-cert.pem'));
  writeFileSync(f('disk.img'), Buffer.alloc(2 << 20, 0x42));
  expect((await cli(['image', 'create', 'win', '--from', f('disk.img')], admin)).code).toBe(0);
});
afterAll(async () => {
  if (proc) await stopProcess(proc);
  tmp?.cleanup();
});

describe('deskfuse server --nbd-tls required', () => {
  it('serves image exports to QEMU over TLS with the CA of <data>/tls, and refuses them in clear', async () => {
    const exp = `win@main:${admin.DESKFUSE_TOKEN}`;
    const ok = await run('qemu-img', ['info', '--output=json', '--object', `tls-creds-x509,id=tls0,dir=${f('ca')},endpoint=client`,
      '--image-opts', `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${nbdPort},export=${exp},tls-creds=tls0`]);
    expect(ok.err).toBe('');
    expect(JSON.parse(ok.out)['virtual-size']).toBe(2 << 20);
    const plain = await run('qemu-img', ['info', `nbd://127.0.0.1:${nbdPort}/${exp}`]);
    expect(plain.code).not.toBe(0);
    expect(plain.err).toMatch(/TLS/);
  });

  it('serves libnbd with the key of nbd.tlsPskFile', async () => {
    const r = await run('nbdcopy', [`nbds://${PSK_ID}@127.0.0.1:${nbdPort}/win@main:${admin.DESKFUSE_TOKEN}?tls-psk-file=${f('keys.psk')}`, f('copy.raw')]);
    expect(r.err).toBe('');
    expect((await run('cmp', [f('copy.raw'), f('disk.img')])).code).toBe(0);
  });

  it('with HTTPS on (--tls on) NBD requires TLS by default and serves the very certificate HTTPS serves', async () => {
    const [httpsPort, port2] = [await freePort(), await freePort()];
    const s2 = await startProcess(f('data-https'), undefined, port2, { args: ['--tls', 'on', '--https-listen', `127.0.0.1:${httpsPort}`] });
    try {
      await listening(port2);
      const ca = readFileSync(f('data-https/tls/ca.crt'), 'utf8');
      const httpsCert = await new Promise<string>((resolve, reject) => {
        const c = tls.connect({ host: '127.0.0.1', port: httpsPort, ca, servername: 'localhost' }, () => { resolve(c.getPeerCertificate().fingerprint256); c.destroy(); });
        c.on('error', reject);
      });
      const c = await RawNbd.connect(port2);
      try {
        await c.greet();
        expect((await c.option({ kind: 'list' })).map((r) => r.type)).toEqual([REP.ERR_TLS_REQD]);
        expect((await c.starttls({ ca, servername: 'localhost' })).map((r) => r.type)).toEqual([REP.ACK]);
        expect((c.sock as tls.TLSSocket).getPeerCertificate().fingerprint256).toBe(httpsCert);
        expect((await c.option({ kind: 'go', name: 'nope@main', requests: [] })).map((r) => r.type)).toEqual([REP.ERR_POLICY]);
      } finally {
        c.destroy();
      }
    } finally {
      await stopProcess(s2.proc);
    }
  });

  it('a PSK file that cannot be read or parsed stops the start with a config error naming the key, before anything is written', async () => {
    writeFileSync(f('bad.psk'), 'hv1 no colon here\n');
    for (const [file, msg] of [[f('missing.psk'), /nbd\.tlsPskFile: cannot read .*missing\.psk: ENOENT/], [f('bad.psk'), /bad\.psk line 1: expected IDENTITY:HEXKEY/]] as const) {
      const r = await execa(process.execPath, [CLI, 'server', '--data', f(`data-${path.basename(file)}`), '--listen', `127.0.0.1:${await freePort()}`, '--nbd-listen', `127.0.0.1:${await freePort()}`, '--nbd-tls', 'on', '--log-level', 'warn'],
        { env: { DESKFUSE_NBD_TLS_PSK_FILE: file }, reject: false, timeout: 60_000 });
      expect(r.exitCode).not.toBe(0);
      expect(r.stderr).toMatch(/DF_ERR_CONFIG/);
      expect(r.stderr).toMatch(msg);
      expect(existsSync(f(`data-${path.basename(file)}`))).toBe(false);
    }
  });
});
