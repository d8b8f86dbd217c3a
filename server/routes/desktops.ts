import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import {
  CommitAnswer, CreateDesktopBody, Desktop, DesktopCommitBody, DesktopList, DesktopParams, DesktopToken, DesktopTokenBody, LeaseBody,
  DesktopReset, LeaseBroken, LeaseTaken, LeaseReleased, LeaseReleaseQuery, ResetDesktopBody,
} from '../../src/api/schemas.js';
import type { AppContext } from '../context.js';
import { sendCommit } from './images.js';

/**
 * Desktops under /api/v1: create, show, reset; scoped tokens; leases; commits to a desktop's ref
 * under its lease. Who may call which is in server/auth.ts (ACCESS_RULES): a desktop token may read
 * its desktop, take and release its lease and commit to it; the rest is admin only.
 */
export const desktopRoutes = (ctx: AppContext): FastifyPluginAsyncTypebox => async (app) => {
  const { desktops } = ctx;
  const commits = ctx.metrics.counter('deskfuse_commits_total', 'Commits by outcome');
  const leaseOps = ctx.metrics.counter('deskfuse_lease_ops_total', 'Lease operations by outcome');
  const who = (scope: string | undefined) => scope ?? 'admin';
  // Bodies whose every field is optional may be left out altogether.
  const optionalBody = async (req: { body: unknown }) => void (req.body ??= {});

  app.post('/desktops', {
    schema: { body: CreateDesktopBody, response: { 201: Desktop }, tags: ['desktops'], summary: 'Create a desktop: persistent (own ref desktops/NAME at the head of `from`) or restore (follows `from`)' },
  }, async (req, reply) => reply.status(201).send(await desktops.create(req.body, who(req.tokenScope))));

  app.get('/desktops', { schema: { response: { 200: DesktopList }, tags: ['desktops'], summary: 'List desktops with their heads and leases' } }, async () => ({ desktops: await desktops.list() }));

  app.get('/desktops/:name', { schema: { params: DesktopParams, response: { 200: Desktop }, tags: ['desktops'], summary: 'Show a desktop: the version a sync must reach, its lease' } },
    async (req) => await desktops.view(req.params.name));

  app.post('/desktops/:name/reset', {
    preValidation: optionalBody,
    schema: { params: DesktopParams, body: ResetDesktopBody, response: { 200: DesktopReset }, tags: ['desktops'], summary: "Move a persistent desktop's ref to an image ref's head (default: the ref it follows); the ref log keeps the old line. `expect`: compare-and-swap on the head (409 DF_ERR_REF_MOVED); 409 DF_ERR_LEASE_HELD while leased unless `force`" },
  }, async (req) => {
    const { to, expect, force } = req.body;
    return await desktops.reset(req.params.name, to, who(req.tokenScope), { ...(expect !== undefined ? { expect } : {}), force: force ?? false });
  });

  app.post('/desktops/:name/tokens', {
    preValidation: optionalBody,
    schema: { params: DesktopParams, body: DesktopTokenBody, response: { 201: DesktopToken }, tags: ['desktops'], summary: 'Issue a token scoped to this desktop (default 30 days, at most 1 year)' },
  }, async (req, reply) => reply.status(201).send(await desktops.mintToken(req.params.name, req.body.ttlSeconds)));

  app.post('/desktops/:name/lease', {
    schema: { params: DesktopParams, body: LeaseBody, response: { 200: LeaseTaken }, tags: ['leases'], summary: 'Take or renew the desktop\'s lease (409 DF_ERR_LEASE_HELD naming the holder; force takes it over with a new fencing and names the lease it took in `takenFrom`)' },
  }, async (req) => {
    try {
      const lease = await desktops.acquireLease(req.params.name, req.body.holder, req.body.ttlSeconds, req.body.force ?? false);
      leaseOps(1, { op: 'acquire', outcome: 'ok' });
      return lease;
    } catch (err) {
      leaseOps(1, { op: 'acquire', outcome: 'refused' });
      throw err;
    }
  });

  app.delete('/desktops/:name/lease', {
    schema: { params: DesktopParams, querystring: LeaseReleaseQuery, response: { 200: LeaseReleased }, tags: ['leases'], summary: 'Release the lease with this fencing (409 DF_ERR_LEASE_LOST if it is not the current one)' },
  }, async (req) => {
    const r = await desktops.releaseLease(req.params.name, req.query.fencing);
    leaseOps(1, { op: 'release', outcome: 'ok' });
    return r;
  });

  app.post('/desktops/:name/lease/break', {
    schema: { params: DesktopParams, response: { 200: LeaseBroken }, tags: ['leases'], summary: 'Break the lease (admin), e.g. of a dead endpoint' },
  }, async (req) => {
    leaseOps(1, { op: 'break', outcome: 'ok' });
    return await desktops.breakLease(req.params.name, who(req.tokenScope));
  });

  app.post('/desktops/:name/commits', {
    schema: { params: DesktopParams, body: DesktopCommitBody, response: { 201: CommitAnswer }, tags: ['commits'], summary: "Commit to the desktop's ref under its lease: 201 fast-forward; 409 DF_ERR_CONFLICT (stale parent or fencing; the version is kept)" },
  }, async (req, reply) => {
    const out = await desktops.commit(req.params.name, req.body, who(req.tokenScope));
    commits(1, { outcome: out.kind });
    if (out.version.parent !== null) ctx.deltas.warm(out.version.layer, (err) => req.log.error({ err, version: out.version.version }, 'building the delta failed'));
    return sendCommit(reply, out, req.body.parent);
  });
};
