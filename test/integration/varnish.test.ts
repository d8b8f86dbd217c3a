import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChunkIndex } from '../../src/image/chunk-index.js';
import { prng } from '../helpers/disk.js';
import { startProxy, type TestProxy } from '../helpers/proxy.js';
import { cli, startInProcess, tempDir } from '../helpers/server.js';
import { makeSite, type SiteFixture } from '../helpers/site.js';
import { startVarnish, type Varnish } from '../helpers/varnish.js';

/**
 * Issue 12: a site cache in front of the server — real Varnish (Debian's) with deploy/varnish/deskfuse.vcl.
 * client → varnishd → counting proxy (what the origin sent: test/helpers/proxy.ts) → deskfuse server.
 * A second endpoint's update comes from the cache (origin bytes once per site), a request without a
 * valid token gets no private bytes from it, the boot stage is served from it, mutable answers are never stale.
 */
let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startInProcess>>;
let proxy: TestProxy;
let varnish: Varnish;
let site: SiteFixture;
/** Every response the origin sent: method, path, status, body bytes. */
const origin: Array<{ method: string; url: string; status: number; bytes: number }> = [];
const INITRD = prng(5)(2 * 1024 * 1024 + 3);
const KERNEL = prng(6)(150 * 1024);
const stageHash = (b: Buffer) => createHash('sha256').update(b).digest('hex').slice(0, 32);

interface Got { status: number; headers: Headers; body: Buffer }
const get = async (base: string, url: string, token?: string, headers: Record<string, string> = {}): Promise<Got> => {
  const r = await fetch(`${base}${url}`, { headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers } });
  return { status: r.status, headers: r.headers, body: Buffer.from(await r.arrayBuffer()) };
};
const viaCache = (url: string, token?: string, headers?: Record<string, string>) => get(varnish.url, url, token, headers);
const direct = (url: string) => get(srv.url, url, srv.token);
/** What the origin sent for this path (query left out) since `from`. */
const sent = (url: string, from = 0) => origin.slice(from).filter((o) => o.url === url.split('?')[0]);
const bodyBytes = (url: string, from = 0) => sent(url, from).reduce((n, o) => n + o.bytes, 0);

beforeAll(async () => {
  tmp = tempDir('df-varnish-');
  const boot = path.join(tmp.dir, 'boot');
  mkdirSync(boot);
  writeFileSync(path.join(boot, 'initrd.img'), INITRD);
  writeFileSync(path.join(boot, 'vmlinuz'), KERNEL);
  srv = await startInProcess(path.join(tmp.dir, 'data'), { bootDir: boot });
  site = await makeSite(srv.url, srv.token, tmp.dir);
  proxy = await startProxy(srv.url, {
    onResponse: (info, body) => {
      origin.push({ method: info.method, url: info.url.split('?')[0]!, status: info.status, bytes: body.length });
      return undefined;
    },
  });
  varnish = await startVarnish(path.join(tmp.dir, 'varnish'), { host: '127.0.0.1', port: Number(new URL(proxy.url).port) });
}, 120_000);
afterAll(async () => {
  await varnish?.stop();
  await proxy?.close();
  await srv?.close();
  tmp?.cleanup();
});

describe('site cache (Varnish)', () => {
  it('a second endpoint gets the update from the cache: byte-exact, the origin sent each body once and 304s after', async () => {
    const idx = ChunkIndex.decode((await direct('/api/v1/images/os/versions/2/index')).body);
    const urls = ['/api/v1/images/os/versions/2/delta', '/api/v1/images/os/versions/2/layer', '/api/v1/images/os/versions/2/index', `/chunks/${[...idx.distinctIds()][0]}`];
    const from = origin.length;
    for (const url of urls) {
      const want = (await direct(url)).body;
      expect(want.length, url).toBeGreaterThan(0);
      const start = origin.length;
      const tickets: string[] = [];
      for (const [who, token] of [['alice', site.tokens.alice], ['alice2', site.tokens.alice2], ['bob', site.tokens.bob], ['admin', site.tokens.admin]] as const) {
        const r = await viaCache(url, token);
        expect([r.status, r.body.equals(want)], `${who} ${url}`).toEqual([200, true]);
        expect(r.headers.get('x-df-cache'), `${who} ${url}`).toBe(who === 'alice' ? 'miss' : 'hit');
        if (url.endsWith('/delta')) tickets.push(r.headers.get('x-deskfuse-ticket') ?? '');
      }
      // The origin: one full answer (the first miss), then a header-only check per request.
      const o = sent(url, start);
      expect(o.filter((x) => x.status === 200 && x.method === 'GET'), url).toHaveLength(1);
      expect(o.filter((x) => x.status === 304 && x.bytes === 0), url).toHaveLength(4);
      expect(bodyBytes(url, start), url).toBe(want.length);
      // Each client got its own admission ticket, never the one stored with the first fetch.
      if (url.endsWith('/delta')) expect(new Set(tickets).size).toBe(4);
      // A client's own If-None-Match through the cache: 304, no body.
      const etag = (await direct(url)).headers.get('etag')!;
      const nm = await viaCache(url, site.tokens.alice2, { 'if-none-match': etag });
      expect([nm.status, nm.body.length]).toEqual([304, 0]);
    }
    const total = urls.reduce((n, u) => n + bodyBytes(u, from), 0);
    expect(total).toBe((await Promise.all(urls.map(async (u) => (await direct(u)).body.length))).reduce((a, b) => a + b, 0));
  });

  it('no valid token, no private bytes: refused through the cache right after a valid fetch cached the body', async () => {
    const url = '/api/v1/images/os/versions/3/delta'; // bob's line alone
    const want = (await direct(url)).body;
    const ok = await viaCache(url, site.tokens.bob);
    expect([ok.status, ok.body.equals(want)]).toEqual([200, true]);
    expect((await viaCache(url, site.tokens.bob)).headers.get('x-df-cache')).toBe('hit');
    const etag = ok.headers.get('etag')!;
    const cases: Array<[string, string | undefined, number, string]> = [
      ['no token', undefined, 401, 'DF_ERR_UNAUTHORIZED'], ['wrong token', 'dft_wrong-wrong-wrong', 401, 'DF_ERR_UNAUTHORIZED'],
      ['revoked token', site.tokens.revoked, 401, 'DF_ERR_UNAUTHORIZED'], ["another desktop's token", site.tokens.alice, 403, 'DF_ERR_FORBIDDEN'],
    ];
    for (const [what, token, status, code] of cases) {
      for (const h of [{}, { 'if-none-match': etag }, { 'if-none-match': '*' }] as Array<Record<string, string>>) {
        const r = await viaCache(url, token, h);
        expect([r.status, JSON.parse(r.body.toString()).code, r.headers.get('x-df-cache')], `${what} ${JSON.stringify(h)}`).toEqual([status, code, 'refused']);
        expect(r.body.length).toBeLessThan(1000);
      }
    }
  });

  it('concurrent valid and invalid requests for an uncached private body: waiters never get a body fetched with another token', async () => {
    // A desktop-private layer, and a 1 MiB chunk only bob's version has (any valid token reads chunks).
    const ids = async (v: number) => new Set(ChunkIndex.decode((await direct(`/api/v1/images/os/versions/${v}/index`)).body).distinctIds());
    const main = await ids(2);
    const chunk = [...(await ids(3))].find((id) => !main.has(id))!;
    for (const [url, bad] of [
      ['/api/v1/images/os/versions/3/layer', [undefined, site.tokens.alice, site.tokens.revoked, 'dft_nope-nope-nope']],
      [`/chunks/${chunk}`, [undefined, site.tokens.revoked, 'dft_nope-nope-nope']],
    ] as const) {
      const want = (await direct(url)).body;
      const start = origin.length;
      const reqs = Array.from({ length: 24 }, (_, k) => (k % 2 === 0 ? { good: true, token: site.tokens.bob } : { good: false, token: bad[k % bad.length] }));
      const got = await Promise.all(reqs.map(async (q) => ({ ...q, r: await viaCache(url, q.token) })));
      for (const g of got) {
        if (g.good) expect([g.r.status, g.r.body.equals(want)], url).toEqual([200, true]);
        else {
          expect([401, 403], url).toContain(g.r.status);
          expect(g.r.body.length, url).toBeLessThan(1000);
          expect(JSON.parse(g.r.body.toString()).code, url).toMatch(/^DF_ERR_(UNAUTHORIZED|FORBIDDEN)$/);
        }
      }
      // Coalesced: one full answer from the origin for all twelve valid clients.
      const full = sent(url, start).filter((x) => x.status === 200);
      expect(full.map((x) => [x.method, x.bytes]), url).toEqual([['GET', want.length]]);
    }
  });

  it('the hashed boot stage: public, the second fetch (another MAC) from the cache, byte-exact; a stale hash is not cached', async () => {
    const url = `/boot/stage/${stageHash(INITRD)}/initrd.img`;
    const start = origin.length;
    const a = await viaCache(`${url}?mac=52:54:00:00:00:01`);
    const b = await viaCache(`${url}?mac=52:54:00:00:00:02`);
    for (const r of [a, b]) expect([r.status, r.body.equals(INITRD)]).toEqual([200, true]);
    expect([a.headers.get('x-df-cache'), b.headers.get('x-df-cache')]).toEqual(['miss', 'hit']);
    expect(sent(url, start)).toHaveLength(1);
    expect(bodyBytes(url, start)).toBe(INITRD.length);
    const stale = `/boot/stage/${'a'.repeat(32)}/vmlinuz`;
    for (let i = 0; i < 2; i++) expect((await viaCache(stale)).status).toBe(404);
    expect(sent(stale, start)).toHaveLength(2);
  });

  it('mutable answers are never stale: refs and versions after a publish, each asked of the origin', async () => {
    const refs = async () => (JSON.parse((await viaCache('/api/v1/images/os/refs', site.tokens.alice)).body.toString()).refs as Array<{ name: string; version: number }>).find((r) => r.name === 'main')?.version;
    expect(await refs()).toBe(2);
    const start = origin.length;
    const img = path.join(tmp.dir, 'site.img');
    writeFileSync(img, prng(9)(64 * 1024), { flag: 'r+' });
    expect((await cli(['image', 'publish', 'os', '--from', img], { DESKFUSE_SERVER: varnish.url, DESKFUSE_TOKEN: srv.token })).code).toBe(0);
    expect(await refs()).toBe(4);
    const versions = JSON.parse((await viaCache('/api/v1/images/os/versions', srv.token)).body.toString()).versions as Array<{ version: number }>;
    expect(versions[0]!.version).toBe(4);
    expect(sent('/api/v1/images/os/refs', start).length).toBeGreaterThanOrEqual(1);
    // The boot script too: asked of the origin every time.
    const n = sent('/boot/ipxe', start).length;
    for (let i = 0; i < 2; i++) expect((await viaCache('/boot/ipxe')).status).toBe(200);
    expect(sent('/boot/ipxe', start).length).toBe(n + 2);
    expect(varnish.stat()['MAIN.cache_hit']).toBeGreaterThan(0);
  });
});
