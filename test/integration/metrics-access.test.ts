import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeDisk, prng } from '../helpers/disk.js';
import { cli, freePort, startProcess, stopProcess, tempDir } from '../helpers/server.js';

/** Issue 14 point 8: /metrics for a Prometheus scraper, and nothing more (a metrics token, or --metrics-listen). */
let tmp: ReturnType<typeof tempDir>;
let proc: ChildProcess;
let url: string;
let metricsUrl: string;
let admin: string;
const tokens: Record<string, string> = {};

const get = (u: string, token?: string, method = 'GET') => fetch(u, { method, ...(token ? { headers: { authorization: `Bearer ${token}` } } : {}) });

beforeAll(async () => {
  tmp = tempDir('df-metrics-');
  const mport = await freePort();
  const s = await startProcess(path.join(tmp.dir, 'data'), undefined, undefined, { args: ['--metrics-listen', `127.0.0.1:${mport}`] });
  ({ proc, url, token: admin } = s);
  metricsUrl = `http://127.0.0.1:${mport}`;
  const env = { DESKFUSE_SERVER: url, DESKFUSE_TOKEN: admin };
  const img = path.join(tmp.dir, 'base.img');
  makeDisk(img, 1024 * 1024, [{ at: 0, data: prng(1)(64 * 1024) }]);
  expect((await cli(['image', 'create', 'win', '--from', img], env)).code).toBe(0);
  expect((await cli(['desktop', 'create', 'alice', '--image', 'win'], env)).code).toBe(0);
  for (const scope of ['metrics', 'hypervisor', 'desktop:alice']) {
    const r = await fetch(`${url}/api/v1/tokens`, { method: 'POST', headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' }, body: JSON.stringify({ scope }) });
    expect(r.status, scope).toBe(201);
    tokens[scope] = ((await r.json()) as { token: string }).token;
    if (scope === 'metrics') expect(tokens[scope]).toMatch(/^dfm_/); // not to be taken for an admin token (dfa_)
  }
});
afterAll(async () => {
  if (proc) await stopProcess(proc);
  tmp?.cleanup();
});

describe('a metrics token on the main address', () => {
  it('reads /metrics (Prometheus text), as an admin token does', async () => {
    for (const t of [tokens.metrics!, admin]) {
      const r = await get(`${url}/metrics`, t);
      expect(r.status).toBe(200);
      expect(r.headers.get('content-type')).toContain('text/plain');
      expect(await r.text()).toContain('# TYPE deskfuse_http_requests_total counter');
    }
  });

  it('is refused everything else, chunk traffic included (403 DF_ERR_FORBIDDEN)', async () => {
    for (const [method, p] of [['GET', '/api/v1/images'], ['GET', '/api/v1/tokens'], ['GET', `/chunks/${'a'.repeat(64)}`], ['GET', '/api/v1/desktops/alice']]) {
      const r = await get(`${url}${p}`, tokens.metrics, method);
      expect(r.status, p).toBe(403);
      expect(((await r.json()) as { code: string }).code).toBe('DF_ERR_FORBIDDEN');
    }
  });

  it('desktop (agent) and hypervisor tokens may not read /metrics; no token is 401', async () => {
    for (const scope of ['desktop:alice', 'hypervisor']) {
      const r = await get(`${url}/metrics`, tokens[scope]);
      expect(r.status, scope).toBe(403);
      expect(((await r.json()) as { message: string }).message).toContain(`scope ${scope} may not GET /metrics`);
    }
    expect((await get(`${url}/metrics`)).status).toBe(401);
  });
});

describe('--metrics-listen', () => {
  it('serves GET /metrics without a token', async () => {
    const r = await get(`${metricsUrl}/metrics`);
    expect(r.status).toBe(200);
    expect(await r.text()).toContain('deskfuse_http_requests_total{');
  });

  it('serves nothing else: no API, even with an admin token (404)', async () => {
    for (const p of ['/api/v1/images', '/api/v1/tokens', '/healthz', '/boot/ipxe', '/metrics/../api/v1/images']) {
      const r = await get(`${metricsUrl}${p}`, admin);
      expect(r.status, p).toBe(404);
    }
    expect((await get(`${metricsUrl}/metrics`, undefined, 'POST')).status).toBe(404);
  });
});
