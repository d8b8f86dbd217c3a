import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { DesktopParams, KeyRotated, KeysAnswer, SignedHeadAnswer, SignedStatement, VersionParams } from '../../src/api/schemas.js';
import { bodyHash, type HeadBody, type RollbackBody, type Signed } from '../../src/sign/statements.js';
import type { AppContext } from '../context.js';

/**
 * Signed versions under /api/v1: a version's manifest (signed at commit), the signed head an endpoint
 * syncs to (its freshness stamp signed on request: ~50 µs of Ed25519, nothing cached), the key chain,
 * and key rotation.
 */
export const signedRoutes = (ctx: AppContext): FastifyPluginAsyncTypebox => async (app) => {
  const { catalog, signing } = ctx;

  app.get('/images/:image/versions/:version/manifest', {
    schema: { params: VersionParams, response: { 200: SignedStatement }, tags: ['versions'], summary: "The version's manifest as the server signed it at commit" },
  }, async (req) => catalog.manifest(req.params.image, req.params.version));

  app.get('/desktops/:name/signed-head', {
    schema: { params: DesktopParams, response: { 200: SignedHeadAnswer }, tags: ['desktops'], summary: 'The version a sync must reach, signed with a freshness stamp, its manifest, the rollback that put it there, the key chain' },
  }, async (req) => {
    const d = await ctx.desktops.view(req.params.name);
    const ref = d.ref ?? d.follows;
    const manifest = await catalog.manifest(d.image, d.head);
    const at = ctx.now();
    const head: HeadBody = {
      type: 'head', desktop: d.name, image: d.image, ref, version: d.head, manifest: bodyHash(manifest),
      issuedAt: at.toISOString(), expiresAt: new Date(at.getTime() + signing.headSeconds * 1000).toISOString(),
    };
    return { head: signing.key.sign(head), manifest, rollback: await rollbackTo(d.image, ref, d.head), chain: signing.key.chain };
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
  async function rollbackTo(image: string, ref: string, version: number): Promise<Signed | null> {
    const [last] = await catalog.refLog(image, ref, 1);
    if (!last || last.deleted || last.newVersion !== version || last.oldVersion === null || last.oldVersion <= version) return null;
    const body: RollbackBody = { type: 'rollback', image, ref, from: last.oldVersion, to: version, at: last.at, seq: last.seq };
    return signing.key.sign(body);
  }
};
