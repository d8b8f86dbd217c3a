import { describe, expect, it } from 'vitest';
import { checkProof, endpointKey, isBlankSecret, newEndpointSecret, proveEndpoint } from './proof.js';

const MAC = '52:54:00:00:00:01';

describe('endpoint proof', () => {
  it('verifies for its key, MAC and boot token only', () => {
    const s = newEndpointSecret();
    const p = proveEndpoint(s, MAC, 'dfb_token-one');
    expect(p.key).toBe(endpointKey(s));
    expect(p.key).toMatch(/^[0-9a-f]{64}$/);
    expect(p.sig).toMatch(/^[0-9a-f]{128}$/);
    expect(checkProof(p, MAC, 'dfb_token-one')).toBe(true);
    expect(checkProof(p, MAC, 'dfb_token-two')).toBe(false);
    expect(checkProof(p, '52:54:00:00:00:02', 'dfb_token-one')).toBe(false);
    expect(checkProof({ ...p, key: endpointKey(newEndpointSecret()) }, MAC, 'dfb_token-one')).toBe(false);
    const flipped = Buffer.from(p.sig, 'hex');
    flipped[5]! ^= 1;
    expect(checkProof({ ...p, sig: flipped.toString('hex') }, MAC, 'dfb_token-one')).toBe(false);
  });

  it('the key is a function of the secret (RFC 8032 test vector 1)', () => {
    const seed = Buffer.from('9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60', 'hex');
    expect(endpointKey(seed)).toBe('d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a');
  });

  it('malformed keys and signatures are refused, never thrown', () => {
    expect(checkProof({ key: 'zz', sig: '00' }, MAC, 't')).toBe(false);
    expect(checkProof({ key: 'f'.repeat(64), sig: '0'.repeat(128) }, MAC, 't')).toBe(false);
    expect(isBlankSecret(Buffer.alloc(32))).toBe(true);
    expect(isBlankSecret(newEndpointSecret())).toBe(false);
    expect(() => endpointKey(Buffer.alloc(16, 1))).toThrow(RangeError);
  });
});
