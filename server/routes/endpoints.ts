import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import {
  AddEndpointBody, type BootEvent, BootEventList, Endpoint, EndpointChangeBody, EndpointList, EndpointParams, EndpointShow, EventsQuery, Image, ImageBoot,
  ImageParams,
} from '../../src/api/schemas.js';
import type { AppContext } from '../context.js';

/**
 * Endpoints (admin): list, show, approve, change (desktop, mode, boot method, name), disable, reprovision; boot
 * events, also as a live stream (Server-Sent Events) for consoles and `deskfuse endpoint events -f`.
 */
export const endpointRoutes = (ctx: AppContext): FastifyPluginAsyncTypebox => async (app) => {
  const { endpoints } = ctx;
  const optionalBody = async (req: { body: unknown }) => void (req.body ??= {});

  app.get('/endpoints', { schema: { response: { 200: EndpointList }, tags: ['endpoints'], summary: 'List endpoints' } }, async () => ({ endpoints: await endpoints.list() }));

  app.post('/endpoints', {
    schema: { body: AddEndpointBody, response: { 201: Endpoint }, tags: ['endpoints'], summary: 'Register an endpoint by MAC before its first boot (enrolled at once)' },
  }, async (req, reply) => {
    const { mac, ...change } = req.body;
    return reply.status(201).send(await endpoints.add(mac, change, req.tokenScope));
  });

  app.get('/endpoints/:id', { schema: { params: EndpointParams, response: { 200: EndpointShow }, tags: ['endpoints'], summary: 'Show an endpoint (id, name or MAC) with its recent boot events' } },
    async (req) => ({ ...(await endpoints.get(req.params.id)), events: await endpoints.recentEvents(req.params.id, 30) }));

  app.post('/endpoints/:id/approve', {
    preValidation: optionalBody, schema: { params: EndpointParams, body: EndpointChangeBody, response: { 200: Endpoint }, tags: ['endpoints'], summary: 'Approve a pending endpoint (optionally assigning its desktop)' },
  }, async (req) => await endpoints.approve(req.params.id, req.body, req.tokenScope));

  app.patch('/endpoints/:id', {
    schema: { params: EndpointParams, body: EndpointChangeBody, response: { 200: Endpoint }, tags: ['endpoints'], summary: "Change an endpoint's desktop, mode, boot method or name" },
  }, async (req) => await endpoints.assign(req.params.id, req.body, req.tokenScope));

  app.post('/endpoints/:id/disable', { schema: { params: EndpointParams, response: { 200: Endpoint }, tags: ['endpoints'], summary: 'Disable an endpoint: it boots its local disk and never gets a boot token' } },
    async (req) => await endpoints.disable(req.params.id, req.tokenScope));

  app.post('/endpoints/:id/reprovision', {
    schema: { params: EndpointParams, response: { 200: Endpoint }, tags: ['endpoints'], summary: "Let the endpoint's next boot provision its disk with a new secret (after its disk was replaced or lost its state area)" },
  }, async (req) => await endpoints.reprovision(req.params.id, req.tokenScope));

  app.get('/events', {
    schema: { querystring: EventsQuery, response: { 200: BootEventList }, tags: ['endpoints'], summary: 'Recent boot events (Accept: text/event-stream for a live stream)' },
  }, async (req, reply) => {
    const filter = req.query.endpoint ? await endpoints.eventFilter(req.query.endpoint) : undefined;
    const recent = await endpoints.recentEvents(req.query.endpoint, req.query.limit ?? 100);
    if (!(req.headers.accept ?? '').includes('text/event-stream')) return { events: recent };
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
    res.flushHeaders(); // a follower with no recent events hears the stream is open at once, not at the first ping
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

  app.put('/images/:image/boot', {
    schema: { params: ImageParams, body: ImageBoot, response: { 200: Image }, tags: ['images'], summary: 'Declare the kernel the image boots (for the kexec hand-off)' },
  }, async (req) => {
    await ctx.catalog.image(req.params.image);
    await ctx.meta.images.setImageBoot(req.params.image, req.body);
    return ctx.meta.images.getImage(req.params.image);
  });
};
