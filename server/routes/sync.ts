import type { FastifyInstance } from 'fastify';
import { versionParams } from '../../src/api/schemas.js';
import { dfError } from '../../src/errors.js';
import { encodeFrame } from '../../src/chunk/frame.js';
import { decodePatch, PATCH_CONTENT_TYPE, rebuild } from '../../src/sync/patch.js';
import type { AppContext } from '../context.js';

/**
 * What the endpoint agent uses beyond plain chunks: per-version deltas (only the changed 4 KiB
 * blocks, static and cacheable) to update, and patch uploads (blocks against a base chunk) to commit.
 */
export const syncRoutes = (ctx: AppContext) => async (app: FastifyInstance) => {
  const bytesOut = ctx.metrics.counter('deskfuse_delta_bytes_sent_total', 'Delta bytes sent');
  const stored = ctx.metrics.counter('deskfuse_chunks_stored_total', 'Chunks newly stored');

  app.get<{ Params: { image: string; version: number } }>('/api/v1/images/:image/versions/:version/delta', {
    schema: { params: versionParams, tags: ['versions'], summary: "The version's changed 4 KiB blocks against its parent (binary, see src/sync/delta.ts)" },
  }, async (req, reply) => {
    const v = ctx.catalog.version(req.params.image, req.params.version);
    const body = await ctx.deltas.get(v.layer);
    bytesOut(body.length);
    reply.type('application/vnd.deskfuse.delta').header('cache-control', 'public, max-age=31536000, immutable').header('etag', `"${v.layer}"`);
    return body;
  });

  app.post<{ Body: Buffer }>('/api/v1/chunks/patch', {
    schema: { tags: ['chunks'], summary: `Store chunks sent as blocks against base chunks (${PATCH_CONTENT_TYPE}); answers which could not be rebuilt` },
  }, async (req) => {
    if (!Buffer.isBuffer(req.body) || !req.headers['content-type']?.startsWith(PATCH_CONTENT_TYPE)) throw dfError('DF_ERR_BAD_REQUEST', `send a patch as ${PATCH_CONTENT_TYPE}`);
    const { chunkSize, records } = decodePatch(req.body);
    const put: Array<{ id: string; frame: Buffer }> = [];
    const failed: string[] = [];
    let existing = 0;
    for (const rec of records) {
      if (await ctx.chunks.has(rec.id)) {
        existing++;
        continue;
      }
      const base = rec.base && (await ctx.chunks.has(rec.base)) ? (await ctx.chunks.get(rec.base)).raw : rec.base ? undefined : null;
      const raw = base === undefined ? null : rebuild(rec, base, chunkSize);
      if (!raw) failed.push(rec.id);
      else put.push({ id: rec.id, frame: encodeFrame(raw) });
    }
    const r = await ctx.chunks.putMany(put);
    stored(r.stored);
    return { stored: r.stored, existing: existing + r.existing, failed };
  });
};
