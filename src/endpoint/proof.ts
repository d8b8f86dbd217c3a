import { createPrivateKey, createPublicKey, randomBytes, sign, verify, type KeyObject } from 'node:crypto';

/**
 * An endpoint proves it holds its disk: the 32-byte endpoint secret in the disk's state area
 * (src/agent/state-area.ts) is an Ed25519 private key seed (RFC 8032 §5.1.5). The server keeps only
 * the public key, so neither its database nor the network ever carries the secret.
 *
 * Each boot signs `deskfuse-endpoint-proof-v1 \n MAC \n BOOT-TOKEN`: the boot token is the server's
 * nonce (random, bound to the MAC, single use, expires after 15 minutes), so a captured proof opens
 * nothing again.
 */
export const ENDPOINT_SECRET_BYTES = 32;

export interface EndpointProof {
  /** The Ed25519 public key, 64 hex digits. */
  key: string;
  /** The Ed25519 signature of the boot's message, 128 hex digits. */
  sig: string;
}

// PKCS #8 wrapping of a raw Ed25519 seed (RFC 8410 §7): the fixed 16-byte prefix, then the 32 bytes.
const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex');

function privateKey(secret: Buffer): KeyObject {
  if (secret.length !== ENDPOINT_SECRET_BYTES) throw new RangeError(`an endpoint secret has ${ENDPOINT_SECRET_BYTES} bytes, not ${secret.length}`);
  return createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, secret]), format: 'der', type: 'pkcs8' });
}

const message = (mac: string, bootToken: string): Buffer => Buffer.from(`deskfuse-endpoint-proof-v1\n${mac}\n${bootToken}`, 'utf8');

/** A new endpoint secret (made by the agent at provisioning; it never leaves the endpoint). */
export const newEndpointSecret = (): Buffer => randomBytes(ENDPOINT_SECRET_BYTES);

/** A secret of all zeros is what a blank header holds: no secret. */
export const isBlankSecret = (secret: Buffer): boolean => secret.every((b) => b === 0);

/** The public key of an endpoint secret (what the server stores). */
export function endpointKey(secret: Buffer): string {
  const jwk = createPublicKey(privateKey(secret)).export({ format: 'jwk' });
  return Buffer.from(jwk.x as string, 'base64url').toString('hex');
}

/** This boot's proof: the secret's public key and its signature over the MAC and the boot token. */
export function proveEndpoint(secret: Buffer, mac: string, bootToken: string): EndpointProof {
  return { key: endpointKey(secret), sig: sign(null, message(mac, bootToken), privateKey(secret)).toString('hex') };
}

/** Is `p` a valid signature by `p.key` over this boot's MAC and token? (Whether the key is the endpoint's is the caller's check.) */
export function checkProof(p: EndpointProof, mac: string, bootToken: string): boolean {
  if (!/^[0-9a-f]{64}$/.test(p.key) || !/^[0-9a-f]{128}$/.test(p.sig)) return false;
  try {
    const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(p.key, 'hex').toString('base64url') }, format: 'jwk' });
    return verify(null, message(mac, bootToken), key, Buffer.from(p.sig, 'hex'));
  } catch {
    return false; // not a point on the curve
  }
}
