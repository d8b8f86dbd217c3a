import swagger from '@fastify/swagger';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { PACK_CONTENT_TYPE } from '../src/chunk/pack.js';
import { authenticate, authorize } from './auth.js';
import type { AppContext } from './context.js';
import { installCachingContract } from './conditional.js';
import { installErrorHandler } from './errors.js';
import { chunkRoutes } from './routes/chunks.js';
import { bootRoutes } from './routes/boot.js';
import { desktopRoutes } from './routes/desktops.js';
import { signedRoutes } from './routes/signed.js';
import { endpointRoutes } from './routes/endpoints.js';
import { imageRoutes } from './routes/images.js';
import { lifecycleRoutes } from './routes/lifecycle.js';
import { documentResponses } from './openapi.js';
import { opsRoutes } from './routes/ops.js';
import { storeRoutes } from './routes/store.js';
import { syncRoutes } from './routes/sync.js';
import { tokenRoutes } from './routes/tokens.js';
import { vdiRoutes } from './routes/vdi.js';
import { consoleRoutes } from './console/plugin.js';
import { PATCH_CONTENT_TYPE } from '../src/sync/patch.js';
import { BODY_DEFAULT } from './limits.js';
import { safeUrl } from './log.js';
import { sendRateStats } from './send-file.js';
import { installPlainHttpGate } from './tls.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Route needs no token (health, OpenAPI document). */
    public?: boolean;
    /** A heavy transfer: counted against `admission.heavyTransfers` (server/admission.ts). */
    heavy?: boolean;
  }
  interface FastifyRequest {
    tokenScope?: string;
  }
}

/** A request this slow is logged at info (heavy transfers of a storm can take seconds: this is well past them). */
const SLOW_REQUEST_MS = 10_000;

const LEVELS: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60, silent: Infinity };
/** Would a logger at `level` write a `want` line? (A level it does not know: yes.) */
const levelEnabled = (level: string, want: string): boolean => (LEVELS[level] ?? 0) <= LEVELS[want]!;

/** Build the HTTP app (no listen): tests drive it with inject(), main.ts listens. */
export async function buildApp(ctx: AppContext, logger?: FastifyBaseLogger): Promise<FastifyInstance> {
  const app: FastifyInstance = Fastify({
    ...(logger ? { loggerInstance: logger } : { logger: false }),
    // fastify's two lines per request ("incoming request", "request completed") give way to one (below).
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: BODY_DEFAULT, // routes that take more say so (server/limits.ts)
    keepAliveTimeout: 75_000,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', allErrors: false } },
  });
  installErrorHandler(app);
  installCachingContract(app);

  for (const type of ['application/octet-stream', 'application/zstd', PACK_CONTENT_TYPE, PATCH_CONTENT_TYPE]) {
    app.addContentTypeParser(type, { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
  }

  const requests = ctx.metrics.counter('deskfuse_http_requests_total', 'HTTP requests by route and status');
  app.addHook('onResponse', async (req, reply) => {
    requests(1, { method: req.method, route: req.routeOptions.url ?? 'unknown', status: reply.statusCode });
    // One line per request: at debug (a boot storm is thousands), at info when it failed on our side or was slow.
    const ms = Math.round(reply.elapsedTime);
    const info = reply.statusCode >= 500 || ms >= SLOW_REQUEST_MS;
    if (!levelEnabled(req.log.level, info ? 'info' : 'debug')) return; // the line is not made when nobody reads it
    const line = { method: req.method, url: safeUrl(req.url), status: reply.statusCode, ms };
    if (info) req.log.info(line, 'request');
    else req.log.debug(line, 'request');
  });

  // With TLS on, plain HTTP from another machine: only what iPXE fetches first (before any token is read).
  installPlainHttpGate(app, () => ctx.tls);

  // Who (token → scope, 401) and what they may do (scope vs the route's need, 403), before any body is read.
  app.addHook('onRequest', async (req) => {
    if (req.routeOptions.config?.public) return;
    req.tokenScope = await authenticate(req, ctx.meta, ctx.now());
    await authorize(req, req.tokenScope, ctx.meta);
  });

  // After the token check (no ticket for a wrong token): heavy transfers past the limit wait in line.
  const refused = ctx.metrics.counter('deskfuse_admission_refused_total', 'Heavy transfers answered 503 DF_ERR_BUSY (the client waits and retries)');
  const transfers = ctx.metrics.gauge('deskfuse_heavy_transfers', 'Heavy transfers running, and clients waiting in line');
  ctx.metrics.onCollect(() => {
    transfers(ctx.admission.running, { state: 'running' });
    transfers(ctx.admission.waiting, { state: 'waiting' });
  });
  const sentBytes = ctx.metrics.counterTotal('deskfuse_sender_bytes_total', 'Body bytes sent from files by the sender thread (sendfile)');
  const bucketWaits = ctx.metrics.counterTotal('deskfuse_sender_bandwidth_waits_total', 'Times the sender thread waited for its token bucket (admission.maxMbitPerSecond)');
  ctx.metrics.onCollect(() => {
    const s = sendRateStats();
    if (!s) return;
    sentBytes(s.bytes);
    bucketWaits(s.throttled);
  });
  app.addHook('onRequest', async (req, reply) => {
    if (!req.routeOptions.config?.heavy) return;
    const t = req.headers['x-deskfuse-ticket'];
    const a = ctx.admission.enter(typeof t === 'string' ? t : undefined);
    if (a.admitted) {
      reply.header('x-deskfuse-ticket', a.ticket); // the client's pass for its next heavy requests
      reply.raw.once('close', a.release); // answered, failed or cut: this request no longer holds the slot
      return;
    }
    refused(1);
    // Answered here, not thrown: in a storm refusals are most of the requests, and the error path
    // (a stack captured, an error logged) cost more than the transfers. Expected traffic: no log line.
    const message = `the server is serving ${ctx.admission.max} clients' heavy transfers at once; you are number ${a.position} in line: retry after ${a.retryAfter} s with header x-deskfuse-ticket`;
    reply.code(503).header('retry-after', String(a.retryAfter)).type('application/json; charset=utf-8');
    return reply.send({ code: 'DF_ERR_BUSY', message, ticket: a.ticket, position: a.position, retryAfter: a.retryAfter });
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'deskfuse image server', version: '1', description: 'Images, versions, refs, chunks and desktops of a deskfuse appliance.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
    transform: documentResponses,
  });
  await app.register(opsRoutes(ctx));
  await app.register(chunkRoutes(ctx));
  await app.register(syncRoutes(ctx));
  await app.register(imageRoutes(ctx), { prefix: '/api/v1' });
  await app.register(desktopRoutes(ctx), { prefix: '/api/v1' });
  await app.register(signedRoutes(ctx), { prefix: '/api/v1' });
  await app.register(endpointRoutes(ctx), { prefix: '/api/v1' });
  await app.register(vdiRoutes(ctx), { prefix: '/api/v1' });
  await app.register(tokenRoutes(ctx), { prefix: '/api/v1' });
  await app.register(lifecycleRoutes(ctx), { prefix: '/api/v1' });
  await app.register(storeRoutes(ctx), { prefix: '/api/v1' });
  await app.register(bootRoutes(ctx));
  // The web console at / (its own sign-in: a session cookie, not the bearer token).
  await app.register(consoleRoutes(ctx));
  return app;
}
