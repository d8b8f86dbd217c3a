import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyRequest } from 'fastify';
import { CreateVdiSessionBody, EndVdiSessionQuery, ListVdiSessionsQuery, VdiSession, VdiSessionCreated, VdiSessionList, VdiSessionParams } from '../../src/api/schemas.js';
import { dfError } from '../../src/errors.js';
import type { AppContext } from '../context.js';

/**
 * VDI sessions under /api/v1 (admin; a hypervisor token may create, list and show its own): create one on a desktop (takes its lease; 409 DF_ERR_LEASE_HELD
 * names the holder, `force` takes it over), list, show, commit, discard. Creating answers the NBD URL
 * a hypervisor connects to, secret included: it is shown once.
 *
 * Several servers: a session lives on the server that created it; its URLs name that server whichever
 * server answers. Commit and discard work through any server: a non-owner takes the session over once
 * its owner serves no client (`?force=true`: the owner is dead) and commits the last checkpoint.
 */
export const vdiRoutes = (ctx: AppContext): FastifyPluginAsyncTypebox => async (app) => {
  const { sessions } = ctx.vdi;
  const who = (scope: string | undefined) => scope ?? 'admin';
  /** A hypervisor token sees the sessions it created; the admin sees all. */
  const mine = (req: FastifyRequest, s: { createdBy: string }) => req.tokenScope === 'admin' || s.createdBy === req.tokenScope;

  /**
   * Where hypervisors reach this server's NBD (recorded in the rows of the sessions it makes): the
   * configured public host, else the NBD listen host, else (a wildcard) the host the API was called on.
   */
  const nbdAddress = (req: FastifyRequest): { host: string; port: number; tls: boolean } | null => {
    const { port, publicHost, listenHost, tls } = ctx.vdi.nbd;
    if (port === null) return null;
    const wildcard = listenHost === null || listenHost === '0.0.0.0' || listenHost === '::' || listenHost === '';
    return { host: publicHost ?? (wildcard ? req.hostname : listenHost), port, tls: tls ?? false };
  };

  app.post('/vdi/sessions', {
    schema: { body: CreateVdiSessionBody, response: { 201: VdiSessionCreated }, tags: ['vdi'], summary: "Start a VDI session on a desktop: takes its lease, answers {session, export, url} (the URL carries the session's secret)" },
  }, async (req, reply) => {
    const made = await sessions.create(req.body, who(req.tokenScope), nbdAddress(req));
    return reply.status(201).send({ session: made.session, export: made.exportName, url: made.url });
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
    schema: { params: VdiSessionParams, querystring: EndVdiSessionQuery, response: { 200: VdiSession }, tags: ['vdi'], summary: "Commit the session's cloud increment as a vdi-commit version (fast-forward, or kept as a conflict); 409 while a client is connected. Through another server than its owner: the owner's last checkpoint (force: the owner is dead)" },
  }, async (req) => await sessions.commit(req.params.id, 'admin', who(req.tokenScope), req.query.force ?? false));

  app.post('/vdi/sessions/:id/discard', {
    schema: { params: VdiSessionParams, querystring: EndVdiSessionQuery, response: { 200: VdiSession }, tags: ['vdi'], summary: "Discard the session's cloud increment and release its lease; 409 while a client is connected (through another server: force = its owner is dead)" },
  }, async (req) => await sessions.discard(req.params.id, 'admin', req.query.force ?? false));
};
