import { promises as fsp, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openAppliance, type Appliance } from '../../server/appliance.js';
import { encodeFrame, openFrame } from '../../src/chunk/frame.js';
import type { FsChunkStore } from '../../src/chunk/fs-store.js';
import { encodeIdList, hashBytes, ID_LIST_TYPE, idHex } from '../../src/chunk/id.js';
import { decodePack, encodePack, PACK_CONTENT_TYPE } from '../../src/chunk/pack.js';
import { loadServerConfig } from '../../src/config/server.js';
import { ChunkIndex } from '../../src/image/chunk-index.js';
import { decodeLayer, encodeLayer } from '../../src/image/layer.js';
import { ImageShow, RefLogEntry, Version } from '../../src/api/schemas.js';
import { prng } from '../helpers/disk.js';
import { tempDir } from '../helpers/server.js';
import { sendFileStats } from '../../server/send-file.js';

const CS = 64 * 1024;
const VS = 8 * CS;

let tmp: ReturnType<typeof tempDir>;
let ap: Appliance;
let token: string;
const rand = prng(7);

beforeEach(async () => {
  tmp = tempDir();
  ap = await openAppliance(loadServerConfig({ flags: { data: tmp.dir, logLevel: 'silent' } }));
  token = ap.newAdminToken!;
});
afterEach(async () => {
  await ap.close();
  tmp.cleanup();
});

const auth = () => ({ authorization: `Bearer ${token}` });
const req = (method: 'GET' | 'POST' | 'PUT' | 'HEAD', url: string, payload?: unknown, headers: Record<string, string> = {}) =>
  ap.app.inject({ method, url, headers: { ...auth(), ...headers }, ...(payload !== undefined ? { payload: payload as string } : {}) });

function chunk(n = CS) {
  const raw = rand(n);
  return { raw, id: idHex(hashBytes(raw)), frame: encodeFrame(raw) };
}

async function upload(chunks: Array<ReturnType<typeof chunk>>) {
  const body = encodePack(chunks.map((c) => ({ id: c.id, rawLength: c.raw.length, frame: c.frame })));
  const r = await req('POST', '/api/v1/chunks/pack', body, { 'content-type': PACK_CONTENT_TYPE });
  expect(r.statusCode).toBe(200);
}

async function layer(entries: Array<{ index: number; id: string }>) {
  const bytes = encodeLayer({ geometry: { virtualSize: VS, chunkSize: CS }, hasMasks: false, entries: entries.map((e) => ({ index: e.index, id: Buffer.from(e.id, 'hex') })) });
  const r = await req('POST', '/api/v1/images/win/layers', bytes, { 'content-type': 'application/octet-stream' });
  expect(r.statusCode).toBe(201);
  return r.json().layer as string;
}

async function createImage() {
  const r = await req('POST', '/api/v1/images', { name: 'win', virtualSize: VS, chunkSize: CS });
  expect(r.statusCode).toBe(201);
}

describe('auth', () => {
  it('writes the admin token once, 0600, and stores only its hash', async () => {
    const file = path.join(tmp.dir, 'admin.token');
    expect((await fsp.readFile(file, 'utf8')).trim()).toBe(token);
    expect((await fsp.stat(file)).mode & 0o777).toBe(0o600);
    const db = await fsp.readFile(path.join(tmp.dir, 'meta.sqlite'));
    expect(db.includes(Buffer.from(token))).toBe(false);
    await ap.close();
    ap = await openAppliance(loadServerConfig({ flags: { data: tmp.dir, logLevel: 'silent' } }));
    expect(ap.newAdminToken).toBeUndefined();
  });

  it('401 without or with a wrong token; healthz and openapi are public', async () => {
    const none = await ap.app.inject({ method: 'GET', url: '/api/v1/images' });
    expect(none.statusCode).toBe(401);
    expect(none.json().code).toBe('DF_ERR_UNAUTHORIZED');
    const wrong = await ap.app.inject({ method: 'GET', url: '/api/v1/images', headers: { authorization: 'Bearer dfa_nope' } });
    expect(wrong.statusCode).toBe(401);
    expect((await ap.app.inject({ method: 'GET', url: '/chunks/' + 'a'.repeat(64) })).statusCode).toBe(401);
    expect((await ap.app.inject({ method: 'GET', url: '/healthz' })).json()).toEqual({ status: 'ok' });
    const oa = (await ap.app.inject({ method: 'GET', url: '/api/v1/openapi.json' })).json();
    expect(oa.openapi).toBe('3.0.3');
    expect(Object.keys(oa.paths)).toContain('/api/v1/images/{image}/commits');
  });
});

describe('bad input', () => {
  it('malformed JSON and out-of-range numbers are 400 with the field named', async () => {
    const bad = await req('POST', '/api/v1/images', '{"name": "x",', { 'content-type': 'application/json' });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().code).toBe('DF_ERR_BAD_REQUEST');
    const range = await req('POST', '/api/v1/images', { name: 'win', virtualSize: VS, chunkSize: 1 });
    expect(range.statusCode).toBe(400);
    expect(range.json().field).toBe('body.chunkSize');
    const extra = await req('POST', '/api/v1/images', { name: 'win', virtualSize: VS, chunkSize: CS, colour: 'red' });
    expect(extra.statusCode).toBe(400);
    expect(extra.json().message).toContain('colour');
    const geo = await req('POST', '/api/v1/images', { name: 'win', virtualSize: VS, chunkSize: 3 * 4096 });
    expect(geo.statusCode).toBe(400);
    expect(geo.json().code).toBe('DF_ERR_GEOMETRY');
    expect((await req('GET', '/api/v1/images')).json().images).toEqual([]);
  });

  it('chunk PUT whose bytes do not match the id: 400 DF_ERR_CHUNK_INVALID, nothing stored', async () => {
    const c = chunk();
    const other = chunk();
    const r = await req('PUT', `/chunks/${other.id}`, c.frame, { 'content-type': 'application/zstd' });
    expect(r.statusCode).toBe(400);
    expect(r.json()).toMatchObject({ code: 'DF_ERR_CHUNK_INVALID', id: other.id, got: c.id });
    const raw = await req('PUT', `/chunks/${other.id}`, c.raw, { 'content-type': 'application/octet-stream' });
    expect(raw.json().code).toBe('DF_ERR_CHUNK_INVALID');
    expect((await req('HEAD', `/chunks/${other.id}`)).statusCode).toBe(404);
    expect((await req('HEAD', `/chunks/${c.id}`)).statusCode).toBe(404);
    expect((await ap.ctx.chunks.has(other.id)) || (await ap.ctx.chunks.has(c.id))).toBe(false);
  });

  it('a pack with one bad chunk stores nothing', async () => {
    const good = chunk();
    const bad = chunk();
    const body = encodePack([{ id: good.id, rawLength: CS, frame: good.frame }, { id: good.id.replace(/^./, good.id[0] === 'a' ? 'b' : 'a'), rawLength: CS, frame: bad.frame }]);
    const r = await req('POST', '/api/v1/chunks/pack', body, { 'content-type': PACK_CONTENT_TYPE });
    expect(r.statusCode).toBe(400);
    expect(r.json().code).toBe('DF_ERR_CHUNK_INVALID');
    expect(await ap.ctx.chunks.has(good.id)).toBe(false);
    const trunc = await req('POST', '/api/v1/chunks/pack', body.subarray(0, body.length - 5), { 'content-type': PACK_CONTENT_TYPE });
    expect(trunc.json().code).toBe('DF_ERR_DECODE');
  });

  it('commit with an unknown parent, a missing layer or missing chunks changes nothing', async () => {
    await createImage();
    const c = chunk();
    const l = await layer([{ index: 0, id: c.id }]);
    const missing = await req('POST', '/api/v1/images/win/commits', { parent: null, ref: 'main', layer: l, kind: 'import' });
    expect(missing.statusCode).toBe(409);
    expect(missing.json()).toMatchObject({ code: 'DF_ERR_CHUNKS_MISSING', missing: [c.id] });
    const parent = await req('POST', '/api/v1/images/win/commits', { parent: 5, ref: 'main', layer: l, kind: 'publish' });
    expect(parent.statusCode).toBe(404);
    expect(parent.json().code).toBe('DF_ERR_VERSION_NOT_FOUND');
    const nolayer = await req('POST', '/api/v1/images/win/commits', { parent: null, ref: 'main', layer: 'f'.repeat(64), kind: 'import' });
    expect(nolayer.json().code).toBe('DF_ERR_LAYER_NOT_FOUND');
    const img = (await req('GET', '/api/v1/images/win')).json();
    expect(img.versions).toBe(0);
    expect(img.refs).toEqual([]);
  });

  it('a layer of another geometry is refused', async () => {
    await createImage();
    const bytes = encodeLayer({ geometry: { virtualSize: VS * 2, chunkSize: CS }, hasMasks: false, entries: [] });
    const r = await req('POST', '/api/v1/images/win/layers', bytes, { 'content-type': 'application/octet-stream' });
    expect(r.statusCode).toBe(400);
    expect(r.json().code).toBe('DF_ERR_SIZE_MISMATCH');
  });

  it('a corrupted chunk file: GET refuses it, a batch fetch serves it as stored for the receiver to refuse, the scrub quarantines it, a re-upload repairs it', async () => {
    const c = chunk();
    await upload([c]);
    const file = path.join(tmp.dir, 'chunks', c.id.slice(0, 3), `${c.id}.zst`);
    const bytes = await fsp.readFile(file);
    bytes[bytes.length - 10]! ^= 0xff;
    await fsp.writeFile(file, bytes);
    const r = await req('GET', `/chunks/${c.id}`);
    expect(r.statusCode).toBe(500);
    expect(r.json()).toMatchObject({ code: 'DF_ERR_CHUNK_CORRUPT', id: c.id });
    // the fetch path does not open frames: the agent's check (openFrame on every record) refuses it
    const f = await req('POST', '/api/v1/chunks/fetch', { ids: [c.id] });
    expect(f.statusCode).toBe(200);
    const [rec] = decodePack(f.rawPayload, CS);
    expect(rec!.frame.equals(bytes)).toBe(true);
    expect(() => openFrame(c.id, rec!.frame, CS)).toThrow(expect.objectContaining({ code: 'DF_ERR_CHUNK_INVALID' }));

    const pass = await ap.scrub();
    expect(pass).toMatchObject({ quarantined: [c.id], stopped: false });
    expect(readFileSync(path.join(tmp.dir, 'quarantine', 'chunks', `${c.id}.zst`)).equals(bytes)).toBe(true);
    const gone = await req('POST', '/api/v1/chunks/fetch', { ids: [c.id] });
    expect(gone.statusCode).toBe(404);
    expect(gone.json()).toMatchObject({ code: 'DF_ERR_CHUNK_NOT_FOUND', id: c.id });
    expect((await req('POST', '/api/v1/chunks/missing', { ids: [c.id] })).json()).toEqual({ missing: [c.id] });
    const m = (await req('GET', '/metrics')).body;
    expect(m).toMatch(/^deskfuse_chunks_invalid_total\{where="scrub"\} 1$/m);

    await upload([c]); // a publish or commit that has the chunk stores it again
    const back = await req('POST', '/api/v1/chunks/fetch', { ids: [c.id] });
    expect(back.statusCode).toBe(200);
    expect(openFrame(c.id, decodePack(back.rawPayload, CS)[0]!.frame, CS).equals(c.raw)).toBe(true);
  });
});

describe('chunks', () => {
  it('PUT, GET with immutable caching, HEAD, missing batch, fetch pack', async () => {
    const a = chunk();
    const b = chunk(1000);
    expect((await req('PUT', `/chunks/${a.id}`, a.frame, { 'content-type': 'application/zstd' })).statusCode).toBe(201);
    expect((await req('PUT', `/chunks/${a.id}`, a.frame, { 'content-type': 'application/zstd' })).statusCode).toBe(200);
    expect((await req('PUT', `/chunks/${b.id}`, b.raw, { 'content-type': 'application/octet-stream' })).statusCode).toBe(201);
    const g = await req('GET', `/chunks/${a.id}`);
    expect(g.statusCode).toBe(200);
    expect(g.headers['cache-control']).toBe('public, max-age=31536000, immutable');
    expect(g.headers.etag).toBe(`"${a.id}"`);
    expect(g.rawPayload.equals(a.frame)).toBe(true);
    expect((await req('HEAD', `/chunks/${a.id}`)).statusCode).toBe(200);
    const c = chunk();
    expect((await req('POST', '/api/v1/chunks/missing', { ids: [a.id, c.id, b.id] })).json()).toEqual({ missing: [c.id] });
    const f = await req('POST', '/api/v1/chunks/fetch', { ids: [b.id, a.id] });
    const recs = decodePack(f.rawPayload, CS);
    expect(recs.map((r) => r.id)).toEqual([b.id, a.id]);
    expect(recs[0]!.rawLength).toBe(1000);
    // the agent's form: the raw ids back to back (src/chunk/id.ts), the same pack; each id once
    const bin = await req('POST', '/api/v1/chunks/fetch', encodeIdList([b.id, a.id, b.id]), { 'content-type': ID_LIST_TYPE });
    expect(bin.statusCode).toBe(200);
    expect(bin.rawPayload.equals(f.rawPayload)).toBe(true);
    for (const [body, says] of [[Buffer.alloc(33), /33 bytes is not a list of 32-byte chunk ids/], [Buffer.alloc(0), /0 bytes/], [Buffer.alloc(32 * 4097), /4097 ids, at most 4096/]] as const) {
      const bad = await req('POST', '/api/v1/chunks/fetch', body, { 'content-type': ID_LIST_TYPE });
      expect(bad.statusCode).toBe(400);
      expect(bad.json()).toMatchObject({ code: 'DF_ERR_BAD_REQUEST', field: 'body', message: expect.stringMatching(says) });
    }
    expect((await req('PUT', `/chunks/${idHex(hashBytes(Buffer.alloc(CS)))}`, Buffer.alloc(CS), { 'content-type': 'application/octet-stream' })).statusCode).toBe(400);
  });
});

describe('batch fetch over a real connection (frames sent from their files by the sender thread)', () => {
  it('answers the exact pack, twice on one keep-alive connection; a chunk file gone behind the store cuts that body, and the next fetch says 404', async () => {
    const url = await ap.app.listen({ host: '127.0.0.1', port: 0 });
    const cs = [chunk(), chunk(1000), chunk(CS - 3), chunk()];
    await upload(cs);
    const fetchPack = (ids: string[]) => fetch(`${url}/api/v1/chunks/fetch`, { method: 'POST', headers: { ...auth(), 'content-type': 'application/json' }, body: JSON.stringify({ ids }) });
    const before = sendFileStats.parts;
    for (const order of [[cs[2]!, cs[0]!, cs[1]!], [cs[1]!], [cs[3]!]]) {
      const r = await fetchPack(order.map((c) => c.id));
      expect(r.status).toBe(200);
      expect(r.headers.get('content-type')).toBe(PACK_CONTENT_TYPE);
      const body = Buffer.from(await r.arrayBuffer());
      expect(Number(r.headers.get('content-length'))).toBe(body.length);
      expect(body.equals(encodePack(order.map((c) => ({ id: c.id, rawLength: c.raw.length, frame: c.frame }))))).toBe(true);
    }
    expect(sendFileStats.parts - before).toBe(3);
    // removed by the store (as a prune would): its file is let go and it is missing at once
    const store = ap.ctx.chunks as FsChunkStore;
    await store.remove(cs[3]!.id);
    const removed = await fetchPack([cs[3]!.id]);
    expect(removed.status).toBe(404);
    expect(await removed.json()).toMatchObject({ code: 'DF_ERR_CHUNK_NOT_FOUND', id: cs[3]!.id });
    // removed behind the store's back, never sent yet: the body is cut when its turn comes, then 404
    const never = chunk();
    await upload([never]);
    expect((await fetchPack([never.id])).status).toBe(200); // its size is learnt (and it is sent once)
    store.forget([]); // the sender lets go of the files it keeps open (as after a prune)
    await fsp.rm(path.join(tmp.dir, 'chunks', never.id.slice(0, 3), `${never.id}.zst`));
    const cut = await fetchPack([cs[0]!.id, never.id]);
    expect(cut.status).toBe(200); // the headers went out before the file was missed
    await expect(cut.arrayBuffer()).rejects.toThrow(); // the body is cut short: the agent retries
    const gone = await fetchPack([cs[0]!.id, never.id]);
    expect(gone.status).toBe(404);
    expect(await gone.json()).toMatchObject({ code: 'DF_ERR_CHUNK_NOT_FOUND', id: never.id });
  });
});

describe('batch fetches asked for again (a storm): one cached pack file, sent with sendfile', () => {
  it('the third ask of a batch is the same bytes from one file; a removed chunk empties the cache', async () => {
    const url = await ap.app.listen({ host: '127.0.0.1', port: 0 });
    const cs = [chunk(), chunk(2000), chunk()];
    await upload(cs);
    const ids = cs.map((c) => c.id);
    const fetchPack = () => fetch(`${url}/api/v1/chunks/fetch`, { method: 'POST', headers: { ...auth(), 'content-type': 'application/json' }, body: JSON.stringify({ ids }) });
    const want = encodePack(cs.map((c) => ({ id: c.id, rawLength: c.raw.length, frame: c.frame })));
    const before = { ...sendFileStats };
    for (let i = 0; i < 2; i++) expect(Buffer.from(await (await fetchPack()).arrayBuffer()).equals(want)).toBe(true);
    await ap.ctx.packs!.settled();
    const third = await fetchPack();
    expect(Buffer.from(await third.arrayBuffer()).equals(want)).toBe(true);
    expect(sendFileStats.parts - before.parts).toBe(2); // the first two from the chunk files
    expect(sendFileStats.sendfile - before.sendfile).toBe(1); // the third as one file
    const m = (await req('GET', '/metrics')).body;
    expect(m).toMatch(/^deskfuse_pack_cache_requests_total\{result="hit"\} 1$/m);
    expect(m).toMatch(new RegExp(`^deskfuse_pack_cache_bytes ${want.length}$`, 'm'));
    await (ap.ctx.chunks as FsChunkStore).remove(cs[1]!.id);
    expect(ap.ctx.packs!.size.files).toBe(0);
    const gone = await fetchPack();
    expect(gone.status).toBe(404);
    expect(await gone.json()).toMatchObject({ code: 'DF_ERR_CHUNK_NOT_FOUND', id: cs[1]!.id });
  });
});

describe('versions and refs', () => {
  it('commits fast-forward, keeps a racing commit under conflicts/, moves refs by CAS with a log', async () => {
    await createImage();
    const [a, b, c] = [chunk(), chunk(), chunk()];
    await upload([a, b, c]);
    const l1 = await layer([{ index: 0, id: a.id }, { index: 3, id: b.id }]);
    const v1 = await req('POST', '/api/v1/images/win/commits', { parent: null, ref: 'main', layer: l1, kind: 'import', message: 'base' });
    expect(v1.statusCode).toBe(201);
    expect(v1.json()).toMatchObject({ outcome: 'fast-forward', ref: 'main', version: { version: 1, parent: null, chunksChanged: 2, chunksTotal: 2 } });

    const l2 = await layer([{ index: 3, id: c.id }]);
    const v2 = await req('POST', '/api/v1/images/win/commits', { parent: 1, ref: 'main', layer: l2, kind: 'publish' });
    expect(v2.statusCode).toBe(201);
    const l3 = await layer([{ index: 5, id: c.id }]);
    const v3 = await req('POST', '/api/v1/images/win/commits', { parent: 1, ref: 'main', layer: l3, kind: 'publish' });
    expect(v3.statusCode).toBe(409);
    const conflict = v3.json();
    expect(conflict).toMatchObject({ code: 'DF_ERR_CONFLICT', ref: 'main', head: 2, version: { version: 3, parent: 1 } });
    expect(conflict.conflictRef).toMatch(/^conflicts\/main\/\d{8}T\d{6}-\d{3}Z$/);
    const refs = (await req('GET', '/api/v1/images/win/refs')).json().refs;
    expect(refs.map((r: { name: string; version: number }) => [r.name, r.version])).toEqual([[conflict.conflictRef, 3], ['main', 2]]);
    expect((await req('GET', `/api/v1/images/win/refs/${conflict.conflictRef}`)).json().version).toBe(3);

    // content of each version = all layers from the root
    const idx2 = ChunkIndex.decode((await req('GET', '/api/v1/images/win/versions/2/index')).rawPayload);
    const idx3 = ChunkIndex.decode((await req('GET', '/api/v1/images/win/versions/3/index')).rawPayload);
    expect([idHex(idx2.idAt(0)), idHex(idx2.idAt(3)), idx2.isZeroAt(5)]).toEqual([a.id, c.id, true]);
    expect([idHex(idx3.idAt(3)), idHex(idx3.idAt(5))]).toEqual([b.id, c.id]);

    // the stored layer carries the server's 4 KiB block masks
    const stored = decodeLayer((await req('GET', '/api/v1/images/win/versions/2/layer')).rawPayload);
    expect(stored.hasMasks).toBe(true);
    expect(stored.entries[0]!.mask!.equals(Buffer.alloc(2, 0xff))).toBe(true);

    // ref CAS: stale expect refused and nothing moves; right expect moves (rollback)
    const stale = await req('PUT', '/api/v1/images/win/refs/main', { version: 1, expect: 1 });
    expect(stale.statusCode).toBe(409);
    expect(stale.json()).toMatchObject({ code: 'DF_ERR_REF_MOVED', head: 2 });
    expect((await req('PUT', '/api/v1/images/win/refs/main', { version: 1, expect: 2, reason: 'rollback' })).json().version).toBe(1);
    expect((await req('PUT', '/api/v1/images/win/refs/test', { version: 3, expect: null })).statusCode).toBe(200);
    const log = (await req('GET', '/api/v1/images/win/reflog?ref=main')).json().entries;
    expect(log.map((e: { oldVersion: number | null; newVersion: number }) => [e.oldVersion, e.newVersion])).toEqual([[2, 1], [1, 2], [null, 1]]);
    const hist = (await req('GET', '/api/v1/images/win/versions?ref=' + encodeURIComponent(conflict.conflictRef))).json().versions;
    expect(hist.map((v: { version: number }) => v.version)).toEqual([3, 1]);
    expect((await req('GET', '/api/v1/images/win/resolve?rev=test')).json().version).toBe(3);

    const metrics = (await req('GET', '/metrics')).payload;
    expect(metrics).toContain('deskfuse_commits_total{outcome="conflict"} 1');
    expect(metrics).toContain('deskfuse_commits_total{outcome="fast-forward"} 2');
    expect(metrics).toMatch(/deskfuse_chunks_stored_total 3/);
  });

  it('records which 4 KiB blocks of a changed chunk differ from the parent', async () => {
    await createImage();
    const a = chunk();
    const edited = Buffer.from(a.raw);
    edited.fill(7, 5 * 4096, 5 * 4096 + 10); // block 5
    edited.fill(9, 12 * 4096 + 4000, 12 * 4096 + 4096); // block 12
    const b = { raw: edited, id: idHex(hashBytes(edited)), frame: encodeFrame(edited) };
    await upload([a, b]);
    await req('POST', '/api/v1/images/win/commits', { parent: null, ref: 'main', layer: await layer([{ index: 1, id: a.id }]), kind: 'import' });
    const root = decodeLayer((await req('GET', '/api/v1/images/win/versions/1/layer')).rawPayload);
    expect(root.hasMasks).toBe(false);
    await req('POST', '/api/v1/images/win/commits', { parent: 1, ref: 'main', layer: await layer([{ index: 1, id: b.id }, { index: 2, id: a.id }]), kind: 'publish' });
    const l = decodeLayer((await req('GET', '/api/v1/images/win/versions/2/layer')).rawPayload);
    expect(l.hasMasks).toBe(true);
    expect(l.entries.map((e) => [e.index, e.mask!.toString('hex')])).toEqual([
      [1, Buffer.from([1 << 5, 1 << (12 - 8)]).toString('hex')], // blocks 5 and 12
      [2, 'ffff'], // the parent's chunk was zero: the whole chunk
    ]);
  });

  it('a retried commit gets the version it made back, not a duplicate', async () => {
    await createImage();
    const [a, b] = [chunk(), chunk()];
    await upload([a, b]);
    const l1 = await layer([{ index: 0, id: a.id }]);
    const first = await req('POST', '/api/v1/images/win/commits', { parent: null, ref: 'main', layer: l1, kind: 'import' });
    const again = await req('POST', '/api/v1/images/win/commits', { parent: null, ref: 'main', layer: l1, kind: 'import' });
    expect(first.statusCode).toBe(201);
    expect(again.statusCode).toBe(201);
    expect(again.json().version.version).toBe(first.json().version.version);
    const l2 = await layer([{ index: 0, id: b.id }]);
    await req('POST', '/api/v1/images/win/commits', { parent: 1, ref: 'main', layer: l2, kind: 'publish' });
    const l3 = await layer([{ index: 1, id: b.id }]);
    const c1 = await req('POST', '/api/v1/images/win/commits', { parent: 1, ref: 'main', layer: l3, kind: 'publish' });
    const c2 = await req('POST', '/api/v1/images/win/commits', { parent: 1, ref: 'main', layer: l3, kind: 'publish' });
    expect([c1.statusCode, c2.statusCode]).toEqual([409, 409]);
    expect(c2.json()).toMatchObject({ version: { version: 3 }, conflictRef: c1.json().conflictRef, head: 2, reason: 'parent' });
    expect((await req('GET', '/api/v1/images/win')).json().versions).toBe(3);
  });

  it('an image with versions cannot be created again; an empty one can be resumed', async () => {
    await createImage();
    expect((await req('POST', '/api/v1/images', { name: 'win', virtualSize: VS, chunkSize: CS })).statusCode).toBe(200);
    expect((await req('POST', '/api/v1/images', { name: 'win', virtualSize: VS * 2, chunkSize: CS })).json().code).toBe('DF_ERR_IMAGE_EXISTS');
    const l = await layer([]);
    await req('POST', '/api/v1/images/win/commits', { parent: null, ref: 'main', layer: l, kind: 'import' });
    expect((await req('POST', '/api/v1/images', { name: 'win', virtualSize: VS, chunkSize: CS })).statusCode).toBe(409);
  });
});

describe('contract (src/api schemas)', () => {
  it('the OpenAPI document lists the routes with their bodies, parameters and answers', async () => {
    const oa = (await ap.app.inject({ method: 'GET', url: '/api/v1/openapi.json' })).json();
    const body = (method: string, p: string) => oa.paths[p]?.[method]?.requestBody?.content?.['application/json']?.schema;
    const answer = (method: string, p: string, status: number) => oa.paths[p]?.[method]?.responses?.[status]?.content?.['application/json']?.schema;
    const bodies: Array<[string, string, string[]]> = [
      ['post', '/api/v1/images', ['name', 'virtualSize', 'chunkSize']],
      ['post', '/api/v1/images/{image}/commits', ['parent', 'ref', 'layer', 'kind']],
      ['put', '/api/v1/images/{image}/refs/{*}', ['version', 'expect']],
      ['put', '/api/v1/images/{image}/boot', ['partition', 'kernel', 'cmdline']],
      ['post', '/api/v1/desktops', ['name', 'image']],
      ['post', '/api/v1/desktops/{name}/lease', ['holder']],
      ['post', '/api/v1/desktops/{name}/commits', ['parent', 'layer', 'kind', 'fencing']],
      ['post', '/api/v1/endpoints', ['mac']],
      ['post', '/api/v1/vdi/sessions', ['desktop']],
      ['post', '/api/v1/tokens', ['scope']],
      ['post', '/api/v1/chunks/missing', ['ids']],
      ['post', '/boot/session', ['token', 'mac']],
      ['post', '/boot/events', ['mac', 'phase']],
    ];
    for (const [method, p, required] of bodies) expect(body(method, p)?.required, `${method} ${p}`).toEqual(required);
    expect(body('post', '/api/v1/desktops/{name}/commits').properties.kind.enum).toEqual(['voi-commit', 'vdi-commit']);
    expect(oa.paths['/api/v1/images/{image}/versions/{version}'].get.parameters.map((x: { name: string; in: string }) => `${x.in}:${x.name}`)).toEqual(['path:image', 'path:version']);
    expect(Object.keys(answer('post', '/api/v1/images/{image}/commits', 201).properties)).toEqual(['outcome', 'version', 'ref']);
    expect(answer('get', '/api/v1/desktops/{name}', 200).required).toContain('head');
    expect(answer('post', '/boot/session', 200).required).toEqual(expect.arrayContaining(['token', 'holder', 'action', 'handoff', 'imageBoot']));
    expect(answer('get', '/api/v1/vdi/sessions/{id}', 200).properties).toHaveProperty('outcome');
    expect(answer('get', '/api/v1/tokens', 200).properties.tokens.items.required).toEqual(['id', 'scope', 'createdAt', 'expiresAt', 'lastUsedAt']);
  });

  it('answers carry the wire fields their schema names: a version, a ref, an image, a ref log entry', async () => {
    await createImage();
    const a = chunk();
    await upload([a]);
    const l1 = await layer([{ index: 0, id: a.id }]);
    expect((await req('POST', '/api/v1/images/win/commits', { parent: null, ref: 'main', layer: l1, kind: 'import' })).statusCode).toBe(201);
    const v = (await req('GET', '/api/v1/images/win/versions/1')).json();
    expect(Object.keys(v).sort()).toEqual(Object.keys(Version.properties).sort());
    // limit has a default: leaving it out is not a 400
    const listed = await req('GET', '/api/v1/images/win/versions');
    expect(listed.statusCode).toBe(200);
    expect(listed.json().versions).toEqual([v]);
    const log = await req('GET', '/api/v1/images/win/reflog');
    expect(log.statusCode).toBe(200);
    expect(Object.keys(log.json().entries[0]).sort()).toEqual(Object.keys(RefLogEntry.properties).sort());
    const img = (await req('GET', '/api/v1/images/win')).json();
    expect(img).toMatchObject({ name: 'win', virtualSize: VS, chunkSize: CS, versions: 1, refs: [{ image: 'win', name: 'main', version: 1 }] });
    expect(Object.keys(img).every((k) => k in ImageShow.properties)).toBe(true);
  });
});
