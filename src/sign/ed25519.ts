import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { dfError } from '../errors.js';

/** Ed25519 (RFC 8032) keys as the project names them: raw 32-byte public keys, ids from their hash. */
export const PUBLIC_KEY_BYTES = 32;
export const SIGNATURE_BYTES = 64;

/** A key's id: the first 16 hex digits of SHA-256 of its raw public key. */
export function keyIdOf(raw: Buffer): string {
  return createHash('sha256').update(raw).digest('hex').slice(0, 16);
}

export function rawPublicKey(key: KeyObject): Buffer {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  return Buffer.from(pub.export({ format: 'jwk' }).x!, 'base64url');
}

export function publicKeyFromRaw(raw: Buffer): KeyObject {
  if (raw.length !== PUBLIC_KEY_BYTES) throw dfError('DF_ERR_SIG_INVALID', `an Ed25519 public key is ${PUBLIC_KEY_BYTES} bytes, not ${raw.length}`, { length: raw.length });
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') }, format: 'jwk' });
}

export function newSigningKey(): KeyObject {
  return generateKeyPairSync('ed25519').privateKey;
}

export const privateKeyPem = (k: KeyObject): string => k.export({ format: 'pem', type: 'pkcs8' }).toString();
export const privateKeyFromPem = (pem: string): KeyObject => createPrivateKey(pem);

/** Ed25519 signs the message itself (no pre-hash): Node's `sign` with a null algorithm. */
export const signBytes = (key: KeyObject, msg: Buffer): Buffer => sign(null, msg, key);

export function verifyBytes(raw: Buffer, msg: Buffer, sig: Buffer): boolean {
  if (sig.length !== SIGNATURE_BYTES) return false;
  return verify(null, msg, publicKeyFromRaw(raw), sig);
}
