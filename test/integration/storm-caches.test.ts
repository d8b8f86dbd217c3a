/**
 * Issue 12: what a boot storm's caches remember (catalog reads on SQLite, the signed head, layer
 * bytes) is never stale to an endpoint. A ref move, a new version and a revoked token are seen by the
 * very next request, and a desktop's signed head changes with them.
 */
import { copyFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStatement, ringOf, type HeadBody, type Signed } from '../../src/sign/statements.js';
import { baseDisk, patch, prng } from '../helpers/disk.js';
import { cli, startInProcess, tempDir } from '../helpers/server.js';

const MiB = 1024 * 1024;
let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startInProcess>>;
let admin: Record<string, string>;
let desk: string;
const f = (n: string) => path.join(tmp.dir, n);

const get = (url: string, token = desk) => fetch(`${srv.url}${url}`, { headers: { authorization: `Bearer ${token}` } });
const json = async (url: string, token = desk) => {
  const r = await get(url, token);
  expect(r.status, url).toBe(200);
  return (await r.json()) as Record<string, unknown>;
};
type HeadAnswer = { head: Signed; chain: { root: { key: string } } };
const headOf = (a: HeadAnswer) => openStatement<HeadBody>(a.head, 'head', ringOf([Buffer.from(a.chain.root.key, 'base64')]), 'head');

beforeAll(async () => {
  tmp = tempDir('df-storm-caches-');
  srv = await startInProcess(f('data'));
  admin = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  baseDisk(f('v1.img'), 1);
  copyFileSync(f('v1.img'), f('v2.img'));
  patch(f('v2.img'), 4 * MiB, prng(7)(1 * MiB));
  copyFileSync(f('v2.img'), f('v3.img'));
  patch(f('v3.img'), 12 * MiB, prng(8)(1 * MiB));
  expect((await cli(['image', 'create', 'win', '--from', f('v1.img')], admin)).code).toBe(0);
  expect((await cli(['image', 'publish', 'win', '--from', f('v2.img')], admin)).code).toBe(0);
  expect((await cli(['ref', 'set', 'win', 'main', '1', '--expect', '2'], admin)).code).toBe(0);
  expect((await cli(['desktop', 'create', 'kiosk', '--image', 'win', '--mode', 'restore'], admin)).code).toBe(0);
  desk = (await cli(['desktop', 'token', 'kiosk'], admin)).stdout.trim();
}, 120_000);
afterAll(async () => {
  await srv?.close();
  tmp?.cleanup();
});

describe('storm caches', () => {
  it('a ref move is seen by the next request: desktop head, signed head (signed again, with the rollback), versions, layer access', async () => {
    const a1 = (await json('/api/v1/desktops/kiosk/signed-head')) as unknown as HeadAnswer;
    const again = (await json('/api/v1/desktops/kiosk/signed-head')) as unknown as HeadAnswer;
    expect(headOf(a1).version).toBe(1);
    expect(again.head).toEqual(a1.head); // one signature shared while nothing changed
    expect((await get('/api/v1/images/win/versions/2/layer')).status).toBe(403); // 2 is not on main's line
    expect((await cli(['ref', 'set', 'win', 'main', '2', '--expect', '1'], admin)).code).toBe(0);
    expect((await json('/api/v1/desktops/kiosk')).head).toBe(2);
    const a2 = (await json('/api/v1/desktops/kiosk/signed-head')) as unknown as HeadAnswer;
    expect(headOf(a2).version).toBe(2);
    expect((await get('/api/v1/images/win/versions/2/layer')).status).toBe(200);
    // and back: the signed answer now carries the admin's rollback
    expect((await cli(['ref', 'set', 'win', 'main', '1', '--expect', '2'], admin)).code).toBe(0);
    const a3 = (await json('/api/v1/desktops/kiosk/signed-head')) as unknown as HeadAnswer & { rollback: Signed | null };
    expect(headOf(a3).version).toBe(1);
    expect(a3.rollback).not.toBeNull();
    expect((await get('/api/v1/images/win/versions/2/layer')).status).toBe(403);
  });

  it('a new version is seen by the next request', async () => {
    const before = ((await json('/api/v1/images/win/versions?limit=10', srv.token)).versions as Array<{ version: number }>).map((v) => v.version);
    expect(before).not.toContain(3);
    expect((await cli(['ref', 'set', 'win', 'main', '2', '--expect', '1'], admin)).code).toBe(0);
    expect((await cli(['image', 'publish', 'win', '--from', f('v3.img')], admin)).code).toBe(0);
    const after = ((await json('/api/v1/images/win/versions?ref=main&limit=10')).versions as Array<{ version: number }>).map((v) => v.version);
    expect(after[0]).toBe(3);
    expect((await json('/api/v1/desktops/kiosk')).head).toBe(3);
    expect(headOf((await json('/api/v1/desktops/kiosk/signed-head')) as unknown as HeadAnswer).version).toBe(3);
    const layer = await get('/api/v1/images/win/versions/3/layer');
    expect(layer.status).toBe(200);
    expect((await layer.arrayBuffer()).byteLength).toBeGreaterThan(0);
  });

  it('a revoked token is refused by the next request', async () => {
    const t = (await cli(['desktop', 'token', 'kiosk'], admin)).stdout.trim();
    expect((await get('/api/v1/desktops/kiosk', t)).status).toBe(200);
    const list = (await json('/api/v1/tokens', srv.token)).tokens as Array<{ id: string; scope: string }>;
    const mine = list.filter((x) => x.scope === 'desktop:kiosk').map((x) => x.id);
    expect(mine).toHaveLength(2);
    for (const id of mine) expect((await cli(['token', 'revoke', id], admin)).code).toBe(0);
    expect((await get('/api/v1/desktops/kiosk', t)).status).toBe(401);
    expect((await get('/api/v1/desktops/kiosk', desk)).status).toBe(401);
  });
});
