import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import { dfError } from '../../src/errors.js';
import type { AppContext } from '../context.js';

/**
 * The stores' lifecycle under /api/v1 (admin only):
 *   POST /store/gc[?dryRun=true]   start one garbage collection (src/gc/gc.ts): 202 {run} once it holds
 *                                  the lock; 409 DF_ERR_GC_RUNNING when one runs here or on another server
 *   GET  /store/gc[?run=ID]        that run's phase and progress, or its result (objects and bytes marked,
 *                                  candidates, cancelled, deleted, freed, usage) or error; and the
 *                                  database's lock row (the last run of any server)
 *   GET  /store/usage              the last measured usage (bytes by kind, by image, reclaimable); `store
 *                                  usage` measures anew with a dry run
 */
const Loose = Type.Object({}, { additionalProperties: true });

export const storeRoutes = (ctx: AppContext): FastifyPluginAsyncTypebox => async (app) => {
  const gc = () => {
    if (!ctx.gc) throw dfError('DF_ERR_INTERNAL', 'garbage collection is not set up on this server', {});
    return ctx.gc;
  };

  app.post('/store/gc', {
    schema: { querystring: Type.Object({ dryRun: Type.Optional(Type.Boolean()) }), response: { 202: Loose }, tags: ['store'], summary: 'Start one garbage collection of the stores (two phases: unreferenced old objects become candidates, removed by the next run)' },
  }, async (req, reply) => {
    let started!: (run: string) => void;
    let didStart = false;
    const running = new Promise<string>((r) => (started = r));
    const done = gc().run({ dryRun: req.query.dryRun ?? false, onStarted: (run) => ((didStart = true), started(run)) });
    // Once started, a failure is the run's (GET /store/gc shows it); before, it is this request's answer.
    done.catch((err: unknown) => { if (didStart) app.log.error({ err }, 'garbage collection failed'); });
    const run = await Promise.race([running, done.then((r) => r.run)]);
    return reply.status(202).send({ run, dryRun: req.query.dryRun ?? false });
  });

  app.get('/store/gc', {
    schema: { querystring: Type.Object({ run: Type.Optional(Type.String({ maxLength: 64 })) }), response: { 200: Loose }, tags: ['store'], summary: "A garbage collection's phase and progress, or its result" },
  }, async (req) => (await gc().status(req.query.run)) as unknown as Record<string, unknown>);

  app.get('/store/usage', { schema: { response: { 200: Loose }, tags: ['store'], summary: 'The last measured usage: bytes by kind and by image, and what garbage collection can reclaim' } },
    async () => {
      const s = await gc().status();
      const last = s.lock?.result as { usage?: unknown; finishedAt?: string } | null;
      return { usage: last?.usage ?? null, measuredAt: last?.finishedAt ?? null };
    });
};
