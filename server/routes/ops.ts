import type { FastifyInstance } from 'fastify';
import type { AppContext } from '../context.js';

export const opsRoutes = (ctx: AppContext) => async (app: FastifyInstance) => {
  app.get('/healthz', { config: { public: true }, schema: { hide: true } }, async () => ({ status: 'ok' }));

  app.get('/metrics', { schema: { hide: true } }, async (_req, reply) => {
    reply.type('text/plain; version=0.0.4; charset=utf-8');
    return ctx.metrics.render();
  });

  app.get('/api/v1/openapi.json', { config: { public: true }, schema: { hide: true } }, async () => app.swagger());
};
