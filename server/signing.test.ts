import { mkdtempSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { isDeskfuseError } from '../src/errors.js';
import { newSigningKey, privateKeyPem } from '../src/sign/ed25519.js';
import { extendRing, openStatement, ringOf, type HeadBody } from '../src/sign/statements.js';
import { openMeta } from '../src/meta/open.js';
import { SqliteEngine } from '../src/meta/sqlite-engine.js';
import { SigningKey } from './signing.js';

let dir: string;
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('the server signing key', () => {
  it('is made once (0600), kept across starts, and rotates to a key the old one endorses', async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'df-key-'));
    const a = await SigningKey.open(dir);
    expect(statSync(path.join(dir, 'keys/signing.key')).mode & 0o777).toBe(0o600);
    expect((await SigningKey.open(dir)).keyId).toBe(a.keyId);
    const first = a.publicKey;
    const r = await a.rotate(new Date('2026-01-01T00:00:00Z'));
    expect(r.from).not.toBe(r.to);
    const b = await SigningKey.open(dir);
    expect(b.keyId).toBe(r.to);
    expect(b.chain.endorsements).toHaveLength(1);
    expect(statSync(path.join(dir, `keys/retired/${r.from}.key`)).mode & 0o777).toBe(0o600);
    expect(readFileSync(path.join(dir, `keys/retired/${r.from}.key`), 'utf8')).toMatch(/^-----BEGIN PRIVATE KEY-----/);
    // a verifier that knows only the first key reaches the new one through the chain
    const ring = ringOf([first]);
    extendRing(ring, b.chain);
    const head: HeadBody = { type: 'head', desktop: 'd', image: 'i', ref: 'main', version: 1, manifest: 'x', issuedAt: 'a', expiresAt: 'b' };
    expect(openStatement(b.sign(head), 'head', ring, 'head')).toEqual(head);
    expect(b.trustFile().keys.map((k) => k.id)).toEqual([r.from, r.to]);
  });

  it('refuses to start with a key its chain does not hold; a key without a chain starts one', async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'df-key-'));
    await SigningKey.open(dir);
    writeFileSync(path.join(dir, 'keys/signing.key'), privateKeyPem(newSigningKey()));
    const err = await SigningKey.open(dir).catch((e: unknown) => e);
    expect(isDeskfuseError(err, 'DF_ERR_SIG_KEY') && err.message).toMatch(/is not in .*chain\.json/);
    unlinkSync(path.join(dir, 'keys/chain.json'));
    const k = await SigningKey.open(dir);
    expect(k.chain.root.keyId).toBe(k.keyId);
  });

  it('servers sharing a database sign with one key: the first one\'s files go to the row, the others take it; a rotation is a compare-and-swap', async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'df-key-'));
    const meta = await openMeta(new SqliteEngine(path.join(dir, 'shared.sqlite')));
    try {
      const alone = await SigningKey.open(path.join(dir, 'a')); // a server that ran alone before the site grew
      const a = await SigningKey.open(path.join(dir, 'a'), meta.engine);
      expect(a.keyId).toBe(alone.keyId);
      const b = await SigningKey.open(path.join(dir, 'b'), meta.engine);
      expect(b.keyId).toBe(a.keyId);
      expect(readFileSync(path.join(dir, 'b/keys/signing.key'), 'utf8')).toBe(readFileSync(path.join(dir, 'a/keys/signing.key'), 'utf8'));
      // A server that had made its own key keeps it under retired/ and signs with the site's.
      const c0 = await SigningKey.open(path.join(dir, 'c'));
      const c = await SigningKey.open(path.join(dir, 'c'), meta.engine);
      expect(c.keyId).toBe(a.keyId);
      expect(statSync(path.join(dir, `c/keys/retired/${c0.keyId}.key`)).isFile()).toBe(true);
      const r = await a.rotate(new Date('2026-02-01T00:00:00Z'));
      // b still holds the chain before: its rotation is refused, and a restart takes the new key.
      await expect(b.rotate(new Date('2026-02-02T00:00:00Z'))).rejects.toMatchObject({ code: 'DF_ERR_SIG_KEY' });
      const b2 = await SigningKey.open(path.join(dir, 'b'), meta.engine);
      expect(b2.keyId).toBe(r.to);
      expect(b2.chain).toEqual(a.chain);
    } finally {
      await meta.close();
    }
  });
});
