import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import {
  DesktopDeleted, DesktopParams, EndpointDeleted, EndpointParams, ForceQuery, ImageDeleted, ImageParams, PolicyBody, PolicyView, PruneBody, PruneReport,
  RefDeleted, RefParams,
} from '../../src/api/schemas.js';
import { dfError } from '../../src/errors.js';
import { policyProblems } from '../../src/image/retention.js';
import type { AppContext } from '../context.js';

/**
 * Retention and deletes under /api/v1 (admin only: server/auth.ts lists no other scope for them):
 * an image's retention policy, `image prune`, and deleting images, refs, desktops and endpoints
 * (409 DF_ERR_IN_USE naming what depends on it, unless ?force=true). Token revoke is server/routes/tokens.ts.
 */
export const lifecycleRoutes = (ctx: AppContext): FastifyPluginAsyncTypebox => async (app) => {
  const { lifecycle } = ctx;
  const who = (scope: string | undefined) => scope ?? 'admin';
  const optionalBody = async (req: { body: unknown }) => void (req.body ??= {});

  app.get('/images/:image/policy', {
    schema: { params: ImageParams, response: { 200: PolicyView }, tags: ['retention'], summary: "The image's retention policy: its own values, the server's defaults, what applies" },
  }, async (req) => lifecycle.policy(req.params.image));

  app.put('/images/:image/policy', {
    // Checked before the schema: its type coercion would read 0 or false as null ("back to the default").
    preValidation: async (req) => {
      const body = req.body;
      const p = body && typeof body === 'object' && !Array.isArray(body) ? policyProblems(body as Record<string, unknown>) : [];
      if (p.length) throw dfError('DF_ERR_BAD_REQUEST', `retention policy: ${p.join('; ')}`, { problems: p });
    },
    schema: { params: ImageParams, body: PolicyBody, response: { 200: PolicyView }, tags: ['retention'], summary: "Set the image's retention values (a number sets, null returns to the server's default, absent keeps)" },
  }, async (req) => lifecycle.setPolicy(req.params.image, req.body, who(req.tokenScope)));

  app.post('/images/:image/prune', {
    preValidation: optionalBody,
    schema: { params: ImageParams, body: PruneBody, response: { 200: PruneReport }, tags: ['retention'], summary: 'Apply the retention policy (dryRun: only say what would go): versions dropped, why the rest stay, bytes freed' },
  }, async (req) => lifecycle.prune(req.params.image, { dryRun: req.body.dryRun ?? false, author: who(req.tokenScope) }));

  app.delete('/images/:image', {
    schema: { params: ImageParams, querystring: ForceQuery, response: { 200: ImageDeleted }, tags: ['retention'], summary: 'Delete an image: its refs, versions, policy (the ref log stays); 409 DF_ERR_IN_USE while desktops use it, unless force' },
  }, async (req) => lifecycle.deleteImage(req.params.image, { force: req.query.force ?? false, author: who(req.tokenScope) }));

  app.delete('/images/:image/refs/*', {
    schema: { params: RefParams, querystring: ForceQuery, response: { 200: RefDeleted }, tags: ['refs'], summary: "Delete a ref (the ref log records it): 409 DF_ERR_REF_IN_USE for a desktop's line; DF_ERR_IN_USE for an unresolved conflict, unless force" },
  }, async (req) => lifecycle.deleteRef(req.params.image, req.params['*'], { force: req.query.force ?? false, author: who(req.tokenScope) }));

  app.delete('/desktops/:name', {
    schema: { params: DesktopParams, querystring: ForceQuery, response: { 200: DesktopDeleted }, tags: ['desktops'], summary: 'Delete a desktop, its ref, lease and tokens; 409 DF_ERR_IN_USE while leased, in a VDI session or assigned to endpoints, unless force' },
  }, async (req) => lifecycle.deleteDesktop(req.params.name, { force: req.query.force ?? false, author: who(req.tokenScope) }));

  app.delete('/endpoints/:id', {
    schema: { params: EndpointParams, querystring: ForceQuery, response: { 200: EndpointDeleted }, tags: ['endpoints'], summary: 'Delete an endpoint (id, name or MAC); 409 DF_ERR_IN_USE while it holds a lease or is enrolled with a desktop, unless force' },
  }, async (req) => lifecycle.deleteEndpoint((await ctx.endpoints.get(req.params.id)).id, { force: req.query.force ?? false, author: who(req.tokenScope) }));
};
