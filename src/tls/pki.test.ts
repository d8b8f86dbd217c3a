import { X509Certificate } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, describe, expect, it } from 'vitest';
import { ensureServerTls, normalizeFingerprint, splitPem } from './pki.js';

const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'df-pki-'));
afterAll(() => fsp.rm(root, { recursive: true, force: true }));

/** A real TLS handshake against the material, verified by Node with `ca` as the only root. */
async function handshake(certPem: string, keyPem: string, ca: string, servername: string): Promise<string> {
  const server = tls.createServer({ cert: certPem, key: keyPem }, (s) => s.end('hi'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  try {
    return await new Promise<string>((resolve, reject) => {
      const c = tls.connect({ host: '127.0.0.1', port, ca, servername: servername.match(/^[\d.]+$/) ? undefined : servername }, () => {});
      let got = '';
      c.on('data', (d) => (got += d));
      c.on('end', () => resolve(got));
      c.on('error', reject);
    });
  } finally {
    server.close();
  }
}

describe('private CA', () => {
  it('is made once; the leaf covers the names, chains to the CA and is re-issued (same CA) when names change', async () => {
    const dir = path.join(root, 'tls');
    const a = await ensureServerTls({ dir, names: ['localhost', '127.0.0.1', 'deskfuse.lan'] });
    expect(a.createdCa).toBe(true);
    expect((await fsp.stat(path.join(dir, 'ca.key'))).mode & 0o777).toBe(0o600);
    expect((await fsp.stat(path.join(dir, 'server.key'))).mode & 0o777).toBe(0o600);
    const [leafPem, caPem] = splitPem(a.certPem);
    const leaf = new X509Certificate(leafPem!);
    expect(leaf.checkIssued(new X509Certificate(a.caPem))).toBe(true);
    expect(new X509Certificate(caPem!).fingerprint256).toBe(a.caFingerprint);
    expect(leaf.subjectAltName).toContain('DNS:deskfuse.lan');
    expect(leaf.subjectAltName).toContain('IP Address:127.0.0.1');
    expect(await handshake(a.certPem, a.keyPem, a.caPem, 'localhost')).toBe('hi');
    // Both start a day back (a client whose clock is a little behind still accepts them); the leaf
    // is not a CA, the CA is one; serials differ.
    const ca = new X509Certificate(a.caPem);
    for (const c of [leaf, ca]) expect(Date.now() - Date.parse(c.validFrom)).toBeGreaterThan(23 * 3600_000);
    expect(leaf.ca).toBe(false);
    expect(ca.ca).toBe(true);
    expect(ca.subject).toBe(ca.issuer);
    expect(leaf.serialNumber).not.toBe(ca.serialNumber);

    const b = await ensureServerTls({ dir, names: ['localhost', '127.0.0.1', 'deskfuse.lan'] });
    expect(b.createdCa).toBe(false);
    expect(b.certPem).toBe(a.certPem); // nothing changed: not re-issued

    const c = await ensureServerTls({ dir, names: ['localhost', '10.9.8.7'] });
    expect(c.caFingerprint).toBe(a.caFingerprint);
    expect(c.certPem).not.toBe(a.certPem);
    expect(new X509Certificate(splitPem(c.certPem)[0]!).subjectAltName).toContain('IP Address:10.9.8.7');
    // openssl agrees the chain verifies
    expect(await handshake(c.certPem, c.keyPem, a.caPem, 'localhost')).toBe('hi');
  });

  it('a client trusting another CA refuses the server', async () => {
    const a = await ensureServerTls({ dir: path.join(root, 'one'), names: ['localhost'] });
    const other = await ensureServerTls({ dir: path.join(root, 'two'), names: ['localhost'] });
    await expect(handshake(a.certPem, a.keyPem, other.caPem, 'localhost')).rejects.toMatchObject({ code: expect.stringMatching(/CERT|SIGNATURE|ISSUER/) });
  });

  it("an admin's certificate is used as given; half of it is DF_ERR_CONFIG", async () => {
    const a = await ensureServerTls({ dir: path.join(root, 'admin-src'), names: ['localhost'] });
    await fsp.writeFile(path.join(root, 'a.crt'), a.certPem);
    await fsp.writeFile(path.join(root, 'a.key'), a.keyPem);
    const got = await ensureServerTls({ dir: path.join(root, 'unused'), certFile: path.join(root, 'a.crt'), keyFile: path.join(root, 'a.key') });
    expect(got.caFingerprint).toBe(a.caFingerprint);
    expect(got.names).toEqual(['localhost']);
    await expect(ensureServerTls({ dir: root, certFile: path.join(root, 'a.crt') })).rejects.toMatchObject({ code: 'DF_ERR_CONFIG' });
    await expect(ensureServerTls({ dir: root, certFile: path.join(root, 'nope.crt'), keyFile: path.join(root, 'a.key') })).rejects.toMatchObject({ code: 'DF_ERR_CONFIG' });
  });
});

describe('normalizeFingerprint', () => {
  it('accepts the usual spellings and refuses the rest', () => {
    const hex = 'ab'.repeat(32);
    const want = Array(32).fill('AB').join(':');
    expect(normalizeFingerprint(hex)).toBe(want);
    expect(normalizeFingerprint(`sha256:${want.toLowerCase()}`)).toBe(want);
    expect(() => normalizeFingerprint('abcd')).toThrow(expect.objectContaining({ code: 'DF_ERR_USAGE' }));
  });
});
