import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyRequest } from 'fastify';
import { CreateVdiSessionBody, ListVdiSessionsQuery, VdiSession, VdiSessionCreated, VdiSessionList, VdiSessionParams } from '../../src/api/schemas.js';
import { nbdUrl as formatNbdUrl } from '../../src/vdi/launch.js';
import { dfError } from '../../src/errors.js';
import type { AppContext } from '../context.js';

/**
 * VDI sessions under /api/v1 (admin; a hypervisor token may create, list and show its own): create one on a desktop (takes its lease; 409 DF_ERR_LEASE_HELD
 * names the holder, `force` takes it over), list, show, commit, discard. Creating answers the NBD URL
 * a hypervisor connects to, secret included: it is shown once.
 */
export const vdiRoutes = (ctx: AppContext): FastifyPluginAsyncTypebox => async (app) => {
  const { sessions } = ctx.vdi;
  const who = (scope: string | undefined) => scope ?? 'admin';
  /** A hypervisor token sees the sessions it created; the admin sees all. */
  const mine = (req: FastifyRequest, s: { createdBy: string }) => req.tokenScope === 'admin' || s.createdBy === req.tokenScope;

  /** nbd://HOST:PORT/NAME — HOST is the configured public host, else the one the API was called on. */
  const nbdUrl = (req: FastifyRequest, exportName: string): string | null => {
    const port = ctx.vdi.nbd.port;
    if (port === null) return null;
    return formatNbdUrl({ host: ctx.vdi.nbd.publicHost ?? req.hostname, port, exportName });
  };

  app.post('/vdi/sessions', {
    schema: { body: CreateVdiSessionBody, response: { 201: VdiSessionCreated }, tags: ['vdi'], summary: "Start a VDI session on a desktop: takes its lease, answers {session, export, url} (the URL carries the session's secret)" },
  }, async (req, reply) => {
    const made = await sessions.create(req.body, who(req.tokenScope));
    return reply.status(201).send({ session: made.session, export: made.exportName, url: nbdUrl(req, made.exportName) });
  });

  app.get('/vdi/sessions', {
    schema: { querystring: ListVdiSessionsQuery, response: { 200: VdiSessionList }, tags: ['vdi'], summary: 'List VDI sessions: open and committing ones (all: committed and discarded too)' },
  }, async (req) => ({
    sessions: (await sessions.list({ ...(req.query.desktop ? { desktop: req.query.desktop } : {}), ...(req.query.all ? {} : { states: ['open', 'committing', 'failed'] }) })).filter((s) => mine(req, s)),
  }));

  app.get('/vdi/sessions/:id', {
    schema: { params: VdiSessionParams, response: { 200: VdiSession }, tags: ['vdi'], summary: 'Show a VDI session: state, base, lease, connections, its cloud increment, the commit outcome' },
  }, async (req) => {
    const s = await sessions.show(req.params.id);
    if (!mine(req, s)) throw dfError('DF_ERR_FORBIDDEN', `a token of scope ${req.tokenScope} may not show VDI session ${s.id}: another token created it`, { scope: req.tokenScope, session: s.id });
    return s;
  });

  app.post('/vdi/sessions/:id/commit', {
    schema: { params: VdiSessionParams, response: { 200: VdiSession }, tags: ['vdi'], summary: "Commit the session's cloud increment as a vdi-commit version (fast-forward, or kept as a conflict); 409 while a client is connected" },
  }, async (req) => await sessions.commit(req.params.id, 'admin', who(req.tokenScope)));

  app.post('/vdi/sessions/:id/discard', {
    schema: { params: VdiSessionParams, response: { 200: VdiSession }, tags: ['vdi'], summary: "Discard the session's cloud increment and release its lease; 409 while a client is connected" },
  }, async (req) => await sessions.discard(req.params.id));
};
