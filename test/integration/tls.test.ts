import { readFileSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureServerTls } from '../../src/tls/pki.js';
import { cli, startInProcess, tempDir } from '../helpers/server.js';

/**
 * HTTPS with TLS on: real clients (curl, the built CLI) against the appliance's HTTPS listener and
 * its private CA; the plain HTTP gate; the console's Secure cookie. Plain HTTP from another machine
 * is driven through inject() with a LAN remote address (a real non-loopback peer would need a
 * network the test does not own); from loopback it is let through.
 */
describe('TLS: HTTPS for the API and the console, pinned by the CLI', () => {
  let tmp: ReturnType<typeof tempDir>;
  let srv: Awaited<ReturnType<typeof startInProcess>>;
  let caFile: string;
  let fingerprint: string;

  beforeAll(async () => {
    tmp = tempDir('df-tls-');
    srv = await startInProcess(path.join(tmp.dir, 'data'), { tls: true });
    caFile = path.join(tmp.dir, 'data', 'tls', 'ca.crt');
    fingerprint = readFileSync(path.join(tmp.dir, 'data', 'tls', 'ca.fingerprint'), 'utf8').trim();
  });
  afterAll(async () => {
    await srv?.close();
    tmp?.cleanup();
  });

  it('the private CA: fingerprint file = the CA certificate openssl reads; curl --cacert verifies the server, curl without it refuses', async () => {
    const x = await execa('openssl', ['x509', '-in', caFile, '-noout', '-fingerprint', '-sha256']);
    expect(x.stdout.split('=')[1]).toBe(fingerprint);
    expect(srv.appliance.tls?.caFingerprint).toBe(fingerprint);
    const ok = await execa('curl', ['-sS', '--cacert', caFile, `${srv.httpsUrl}/healthz`], { reject: false });
    expect(ok.exitCode).toBe(0);
    expect(JSON.parse(ok.stdout)).toEqual({ status: 'ok' });
    const authed = await execa('curl', ['-sS', '--cacert', caFile, '-H', `authorization: Bearer ${srv.token}`, `${srv.httpsUrl}/api/v1/images`], { reject: false });
    expect(authed.exitCode).toBe(0);
    expect(JSON.parse(authed.stdout)).toEqual({ images: [] });
    const noCa = await execa('curl', ['-sS', `${srv.httpsUrl}/healthz`], { reject: false });
    expect(noCa.exitCode).toBe(60); // curl: peer certificate cannot be authenticated with known CA certificates
  });

  const env = () => ({ DESKFUSE_SERVER: srv.httpsUrl!, DESKFUSE_TOKEN: srv.token });

  it('the CLI over HTTPS: --ca FILE, --ca-fingerprint, DESKFUSE_CA_FINGERPRINT, DESKFUSE_CA', async () => {
    for (const [args, extra] of [
      [['--ca', caFile], {}],
      [['--ca-fingerprint', fingerprint], {}],
      [['--ca-fingerprint', `sha256:${fingerprint.replace(/:/g, '').toLowerCase()}`], {}],
      [[], { DESKFUSE_CA_FINGERPRINT: fingerprint }],
      [[], { DESKFUSE_CA: caFile }],
    ] as const) {
      const r = await cli(['image', 'list', '--json', ...args], { ...env(), ...extra });
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(r.json).toEqual({ images: [] });
    }
    // Global options may come first, as --server and --token do.
    const first = await cli(['--ca-fingerprint', fingerprint, 'image', 'list', '--json'], env());
    expect(first.code).toBe(0);
  });

  it('no pin and a private CA: DF_ERR_TLS_UNTRUSTED naming the options; a bad pin is a usage error', async () => {
    const r = await cli(['image', 'list', '--json'], env());
    expect(r.code).toBe(1);
    expect(r.json.error.code).toBe('DF_ERR_TLS_UNTRUSTED');
    expect(r.stderr).toContain('--ca FILE');
    expect(r.stderr).toContain('--ca-fingerprint');
    expect(r.stderr).toContain('DESKFUSE_CA_FINGERPRINT');
    const bad = await cli(['image', 'list', '--ca-fingerprint', 'AB:CD'], env());
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('DF_ERR_USAGE: --ca-fingerprint');
    const both = await cli(['image', 'list', '--ca', caFile, '--ca-fingerprint', fingerprint], env());
    expect(both.code).toBe(2);
  });

  it('a wrong fingerprint: DF_ERR_TLS_PIN naming both, and nothing is sent to that server', async () => {
    // A server with another private CA, counting the requests it gets.
    const other = await ensureServerTls({ dir: path.join(tmp.dir, 'other-tls'), names: ['127.0.0.1'] });
    let requests = 0;
    let handshakes = 0;
    const s = https.createServer({ cert: other.certPem, key: other.keyPem }, (_req, res) => {
      requests++;
      res.end('{}');
    });
    s.on('connection', () => handshakes++); // TCP connections: the client did dial it
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    try {
      const url = `https://127.0.0.1:${(s.address() as { port: number }).port}`;
      const r = await cli(['image', 'list', '--json', '--ca-fingerprint', fingerprint], { DESKFUSE_SERVER: url, DESKFUSE_TOKEN: srv.token });
      expect(r.code).toBe(1);
      expect(r.json.error.code).toBe('DF_ERR_TLS_PIN');
      expect(r.json.error.expected).toBe(fingerprint);
      expect(r.json.error.presented).toContain(other.caFingerprint);
      expect(handshakes).toBeGreaterThan(0);
      expect(requests).toBe(0);
      // The pin of the right CA but at a server whose chain lacks it: --ca of our CA is refused too.
      const r2 = await cli(['image', 'list', '--json', '--ca', caFile], { DESKFUSE_SERVER: url, DESKFUSE_TOKEN: srv.token });
      expect(r2.json.error.code).toBe('DF_ERR_TLS_UNTRUSTED');
      expect(requests).toBe(0);
    } finally {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
  });

  it('plain HTTP from another machine: a token is refused (DF_ERR_TLS_REQUIRED naming the https URL); the boot files are served; the console redirects', async () => {
    const app = srv.appliance.app;
    const lan = { remoteAddress: '192.0.2.7', headers: { host: '10.0.0.1:8080' } };
    const api = await app.inject({ method: 'GET', url: '/api/v1/images', ...lan, headers: { ...lan.headers, authorization: `Bearer ${srv.token}` } });
    expect(api.statusCode).toBe(403);
    expect(api.json().code).toBe('DF_ERR_TLS_REQUIRED');
    expect(api.json().https).toBe(`https://10.0.0.1:${srv.appliance.ctx.tls!.port}/api/v1/images`);
    const session = await app.inject({ method: 'POST', url: '/boot/session', ...lan, payload: {} });
    expect(session.json().code).toBe('DF_ERR_TLS_REQUIRED');
    const script = await app.inject({ method: 'GET', url: '/boot/ipxe', ...lan });
    expect(script.statusCode).toBe(200);
    expect(script.payload).toContain('#!ipxe');
    // Served, not refused: the boot stage's bytes where one is built (a clone with initramfs/out), else its coded absence.
    const kernel = await app.inject({ method: 'GET', url: '/boot/vmlinuz', ...lan });
    if (kernel.statusCode === 200) expect(kernel.rawPayload.subarray(0, 2).toString()).toBe('MZ');
    else expect(kernel.json().code).toBe('DF_ERR_BOOT_FILES_MISSING');
    expect((await app.inject({ method: 'GET', url: '/healthz', ...lan })).statusCode).toBe(200);
    const page = await app.inject({ method: 'GET', url: '/endpoints', ...lan, headers: { ...lan.headers, accept: 'text/html' } });
    expect(page.statusCode).toBe(308);
    expect(page.headers.location).toBe(`https://10.0.0.1:${srv.appliance.ctx.tls!.port}/endpoints`);
    // From the server itself (loopback), plain HTTP still serves everything: curl over real HTTP.
    const local = await execa('curl', ['-sS', '-H', `authorization: Bearer ${srv.token}`, `${srv.url}/api/v1/images`]);
    expect(JSON.parse(local.stdout)).toEqual({ images: [] });
  });

  it('the console over HTTPS: sign-in sets Secure cookies', async () => {
    const jar = path.join(tmp.dir, 'cookies.txt');
    const login = await execa('curl', ['-sS', '--cacert', caFile, '-c', jar, '-D', '-', '-o', '/dev/null', `${srv.httpsUrl}/login`]);
    expect(login.stdout).toMatch(/set-cookie: [^\n]*; Secure/i);
    const csrf = /\tdeskfuse_login\t(\S+)/.exec(readFileSync(jar, 'utf8'))![1]!;
    const form = new URLSearchParams({ token: srv.token, _csrf: csrf, next: '/endpoints' }).toString();
    const signed = await execa('curl', ['-sS', '--cacert', caFile, '-b', jar, '-c', jar, '-D', '-', '-o', '/dev/null', '-H', `origin: ${srv.httpsUrl}`, '--data', form, `${srv.httpsUrl}/login`]);
    expect(signed.stdout).toMatch(/^HTTP\/1\.1 303/);
    const session = signed.stdout.split('\n').filter((l) => /^set-cookie:/i.test(l) && !/Max-Age=0/.test(l));
    expect(session.length).toBeGreaterThan(0);
    for (const c of session) expect(c).toMatch(/; HttpOnly; SameSite=Strict.*; Secure/);
    const endpoints = await execa('curl', ['-sS', '--cacert', caFile, '-b', jar, '-o', '/dev/null', '-w', '%{http_code}', `${srv.httpsUrl}/endpoints`]);
    expect(endpoints.stdout).toBe('200');
  });
});
