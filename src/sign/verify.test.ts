import { describe, expect, it } from 'vitest';
import { isDeskfuseError } from '../errors.js';
import { keyIdOf, newSigningKey, rawPublicKey } from './ed25519.js';
import { bodyHash, signStatement, type KeyChain, type Signed } from './statements.js';
import { verifyTarget, type SignedHead, type TargetPolicy } from './verify.js';

const k1 = newSigningKey();
const pub1 = rawPublicKey(k1);
const id1 = keyIdOf(pub1);
const T0 = Date.parse('2026-03-01T08:00:00.000Z');
const chain: KeyChain = { root: { keyId: id1, key: pub1.toString('base64') }, endorsements: [] };

function answer(version: number, o: { issued?: number; rollback?: { from: number; to: number; ref?: string }; desktop?: string; key?: typeof k1 } = {}): SignedHead {
  const key = o.key ?? k1;
  const id = keyIdOf(rawPublicKey(key));
  const manifest = signStatement(key, id, { type: 'manifest', image: 'win', version, parent: version - 1 || null, kind: 'publish', layer: 'a'.repeat(64), index: 'b'.repeat(64), hashAlg: 'blake3', createdAt: '2026-03-01T00:00:00.000Z', keyId: id });
  const issued = o.issued ?? T0;
  const head = signStatement(key, id, { type: 'head', desktop: o.desktop ?? 'alice', image: 'win', ref: 'main', version, manifest: bodyHash(manifest), issuedAt: new Date(issued).toISOString(), expiresAt: new Date(issued + 86_400_000).toISOString() });
  const rollback: Signed | null = o.rollback ? signStatement(key, id, { type: 'rollback', image: 'win', ref: o.rollback.ref ?? 'main', from: o.rollback.from, to: o.rollback.to, at: '2026-03-01T07:00:00.000Z', seq: 9 }) : null;
  return { head, manifest, rollback, chain };
}

const policy = (over: Partial<TargetPolicy> = {}): TargetPolicy => ({ desktop: 'alice', image: 'win', trusted: [pub1], diskVersion: 3, now: new Date(T0 + 60_000), maxAgeSeconds: 3600, ...over });
const code = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    return isDeskfuseError(err) ? err.code : `not coded: ${String(err)}`;
  }
  return 'ok';
};

describe('verifyTarget', () => {
  it('accepts a fresh, trusted head at or above the floor', () => {
    expect(verifyTarget(answer(4), policy())).toMatchObject({ version: 4, firstUse: false, rollback: null, manifest: { index: 'b'.repeat(64) } });
    expect(verifyTarget(answer(3), policy()).version).toBe(3);
  });
  it('refuses a head older than the floor unless a signed rollback of its ref brought it there', () => {
    expect(code(() => verifyTarget(answer(2), policy()))).toBe('DF_ERR_SIG_DOWNGRADE');
    expect(code(() => verifyTarget(answer(2, { rollback: { from: 3, to: 2, ref: 'other' } }), policy()))).toBe('DF_ERR_SIG_DOWNGRADE');
    expect(code(() => verifyTarget(answer(2, { rollback: { from: 5, to: 1 } }), policy()))).toBe('DF_ERR_SIG_DOWNGRADE');
    expect(verifyTarget(answer(2, { rollback: { from: 5, to: 2 } }), policy()).rollback).toMatchObject({ from: 5, to: 2 });
  });
  it('refuses a stale head (freeze) by its age and by its expiry', () => {
    expect(code(() => verifyTarget(answer(4, { issued: T0 - 2 * 3600_000 }), policy()))).toBe('DF_ERR_SIG_STALE');
    expect(code(() => verifyTarget(answer(4, { issued: T0 - 2 * 86_400_000 }), policy({ maxAgeSeconds: 10 * 86_400 })))).toBe('DF_ERR_SIG_STALE');
  });
  it("refuses another desktop's head, a head naming another manifest, an unknown key, a missing answer", () => {
    expect(code(() => verifyTarget(answer(4, { desktop: 'bob' }), policy()))).toBe('DF_ERR_SIG_MISMATCH');
    const a = answer(4);
    expect(code(() => verifyTarget({ ...a, manifest: answer(5).manifest }, policy()))).toBe('DF_ERR_SIG_MISMATCH');
    expect(code(() => verifyTarget(answer(4, { key: newSigningKey() }), policy()))).toBe('DF_ERR_SIG_UNKNOWN_KEY');
    expect(code(() => verifyTarget(null, policy()))).toBe('DF_ERR_SIG_MISSING');
    expect(code(() => verifyTarget({ ...a, head: undefined as unknown as Signed }, policy()))).toBe('DF_ERR_SIG_MISSING');
  });
  it('with no trusted key, trusts the chain root on first use', () => {
    expect(verifyTarget(answer(4), policy({ trusted: [], diskVersion: null }))).toMatchObject({ firstUse: true, version: 4 });
  });
});
