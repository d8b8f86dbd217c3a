import { dfError } from '../errors.js';
import { bodyHash, extendRing, openStatement, ringOf, type HeadBody, type KeyChain, type ManifestBody, type RollbackBody, type Signed } from './statements.js';

/** What the server answers an endpoint that asks where to sync (GET /api/v1/desktops/NAME/signed-head). */
export interface SignedHead {
  head: Signed;
  manifest: Signed;
  /** The admin rollback that put the ref at this version, when it moved back. */
  rollback: Signed | null;
  chain: KeyChain;
}

export interface TargetPolicy {
  desktop: string;
  image: string;
  /** Keys the endpoint trusts: its disk's, else its boot stage's; empty = trust on first use. */
  trusted: Buffer[];
  /** The version the disk holds (null: none yet). */
  diskVersion: number | null;
  now: Date;
  /** The oldest freshness stamp accepted, in seconds (besides the statement's own expiry). */
  maxAgeSeconds: number;
}

export interface VerifiedTarget {
  version: number;
  manifest: ManifestBody;
  head: HeadBody;
  /** Every key the endpoint trusts after this answer (the disk records them). */
  keys: Buffer[];
  /** No key was trusted before: the server's first key was taken on first use. */
  firstUse: boolean;
  rollback: RollbackBody | null;
}

/**
 * The endpoint's decision on where the server says to sync, before a byte is written to the disk:
 * signed by a trusted key (directly or through the server's key chain), fresh, for this desktop,
 * and not older than what the disk holds unless a signed admin rollback says so. Pure: the clock
 * and the trusted keys come in.
 */
export function verifyTarget(answer: SignedHead | null | undefined, p: TargetPolicy): VerifiedTarget {
  if (!answer || typeof answer !== 'object') throw dfError('DF_ERR_SIG_MISSING', 'the server sent no signed head for the desktop', { desktop: p.desktop });
  const firstUse = p.trusted.length === 0;
  const root = answer.chain?.root;
  const ring = ringOf(firstUse && root ? [Buffer.from(root.key, 'base64')] : p.trusted);
  extendRing(ring, answer.chain);
  const head = openStatement<HeadBody>(answer.head, 'head', ring, 'head');
  const manifest = openStatement<ManifestBody>(answer.manifest, 'manifest', ring, 'manifest');
  const where = { desktop: p.desktop, image: p.image, version: head.version };
  if (head.desktop !== p.desktop || head.image !== p.image) {
    throw dfError('DF_ERR_SIG_MISMATCH', `the signed head is for desktop ${head.desktop} of ${head.image}, not ${p.desktop} of ${p.image}`, where);
  }
  if (head.manifest !== bodyHash(answer.manifest) || manifest.image !== head.image || manifest.version !== head.version) {
    throw dfError('DF_ERR_SIG_MISMATCH', `the signed head names another manifest than version ${manifest.version}'s`, where);
  }
  const issued = Date.parse(head.issuedAt);
  const expires = Date.parse(head.expiresAt);
  const age = (p.now.getTime() - issued) / 1000;
  if (!Number.isFinite(issued) || !Number.isFinite(expires) || p.now.getTime() > expires || age > p.maxAgeSeconds) {
    throw dfError('DF_ERR_SIG_STALE', `the signed head was issued at ${head.issuedAt} (expires ${head.expiresAt}); it is ${Math.round(age)} s old, more than the ${p.maxAgeSeconds} s accepted or past its expiry: a frozen or replayed answer`, {
      ...where, issuedAt: head.issuedAt, expiresAt: head.expiresAt, maxAgeSeconds: p.maxAgeSeconds,
    });
  }
  let rollback: RollbackBody | null = null;
  if (p.diskVersion !== null && head.version < p.diskVersion) {
    rollback = answer.rollback ? openStatement<RollbackBody>(answer.rollback, 'rollback', ring, 'rollback') : null;
    const allows = rollback && rollback.image === head.image && rollback.ref === head.ref && rollback.to === head.version && rollback.from >= p.diskVersion;
    if (!allows) {
      throw dfError('DF_ERR_SIG_DOWNGRADE', `the server says to sync to version ${head.version}, older than the disk's ${p.diskVersion}, and no signed admin rollback of ${head.ref} allows it`, {
        ...where, diskVersion: p.diskVersion,
      });
    }
  }
  return { version: head.version, manifest, head, keys: [...ring.values()], firstUse, rollback };
}
