import { dfError } from '../errors.js';
import { keyIdOf, PUBLIC_KEY_BYTES } from './ed25519.js';

/**
 * The boot stage's trust file (`/etc/deskfuse/trust.json` in the initramfs, or a second initrd the
 * server serves): the anchors an endpoint starts from.
 *
 *   { "version": 1,
 *     "keys": [ { "id": "<16 hex>", "ed25519": "<raw public key, base64>" } ],   version signing keys
 *     "tls": …                                                                     reserved (a TLS CA) }
 *
 * Unknown top-level fields are kept and ignored, so a later anchor needs no new format.
 */
export interface TrustFile {
  version: 1;
  keys: Array<{ id: string; ed25519: string }>;
  tls?: unknown;
  [other: string]: unknown;
}

export const TRUST_FILE_PATH = '/etc/deskfuse/trust.json';

export function trustFileOf(keys: Buffer[], extra: Record<string, unknown> = {}): TrustFile {
  return { ...extra, version: 1, keys: keys.map((k) => ({ id: keyIdOf(k), ed25519: k.toString('base64') })) };
}

/** The keys of a trust file; a malformed one is refused whole (never a partial trust). */
export function parseTrustFile(text: string, where: string): Buffer[] {
  const bad = (why: string) => dfError('DF_ERR_CONFIG', `${where}: ${why}`, { file: where });
  let t: unknown;
  try {
    t = JSON.parse(text);
  } catch {
    throw bad('not JSON');
  }
  if (!t || typeof t !== 'object' || (t as TrustFile).version !== 1 || !Array.isArray((t as TrustFile).keys)) throw bad('expected {"version": 1, "keys": [...]}');
  return (t as TrustFile).keys.map((k, i) => {
    const raw = typeof k?.ed25519 === 'string' ? Buffer.from(k.ed25519, 'base64') : Buffer.alloc(0);
    if (raw.length !== PUBLIC_KEY_BYTES) throw bad(`keys[${i}].ed25519 is not a base64 ${PUBLIC_KEY_BYTES}-byte Ed25519 public key`);
    if (k.id !== undefined && k.id !== keyIdOf(raw)) throw bad(`keys[${i}].id ${String(k.id)} is not the key's id ${keyIdOf(raw)}`);
    return raw;
  });
}
