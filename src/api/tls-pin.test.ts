import { promises as fsp } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureServerTls, type ServerTls } from '../tls/pki.js';
import { ApiClient } from './client.js';

/** Real HTTPS servers on loopback with private CAs (src/tls/pki.ts); the client's pinning against them. */
describe('ApiClient over HTTPS: pinning, failover, no skipping', () => {
  let root: string;
  let mat: ServerTls;
  const servers: https.Server[] = [];
  const hits: number[] = [];

  const serve = async (m: Pick<ServerTls, 'certPem' | 'keyPem'>, i: number, host = '127.0.0.1'): Promise<string> => {
    const s = https.createServer({ cert: m.certPem, key: m.keyPem }, (_req, res) => {
      hits[i] = (hits[i] ?? 0) + 1;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ server: i }));
    });
    await new Promise<void>((r) => s.listen(0, host, r));
    servers.push(s);
    return `https://${host}:${(s.address() as { port: number }).port}`;
  };

  beforeAll(async () => {
    root = await fsp.mkdtemp(path.join(os.tmpdir(), 'df-pin-'));
    mat = await ensureServerTls({ dir: path.join(root, 'a'), names: ['localhost', '127.0.0.1'] });
  });
  afterAll(async () => {
    for (const s of servers) {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
    await fsp.rm(root, { recursive: true, force: true });
  });

  it('a fingerprint pin or the CA file: requests go through; the system CAs alone refuse (DF_ERR_TLS_UNTRUSTED, not retried)', async () => {
    const url = await serve(mat, 0);
    for (const tls of [{ caFingerprint: mat.caFingerprint }, { caFingerprint: `sha256:${mat.caFingerprint.replace(/:/g, '').toLowerCase()}` }, { ca: mat.caPem }]) {
      const c = new ApiClient({ server: url, tls });
      expect((await c.json('GET', '/x')).body).toEqual({ server: 0 });
      // A client made for another token shares the pinned connection setup.
      expect((await c.withToken('t').json('GET', '/y')).body).toEqual({ server: 0 });
      // consume (undici's request API, not fetch) goes over the same pinned connection setup.
      const got: Buffer[] = [];
      expect(await c.consume('GET', '/z', {}, { piece: (p) => got.push(p), restart: () => {} })).toBe(200);
      expect(JSON.parse(Buffer.concat(got).toString())).toEqual({ server: 0 });
      await c.close();
    }
    const before = hits[0];
    const plain = new ApiClient({ server: url, attempts: 3, backoffMs: 1 });
    await expect(plain.json('GET', '/x')).rejects.toMatchObject({ code: 'DF_ERR_TLS_UNTRUSTED' });
    await expect(plain.consume('GET', '/x', {}, { piece: () => {}, restart: () => {} })).rejects.toMatchObject({ code: 'DF_ERR_TLS_UNTRUSTED' });
    expect(plain.stats.retries).toBe(0);
    expect(hits[0]).toBe(before);
  });

  it('the host name is checked even with the pinned CA: a name the certificate lacks is refused', async () => {
    // 127.0.0.2 is loopback too, but not among the certificate's names.
    const url = await serve(mat, 1, '127.0.0.2');
    const c = new ApiClient({ server: url, tls: { caFingerprint: mat.caFingerprint }, attempts: 1 });
    await expect(c.json('GET', '/x')).rejects.toMatchObject({ code: 'DF_ERR_TLS_UNTRUSTED', fields: { reason: 'ERR_TLS_CERT_ALTNAME_INVALID' } });
    expect(hits[1]).toBeUndefined();
    await c.close();
  });

  it('a pin no certificate of the chain has: DF_ERR_TLS_PIN, nothing sent; failover past a dead server still works', async () => {
    const other = await ensureServerTls({ dir: path.join(root, 'b'), names: ['127.0.0.1'] });
    const url = await serve(other, 2);
    const c = new ApiClient({ server: url, tls: { caFingerprint: mat.caFingerprint }, attempts: 2, backoffMs: 1 });
    await expect(c.json('GET', '/x')).rejects.toMatchObject({ code: 'DF_ERR_TLS_PIN', fields: { expected: mat.caFingerprint, presented: expect.arrayContaining([other.caFingerprint]) } });
    expect(hits[2]).toBeUndefined();
    await c.close();

    // A server that refuses connections, then a good one: the pinned client moves on as over HTTP.
    const dead = await serve(mat, 3);
    const deadServer = servers[servers.length - 1]!;
    await new Promise((r) => deadServer.close(r));
    const good = await serve(mat, 4);
    const f = new ApiClient({ server: [dead, good], tls: { caFingerprint: mat.caFingerprint }, attempts: 2, backoffMs: 1 });
    expect((await f.json('GET', '/x')).body).toEqual({ server: 4 });
    expect(f.stats.failovers).toBe(1);
    await f.close();
  });
});
