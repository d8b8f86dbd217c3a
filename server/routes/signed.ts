import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { DesktopParams, KeyRotated, KeysAnswer, SignedHeadAnswer, SignedStatement, VersionParams } from '../../src/api/schemas.js';
import { bodyHash, type HeadBody, type RollbackBody, type Signed } from '../../src/sign/statements.js';
import type { RefLogRow } from '../../src/image/model.js';
import type { AppContext } from '../context.js';

/** A signed head is answered again for this long at most (never past a tenth of its life): a storm's boots share one signature. */
export const HEAD_REUSE_MS = 60_000;

interface KeptHead {
  key: string;
  issued: number;
  head: Signed;
  rollback: Signed | null;
}

/**
 * Signed versions under /api/v1: a version's manifest (signed at commit), the signed head an endpoint
 * syncs to (signed on request with a freshness stamp; the same answer is reused for a short while
 * while nothing it says has changed), the key chain, and key rotation.
 */
export const signedRoutes = (ctx: AppContext): FastifyPluginAsyncTypebox => async (app) => {
  const { catalog, signing } = ctx;
  // by desktop; reused only while its key matches: image, ref, version, manifest, last ref-log entry, signing key
  const heads = new Map<string, KeptHead>();

  app.get('/images/:image/versions/:version/manifest', {
    schema: { params: VersionParams, response: { 200: SignedStatement }, tags: ['versions'], summary: "The version's manifest as the server signed it at commit" },
  }, async (req) => catalog.manifest(req.params.image, req.params.version));

  app.get('/desktops/:name/signed-head', {
    schema: { params: DesktopParams, response: { 200: SignedHeadAnswer }, tags: ['desktops'], summary: 'The version a sync must reach, signed with a freshness stamp, its manifest, the rollback that put it there, the key chain' },
  }, async (req) => {
    const d = await ctx.desktops.view(req.params.name);
    const ref = d.ref ?? d.follows;
    const manifest = await catalog.manifest(d.image, d.head);
    const [last] = await catalog.refLog(d.image, ref, 1);
    const at = ctx.now();
    const mh = bodyHash(manifest);
    const key = JSON.stringify([d.image, ref, d.head, mh, last?.seq ?? null, signing.key.keyId]);
    const kept = heads.get(d.name);
    const age = kept ? at.getTime() - kept.issued : -1;
    if (kept?.key === key && age >= 0 && age < Math.min(HEAD_REUSE_MS, signing.headSeconds * 100)) {
      return { head: kept.head, manifest, rollback: kept.rollback, chain: signing.key.chain };
    }
    const head: HeadBody = {
      type: 'head', desktop: d.name, image: d.image, ref, version: d.head, manifest: mh,
      issuedAt: at.toISOString(), expiresAt: new Date(at.getTime() + signing.headSeconds * 1000).toISOString(),
    };
    const fresh: KeptHead = { key, issued: at.getTime(), head: signing.key.sign(head), rollback: rollbackTo(d.image, ref, d.head, last) };
    if (heads.size >= 10_000) heads.clear();
    heads.set(d.name, fresh);
    return { head: fresh.head, manifest, rollback: fresh.rollback, chain: signing.key.chain };
  });

  app.get('/keys', {
    schema: { response: { 200: KeysAnswer }, tags: ['keys'], summary: "The server's version-signing key, its chain, and the trust file for boot stages" },
  }, async () => ({ keyId: signing.key.keyId, key: signing.key.publicKey.toString('base64'), chain: signing.key.chain, trust: signing.key.trustFile() }));

  app.post('/keys/rotate', {
    schema: { response: { 200: KeyRotated }, tags: ['keys'], summary: 'Make a new signing key, endorsed by the current one (endpoints accept it through the chain)' },
  }, async (req) => {
    const r = await signing.key.rotate(ctx.now());
    req.log.warn({ from: r.from, to: r.to }, 'version signing key rotated');
    return r;
  });

  /**
   * When the ref's last move took it back to `version` (an admin's ref set or desktop reset: commits
   * only ever move a ref to a newer version), that move, signed: it lets an endpoint holding a newer
   * version go back. The ref log is the record; it is signed when served.
   */
  function rollbackTo(image: string, ref: string, version: number, last: RefLogRow | undefined): Signed | null {
    if (!last || last.deleted || last.newVersion !== version || last.oldVersion === null || last.oldVersion <= version) return null;
    const body: RollbackBody = { type: 'rollback', image, ref, from: last.oldVersion, to: version, at: last.at, seq: last.seq };
    return signing.key.sign(body);
  }
};
