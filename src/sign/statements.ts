import { createHash, type KeyObject } from 'node:crypto';
import { dfError } from '../errors.js';
import { canonicalJson } from './canonical.js';
import { keyIdOf, signBytes, verifyBytes } from './ed25519.js';

/**
 * Signed statements (the format; DESIGN §6 "versions are signed by the server"):
 *
 *   envelope  { body: <canonical JSON text>, keyId: <16 hex>, sig: <base64 Ed25519 signature> }
 *   signed message = "deskfuse signed statement v1\n" + body     (the prefix keeps these signatures
 *                    from ever meaning anything to another protocol that uses the same key type)
 *
 *   body.type   what is stated (each verifier names the type it expects, so one kind of statement
 *               is never accepted as another):
 *   manifest    a version: {image, version, parent, kind, layer, index, hashAlg, createdAt, keyId}
 *               signed at commit; `index` is the id (hash) of the exact index bytes the agent receives
 *   head        freshness (TUF's timestamp role): {desktop, image, ref, version, manifest (SHA-256 hex
 *               of the manifest's body text), issuedAt, expiresAt}, signed when an endpoint asks
 *   rollback    an admin moved `ref` back: {image, ref, from, to, at, seq} (from the ref log)
 *   endorse     key rotation: {key (raw public key, base64), keyId, at}, signed by the previous key
 */
export interface Signed {
  body: string;
  keyId: string;
  sig: string;
}

export interface ManifestBody {
  type: 'manifest';
  image: string;
  version: number;
  parent: number | null;
  kind: string;
  layer: string;
  index: string;
  hashAlg: string;
  createdAt: string;
  keyId: string;
}

export interface HeadBody {
  type: 'head';
  desktop: string;
  image: string;
  ref: string;
  version: number;
  manifest: string;
  issuedAt: string;
  expiresAt: string;
}

export interface RollbackBody {
  type: 'rollback';
  image: string;
  ref: string;
  from: number;
  to: number;
  at: string;
  seq: number;
}

export interface EndorseBody {
  type: 'endorse';
  key: string;
  keyId: string;
  at: string;
}

export type StatementBody = ManifestBody | HeadBody | RollbackBody | EndorseBody;

/** The keys a server has signed with: its first key and each rotation's endorsement, oldest first. */
export interface KeyChain {
  root: { keyId: string; key: string };
  endorsements: Signed[];
}

const PREFIX = 'deskfuse signed statement v1\n';
const message = (body: string) => Buffer.from(PREFIX + body, 'utf8');

export function signStatement(key: KeyObject, keyId: string, body: StatementBody): Signed {
  const text = canonicalJson(body);
  return { body: text, keyId, sig: signBytes(key, message(text)).toString('base64') };
}

export const bodyHash = (s: Signed): string => createHash('sha256').update(s.body, 'utf8').digest('hex');

/** Trusted keys by id. */
export type KeyRing = Map<string, Buffer>;

export function ringOf(keys: Iterable<Buffer>): KeyRing {
  return new Map([...keys].map((k) => [keyIdOf(k), k]));
}

const isSigned = (s: unknown): s is Signed => !!s && typeof s === 'object'
  && typeof (s as Signed).body === 'string' && typeof (s as Signed).keyId === 'string' && typeof (s as Signed).sig === 'string' && (s as Signed).sig.length > 0;

/**
 * Check one envelope against trusted keys and return its body: missing → DF_ERR_SIG_MISSING, an
 * unknown signer → DF_ERR_SIG_UNKNOWN_KEY, a bad signature, body or type → DF_ERR_SIG_INVALID.
 */
export function openStatement<T extends StatementBody>(s: unknown, type: T['type'], ring: KeyRing, what: string): T {
  if (!isSigned(s)) throw dfError('DF_ERR_SIG_MISSING', `the server sent no signed ${what}`, { statement: type });
  const raw = ring.get(s.keyId);
  if (!raw) throw dfError('DF_ERR_SIG_UNKNOWN_KEY', `the ${what} is signed by key ${s.keyId}, which this endpoint does not trust (trusted: ${[...ring.keys()].join(', ') || 'none'})`, { statement: type, keyId: s.keyId, trusted: [...ring.keys()] });
  if (!verifyBytes(raw, message(s.body), Buffer.from(s.sig, 'base64'))) {
    throw dfError('DF_ERR_SIG_INVALID', `the ${what}'s signature by key ${s.keyId} does not verify`, { statement: type, keyId: s.keyId });
  }
  let body: unknown;
  try {
    body = JSON.parse(s.body);
  } catch (err) {
    throw dfError('DF_ERR_SIG_INVALID', `the signed ${what} is not JSON`, { statement: type }, err);
  }
  // Signed bytes that are not canonical, or of another type, are not what a deskfuse server signs.
  if (!body || typeof body !== 'object' || (body as StatementBody).type !== type || canonicalJson(body) !== s.body) {
    throw dfError('DF_ERR_SIG_INVALID', `the signed ${what} is not a canonical ${type} statement`, { statement: type });
  }
  return body as T;
}

/**
 * The ring grown by a key chain: an endorsement whose signer is trusted adds the key it endorses
 * (in chain order, so a trusted old key reaches every later one). Endorsements from keys the ring
 * does not reach are skipped: they prove nothing to this endpoint. Returns the keys it added.
 */
export function extendRing(ring: KeyRing, chain: KeyChain | undefined): Buffer[] {
  const added: Buffer[] = [];
  for (const e of chain?.endorsements ?? []) {
    if (!isSigned(e) || !ring.has(e.keyId)) continue;
    const b = openStatement<EndorseBody>(e, 'endorse', ring, `endorsement of a new key`);
    const key = Buffer.from(b.key, 'base64');
    if (keyIdOf(key) !== b.keyId) throw dfError('DF_ERR_SIG_INVALID', `an endorsement names key ${b.keyId} for a key whose id is ${keyIdOf(key)}`, { keyId: b.keyId });
    if (!ring.has(b.keyId)) {
      ring.set(b.keyId, key);
      added.push(key);
    }
  }
  return added;
}
