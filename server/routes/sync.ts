import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { PatchStored, VersionParams } from '../../src/api/schemas.js';
import { dfError } from '../../src/errors.js';
import { chunkWorkers } from '../../src/chunk/workers.js';
import { openPatch, PATCH_CONTENT_TYPE, patched } from '../../src/sync/patch.js';
import { immutable } from '../conditional.js';
import type { AppContext } from '../context.js';
import { BODY_PATCH } from '../limits.js';
import { canSendOnThread, sendFd, sendFile } from '../send-file.js';

/** Rebuilt chunks are stored in batches of about this many frame bytes. */
const PUT_BATCH_BYTES = 16 * 1024 * 1024;

/**
 * What the endpoint agent uses beyond plain chunks: per-version deltas (only the changed 4 KiB
 * blocks, static and cacheable) to update, and patch uploads (blocks against a base chunk) to commit.
 */
export const syncRoutes = (ctx: AppContext): FastifyPluginAsyncTypebox => async (app) => {
  const bytesOut = ctx.metrics.counter('deskfuse_delta_bytes_sent_total', 'Delta bytes sent');
  const stored = ctx.metrics.counter('deskfuse_chunks_stored_total', 'Chunks newly stored');
  const workers = chunkWorkers();

  app.get('/api/v1/images/:image/versions/:version/delta', {
    config: { heavy: true },
    schema: { params: VersionParams, tags: ['versions'], summary: "The version's changed 4 KiB blocks against its parent (binary, see src/sync/delta.ts)" },
  }, async (req, reply) => {
    const v = await ctx.catalog.version(req.params.image, req.params.version);
    // A cache revalidating with the client's token (deploy/varnish) gets its 304 before any delta is opened.
    if (immutable(req, reply, `"${v.layer}"`)) return reply;
    reply.type('application/vnd.deskfuse.delta');
    if (req.method === 'GET' && canSendOnThread(reply)) {
      // From a descriptor held between requests, by the sender thread: a delta of any size costs the loop no buffer.
      const held = await ctx.deltas.acquire(v.layer);
      bytesOut(held.size);
      try {
        return await sendFd(reply, held.fd, held.size);
      } finally {
        held.release();
      }
    }
    // Sent from its file (streamed; HEAD: the headers alone).
    const delta = await ctx.deltas.open(v.layer);
    if (req.method === 'GET') bytesOut(delta.size);
    return sendFile(reply, delta.fh, delta.size);
  });

  app.post('/api/v1/chunks/patch', {
    bodyLimit: BODY_PATCH,
    config: { heavy: true },
    schema: { response: { 200: PatchStored }, tags: ['chunks'], summary: `Store chunks sent as blocks against base chunks (${PATCH_CONTENT_TYPE}); answers which could not be rebuilt` },
  }, async (req) => {
    if (!Buffer.isBuffer(req.body) || !req.headers['content-type']?.startsWith(PATCH_CONTENT_TYPE)) throw dfError('DF_ERR_BAD_REQUEST', `send a patch as ${PATCH_CONTENT_TYPE}`);
    // Records are decoded frame by frame as they are taken (at most PATCH_RAW_MAX in all), and rebuilt
    // chunks are stored in batches: memory stays at a frame and a batch whatever the body declares.
    const { chunkSize, records } = openPatch(req.body);
    const failed: string[] = [];
    let put: Array<{ id: string; frame: Buffer }> = [];
    let putBytes = 0;
    let existing = 0;
    let storedNow = 0;
    const flush = async () => {
      const r = await ctx.chunks.putMany(put);
      stored(r.stored);
      storedNow += r.stored;
      existing += r.existing;
      put = [];
      putBytes = 0;
    };
    for (const rec of records) {
      if (await ctx.chunks.has(rec.id)) {
        existing++;
        continue;
      }
      const base = rec.base && (await ctx.chunks.has(rec.base)) ? (await ctx.chunks.get(rec.base)).raw : rec.base ? undefined : null;
      const raw = base === undefined ? null : patched(rec, base, chunkSize);
      const sealed = raw && (await workers.seal(raw));
      if (!sealed || sealed.id !== rec.id) failed.push(rec.id);
      else {
        put.push({ id: rec.id, frame: sealed.frame });
        putBytes += sealed.frame.length;
        if (putBytes >= PUT_BATCH_BYTES) await flush();
      }
    }
    await flush();
    return { stored: storedNow, existing, failed };
  });
};
