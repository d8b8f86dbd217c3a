import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

/**
 * The caching contract every answer follows, so that any standard HTTP cache (deploy/varnish,
 * deploy/nginx) can front the server without ever serving what the server would refuse:
 *   - immutable bodies (content-addressed: chunks, layers, indexes, deltas, the hashed boot stage)
 *     carry IMMUTABLE and a strong etag (their content id), and answer 304 to a matching
 *     If-None-Match — only here, after the onRequest hooks authenticated and authorised the request;
 *   - every other answer (refs, versions lists, sessions, tokens, leases, errors…) is `no-store`
 *     unless the route said otherwise (a cache keeps nothing mutable or secret).
 */
export const IMMUTABLE = 'public, max-age=31536000, immutable';
export const NO_STORE = 'no-store';

/**
 * Does If-None-Match match `etag` (quoted)? Weak comparison, as RFC 9110 §13.1.2 asks for
 * If-None-Match; `*` matches any current representation (the route found the resource).
 */
export function etagMatches(header: string | string[] | undefined, etag: string): boolean {
  if (header === undefined) return false;
  const want = etag.replace(/^W\//, '');
  return (Array.isArray(header) ? header.join(',') : header).split(',').some((t) => {
    const v = t.trim();
    return v === '*' || v.replace(/^W\//, '') === want;
  });
}

/**
 * Dress an immutable answer (caching headers, etag) and, when the client already holds it, answer
 * 304 with no body. Returns true when the 304 was sent: the route then reads nothing.
 */
export function immutable(req: FastifyRequest, reply: FastifyReply, etag: string): boolean {
  reply.header('cache-control', IMMUTABLE).header('etag', etag);
  if ((req.method !== 'GET' && req.method !== 'HEAD') || !etagMatches(req.headers['if-none-match'], etag)) return false;
  void reply.code(304).removeHeader('content-type').removeHeader('content-length').send();
  return true;
}

/**
 * App-wide: default `no-store`; and a 304 for an immutable route that dressed its answer itself
 * without asking (its body is dropped here, after it was read: cheaper routes call immutable()).
 */
export function installCachingContract(app: FastifyInstance): void {
  app.addHook('onSend', async (req, reply, payload) => {
    const cc = reply.getHeader('cache-control');
    if (cc === undefined) {
      reply.header('cache-control', NO_STORE);
      return payload;
    }
    const etag = reply.getHeader('etag');
    if (reply.statusCode === 200 && typeof etag === 'string' && String(cc).includes('immutable') && (req.method === 'GET' || req.method === 'HEAD') && etagMatches(req.headers['if-none-match'], etag)) {
      reply.code(304).removeHeader('content-type').removeHeader('content-length');
      (payload as { destroy?: () => void } | null)?.destroy?.(); // a file stream: closes its descriptor
      return null;
    }
    return payload;
  });
}
