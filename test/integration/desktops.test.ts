import type { FastifyInstance } from 'fastify';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { openAppliance, type Appliance } from '../../server/appliance.js';
import { encodeFrame } from '../../src/chunk/frame.js';
import { hashBytes, idHex } from '../../src/chunk/id.js';
import { encodePack, PACK_CONTENT_TYPE } from '../../src/chunk/pack.js';
import { loadServerConfig } from '../../src/config/server.js';
import { encodeLayer } from '../../src/image/layer.js';
import { prng } from '../helpers/disk.js';
import { cli, startInProcess, tempDir } from '../helpers/server.js';

const CS = 64 * 1024;
const VS = 8 * CS;
const rand = prng(11);
const T0 = Date.parse('2026-03-02T08:00:00.000Z');

type Method = 'GET' | 'POST' | 'PUT' | 'DELETE' | 'HEAD';

/** Requests against one app with one token. */
function client(app: FastifyInstance, token: string) {
  return (method: Method, url: string, payload?: unknown, headers: Record<string, string> = {}) =>
    app.inject({ method, url, headers: { authorization: `Bearer ${token}`, ...headers }, ...(payload !== undefined ? { payload: payload as string } : {}) });
}
type Req = ReturnType<typeof client>;

function chunk() {
  const raw = rand(CS);
  return { raw, id: idHex(hashBytes(raw)), frame: encodeFrame(raw) };
}

async function upload(req: Req, n: number): Promise<string[]> {
  const cs = Array.from({ length: n }, chunk);
  const r = await req('POST', '/api/v1/chunks/pack', encodePack(cs.map((c) => ({ id: c.id, rawLength: CS, frame: c.frame }))), { 'content-type': PACK_CONTENT_TYPE });
  expect(r.statusCode, r.payload).toBe(200);
  return cs.map((c) => c.id);
}

async function layer(req: Req, image: string, entries: Array<{ index: number; id: string }>): Promise<string> {
  const bytes = encodeLayer({ geometry: { virtualSize: VS, chunkSize: CS }, hasMasks: false, entries: entries.map((e) => ({ index: e.index, id: Buffer.from(e.id, 'hex') })) });
  const r = await req('POST', `/api/v1/images/${image}/layers`, bytes, { 'content-type': 'application/octet-stream' });
  expect(r.statusCode, r.payload).toBe(201);
  return r.json().layer as string;
}

/** An image with `versions` versions on main (each changes chunk i). */
async function imageWithVersions(req: Req, image: string, versions: number): Promise<void> {
  expect((await req('POST', '/api/v1/images', { name: image, virtualSize: VS, chunkSize: CS })).statusCode).toBe(201);
  for (let v = 1; v <= versions; v++) await publish(req, image, 'main', v === 1 ? null : v - 1);
}

async function publish(req: Req, image: string, ref: string, parent: number | null): Promise<number> {
  const [id] = await upload(req, 1);
  const l = await layer(req, image, [{ index: (parent ?? 0) % 8, id: id! }]);
  const r = await req('POST', `/api/v1/images/${image}/commits`, { parent, ref, layer: l, kind: parent === null ? 'import' : 'publish' });
  expect(r.statusCode, r.payload).toBe(201);
  return r.json().version.version as number;
}

describe('desktops over HTTP', () => {
  let tmp: ReturnType<typeof tempDir>;
  let ap: Appliance;
  let admin: Req;
  let clock = T0;
  const advance = (seconds: number) => void (clock += seconds * 1000);

  beforeEach(async () => {
    tmp = tempDir('df-desk-');
    clock = T0;
    ap = await openAppliance(loadServerConfig({ flags: { data: tmp.dir, logLevel: 'silent' } }), undefined, { now: () => new Date(clock) });
    admin = client(ap.app, ap.newAdminToken!);
    await imageWithVersions(admin, 'win', 2);
    await imageWithVersions(admin, 'other', 1);
  });
  afterEach(async () => {
    await ap.close();
    tmp.cleanup();
  });

  const create = async (body: Record<string, unknown>) => {
    const r = await admin('POST', '/api/v1/desktops', body);
    expect(r.statusCode, r.payload).toBe(201);
    return r.json();
  };
  const mint = async (name: string, ttlSeconds?: number) => {
    const r = await admin('POST', `/api/v1/desktops/${name}/tokens`, ttlSeconds === undefined ? {} : { ttlSeconds });
    expect(r.statusCode, r.payload).toBe(201);
    return r.json() as { token: string; scope: string; expiresAt: string };
  };
  /** A layer on `image` that changes one chunk (chunks uploaded with `req`). */
  const change = async (req: Req, image = 'win') => layer(req, image, [{ index: 7, id: (await upload(req, 1))[0]! }]);

  it('creates persistent and restore desktops; their head is their ref or the ref they follow', async () => {
    const alice = await create({ name: 'alice', image: 'win' });
    expect(alice).toEqual({
      name: 'alice', image: 'win', mode: 'persistent', follows: 'main', ref: 'desktops/alice', head: 2, lease: null, createdAt: new Date(T0).toISOString(),
    });
    const kiosk = await create({ name: 'kiosk', image: 'win', mode: 'restore' });
    expect(kiosk).toMatchObject({ mode: 'restore', follows: 'main', ref: null, head: 2 });
    expect((await admin('GET', '/api/v1/images/win/refs/desktops/alice')).json().version).toBe(2);
    expect((await admin('GET', '/api/v1/images/win/reflog?ref=desktops/alice')).json().entries[0]).toMatchObject({ oldVersion: null, newVersion: 2, reason: 'desktop create from main@2' });

    // From another ref; a publish on main reaches the restore desktop, not the persistent one.
    await admin('PUT', '/api/v1/images/win/refs/test', { version: 1, expect: null });
    expect((await create({ name: 'bob', image: 'win', from: 'test' })).head).toBe(1);
    await publish(admin, 'win', 'main', 2);
    const list = (await admin('GET', '/api/v1/desktops')).json().desktops;
    expect(list.map((d: { name: string; head: number }) => [d.name, d.head])).toEqual([['alice', 2], ['bob', 1], ['kiosk', 3]]);
    expect((await admin('GET', '/api/v1/desktops/kiosk')).json().head).toBe(3);

    const dup = await admin('POST', '/api/v1/desktops', { name: 'alice', image: 'other' });
    expect([dup.statusCode, dup.json().code]).toEqual([409, 'DF_ERR_DESKTOP_EXISTS']);
    expect((await admin('POST', '/api/v1/desktops', { name: 'x', image: 'nope' })).json().code).toBe('DF_ERR_IMAGE_NOT_FOUND');
    expect((await admin('POST', '/api/v1/desktops', { name: 'x', image: 'win', from: 'nope' })).json().code).toBe('DF_ERR_REF_NOT_FOUND');
    expect((await admin('POST', '/api/v1/desktops', { name: 'Bad/Name', image: 'win' })).json()).toMatchObject({ code: 'DF_ERR_BAD_REQUEST', field: 'body.name' });
    expect((await admin('POST', '/api/v1/desktops', { name: 'x', image: 'win', mode: 'sometimes' })).statusCode).toBe(400);
    const none = await admin('GET', '/api/v1/desktops/nobody');
    expect([none.statusCode, none.json().code]).toEqual([404, 'DF_ERR_DESKTOP_NOT_FOUND']);
    // a refused create changed nothing
    expect((await admin('GET', '/api/v1/desktops')).json().desktops).toHaveLength(3);
    expect((await admin('GET', '/api/v1/images/other/refs')).json().refs.map((r: { name: string }) => r.name)).toEqual(['main']);
  });

  it('a desktop token may use its desktop and image only; everything else is 403 naming the scope', async () => {
    await create({ name: 'alice', image: 'win' });
    await create({ name: 'bob', image: 'other' });
    const t = await mint('alice');
    expect(t.token).toMatch(/^dfd_[A-Za-z0-9_-]{43}$/);
    expect(t).toMatchObject({ scope: 'desktop:alice', expiresAt: new Date(T0 + 30 * 86400_000).toISOString() });
    const desk = client(ap.app, t.token);
    const [id] = await upload(desk, 1); // chunk routes: any token
    const l = await layer(desk, 'win', [{ index: 7, id: id! }]);
    const lease = (await desk('POST', '/api/v1/desktops/alice/lease', { holder: 'endpoint-1' })).json();

    const allowed: Array<[Method, string, unknown?]> = [
      ['GET', '/api/v1/desktops/alice'],
      ['GET', '/api/v1/images/win'],
      ['GET', '/api/v1/images/win/versions'],
      ['GET', '/api/v1/images/win/versions/2'],
      ['GET', '/api/v1/images/win/versions/2/index'],
      ['GET', '/api/v1/images/win/versions/2/layer'],
      ['GET', '/api/v1/images/win/resolve?rev=desktops/alice'],
      ['GET', '/api/v1/images/win/refs'],
      ['GET', '/api/v1/images/win/refs/desktops/alice'],
      ['GET', '/api/v1/images/win/reflog'],
      ['GET', `/chunks/${id}`],
      ['HEAD', `/chunks/${id}`],
      ['POST', '/api/v1/chunks/missing', { ids: [id] }],
      ['POST', '/api/v1/chunks/fetch', { ids: [id] }],
      ['POST', '/api/v1/desktops/alice/lease', { holder: 'endpoint-1' }],
      ['POST', '/api/v1/desktops/alice/commits', { parent: 2, layer: l, kind: 'voi-commit', fencing: lease.fencing }],
    ];
    for (const [m, url, body] of allowed) {
      const r = await desk(m, url, body);
      expect(r.statusCode, `${m} ${url}: ${r.payload}`).toBeLessThan(300);
    }
    expect((await admin('GET', '/api/v1/images/win/refs/desktops/alice')).json().version).toBe(3);

    const denied: Array<[Method, string, unknown?]> = [
      ['GET', '/api/v1/images'],
      ['POST', '/api/v1/images', { name: 'mine', virtualSize: VS, chunkSize: CS }],
      ['GET', '/api/v1/images/other'],
      ['GET', '/api/v1/images/other/versions/1/index'],
      ['POST', '/api/v1/images/other/layers', Buffer.alloc(8)],
      ['POST', '/api/v1/images/win/commits', { parent: 3, ref: 'main', layer: l, kind: 'publish' }],
      ['PUT', '/api/v1/images/win/refs/main', { version: 1, expect: 2 }],
      ['PUT', '/api/v1/images/win/refs/desktops/alice', { version: 1, expect: 3 }],
      ['GET', '/api/v1/desktops'],
      ['POST', '/api/v1/desktops', { name: 'carol', image: 'win' }],
      ['GET', '/api/v1/desktops/bob'],
      ['POST', '/api/v1/desktops/bob/lease', { holder: 'endpoint-1' }],
      ['POST', '/api/v1/desktops/bob/commits', { parent: 1, layer: l, kind: 'voi-commit', fencing: 1 }],
      ['POST', '/api/v1/desktops/alice/tokens', {}],
      ['POST', '/api/v1/desktops/alice/reset', {}],
      ['POST', '/api/v1/desktops/alice/lease/break'],
      ['GET', '/metrics'],
    ];
    for (const [m, url, body] of denied) {
      const r = await desk(m, url, body, Buffer.isBuffer(body) ? { 'content-type': 'application/octet-stream' } : {});
      expect(r.statusCode, `${m} ${url}: ${r.payload}`).toBe(403);
      expect(r.json()).toMatchObject({ code: 'DF_ERR_FORBIDDEN', scope: 'desktop:alice', method: m });
      expect(r.json().message).toContain('desktop:alice');
    }
    // nothing the refused calls asked for happened
    expect((await admin('GET', '/api/v1/images')).json().images.map((i: { name: string }) => i.name)).toEqual(['other', 'win']);
    expect((await admin('GET', '/api/v1/images/win/refs/main')).json().version).toBe(2);
    expect((await admin('GET', '/api/v1/desktops/bob')).json().lease).toBeNull();
    // unknown routes stay 404; a bad token stays 401
    expect((await desk('GET', '/api/v1/nowhere')).statusCode).toBe(404);
    expect((await client(ap.app, 'dfd_nope')('GET', '/api/v1/desktops/alice')).json().code).toBe('DF_ERR_UNAUTHORIZED');
    // token ttl limits
    expect((await admin('POST', '/api/v1/desktops/alice/tokens', { ttlSeconds: 366 * 86400 })).json()).toMatchObject({ code: 'DF_ERR_BAD_REQUEST', field: 'body.ttlSeconds' });
    expect((await admin('POST', '/api/v1/desktops/nobody/tokens', {})).json().code).toBe('DF_ERR_DESKTOP_NOT_FOUND');
  });

  it('an expired desktop token is 401 DF_ERR_TOKEN_EXPIRED; the admin token does not expire', async () => {
    await create({ name: 'alice', image: 'win' });
    const t = await mint('alice', 60);
    expect(t.expiresAt).toBe(new Date(T0 + 60_000).toISOString());
    const desk = client(ap.app, t.token);
    expect((await desk('GET', '/api/v1/desktops/alice')).statusCode).toBe(200);
    advance(59);
    expect((await desk('GET', '/api/v1/images/win')).statusCode).toBe(200);
    advance(1);
    const r = await desk('GET', '/api/v1/desktops/alice');
    expect(r.statusCode).toBe(401);
    expect(r.json()).toMatchObject({ code: 'DF_ERR_TOKEN_EXPIRED', scope: 'desktop:alice', expiresAt: t.expiresAt });
    expect((await desk('GET', `/chunks/${'a'.repeat(64)}`)).json().code).toBe('DF_ERR_TOKEN_EXPIRED');
    advance(10 * 365 * 86400);
    expect((await admin('GET', '/api/v1/desktops/alice')).statusCode).toBe(200);
    // a new token works again (no body: the default ttl)
    const fresh = await admin('POST', '/api/v1/desktops/alice/tokens');
    expect(fresh.json().expiresAt).toBe(new Date(clock + 30 * 86400_000).toISOString());
    expect((await client(ap.app, fresh.json().token)('GET', '/api/v1/desktops/alice')).statusCode).toBe(200);
  });

  it('leases: one holder at a time, renewal, forced takeover with a higher fencing, release, break, expiry', async () => {
    await create({ name: 'alice', image: 'win' });
    const desk = client(ap.app, (await mint('alice')).token);
    const acquire = (holder: string, extra: Record<string, unknown> = {}) => desk('POST', '/api/v1/desktops/alice/lease', { holder, ...extra });

    const a = await acquire('endpoint-1');
    expect(a.statusCode).toBe(200);
    const since = new Date(T0).toISOString();
    expect(a.json()).toEqual({ desktop: 'alice', holder: 'endpoint-1', fencing: 1, since, expiresAt: new Date(T0 + 3600_000).toISOString(), takenFrom: null });

    advance(5);
    const held = await acquire('vdi-7');
    expect(held.statusCode).toBe(409);
    expect(held.json()).toMatchObject({ code: 'DF_ERR_LEASE_HELD', holder: 'endpoint-1', since, expiresAt: a.json().expiresAt });
    expect(held.json().message).toBe(`desktop alice is held by endpoint-1 since ${since}; ask an admin to break the lease or retry with force`);

    advance(5);
    const { takenFrom, ...renewed } = (await acquire('endpoint-1', { ttlSeconds: 600 })).json();
    expect(renewed).toMatchObject({ holder: 'endpoint-1', fencing: 1, since, expiresAt: new Date(clock + 600_000).toISOString() });
    expect(takenFrom).toBeNull();
    expect((await desk('GET', '/api/v1/desktops/alice')).json().lease).toEqual(renewed);

    // a forced take-over names the lease it took
    const forced = (await acquire('vdi-7', { force: true })).json();
    expect(forced).toMatchObject({ holder: 'vdi-7', fencing: 2, since: new Date(clock).toISOString(), takenFrom: { holder: 'endpoint-1', fencing: 1, since } });

    // the old holder lost it: its release is refused, naming the current one
    const lost = await desk('DELETE', '/api/v1/desktops/alice/lease?fencing=1');
    expect(lost.statusCode).toBe(409);
    expect(lost.json()).toMatchObject({ code: 'DF_ERR_LEASE_LOST', holder: 'vdi-7', fencing: 2 });
    expect((await desk('DELETE', '/api/v1/desktops/alice/lease?fencing=2')).json()).toEqual({ released: true });
    expect((await desk('DELETE', '/api/v1/desktops/alice/lease?fencing=2')).json()).toEqual({ released: true }); // a retried release
    expect((await desk('GET', '/api/v1/desktops/alice')).json().lease).toBeNull();

    // the fencing counter survives the release; break (admin) frees it
    expect((await acquire('endpoint-1')).json().fencing).toBe(3);
    const broken = (await admin('POST', '/api/v1/desktops/alice/lease/break')).json();
    expect(broken.broken).toMatchObject({ holder: 'endpoint-1', fencing: 3 });
    expect((await admin('POST', '/api/v1/desktops/alice/lease/break')).json()).toEqual({ broken: null });

    // an expired lease is free for anyone, with a new fencing
    expect((await acquire('endpoint-2', { ttlSeconds: 10 })).json().fencing).toBe(4);
    advance(10);
    expect((await acquire('endpoint-3')).json()).toMatchObject({ holder: 'endpoint-3', fencing: 5 });

    // bad input
    expect((await acquire('x', { ttlSeconds: 5 })).json()).toMatchObject({ code: 'DF_ERR_BAD_REQUEST', field: 'body.ttlSeconds' });
    expect((await acquire('')).json()).toMatchObject({ code: 'DF_ERR_BAD_REQUEST', field: 'body.holder' });
    expect((await acquire('h'.repeat(201))).statusCode).toBe(400);
    expect((await desk('DELETE', '/api/v1/desktops/alice/lease')).json()).toMatchObject({ code: 'DF_ERR_BAD_REQUEST', field: 'querystring.fencing' });
  });

  it('concurrent acquisitions: exactly one wins', async () => {
    await create({ name: 'alice', image: 'win' });
    const rs = await Promise.all(Array.from({ length: 12 }, (_, i) => admin('POST', '/api/v1/desktops/alice/lease', { holder: `endpoint-${i}` })));
    const won = rs.filter((r) => r.statusCode === 200);
    expect(won).toHaveLength(1);
    expect(won[0]!.json().fencing).toBe(1);
    expect(rs.filter((r) => r.statusCode === 409 && r.json().code === 'DF_ERR_LEASE_HELD')).toHaveLength(11);
  });

  it('commits: a stale fencing or parent is kept as a conflict and the desktop ref does not move', async () => {
    await create({ name: 'alice', image: 'win' });
    const desk = client(ap.app, (await mint('alice')).token);
    const commit = (body: Record<string, unknown>) => desk('POST', '/api/v1/desktops/alice/commits', { kind: 'voi-commit', ...body });
    const f1 = (await desk('POST', '/api/v1/desktops/alice/lease', { holder: 'endpoint-1' })).json().fencing;
    const f2 = (await desk('POST', '/api/v1/desktops/alice/lease', { holder: 'vdi-7', force: true })).json().fencing;
    expect(f2).toBeGreaterThan(f1);

    // the old holder's commit: stored, but as a conflict
    const stale = await commit({ parent: 2, layer: await change(desk), fencing: f1, holder: 'endpoint-1', message: 'from the office' });
    expect(stale.statusCode).toBe(409);
    const c = stale.json();
    expect(c).toMatchObject({ code: 'DF_ERR_CONFLICT', reason: 'fencing', ref: 'desktops/alice', head: 2, version: { version: 3, parent: 2, kind: 'voi-commit', author: 'endpoint-1', message: 'from the office' } });
    expect(c.conflictRef).toMatch(/^conflicts\/desktops\/alice\/\d{8}T\d{6}-\d{3}Z$/);
    expect((await desk('GET', '/api/v1/desktops/alice')).json().head).toBe(2);
    expect((await desk('GET', `/api/v1/images/win/refs/${c.conflictRef}`)).json().version).toBe(3);
    expect((await admin('GET', `/api/v1/images/win/reflog?ref=${c.conflictRef}`)).json().entries[0].reason).toContain('fencing 1 is not the current lease of desktop alice');

    // the current holder's commit moves the ref; the author defaults to the token's scope
    const ok = await commit({ parent: 2, layer: await change(desk), fencing: f2 });
    expect(ok.statusCode, ok.payload).toBe(201);
    expect(ok.json()).toMatchObject({ outcome: 'fast-forward', ref: 'desktops/alice', version: { version: 4, parent: 2, author: 'desktop:alice' } });
    expect((await desk('GET', '/api/v1/desktops/alice')).json().head).toBe(4);

    // right fencing, stale parent: a conflict for the other reason (conflicts in the same millisecond get distinct refs)
    const p1 = (await commit({ parent: 2, layer: await change(desk), fencing: f2 })).json();
    const p2 = (await commit({ parent: 2, layer: await change(desk), fencing: f2 })).json();
    expect([p1.reason, p1.head, p2.reason]).toEqual(['parent', 4, 'parent']);
    expect([p1.conflictRef, p2.conflictRef]).toEqual([`${c.conflictRef}-2`, `${c.conflictRef}-3`]);

    // an expired lease's fencing is stale too
    advance(3601);
    const late = (await commit({ parent: 4, layer: await change(desk), fencing: f2 })).json();
    expect([late.code, late.reason]).toEqual(['DF_ERR_CONFLICT', 'fencing']);
    // after a release as well
    const f3 = (await desk('POST', '/api/v1/desktops/alice/lease', { holder: 'endpoint-1' })).json().fencing;
    await desk('DELETE', `/api/v1/desktops/alice/lease?fencing=${f3}`);
    expect((await commit({ parent: 4, layer: await change(desk), fencing: f3 })).json().reason).toBe('fencing');
    expect((await desk('GET', '/api/v1/desktops/alice')).json().head).toBe(4);

    // missing chunks: nothing recorded, as for image commits
    const missing = idHex(hashBytes(rand(CS)));
    const l = await layer(desk, 'win', [{ index: 1, id: missing }]);
    const f4 = (await desk('POST', '/api/v1/desktops/alice/lease', { holder: 'endpoint-1' })).json().fencing;
    const m = await commit({ parent: 4, layer: l, fencing: f4 });
    expect(m.statusCode).toBe(409);
    expect(m.json()).toMatchObject({ code: 'DF_ERR_CHUNKS_MISSING', missing: [missing] });
    expect((await admin('GET', '/api/v1/images/win')).json().versions).toBe(8);
    expect((await commit({ parent: 4, layer: l, fencing: f4, kind: 'publish' })).json().field).toBe('body.kind');

    const metrics = (await admin('GET', '/metrics')).payload;
    expect(metrics).toContain('deskfuse_commits_total{outcome="conflict"} 5');
  });

  it('a restore desktop refuses commits and resets', async () => {
    await create({ name: 'kiosk', image: 'win', mode: 'restore' });
    const desk = client(ap.app, (await mint('kiosk')).token);
    const fencing = (await desk('POST', '/api/v1/desktops/kiosk/lease', { holder: 'endpoint-1' })).json().fencing;
    const r = await desk('POST', '/api/v1/desktops/kiosk/commits', { parent: 2, layer: await change(desk), kind: 'voi-commit', fencing });
    expect(r.statusCode).toBe(400);
    expect(r.json()).toMatchObject({ code: 'DF_ERR_RESTORE_MODE', desktop: 'kiosk', follows: 'main' });
    expect((await admin('GET', '/api/v1/images/win')).json().versions).toBe(2);
    expect((await admin('POST', '/api/v1/desktops/kiosk/reset', {})).json().code).toBe('DF_ERR_RESTORE_MODE');
  });

  it('reset moves the desktop to an image ref by CAS; the old line stays in the ref log', async () => {
    await create({ name: 'alice', image: 'win', from: 'main' });
    const desk = client(ap.app, (await mint('alice')).token);
    const fencing = (await desk('POST', '/api/v1/desktops/alice/lease', { holder: 'endpoint-1' })).json().fencing;
    const own = (await desk('POST', '/api/v1/desktops/alice/commits', { parent: 2, layer: await change(desk), kind: 'voi-commit', fencing })).json().version.version;
    expect(own).toBe(3);
    const v4 = await publish(admin, 'win', 'main', 2);

    // endpoint-1 holds the lease: refused unless forced, and the forced answer names it
    const held = await admin('POST', '/api/v1/desktops/alice/reset');
    expect(held.json()).toMatchObject({ code: 'DF_ERR_LEASE_HELD', holder: 'endpoint-1' });
    const r = await admin('POST', '/api/v1/desktops/alice/reset', { force: true }); // reset to the ref it follows
    expect(r.statusCode, r.payload).toBe(200);
    expect(r.json()).toMatchObject({ name: 'alice', ref: 'desktops/alice', head: v4, dropped: own, overrode: { holder: 'endpoint-1', fencing } });
    await admin('PUT', '/api/v1/images/win/refs/test', { version: 1, expect: null });
    expect((await admin('POST', '/api/v1/desktops/alice/reset', { to: 'test', expect: own, force: true })).json()).toMatchObject({ code: 'DF_ERR_REF_MOVED', head: v4 });
    expect((await admin('POST', '/api/v1/desktops/alice/reset', { to: 'test', expect: v4, force: true })).json().head).toBe(1);
    const log = (await admin('GET', '/api/v1/images/win/reflog?ref=desktops/alice')).json().entries;
    expect(log.map((e: { oldVersion: number | null; newVersion: number; reason: string }) => [e.oldVersion, e.newVersion, e.reason])).toEqual([
      [v4, 1, 'reset to test@1'], [own, v4, `reset to main@${v4}`], [2, own, 'voi-commit'], [null, 2, 'desktop create from main@2'],
    ]);
    expect((await admin('GET', `/api/v1/images/win/versions/${own}`)).statusCode).toBe(200);
    // the endpoint's next commit on the old head is kept as a conflict, not lost
    expect((await desk('POST', '/api/v1/desktops/alice/commits', { parent: own, layer: await change(desk), kind: 'voi-commit', fencing })).json().reason).toBe('parent');
    expect((await admin('POST', '/api/v1/desktops/alice/reset', { to: 'nope', force: true })).json().code).toBe('DF_ERR_REF_NOT_FOUND');
    // an image commit names the reason too
    const img = await admin('POST', '/api/v1/images/win/commits', { parent: 1, ref: 'main', layer: await change(admin), kind: 'publish' });
    expect(img.json()).toMatchObject({ code: 'DF_ERR_CONFLICT', reason: 'parent', head: v4 });
  });
});

describe('deskfuse desktop (built CLI)', () => {
  let tmp: ReturnType<typeof tempDir>;
  let srv: Awaited<ReturnType<typeof startInProcess>>;
  let env: Record<string, string>;

  beforeAll(async () => {
    tmp = tempDir('df-desk-cli-');
    srv = await startInProcess(`${tmp.dir}/data`);
    env = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
    await imageWithVersions(client(srv.appliance.app, srv.token), 'win', 2);
  });
  afterAll(async () => {
    await srv.close();
    tmp.cleanup();
  });

  it('create, token, show with the desktop token, list refused to it, lease break, reset', async () => {
    const c = await cli(['desktop', 'create', 'alice', '--image', 'win', '--json'], env);
    expect(c.code, c.stderr).toBe(0);
    expect(c.json).toMatchObject({ name: 'alice', mode: 'persistent', ref: 'desktops/alice', head: 2 });
    const r = await cli(['desktop', 'create', 'kiosk', '--image', 'win', '--mode', 'restore'], env);
    expect(r.stdout).toBe('desktop kiosk (restore) on win: follows main, now version 2'); // execa strips the last newline

    const t = await cli(['desktop', 'token', 'alice', '--ttl', '3600'], env);
    expect(t.code, t.stderr).toBe(0);
    expect(t.stdout).toMatch(/^dfd_[A-Za-z0-9_-]{43}$/); // the token alone on stdout (its scope and expiry go to stderr)
    expect(t.stderr).toContain('desktop:alice');
    const token = t.stdout.trim();

    const show = await cli(['desktop', 'show', 'alice', '--json'], { ...env, DESKFUSE_TOKEN: token });
    expect(show.code, show.stderr).toBe(0);
    expect(show.json).toMatchObject({ name: 'alice', head: 2, lease: null });
    const denied = await cli(['desktop', 'list', '--token', token], env);
    expect(denied.code).toBe(1);
    expect(denied.stderr).toContain('DF_ERR_FORBIDDEN');
    expect(denied.stderr).toContain('desktop:alice');

    await fetch(`${srv.url}/api/v1/desktops/alice/lease`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ holder: 'endpoint-9' }) });
    const list = await cli(['desktop', 'list'], env);
    expect(list.stdout).toMatch(/alice\s+win\s+persistent\s+desktops\/alice\s+2\s+endpoint-9 \(fencing 1\)/);
    expect(list.stdout).toMatch(/kiosk\s+win\s+restore\s+follows main\s+2\s+-/);
    const br = await cli(['desktop', 'lease', 'break', 'alice', '--json'], env);
    expect(br.json.broken).toMatchObject({ holder: 'endpoint-9', fencing: 1 });
    const reset = await cli(['desktop', 'reset', 'alice', '--to', 'main'], env);
    expect(reset.stdout).toBe('desktop alice: desktops/alice is now version 2 (reset to main); dropped head v2 (kept in the ref log)');
    const bad = await cli(['desktop', 'create', 'x', '--image', 'win', '--mode', 'sometimes'], env);
    expect(bad.code).toBe(2);
  });
});
