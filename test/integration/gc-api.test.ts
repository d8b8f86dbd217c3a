import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadServerConfig } from '../../src/config/server.js';
import { baseDisk } from '../helpers/disk.js';
import { cli, startInProcess, tempDir } from '../helpers/server.js';

/** The server's garbage-collection API and CLI: start and poll, the in-process lock, usage, /metrics, config. */
describe('store gc and store usage through the server', () => {
  let tmp: ReturnType<typeof tempDir>;
  let s: Awaited<ReturnType<typeof startInProcess>>;
  let env: Record<string, string>;
  beforeAll(async () => {
    tmp = tempDir('df-gc-api-');
    s = await startInProcess(`${tmp.dir}/data`);
    env = { DESKFUSE_SERVER: s.url, DESKFUSE_TOKEN: s.token };
    baseDisk(`${tmp.dir}/base.img`);
    expect((await cli(['image', 'create', 'a', '--from', `${tmp.dir}/base.img`], env)).code).toBe(0);
  }, 120_000);
  afterAll(async () => {
    await s?.close();
    tmp?.cleanup();
  });

  it('store gc runs on the server and prints its figures; a second one at once is refused with DF_ERR_GC_RUNNING', async () => {
    const auth = { authorization: `Bearer ${s.token}` };
    const first = s.appliance.gc();
    const second = await s.appliance.app.inject({ method: 'POST', url: '/api/v1/store/gc', headers: auth });
    expect(second.statusCode).toBe(409);
    expect(second.json()).toMatchObject({ code: 'DF_ERR_GC_RUNNING' });
    await first;
    const out = await cli(['store', 'gc'], env);
    expect(out.code).toBe(0);
    expect(out.stdout).toMatch(/marked \(referenced\): +\d+ chunks/);
    expect(out.stdout).toMatch(/deleted: +0 chunks/);
    const dry = await cli(['store', 'gc', '--dry-run', '--json'], env);
    expect(dry.json).toMatchObject({ dryRun: true, deleted: { chunks: 0 } });
    const status = (await s.appliance.app.inject({ method: 'GET', url: '/api/v1/store/gc', headers: auth })).json();
    expect(status.lock).toMatchObject({ holder: null, phase: 'done' });
  });

  it('store usage: bytes by kind and by image; /metrics has the gauges', async () => {
    const u = await cli(['store', 'usage', '--json'], env);
    expect(u.code).toBe(0);
    expect(u.json.kinds.chunks.count).toBeGreaterThan(0);
    expect(u.json.images).toEqual([expect.objectContaining({ image: 'a' })]);
    const text = await cli(['store', 'usage'], env);
    expect(text.stdout).toMatch(/^chunks: +\d+ \(/m);
    const m = (await s.appliance.app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${s.token}` } })).body;
    expect(m).toMatch(/deskfuse_store_bytes\{kind="chunks"\} \d+/);
    expect(m).toMatch(/deskfuse_store_image_bytes\{image="a"\} \d+/);
  });

  it('the gc config section is validated with every problem reported', () => {
    expect(() => loadServerConfig({ file: writeJson(tmp.dir, { gc: { intervalSeconds: -1, leaseSeconds: 1, nope: 2 } }) })).toThrow(/gc\.intervalSeconds[\s\S]*gc\.leaseSeconds|gc\.leaseSeconds[\s\S]*gc\.intervalSeconds/);
    expect(loadServerConfig({ flags: { data: tmp.dir } }).gc).toEqual({ intervalSeconds: 86400, graceSeconds: 86400, leaseSeconds: 60 });
  });
});

function writeJson(dir: string, v: unknown): string {
  const f = `${dir}/cfg.json`;
  writeFileSync(f, JSON.stringify(v));
  return f;
}
