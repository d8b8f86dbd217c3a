import { execFileSync } from 'node:child_process';
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { isDeskfuseError } from '../errors.js';
import { canonicalJson } from './canonical.js';
import { keyIdOf, newSigningKey, rawPublicKey, signBytes, verifyBytes } from './ed25519.js';
import { bodyHash, extendRing, openStatement, ringOf, signStatement, type EndorseBody, type ManifestBody } from './statements.js';
import { parseTrustFile, trustFileOf } from './trust.js';

// RFC 8032 §7.1, TEST 1: the secret key, its public key, and the signature of the empty message.
const RFC_SEED = Buffer.from('9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60', 'hex');
const RFC_PUB = Buffer.from('d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a', 'hex');
const RFC_SIG = 'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b';
const rfcKey = createPrivateKey({ key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), RFC_SEED]), format: 'der', type: 'pkcs8' });
const RFC_ID = keyIdOf(RFC_PUB);

const code = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    return isDeskfuseError(err) ? err.code : `not coded: ${String(err)}`;
  }
  return 'no error';
};

const manifest = (over: Partial<ManifestBody> = {}): ManifestBody => ({
  type: 'manifest', image: 'win11', version: 2, parent: 1, kind: 'publish', layer: 'aa'.repeat(32), index: 'bb'.repeat(32),
  hashAlg: 'blake3', createdAt: '2026-01-02T03:04:05.000Z', keyId: RFC_ID, ...over,
});

describe('canonical JSON', () => {
  it('sorts keys, writes no whitespace, drops undefined, escapes as JSON', () => {
    expect(canonicalJson({ b: 1, a: [true, null, 'x"y'], c: { z: 'é', y: undefined, a: -3 } })).toBe('{"a":[true,null,"x\\"y"],"b":1,"c":{"a":-3,"z":"é"}}');
  });
  it('refuses what two implementations could write differently', () => {
    for (const v of [{ a: 1.5 }, { a: Number.NaN }, { a: 2 ** 60 }, { a: () => 1 }, { a: new Date(0) }, [1n]]) expect(code(() => canonicalJson(v))).toBe('DF_ERR_BAD_REQUEST');
  });
});

describe('Ed25519', () => {
  it('matches RFC 8032 test 1', () => {
    expect(rawPublicKey(rfcKey).equals(RFC_PUB)).toBe(true);
    expect(signBytes(rfcKey, Buffer.alloc(0)).toString('hex')).toBe(RFC_SIG);
    expect(verifyBytes(RFC_PUB, Buffer.alloc(0), Buffer.from(RFC_SIG, 'hex'))).toBe(true);
    expect(RFC_ID).toBe('21fe31dfa154a261');
  });
});

describe('signed statements', () => {
  // Golden: Ed25519 signatures are deterministic, so this vector pins the canonical body, the
  // message prefix and the envelope; a change to any of them is a wire change.
  const GOLDEN = {
    body: '{"createdAt":"2026-01-02T03:04:05.000Z","hashAlg":"blake3","image":"win11","index":"' + 'b'.repeat(64) + '","keyId":"21fe31dfa154a261","kind":"publish","layer":"' + 'a'.repeat(64) + '","parent":1,"type":"manifest","version":2}',
    keyId: '21fe31dfa154a261',
    sig: 'nzn+xkm6LqoO514Q4t3qbKHuOtHiB/iRKduy7KyWc7c0N1Hjq/2cQxTotWiO2Pkz/yBQyOlIxtGD/hOwsdSaCQ==',
  };

  it('signs a manifest to the golden vector, and opens it', () => {
    expect(signStatement(rfcKey, RFC_ID, manifest())).toEqual(GOLDEN);
    expect(openStatement(GOLDEN, 'manifest', ringOf([RFC_PUB]), 'manifest')).toEqual(manifest());
  });

  it('verifies with OpenSSL too (the signed message is the prefix and the body)', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'df-sig-'));
    try {
      writeFileSync(path.join(dir, 'pub.pem'), createPublicKey(rfcKey).export({ format: 'pem', type: 'spki' }));
      writeFileSync(path.join(dir, 'msg'), `deskfuse signed statement v1\n${GOLDEN.body}`);
      writeFileSync(path.join(dir, 'sig'), Buffer.from(GOLDEN.sig, 'base64'));
      const out = execFileSync('openssl', ['pkeyutl', '-verify', '-pubin', '-inkey', path.join(dir, 'pub.pem'), '-rawin', '-in', path.join(dir, 'msg'), '-sigfile', path.join(dir, 'sig')], { encoding: 'utf8' });
      expect(out).toMatch(/Signature Verified Successfully/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a missing, unknown, forged, altered or mistyped statement with its code', () => {
    const ring = ringOf([RFC_PUB]);
    expect(code(() => openStatement(undefined, 'manifest', ring, 'm'))).toBe('DF_ERR_SIG_MISSING');
    expect(code(() => openStatement({ ...GOLDEN, sig: '' }, 'manifest', ring, 'm'))).toBe('DF_ERR_SIG_MISSING');
    const other = newSigningKey();
    const forged = signStatement(other, keyIdOf(rawPublicKey(other)), manifest());
    expect(code(() => openStatement(forged, 'manifest', ring, 'm'))).toBe('DF_ERR_SIG_UNKNOWN_KEY');
    // another key claiming the trusted key's id
    expect(code(() => openStatement({ ...forged, keyId: RFC_ID }, 'manifest', ring, 'm'))).toBe('DF_ERR_SIG_INVALID');
    expect(code(() => openStatement({ ...GOLDEN, body: GOLDEN.body.replace('"version":2', '"version":3') }, 'manifest', ring, 'm'))).toBe('DF_ERR_SIG_INVALID');
    expect(code(() => openStatement(GOLDEN, 'head', ring, 'm'))).toBe('DF_ERR_SIG_INVALID');
    // a non-canonical body, validly signed, is still not what a server signs
    const loose = { body: '{ "type": "manifest" }', keyId: RFC_ID, sig: signBytes(rfcKey, Buffer.from('deskfuse signed statement v1\n{ "type": "manifest" }')).toString('base64') };
    expect(code(() => openStatement(loose, 'manifest', ring, 'm'))).toBe('DF_ERR_SIG_INVALID');
  });

  it('grows a ring through endorsements from a trusted key only', () => {
    const k2 = newSigningKey();
    const k3 = newSigningKey();
    const endorse = (by: typeof k2, byId: string, k: typeof k2) => signStatement(by, byId, { type: 'endorse', key: rawPublicKey(k).toString('base64'), keyId: keyIdOf(rawPublicKey(k)), at: '2026-01-01T00:00:00.000Z' } satisfies EndorseBody);
    const id2 = keyIdOf(rawPublicKey(k2));
    const chain = { root: { keyId: RFC_ID, key: RFC_PUB.toString('base64') }, endorsements: [endorse(rfcKey, RFC_ID, k2), endorse(k2, id2, k3)] };
    const ring = ringOf([RFC_PUB]);
    expect(extendRing(ring, chain).map(keyIdOf)).toEqual([id2, keyIdOf(rawPublicKey(k3))]);
    // a ring that trusts only an unrelated key learns nothing from the chain
    const stranger = ringOf([rawPublicKey(newSigningKey())]);
    expect(extendRing(stranger, chain)).toEqual([]);
    expect(stranger.size).toBe(1);
    expect(bodyHash(GOLDEN)).toMatch(/^[0-9a-f]{64}$/);
  });
});

describe('trust file', () => {
  it('round-trips and refuses a malformed one whole', () => {
    const t = trustFileOf([RFC_PUB], { tls: null });
    expect(t).toEqual({ tls: null, version: 1, keys: [{ id: RFC_ID, ed25519: RFC_PUB.toString('base64') }] });
    expect(parseTrustFile(JSON.stringify(t), 'trust.json').map((k) => k.toString('hex'))).toEqual([RFC_PUB.toString('hex')]);
    for (const bad of ['{', '{"version":2,"keys":[]}', JSON.stringify({ version: 1, keys: [{ ed25519: 'AAAA' }] }), JSON.stringify({ version: 1, keys: [{ id: '0000000000000000', ed25519: RFC_PUB.toString('base64') }] })]) {
      expect(code(() => parseTrustFile(bad, 'trust.json'))).toBe('DF_ERR_CONFIG');
    }
  });
});
