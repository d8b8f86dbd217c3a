import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { ChunkParams, ChunkStored, IdsBody, Missing, PackStored } from '../../src/api/schemas.js';
import { dfError, isDeskfuseError } from '../../src/errors.js';
import { checkIdList, decodeIdList, ID_BYTES, ID_LIST_TYPE, isZero } from '../../src/chunk/id.js';
import { decodePack, encodePack, PACK_CONTENT_TYPE, PACK_MAX_BYTES, type PackRecord } from '../../src/chunk/pack.js';
import { isPackReader } from '../../src/chunk/store.js';
import { chunkWorkers } from '../../src/chunk/workers.js';
import { canSendOnThread, sendFd, sendPack } from '../send-file.js';
import type { AppContext } from '../context.js';
import { BODY_CHUNK, BODY_MISSING, BODY_PACK } from '../limits.js';

const IMMUTABLE = 'public, max-age=31536000, immutable';
const FETCH_MAX_IDS = 4096;
const READS_IN_FLIGHT = 16;

/**
 * Chunks: `/chunks/:id` is immutable (cache forever; any HTTP cache or CDN can front it), PUT checks
 * the id. Batches: "which of these are missing", pack upload, pack fetch. Bytes are verified
 * against their id on the way in and on every single-chunk read from the store; a batch fetch from
 * the local store sends the stored frames unopened (the receiver, agent or `image export`, verifies
 * each against the id it asked for).
 */
export const chunkRoutes = (ctx: AppContext): FastifyPluginAsyncTypebox => async (app) => {
  const bytesIn = ctx.metrics.counter('deskfuse_chunk_bytes_received_total', 'Compressed chunk bytes received');
  const bytesOut = ctx.metrics.counter('deskfuse_chunk_bytes_sent_total', 'Compressed chunk bytes sent');
  const stored = ctx.metrics.counter('deskfuse_chunks_stored_total', 'Chunks newly stored');
  const invalid = ctx.metrics.counter('deskfuse_chunks_invalid_total', 'Chunks refused or found corrupt, by where');
  // zstd and BLAKE3 of uploads run in worker threads, as store reads do (src/chunk/workers.ts).
  const workers = chunkWorkers();

  const packHits = ctx.metrics.counterTotal('deskfuse_pack_cache_requests_total', 'Batch fetches served from a cached pack file (hit) or from the chunk files (miss)');
  const packBytes = ctx.metrics.gauge('deskfuse_pack_cache_bytes', 'Bytes of cached pack files');
  ctx.metrics.onCollect(() => {
    if (!ctx.packs) return;
    packHits(ctx.packs.stats.hits, { result: 'hit' });
    packHits(ctx.packs.stats.misses, { result: 'miss' });
    packBytes(ctx.packs.size.bytes);
  });

  const read = async (id: string) => {
    try {
      return await ctx.chunks.get(id);
    } catch (err) {
      if (isDeskfuseError(err, 'DF_ERR_CHUNK_CORRUPT')) invalid(1, { where: 'store' });
      throw err;
    }
  };

  app.get('/chunks/:id', { schema: { params: ChunkParams, tags: ['chunks'], summary: 'A chunk as one zstd frame (immutable)' }, exposeHeadRoute: false }, async (req, reply) => {
    const { frame } = await read(req.params.id);
    bytesOut(frame.length);
    reply.header('cache-control', IMMUTABLE).header('etag', `"${req.params.id}"`).type('application/zstd');
    return frame;
  });

  app.head('/chunks/:id', { schema: { params: ChunkParams, tags: ['chunks'], summary: 'Whether the chunk is stored' } }, async (req, reply) => {
    if (!(await ctx.chunks.has(req.params.id))) throw dfError('DF_ERR_CHUNK_NOT_FOUND', `chunk ${req.params.id} is not in the store`, { id: req.params.id });
    reply.header('cache-control', IMMUTABLE).header('etag', `"${req.params.id}"`).type('application/zstd');
    return reply.send();
  });

  app.put('/chunks/:id', {
    bodyLimit: BODY_CHUNK,
    schema: { params: ChunkParams, response: { 200: ChunkStored, 201: ChunkStored }, tags: ['chunks'], summary: 'Store one chunk: body application/zstd (a frame) or application/octet-stream (raw bytes)' },
  }, async (req, reply) => {
    const { id } = req.params;
    const body = req.body;
    if (!Buffer.isBuffer(body)) throw dfError('DF_ERR_BAD_REQUEST', 'send the chunk as application/zstd or application/octet-stream');
    let zero: boolean;
    let frame: Buffer;
    try {
      if (req.headers['content-type']?.startsWith('application/zstd')) {
        frame = body;
        zero = (await workers.check(id, frame, ctx.maxChunkSize)).zero;
      } else {
        if (body.length === 0 || body.length > ctx.maxChunkSize) throw dfError('DF_ERR_CHUNK_INVALID', `chunk of ${body.length} bytes is outside 1..${ctx.maxChunkSize}`, { id });
        const sealed = await workers.seal(body);
        if (sealed.id !== id) throw dfError('DF_ERR_CHUNK_INVALID', `chunk ${id}: bytes hash to ${sealed.id}`, { id, got: sealed.id });
        frame = sealed.frame;
        zero = isZero(body);
      }
    } catch (err) {
      invalid(1, { where: 'upload' });
      throw err;
    }
    if (zero) throw dfError('DF_ERR_BAD_REQUEST', 'all-zero chunks are never stored; layers mark them as zero', { id });
    bytesIn(body.length);
    const created = await ctx.chunks.put(id, { frame });
    if (created) stored(1);
    return reply.status(created ? 201 : 200).send({ id, stored: created });
  });

  app.post('/api/v1/chunks/missing', {
    bodyLimit: BODY_MISSING,
    schema: { body: IdsBody, response: { 200: Missing }, tags: ['chunks'], summary: 'Which of these chunk ids the server lacks' },
  }, async (req) => ({ missing: await ctx.catalog.missingChunks(req.body.ids) }));

  app.post('/api/v1/chunks/pack', {
    bodyLimit: BODY_PACK,
    config: { heavy: true },
    schema: { response: { 200: PackStored }, tags: ['chunks'], summary: `Store many chunks in one body (${PACK_CONTENT_TYPE})` },
  }, async (req) => {
    if (!Buffer.isBuffer(req.body) || !req.headers['content-type']?.startsWith(PACK_CONTENT_TYPE)) {
      throw dfError('DF_ERR_BAD_REQUEST', `send a pack as ${PACK_CONTENT_TYPE}`);
    }
    const records = decodePack(req.body, ctx.maxChunkSize);
    // Verify every record before storing any: a bad pack changes nothing.
    try {
      await inParallel(records.length, async (k) => {
        const r = records[k]!;
        const c = await workers.check(r.id, r.frame, ctx.maxChunkSize);
        if (c.length !== r.rawLength) throw dfError('DF_ERR_CHUNK_INVALID', `chunk ${r.id}: raw length ${c.length}, pack says ${r.rawLength}`, { id: r.id });
        if (c.zero) throw dfError('DF_ERR_BAD_REQUEST', `chunk ${r.id} is all zero; zero chunks are never stored`, { id: r.id });
      });
    } catch (err) {
      invalid(1, { where: 'upload' });
      throw err;
    }
    bytesIn(req.body.length);
    const r = await ctx.chunks.putMany(records.map((x) => ({ id: x.id, frame: x.frame })));
    stored(r.stored);
    return r;
  });

  app.post('/api/v1/chunks/fetch', {
    config: { heavy: true },
    schema: {
      // JSON for people and scripts; the agent sends the raw ids (src/chunk/id.ts): no string per id to parse and match.
      body: { content: {
        'application/json': { schema: Type.Object({ ids: Type.Array(IdsBody.properties.ids.items, { maxItems: FETCH_MAX_IDS }) }, { additionalProperties: false }) },
        [ID_LIST_TYPE]: { schema: { description: `up to ${FETCH_MAX_IDS} raw ${ID_BYTES}-byte chunk ids back to back` } },
      } },
      tags: ['chunks'], summary: `Fetch up to ${FETCH_MAX_IDS} chunks (each id once, ${PACK_MAX_BYTES} bytes of frames at most) as one pack`,
    },
  }, async (req, reply) => {
    // Each chunk once, however often it is asked for; the pack is held to PACK_MAX_BYTES (reads stop
    // as soon as it would pass), so one request never makes the server hold more than that.
    const body = req.body as Buffer | { ids: string[] };
    const raw = Buffer.isBuffer(body) ? checkIdList(body, FETCH_MAX_IDS) : undefined;
    let list: string[] | undefined;
    const idList = () => (list ??= raw ? decodeIdList(raw) : [...new Set((body as { ids: string[] }).ids)]);
    reply.type(PACK_CONTENT_TYPE).header('cache-control', 'no-store'); // set here: a body sent by the sender thread skips onSend
    if (isPackReader(ctx.chunks)) {
      // The local store answers with the stored frames as they are: no decompress or hash per served
      // chunk (each was verified on entry; the agent verifies each). On plain TCP the frames go from
      // their files to the socket on the sender thread (record heads from memory); otherwise the
      // pack is assembled in a worker.
      const store = ctx.chunks;
      try {
        if (canSendOnThread(reply)) {
          const cached = await ctx.packs?.acquire(raw ?? idList()); // a batch asked for before: one file
          if (cached) {
            bytesOut(cached.size);
            try {
              return await sendFd(reply, cached.fd, cached.size);
            } finally {
              cached.release();
            }
          }
          const ids = idList();
          const plan = await store.packPlan(ids, PACK_MAX_BYTES);
          bytesOut(plan.size);
          return await sendPack(reply, plan, (err) => {
            // a file gone or changed since its size was learnt: look again next time (the agent retries)
            if (err.code === 'ENOENT' || err.code === 'ESTALE') store.forget(ids);
          });
        }
        const pack = await store.readPack(idList(), PACK_MAX_BYTES);
        bytesOut(pack.length);
        return pack;
      } catch (err) {
        if (isDeskfuseError(err, 'DF_ERR_CHUNK_CORRUPT')) invalid(1, { where: 'store' });
        throw err;
      }
    }
    const ids = idList();
    const records: PackRecord[] = new Array(ids.length);
    let bytes = 0;
    await inParallel(ids.length, async (k) => {
      const c = await read(ids[k]!);
      bytes += c.frame.length;
      if (bytes > PACK_MAX_BYTES) {
        throw dfError('DF_ERR_TOO_LARGE', `these ${ids.length} chunks are more than ${PACK_MAX_BYTES} bytes: ask for fewer at a time`, { limit: PACK_MAX_BYTES, ids: ids.length });
      }
      records[k] = { id: ids[k]!, rawLength: c.raw.length, frame: c.frame };
    });
    const pack = encodePack(records);
    bytesOut(pack.length);
    return pack;
  });
};

/** Run job(0..n-1), READS_IN_FLIGHT at a time (their work runs in worker threads meanwhile); the first failure stops the rest. */
async function inParallel(n: number, job: (k: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failed = false;
  await Promise.all(Array.from({ length: Math.min(READS_IN_FLIGHT, n) }, async () => {
    for (let k = next++; k < n && !failed; k = next++) {
      try {
        await job(k);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  }));
}
