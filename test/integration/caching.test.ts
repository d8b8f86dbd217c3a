import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChunkIndex } from '../../src/image/chunk-index.js';
import { startInProcess, tempDir } from '../helpers/server.js';
import { makeSite, type SiteFixture } from '../helpers/site.js';

/**
 * Issue 12, the cacheability contract any HTTP cache relies on (deploy/varnish): immutable answers are
 * `public, max-age=31536000, immutable` with a strong etag and answer 304 to it — only once the token
 * passed; every other answer is `no-store`.
 */
const IMMUTABLE = 'public, max-age=31536000, immutable';
let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startInProcess>>;
let site: SiteFixture;
let chunkId = '';

const get = async (url: string, token?: string, headers: Record<string, string> = {}) => {
  const r = await fetch(`${srv.url}${url}`, { headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers } });
  return { status: r.status, headers: r.headers, body: Buffer.from(await r.arrayBuffer()) };
};

beforeAll(async () => {
  tmp = tempDir('df-caching-');
  srv = await startInProcess(path.join(tmp.dir, 'data'));
  site = await makeSite(srv.url, srv.token, tmp.dir);
  const idx = ChunkIndex.decode((await get(`/api/v1/images/os/versions/2/index`, srv.token)).body);
  chunkId = [...idx.distinctIds()][0]!;
});
afterAll(async () => {
  await srv?.close();
  tmp?.cleanup();
});

describe('immutable answers', () => {
  const urls = () => [
    '/api/v1/images/os/versions/2/index', '/api/v1/images/os/versions/2/layer', '/api/v1/images/os/versions/2/delta', `/chunks/${chunkId}`,
  ];

  it('carry the immutable cache-control and a strong etag, and answer 304 to it (or to *) with no body', async () => {
    for (const url of urls()) {
      const r = await get(url, site.tokens.alice);
      expect(r.status, url).toBe(200);
      expect(r.body.length, url).toBeGreaterThan(0);
      expect(r.headers.get('cache-control'), url).toBe(IMMUTABLE);
      const etag = r.headers.get('etag')!;
      expect(etag, url).toMatch(/^"[0-9a-f]{32,64}"$/);
      for (const inm of [etag, `W/${etag}`, `"other", ${etag}`, '*']) {
        const nm = await get(url, site.tokens.alice2, { 'if-none-match': inm });
        expect([nm.status, nm.body.length, nm.headers.get('etag'), nm.headers.get('cache-control')], `${url} ${inm}`).toEqual([304, 0, etag, IMMUTABLE]);
      }
      const miss = await get(url, site.tokens.alice, { 'if-none-match': '"0000"' });
      expect(miss.status).toBe(200);
      expect(miss.body.equals(r.body)).toBe(true);
    }
  });

  it('a matching If-None-Match without a valid token is still 401/403, no-store, and tells nothing of the body', async () => {
    const bob = '/api/v1/images/os/versions/3/delta';
    const ok = await get(bob, site.tokens.bob);
    expect(ok.status).toBe(200);
    const inm = { 'if-none-match': ok.headers.get('etag')! };
    const cases: Array<[string | undefined, number, string]> = [
      [undefined, 401, 'DF_ERR_UNAUTHORIZED'], ['dft_not-a-token', 401, 'DF_ERR_UNAUTHORIZED'],
      [site.tokens.revoked, 401, 'DF_ERR_UNAUTHORIZED'], [site.tokens.alice, 403, 'DF_ERR_FORBIDDEN'],
    ];
    for (const [token, status, code] of cases) {
      for (const h of [inm, { 'if-none-match': '*' }, {}]) {
        const r = await get(bob, token, h);
        expect([r.status, JSON.parse(r.body.toString()).code, r.headers.get('cache-control'), r.headers.get('etag')]).toEqual([status, code, 'no-store', null]);
      }
    }
    // A chunk needs a token too.
    expect((await get(`/chunks/${chunkId}`, undefined, { 'if-none-match': `"${chunkId}"` })).status).toBe(401);
  });
});

describe('mutable and secret answers', () => {
  it('are no-store: refs, versions lists, desktops, tokens, events, boot scripts, metrics, errors', async () => {
    const a = site.tokens.alice;
    const checks: Array<[string, string | undefined]> = [
      ['/api/v1/images/os/refs', a], ['/api/v1/images/os/versions', a], ['/api/v1/images/os', a], ['/api/v1/images/os/versions/2', a],
      ['/api/v1/images/os/resolve?rev=main', a], ['/api/v1/desktops/alice', a], ['/api/v1/tokens', srv.token], ['/api/v1/events', srv.token],
      ['/api/v1/endpoints', srv.token], ['/boot/ipxe', undefined], ['/boot/ipxe?mac=52:54:00:00:00:01', undefined], ['/metrics', srv.token],
      ['/api/v1/images/os/versions/99/delta', a], ['/nope', undefined],
    ];
    for (const [url, token] of checks) expect((await get(url, token)).headers.get('cache-control'), url).toBe('no-store');
    const lease = await fetch(`${srv.url}/api/v1/desktops/alice/lease`, { method: 'POST', headers: { authorization: `Bearer ${a}`, 'content-type': 'application/json' }, body: JSON.stringify({ holder: 'ep-x' }) });
    expect(lease.status).toBe(200);
    expect(lease.headers.get('cache-control')).toBe('no-store');
  });
});
