import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { FastifyInstance } from 'fastify';
import type { AppContext } from '../context.js';

/** Event-loop delay quantiles exported at each scrape (over the time since the previous one). */
const DELAY_QUANTILES = [0.5, 0.9, 0.99] as const;
const DELAY_RESOLUTION_MS = 50;

export const opsRoutes = (ctx: AppContext) => async (app: FastifyInstance) => {
  // DHCP, TFTP, NBD and every HTTP client share this event loop: how long a timer waits past its
  // due time is what each of them waits too (perf_hooks histogram, sampled every 50 ms: finer sampling costs an idle server ~1% of a core).
  const delay = monitorEventLoopDelay({ resolution: DELAY_RESOLUTION_MS });
  delay.enable();
  app.addHook('onClose', async () => delay.disable());
  const delayGauge = ctx.metrics.gauge('deskfuse_event_loop_delay_seconds', 'Event-loop delay since the previous scrape, by quantile (and max)');
  ctx.metrics.onCollect(() => {
    // The histogram holds whole timer intervals (resolution + delay): the delay is what lies past the resolution.
    const s = (ns: number) => (Number.isFinite(ns) && delay.count > 0 ? Math.max(0, ns - DELAY_RESOLUTION_MS * 1e6) / 1e9 : 0);
    for (const q of DELAY_QUANTILES) delayGauge(s(delay.percentile(q * 100)), { quantile: q });
    delayGauge(s(delay.max), { quantile: 'max' });
    delay.reset();
  });

  app.get('/healthz', { config: { public: true, plainHttp: true }, schema: { hide: true } }, async () => ({ status: 'ok' }));

  // An admin or a metrics token (token create --scope metrics); or, without one, the --metrics-listen address.
  app.get('/metrics', { config: { access: 'metrics' }, schema: { hide: true } }, async (_req, reply) => {
    reply.type('text/plain; version=0.0.4; charset=utf-8');
    return ctx.metrics.render();
  });

  app.get('/api/v1/openapi.json', { config: { public: true }, schema: { hide: true } }, async () => app.swagger());
};
