import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { CreateTokenBody, MintedToken, TokenList, TokenParams, TokenRevoked } from '../../src/api/schemas.js';
import { TokenRegistry } from '../../src/auth/registry.js';
import type { AppContext } from '../context.js';

/**
 * Bearer tokens under /api/v1 (admin only: server/auth.ts): create one for a scope (`admin`,
 * `hypervisor[:NAME]`, `desktop:NAME`; default 30 days, at most 1 year), list them (never a
 * secret), revoke one by id.
 */
export const tokenRoutes = (ctx: AppContext): FastifyPluginAsyncTypebox => async (app) => {
  const tokens = new TokenRegistry({ meta: ctx.meta, desktops: ctx.desktops, now: ctx.now, log: app.log });

  app.get('/tokens', { schema: { response: { 200: TokenList }, tags: ['tokens'], summary: 'List tokens: id, scope, created, expires, last used (never the secret)' } },
    async () => ({ tokens: await tokens.list() }));

  app.post('/tokens', {
    schema: { body: CreateTokenBody, response: { 201: MintedToken }, tags: ['tokens'], summary: 'Create a token for a scope; its secret is in this answer only' },
  }, async (req, reply) => reply.status(201).send(await tokens.mint(req.body.scope, req.body.ttlSeconds)));

  app.delete('/tokens/:id', {
    schema: { params: TokenParams, response: { 200: TokenRevoked }, tags: ['tokens'], summary: 'Revoke a token: its next request is 401 (409 for the last admin token)' },
  }, async (req) => ({ revoked: await tokens.revoke(req.params.id, req.tokenScope ?? 'admin') }));
};
