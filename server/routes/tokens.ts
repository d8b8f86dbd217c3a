import type { FastifyInstance } from 'fastify';
import { TokenRegistry } from '../../src/auth/registry.js';
import type { AppContext } from '../context.js';

const createBody = {
  type: 'object', required: ['scope'], additionalProperties: false,
  properties: { scope: { type: 'string', minLength: 1, maxLength: 80 }, ttlSeconds: { type: 'integer', minimum: 1, maximum: 365 * 86400 } },
} as const;
const idParams = { type: 'object', required: ['id'], properties: { id: { type: 'string', pattern: '^[0-9a-f]{16}$' } } } as const;

/**
 * Bearer tokens under /api/v1 (admin only: server/auth.ts): create one for a scope (`admin`,
 * `hypervisor[:NAME]`, `desktop:NAME`; default 30 days, at most 1 year), list them (never a
 * secret), revoke one by id.
 */
export const tokenRoutes = (ctx: AppContext) => async (app: FastifyInstance) => {
  const tokens = new TokenRegistry({ meta: ctx.meta, desktops: ctx.desktops, now: ctx.now, log: app.log });

  app.get('/tokens', { schema: { tags: ['tokens'], summary: 'List tokens: id, scope, created, expires, last used (never the secret)' } },
    async () => ({ tokens: await tokens.list() }));

  app.post<{ Body: { scope: string; ttlSeconds?: number } }>('/tokens', {
    schema: { body: createBody, tags: ['tokens'], summary: 'Create a token for a scope; its secret is in this answer only' },
  }, async (req, reply) => reply.status(201).send(await tokens.mint(req.body.scope, req.body.ttlSeconds)));

  app.delete<{ Params: { id: string } }>('/tokens/:id', {
    schema: { params: idParams, tags: ['tokens'], summary: 'Revoke a token: its next request is 401 (409 for the last admin token)' },
  }, async (req) => ({ revoked: await tokens.revoke(req.params.id, req.tokenScope ?? 'admin') }));
};
