import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyReply, FastifyRequest } from 'fastify';
import {
  CommitAnswer, CommitBody, type CommitConflict, CommitUnchanged, CreateImageBody, ImageList, ImageParams, ImageShow, ListQuery, Ref, RefList, RefLog,
  RefParams, RefSetBody, ResolveQuery, StagedLayer, Version, VersionList, VersionParams,
} from '../../src/api/schemas.js';
import { dfError } from '../../src/errors.js';
import type { CommitOutcome, ImageRow } from '../../src/image/model.js';
import { immutable } from '../conditional.js';
import type { AppContext } from '../context.js';

/** Images, versions, layers, indexes, commits and refs under /api/v1. */
export const imageRoutes = (ctx: AppContext): FastifyPluginAsyncTypebox => async (app) => {
  const { catalog } = ctx;
  const commits = ctx.metrics.counter('deskfuse_commits_total', 'Commits by outcome');
  ctx.metrics.onCollect(async () => ctx.metrics.gauge('deskfuse_images', 'Images in the catalog')((await catalog.listImages()).length));

  const showImage = async (img: ImageRow): Promise<ImageShow> => ({ ...img, refs: await ctx.meta.images.listRefs(img.name), versions: await ctx.meta.images.versionCount(img.name) });
  // A desktop token (req.reader, set by server/auth.ts) sees only its desktop's line of the image.
  const refsFor = async (req: FastifyRequest, image: string) => (req.reader ? req.reader.refs(await catalog.refs(image)) : catalog.refs(image));

  app.post('/images', {
    schema: { body: CreateImageBody, response: { 200: ImageShow, 201: ImageShow }, tags: ['images'], summary: 'Create an image (idempotent while it has no version)' },
  }, async (req, reply) => {
    const r = await catalog.createImage(req.body.name, { virtualSize: req.body.virtualSize, chunkSize: req.body.chunkSize });
    return reply.status(r.created ? 201 : 200).send(await showImage(r.image));
  });

  app.get('/images', { schema: { response: { 200: ImageList }, tags: ['images'], summary: 'List images' } }, async () => ({ images: await Promise.all((await catalog.listImages()).map(showImage)) }));

  app.get('/images/:image', { schema: { params: ImageParams, response: { 200: ImageShow }, tags: ['images'], summary: 'Show an image, its refs and version count' } },
    async (req) => {
      const img = await showImage(await catalog.image(req.params.image));
      if (!req.reader) return img;
      // A desktop token: its line's refs; the image's version count would tell of other lines, so it is left out.
      const { versions: _count, ...rest } = img;
      return { ...rest, refs: req.reader.refs(img.refs) };
    });

  app.get('/images/:image/resolve', {
    schema: { params: ImageParams, querystring: ResolveQuery, response: { 200: Version }, tags: ['versions'], summary: 'Resolve a ref name or version number to a version' },
  }, async (req) => catalog.resolve(req.params.image, req.query.rev));

  app.get('/images/:image/versions', {
    schema: { params: ImageParams, querystring: ListQuery, response: { 200: VersionList }, tags: ['versions'], summary: 'Versions, newest first; with ref=, the log of that ref' },
  }, async (req) => {
    const from = req.query.ref ? await catalog.resolve(req.params.image, req.query.ref) : undefined;
    if (req.reader && !from) return { versions: (await catalog.image(req.params.image), await req.reader.versions(req.query.limit)) };
    return { versions: await catalog.versions(req.params.image, { limit: req.query.limit, ...(from ? { from } : {}) }) };
  });

  app.get('/images/:image/versions/:version', {
    schema: { params: VersionParams, tags: ['versions'], summary: 'Show a version', response: { 200: Version } },
  }, async (req) => catalog.version(req.params.image, req.params.version));

  app.get('/images/:image/versions/:version/layer', {
    schema: { params: VersionParams, tags: ['versions'], summary: "The version's layer (binary, see src/image/layer.ts)" },
  }, async (req, reply) => {
    const v = await catalog.version(req.params.image, req.params.version);
    if (immutable(req, reply, `"${v.layer}"`)) return reply;
    reply.type('application/vnd.deskfuse.layer');
    return catalog.layerBytes(req.params.image, req.params.version);
  });

  app.get('/images/:image/versions/:version/index', {
    schema: { params: VersionParams, tags: ['versions'], summary: "The version's full chunk index (binary, see src/image/chunk-index.ts)" },
  }, async (req, reply) => {
    const v = await catalog.version(req.params.image, req.params.version);
    if (immutable(req, reply, `"${v.index}"`)) return reply;
    reply.type('application/vnd.deskfuse.index');
    return catalog.indexBytes(req.params.image, req.params.version);
  });

  app.post('/images/:image/layers', {
    bodyLimit: ctx.bodyLimit, // the largest layer a site's images need (config bodyLimit)
    schema: { params: ImageParams, response: { 201: StagedLayer }, tags: ['commits'], summary: 'Upload a layer (application/octet-stream) for a coming commit' },
  }, async (req, reply) => {
    if (!Buffer.isBuffer(req.body)) throw dfError('DF_ERR_BAD_REQUEST', 'send the layer as application/octet-stream');
    return reply.status(201).send(await catalog.stageLayer(req.params.image, req.body));
  });

  app.post('/images/:image/commits', {
    schema: {
      params: ImageParams, body: CommitBody, response: { 200: CommitUnchanged, 201: CommitAnswer }, tags: ['commits'],
      summary: 'Create a version from an uploaded layer and move the ref (409 on conflict or missing chunks); a publish that changes nothing makes none (200 unchanged) unless allowEmpty',
    },
  }, async (req, reply) => {
    const b = req.body;
    if (b.kind === 'publish' && b.parent !== null && !b.allowEmpty) {
      const same = await catalog.unchanged(req.params.image, b.parent, b.ref, b.layer);
      if (same) return reply.status(200).send({ outcome: 'unchanged', version: same.version, ref: b.ref, head: same.head } satisfies CommitUnchanged);
    }
    const out = await catalog.commit({
      image: req.params.image, parent: b.parent, ref: b.ref, layer: b.layer, kind: b.kind,
      message: b.message ?? '', author: b.author ?? req.tokenScope ?? 'admin',
    });
    commits(1, { outcome: out.kind });
    if (out.version.parent !== null) ctx.deltas.warm(out.version.layer, (err) => req.log.error({ err, version: out.version.version }, 'building the delta failed'));
    return sendCommit(reply, out, b.parent);
  });

  app.get('/images/:image/refs', { schema: { params: ImageParams, response: { 200: RefList }, tags: ['refs'], summary: 'List refs' } },
    async (req) => ({ refs: await refsFor(req, req.params.image) }));

  app.get('/images/:image/refs/*', { schema: { params: RefParams, response: { 200: Ref }, tags: ['refs'], summary: 'Show a ref' } }, async (req) => {
    const ref = (await refsFor(req, req.params.image)).find((r) => r.name === req.params['*']);
    if (!ref) throw dfError('DF_ERR_REF_NOT_FOUND', `image ${req.params.image} has no ref ${req.params['*']}`, { ref: req.params['*'] });
    return ref;
  });

  app.put('/images/:image/refs/*', {
    schema: { params: RefParams, body: RefSetBody, response: { 200: Ref }, tags: ['refs'], summary: 'Move (or create, with expect null) a ref by compare-and-swap: promote, rollback' },
  }, async (req) => catalog.moveRef(req.params.image, req.params['*'], req.body.version, req.body.expect, req.tokenScope ?? 'admin', req.body.reason ?? 'ref set'));

  app.get('/images/:image/reflog', {
    schema: { params: ImageParams, querystring: ListQuery, response: { 200: RefLog }, tags: ['refs'], summary: 'Every ref move, newest first' },
  }, async (req) => {
    const { image } = req.params;
    const { ref } = req.query;
    if (!req.reader || ref !== undefined) return { entries: await catalog.refLog(image, ref, req.query.limit) };
    // A desktop token: the log of each ref it sees, merged newest first.
    const entries = (await Promise.all((await refsFor(req, image)).map((r) => catalog.refLog(image, r.name, req.query.limit)))).flat();
    return { entries: entries.sort((a, b) => b.seq - a.seq).slice(0, req.query.limit) };
  });
};

/** 201 fast-forward, or 409 DF_ERR_CONFLICT naming where the version is kept and why (shared by desktop commits). */
export function sendCommit(reply: FastifyReply, out: CommitOutcome, parent: number | null) {
  if (out.kind === 'fast-forward') return reply.status(201).send({ outcome: out.kind, version: out.version, ref: out.ref } satisfies CommitAnswer);
  const why = out.reason === 'fencing'
    ? `the commit's lease (fencing) is not the desktop's current lease`
    : `ref ${out.ref} is at ${out.head ?? 'nothing'}, not at the parent ${parent ?? 'nothing'}`;
  const conflict: CommitConflict = {
    code: 'DF_ERR_CONFLICT',
    message: `${why}; version ${out.version.version} is kept as ${out.conflictRef}`,
    version: out.version, ref: out.ref, head: out.head, conflictRef: out.conflictRef, reason: out.reason,
  };
  return reply.status(409).send(conflict);
}
