import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, freePort, startInProcess, tempDir } from '../helpers/server.js';
import { makeSite, type SiteFixture } from '../helpers/site.js';

/** Issue 12: the nginx alternative (deploy/nginx/deskfuse-cache.conf) keeps the same promise: no private bytes without the origin's yes. */
let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startInProcess>>;
let site: SiteFixture;
let nginx: ChildProcess;
let base = '';

beforeAll(async () => {
  if (spawnSync('nginx', ['-v']).status !== 0) throw new Error('nginx is missing: apt-get install -y nginx-light');
  tmp = tempDir('df-nginx-');
  chmodSync(tmp.dir, 0o755);
  srv = await startInProcess(path.join(tmp.dir, 'data'));
  site = await makeSite(srv.url, srv.token, tmp.dir);
  const port = await freePort();
  const conf = readFileSync(path.join(ROOT, 'deploy/nginx/deskfuse-cache.conf'), 'utf8')
    .replace('/var/cache/nginx/deskfuse', path.join(tmp.dir, 'cache'))
    .replace('server 10.0.0.1:8080;', `server ${new URL(srv.url).host};`)
    .replace('listen 8080;', `listen 127.0.0.1:${port};`);
  writeFileSync(path.join(tmp.dir, 'site.conf'), conf);
  writeFileSync(path.join(tmp.dir, 'nginx.conf'), `daemon off; pid ${tmp.dir}/nginx.pid; error_log ${tmp.dir}/error.log; events {} http { access_log off; include ${tmp.dir}/site.conf; }\n`);
  nginx = spawn('nginx', ['-c', path.join(tmp.dir, 'nginx.conf')], { stdio: 'ignore' });
  base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 50; i++) {
    if ((await fetch(`${base}/healthz`).then((r) => r.status, () => 0)) === 200) break;
    await new Promise((r) => setTimeout(r, 100));
  }
}, 120_000);
afterAll(async () => {
  if (nginx && nginx.exitCode === null) {
    const done = new Promise((r) => nginx.once('exit', r));
    nginx.kill('SIGTERM');
    await done;
  }
  await srv?.close();
  tmp?.cleanup();
});

const get = async (url: string, token?: string) => {
  const r = await fetch(`${base}${url}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  return { status: r.status, cache: r.headers.get('x-df-cache'), body: Buffer.from(await r.arrayBuffer()) };
};

describe('site cache (nginx proxy_cache + auth_request)', () => {
  it('serves a cached private body only to tokens the origin accepts', async () => {
    const url = '/api/v1/images/os/versions/3/delta';
    const want = Buffer.from(await (await fetch(`${srv.url}${url}`, { headers: { authorization: `Bearer ${srv.token}` } })).arrayBuffer());
    const first = await get(url, site.tokens.bob);
    const second = await get(url, site.tokens.bob);
    expect([first.status, first.body.equals(want), first.cache]).toEqual([200, true, 'MISS']);
    expect([second.status, second.body.equals(want), second.cache]).toEqual([200, true, 'HIT']);
    for (const [token, status] of [[undefined, 401], ['dft_wrong-wrong', 401], [site.tokens.revoked, 401], [site.tokens.alice, 403]] as const) {
      const r = await get(url, token);
      expect(r.status).toBe(status);
      expect(r.body.includes(want.subarray(0, 64))).toBe(false);
    }
    // Mutable answers pass: the refs a token sees, never cached.
    expect((await get('/api/v1/images/os/refs', site.tokens.alice)).cache).toBeNull();
  });
});
