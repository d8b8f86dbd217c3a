import type { FastifyInstance } from 'fastify';
import type { BootEvent } from '../../src/endpoint/model.js';
import { BOOT_METHODS, ENDPOINT_MODES } from '../../src/endpoint/model.js';
import type { EndpointChange } from '../../src/endpoint/endpoints.js';
import { imageName } from '../../src/api/schemas.js';
import type { AppContext } from '../context.js';

const idParams = { type: 'object', required: ['id'], properties: { id: { type: 'string', minLength: 1, maxLength: 64 } } } as const;
const changeBody = {
  type: 'object', additionalProperties: false,
  properties: {
    name: { type: 'string', minLength: 1, maxLength: 64 },
    desktop: { anyOf: [imageName, { type: 'null' }] },
    mode: { type: 'string', enum: ENDPOINT_MODES },
    bootMethod: { type: 'string', enum: BOOT_METHODS },
  },
} as const;
const eventsQuery = { type: 'object', properties: { endpoint: { type: 'string', maxLength: 64 }, limit: { type: 'integer', minimum: 1, maximum: 1000 } } } as const;
const imageBootBody = {
  type: 'object', required: ['partition', 'kernel', 'cmdline'], additionalProperties: false,
  properties: {
    partition: { type: 'integer', minimum: 1, maximum: 128 },
    kernel: { type: 'string', pattern: '^/[^\\0]{1,255}$' },
    initrd: { type: 'string', pattern: '^/[^\\0]{1,255}$' },
    cmdline: { type: 'string', maxLength: 2048 },
  },
} as const;

/**
 * Endpoints (admin): list, show, approve, change (desktop, mode, boot method, name), disable, reprovision; boot
 * events, also as a live stream (Server-Sent Events) for consoles and `deskfuse endpoint events -f`.
 */
export const endpointRoutes = (ctx: AppContext) => async (app: FastifyInstance) => {
  const { endpoints } = ctx;
  const optionalBody = async (req: { body: unknown }) => void (req.body ??= {});

  app.get('/endpoints', { schema: { tags: ['endpoints'], summary: 'List endpoints' } }, async () => ({ endpoints: await endpoints.list() }));

  app.post<{ Body: EndpointChange & { mac: string } }>('/endpoints', {
    schema: { body: { ...changeBody, required: ['mac'], properties: { ...changeBody.properties, mac: { type: 'string', maxLength: 64 } } }, tags: ['endpoints'], summary: 'Register an endpoint by MAC before its first boot (enrolled at once)' },
  }, async (req, reply) => {
    const { mac, ...change } = req.body;
    return reply.status(201).send(await endpoints.add(mac, change, req.tokenScope));
  });

  app.get<{ Params: { id: string } }>('/endpoints/:id', { schema: { params: idParams, tags: ['endpoints'], summary: 'Show an endpoint (id, name or MAC) with its recent boot events' } },
    async (req) => ({ ...(await endpoints.get(req.params.id)), events: await endpoints.recentEvents(req.params.id, 30) }));

  app.post<{ Params: { id: string }; Body: EndpointChange }>('/endpoints/:id/approve', {
    preValidation: optionalBody, schema: { params: idParams, body: changeBody, tags: ['endpoints'], summary: 'Approve a pending endpoint (optionally assigning its desktop)' },
  }, async (req) => await endpoints.approve(req.params.id, req.body, req.tokenScope));

  app.patch<{ Params: { id: string }; Body: EndpointChange }>('/endpoints/:id', {
    schema: { params: idParams, body: changeBody, tags: ['endpoints'], summary: "Change an endpoint's desktop, mode, boot method or name" },
  }, async (req) => await endpoints.assign(req.params.id, req.body, req.tokenScope));

  app.post<{ Params: { id: string } }>('/endpoints/:id/disable', { schema: { params: idParams, tags: ['endpoints'], summary: 'Disable an endpoint: it boots its local disk and never gets a boot token' } },
    async (req) => await endpoints.disable(req.params.id, req.tokenScope));

  app.post<{ Params: { id: string } }>('/endpoints/:id/reprovision', {
    schema: { params: idParams, tags: ['endpoints'], summary: "Let the endpoint's next boot provision its disk with a new secret (after its disk was replaced or lost its state area)" },
  }, async (req) => await endpoints.reprovision(req.params.id, req.tokenScope));

  app.get<{ Querystring: { endpoint?: string; limit?: number } }>('/events', {
    schema: { querystring: eventsQuery, tags: ['endpoints'], summary: 'Recent boot events (Accept: text/event-stream for a live stream)' },
  }, async (req, reply) => {
    const filter = req.query.endpoint ? await endpoints.eventFilter(req.query.endpoint) : undefined;
    const recent = await endpoints.recentEvents(req.query.endpoint, req.query.limit ?? 100);
    if (!(req.headers.accept ?? '').includes('text/event-stream')) return { events: recent };
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
    const send = (e: BootEvent) => void res.write(`id: ${e.seq}\nevent: boot\ndata: ${JSON.stringify(e)}\n\n`);
    for (const e of recent) send(e);
    const on = (e: BootEvent) => (filter === undefined || (filter.endpoint !== null && e.endpoint === filter.endpoint) || filter.macs.includes(e.mac)) && send(e);
    endpoints.events.on('event', on);
    const ping = setInterval(() => res.write(': ping\n\n'), 15_000);
    req.raw.on('close', () => {
      clearInterval(ping);
      endpoints.events.off('event', on);
    });
  });

  app.put<{ Params: { image: string }; Body: { partition: number; kernel: string; initrd?: string; cmdline: string } }>('/images/:image/boot', {
    schema: { params: { type: 'object', required: ['image'], properties: { image: imageName } }, body: imageBootBody, tags: ['images'], summary: 'Declare the kernel the image boots (for the kexec hand-off)' },
  }, async (req) => {
    await ctx.catalog.image(req.params.image);
    await ctx.meta.images.setImageBoot(req.params.image, req.body);
    return ctx.meta.images.getImage(req.params.image);
  });
};
