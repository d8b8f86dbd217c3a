import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openAppliance, type Appliance } from '../../server/appliance.js';
import { CacheStore } from '../../src/chunk/cache-store.js';
import { encodeFrame } from '../../src/chunk/frame.js';
import { hashBytes, idHex } from '../../src/chunk/id.js';
import { encodePack, PACK_CONTENT_TYPE } from '../../src/chunk/pack.js';
import { S3ChunkStore, type S3StoreOptions } from '../../src/chunk/s3-store.js';
import { CONTRACT_MAX, chunkOf, storeContract } from '../../src/chunk/store-contract.js';
import { loadServerConfig } from '../../src/config/server.js';
import { encodeLayer } from '../../src/image/layer.js';
import { S3DeltaBucket } from '../../src/sync/delta-bucket.js';
import { DeltaCache, type DeltaBucket } from '../../src/sync/delta-cache.js';
import { prng } from '../helpers/disk.js';
import { rejection } from '../helpers/expect.js';
import { rgwCommand, rgwStart, startRgw, type Rgw } from '../helpers/rgw.js';
import { tempDir } from '../helpers/server.js';

// The S3 store as the server runs it, on a real Ceph RADOS Gateway (one for this file, started and
// stopped by scripts/engines/ceph-rgw.sh): the disk cache in front of it, retries through a radosgw
// restart, deltas in the bucket, a server started with --store s3://…, and its start-time errors.

let rgw: Rgw;
const tmp = tempDir('df-s3cache-');
beforeAll(async () => {
  rgw = await startRgw();
}, 300_000);
afterAll(async () => {
  await rgw?.destroy();
  tmp.cleanup();
}, 120_000);

const cred = () => ({ accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey });
const opts = (o: Partial<S3StoreOptions> = {}): S3StoreOptions => ({ maxChunkSize: CONTRACT_MAX, ...o });
const freshPrefix = () => `t-${randomBytes(6).toString('hex')}/`;
let dirs = 0;
const freshDir = () => path.join(tmp.dir, `cache-${dirs++}`);

/** A Buffer's SHA-256 (vitest's deep equality walks a Buffer byte by byte: seconds for a delta). */
const digest = (b: Buffer | Uint8Array) => createHash('sha256').update(b).digest('hex');

/** Keys under a prefix of the bucket (a raw listing, not through a store). */
async function keys(client: S3ChunkStore['client'], prefix: string): Promise<string[]> {
  const r = await client.request('GET', undefined, 'a listing', { query: { 'list-type': '2', prefix } });
  return [...r.body.toString('utf8').matchAll(/<Key>([^<]*)<\/Key>/g)].map((m) => m[1]!);
}

storeContract('CacheStore over S3ChunkStore on Ceph RGW', async () => {
  const url = rgw.url(freshPrefix());
  const remote = await S3ChunkStore.open(url, cred(), opts());
  const store = await CacheStore.open(remote, freshDir(), 1 << 20, CONTRACT_MAX);
  return {
    store,
    // bit rot in the bucket and in this server's cache file alike
    overwrite: async (id, bytes) => {
      await remote.client.request('PUT', remote.keyOf(id), 'an overwrite', { body: bytes });
      if (store.cached(id)) await fsp.writeFile(store.pathOf(id), bytes);
    },
    another: async () => CacheStore.open(await S3ChunkStore.open(url, cred(), opts()), freshDir(), 1 << 20, CONTRACT_MAX),
  };
});

describe('CacheStore on Ceph RGW', () => {
  it('a hot chunk read 32 times at once and 32 times after costs exactly one S3 GET per server', async () => {
    const url = rgw.url(freshPrefix());
    const writer = await S3ChunkStore.open(url, cred(), opts());
    const c = chunkOf('hot chunk');
    await writer.put(c.id, { frame: c.frame }); // stored by another server: this one's cache is empty

    const remote = await S3ChunkStore.open(url, cred(), opts());
    const dir = freshDir();
    const cache = await CacheStore.open(remote, dir, 1 << 20, CONTRACT_MAX);
    const gets0 = remote.client.requests.GET ?? 0; // the bucket check at open is a GET (a listing)
    const all = await Promise.all(Array.from({ length: 32 }, () => cache.get(c.id)));
    for (let i = 0; i < 32; i++) all.push(await cache.get(c.id));
    for (const got of all) {
      expect(digest(got.raw)).toBe(digest(c.raw));
      expect(digest(got.frame)).toBe(digest(c.frame));
    }
    expect((remote.client.requests.GET ?? 0) - gets0).toBe(1);
    expect(cache.stats.misses).toBe(1);
    expect(cache.stats.hits + cache.stats.shared).toBe(63); // the others shared the miss, or read the cache file
    await cache.idle();
    expect(cache.cached(c.id)).toBe(true);
    expect(digest((await cache.get(c.id)).raw)).toBe(digest(c.raw));
    expect((remote.client.requests.GET ?? 0) - gets0).toBe(1);

    // The cache outlives a restart of the server: a new CacheStore on the same folder asks S3 nothing.
    const again = await S3ChunkStore.open(url, cred(), opts());
    const reopened = await CacheStore.open(again, dir, 1 << 20, CONTRACT_MAX);
    const before = again.client.requests.GET ?? 0;
    expect(digest((await reopened.get(c.id)).raw)).toBe(digest(c.raw));
    expect((again.client.requests.GET ?? 0) - before).toBe(0);
    expect(again.client.requests.HEAD ?? 0).toBe(0);
  });

  it('stays within its byte budget, least recently used out first; a damaged cache file is fetched again', async () => {
    const remote = await S3ChunkStore.open(rgw.url(freshPrefix()), cred(), opts());
    const cs = Array.from({ length: 5 }, (_, i) => chunkOf(`lru ${i} ${randomBytes(4).toString('hex')}`));
    const frame = Math.max(...cs.map((c) => c.frame.length));
    const budget = 3 * frame; // three frames fit
    const cache = await CacheStore.open(remote, freshDir(), budget, CONTRACT_MAX);
    for (const c of cs.slice(0, 3)) await cache.put(c.id, { frame: c.frame });
    await cache.get(cs[0]!.id); // 0 is now the most recently used: 1 goes first
    for (const c of cs.slice(3)) await cache.put(c.id, { frame: c.frame });
    expect(cache.bytes).toBeLessThanOrEqual(budget);
    expect(cs.map((c) => cache.cached(c.id))).toEqual([true, false, false, true, true]);
    const gets = remote.client.requests.GET ?? 0;
    expect(digest((await cache.get(cs[1]!.id)).raw)).toBe(digest(cs[1]!.raw)); // from S3 again
    expect((remote.client.requests.GET ?? 0) - gets).toBe(1);
    expect(cache.bytes).toBeLessThanOrEqual(budget);

    // Bit rot in a cache file: never served; the chunk comes from S3 again, verified.
    const victim = cs[4]!;
    expect(cache.cached(victim.id)).toBe(true);
    const bad = Buffer.from(victim.frame);
    bad.fill(0x5a, 4, 12);
    await fsp.writeFile(cache.pathOf(victim.id), bad);
    const g2 = remote.client.requests.GET ?? 0;
    const got = await cache.get(victim.id);
    expect(digest(got.raw)).toBe(digest(victim.raw));
    expect((remote.client.requests.GET ?? 0) - g2).toBe(1);
    await cache.idle();
    expect(digest(await fsp.readFile(cache.pathOf(victim.id)))).toBe(digest(victim.frame)); // rewritten once fetched
  });
});

describe('deltas in the bucket', () => {
  const CS = 64 * 1024;
  const rand = prng(11);

  /** A layer of `n` random chunks stored through `chunks` and `blobs`: its id. */
  async function makeLayer(chunks: CacheStore, blobs: CacheStore, n: number): Promise<string> {
    const entries = [];
    for (let i = 0; i < n; i++) {
      const raw = rand(CS);
      const id = idHex(hashBytes(raw));
      await chunks.put(id, { frame: encodeFrame(raw) });
      entries.push({ index: i * 2, id: Buffer.from(id, 'hex') });
    }
    const layer = encodeLayer({ geometry: { virtualSize: 64 * CS, chunkSize: CS }, hasMasks: false, entries });
    const id = idHex(hashBytes(layer));
    await blobs.put(id, { raw: layer });
    return id;
  }

  /**
   * One server's view of a bucket prefix: its own caches and its own delta folder. `afterLook` runs
   * after each look into the bucket (the real S3 answer is kept): tests line servers up with it.
   */
  async function server(url: string, afterLook?: (found: boolean) => Promise<boolean>) {
    const chunks = await CacheStore.open(await S3ChunkStore.open(url, cred(), { maxChunkSize: CS }), freshDir(), 64 << 20, CS);
    const remoteBlobs = await S3ChunkStore.open(url, cred(), { maxChunkSize: 1 << 20, folder: 'blobs' });
    const blobs = await CacheStore.open(remoteBlobs, freshDir(), 64 << 20, 1 << 20);
    const bucket = new S3DeltaBucket(remoteBlobs.client);
    const shared: DeltaBucket = afterLook
      ? {
        fetch: async (layer, dir) => {
          const f = await bucket.fetch(layer, dir);
          if (await afterLook(f !== undefined)) return f;
          if (f) await fsp.rm(f.path); // as if the object were not there yet when this server looked
          return undefined;
        },
        store: (layer, f) => bucket.store(layer, f),
        remove: (layer) => bucket.remove(layer),
      }
      : bucket;
    const deltas = new DeltaCache(freshDir(), blobs, chunks, shared);
    return { chunks, blobs, deltas, client: remoteBlobs.client };
  }

  /** Resolves once `n` callers wait on it (a start line). */
  function barrier(n: number): () => Promise<void> {
    let release!: () => void;
    const all = new Promise<void>((r) => (release = r));
    let waiting = 0;
    return () => {
      if (++waiting === n) release();
      return all;
    };
  }

  const bytesOf = async (d: DeltaCache, layer: string) => {
    const parts: Buffer[] = [];
    for await (const p of (await d.open(layer)).fh.createReadStream()) parts.push(p as Buffer);
    return Buffer.concat(parts);
  };

  it('two servers building the same delta at once: one object in the bucket, both answers byte-identical', async () => {
    const prefix = freshPrefix();
    const url = rgw.url(prefix);
    // Both look into the bucket before either builds (a start line after the look), as two servers
    // asked for a new version's delta at the same moment do.
    const line = barrier(2);
    const a = await server(url, async (found) => (await line(), found));
    const b = await server(url, async (found) => (await line(), found));
    const layer = await makeLayer(a.chunks, a.blobs, 12);
    const [fa, fb] = await Promise.all([a.deltas.get(layer), b.deltas.get(layer)]);
    // A real race: both built it (neither found it), exactly one write stored it.
    expect([a.deltas.stats.built, b.deltas.stats.built]).toEqual([1, 1]);
    expect(a.deltas.stats.stored + b.deltas.stats.stored).toBe(1);
    expect(await keys(a.client, `${prefix}deltas/`)).toEqual([`${prefix}deltas/${layer}`]);
    const stored = (await a.client.request('GET', `${prefix}deltas/${layer}`, 'the stored delta')).body;
    expect(digest(await fsp.readFile(fa.path))).toBe(digest(stored));
    expect(digest(await fsp.readFile(fb.path))).toBe(digest(stored));
    expect(digest(await bytesOf(a.deltas, layer))).toBe(digest(stored));
    expect(digest(await bytesOf(b.deltas, layer))).toBe(digest(stored));

    // A third server fetches it from the bucket instead of building it.
    const c = await server(url);
    expect(digest(await bytesOf(c.deltas, layer))).toBe(digest(stored));
    expect(c.deltas.stats).toEqual({ built: 0, fetched: 1, stored: 0 });
  });

  it('a server whose build differs from the stored delta serves the stored bytes; a damaged object is rebuilt', async () => {
    const prefix = freshPrefix();
    const url = rgw.url(prefix);
    const a = await server(url);
    const layer = await makeLayer(a.chunks, a.blobs, 3);
    const key = `${prefix}deltas/${layer}`;
    // What another server (another build) stored first: other bytes, their own hash. This server
    // looked into the bucket just before that write (its first look finds nothing), so it builds,
    // loses the conditional write (412), and serves the stored bytes instead of its own.
    const theirs = Buffer.from(`another build's delta ${randomBytes(8).toString('hex')}`);
    const theirHash = idHex(hashBytes(theirs));
    await a.client.request('PUT', key, 'a delta stored by another server', { body: theirs, headers: { 'if-none-match': '*', 'x-amz-meta-blake3': theirHash } });
    let looks = 0;
    const b = await server(url, async (found) => looks++ > 0 && found);
    expect(digest(await bytesOf(b.deltas, layer))).toBe(digest(theirs));
    expect(b.deltas.stats).toEqual({ built: 1, fetched: 1, stored: 0 });
    expect(await keys(a.client, `${prefix}deltas/`)).toEqual([key]);
    expect(digest((await a.client.request('GET', key, 'the stored delta')).body)).toBe(digest(theirs));

    // Damage in the bucket (bytes that do not match the stored hash): deleted, built again, stored.
    await a.client.request('PUT', key, 'bit rot', { body: Buffer.from('rotten'), headers: { 'x-amz-meta-blake3': theirHash } });
    const c = await server(url);
    const built = await bytesOf(c.deltas, layer);
    expect(c.deltas.stats).toEqual({ built: 1, fetched: 0, stored: 1 });
    expect(digest((await a.client.request('GET', key, 'the stored delta')).body)).toBe(digest(built));
  });
});

describe('S3 requests through a radosgw restart', () => {
  it('a GET and a PUT started while the cluster is down complete byte-exact once it is back; past the budget it is DF_ERR_S3_UNREACHABLE', async () => {
    const url = rgw.url(freshPrefix());
    const store = await S3ChunkStore.open(url, cred(), opts({ retryMs: 180_000 }));
    const old = chunkOf(`before the restart ${randomBytes(4).toString('hex')}`);
    const neu = chunkOf(`during the restart ${randomBytes(4).toString('hex')}`);
    await store.put(old.id, { frame: old.frame });

    await rgwCommand('stop', rgw.dir);
    const tries0 = (store.client.requests.GET ?? 0) + (store.client.requests.PUT ?? 0);
    const get = store.get(old.id);
    const put = store.put(neu.id, { frame: neu.frame });
    try {
      let settled = false;
      void Promise.allSettled([get, put]).then(() => (settled = true));

      // A call with a small budget gives up with the coded 503 error, naming the endpoint.
      const short = await S3ChunkStore.open(url, cred(), opts({ retryMs: 1_500 })).catch((e: unknown) => e);
      expect((short as { code?: string }).code).toBe('DF_ERR_S3_UNREACHABLE');
      const quick = new S3ChunkStore(store.loc, cred(), opts({ retryMs: 1_500 }));
      const err = await rejection(quick.get(old.id));
      expect(err.code).toBe('DF_ERR_S3_UNREACHABLE');
      expect(err.status).toBe(503);
      expect(err.message).toContain(rgw.endpoint);
      expect(err.fields.tries).toBeGreaterThan(1);
      expect(settled).toBe(false); // the long-budget calls are still waiting
    } finally {
      await rgwStart(rgw.dir); // up again even when an assertion failed: the later tests need it
    }
    const [got, stored] = await Promise.all([get, put]);
    expect(digest(got.raw)).toBe(digest(old.raw));
    expect(digest(got.frame)).toBe(digest(old.frame));
    expect(typeof stored).toBe('boolean'); // true, or false when a try was stored but its answer lost
    expect(digest((await store.get(neu.id)).frame)).toBe(digest(neu.frame));
    expect((store.client.requests.GET ?? 0) + (store.client.requests.PUT ?? 0) - tries0).toBeGreaterThan(3); // it retried
  }, 300_000);
});

describe('a server with --store s3://…', () => {
  const CS = 64 * 1024;
  const VS = 8 * CS;
  const rand = prng(5);
  const env = () => ({ AWS_ACCESS_KEY_ID: rgw.accessKeyId, AWS_SECRET_ACCESS_KEY: rgw.secretAccessKey });
  const open = (data: string, store: string, e: Record<string, string> = env()) =>
    openAppliance(loadServerConfig({ flags: { data, store, logLevel: 'silent' }, env: e }));

  it('creates and publishes an image into the bucket and serves /chunks/:id and the delta byte-exact, also from a second server', async () => {
    const prefix = freshPrefix();
    const url = rgw.url(prefix);
    const dataA = freshDir();
    const a = await open(dataA, url);
    let b: Appliance | undefined;
    try {
      const tokenA = a.newAdminToken!;
      const req = (ap: Appliance, token: string, method: 'GET' | 'POST', u: string, payload?: unknown, headers: Record<string, string> = {}) =>
        ap.app.inject({ method, url: u, headers: { authorization: `Bearer ${token}`, ...headers }, ...(payload !== undefined ? { payload: payload as string } : {}) });
      const chunks = Array.from({ length: 4 }, () => {
        const raw = rand(CS);
        return { raw, id: idHex(hashBytes(raw)), frame: encodeFrame(raw) };
      });
      expect((await req(a, tokenA, 'POST', '/api/v1/images', { name: 'win', virtualSize: VS, chunkSize: CS })).statusCode).toBe(201);
      const pack = encodePack(chunks.map((c) => ({ id: c.id, rawLength: c.raw.length, frame: c.frame })));
      expect((await req(a, tokenA, 'POST', '/api/v1/chunks/pack', pack, { 'content-type': PACK_CONTENT_TYPE })).statusCode).toBe(200);
      const layer = async (entries: Array<{ index: number; id: string }>) => {
        const bytes = encodeLayer({ geometry: { virtualSize: VS, chunkSize: CS }, hasMasks: false, entries: entries.map((e) => ({ index: e.index, id: Buffer.from(e.id, 'hex') })) });
        const r = await req(a, tokenA, 'POST', '/api/v1/images/win/layers', bytes, { 'content-type': 'application/octet-stream' });
        expect(r.statusCode).toBe(201);
        return r.json().layer as string;
      };
      const l1 = await layer([{ index: 0, id: chunks[0]!.id }, { index: 3, id: chunks[1]!.id }]);
      expect((await req(a, tokenA, 'POST', '/api/v1/images/win/commits', { parent: null, ref: 'main', layer: l1, kind: 'import' })).statusCode).toBe(201);
      const l2 = await layer([{ index: 3, id: chunks[2]!.id }, { index: 5, id: chunks[3]!.id }]);
      const v2 = await req(a, tokenA, 'POST', '/api/v1/images/win/commits', { parent: 1, ref: 'main', layer: l2, kind: 'publish' });
      expect(v2.statusCode).toBe(201);

      for (const c of chunks) {
        const r = await req(a, tokenA, 'GET', `/chunks/${c.id}`);
        expect(r.statusCode).toBe(200);
        expect(digest(r.rawPayload)).toBe(digest(c.frame));
      }
      const delta = await req(a, tokenA, 'GET', '/api/v1/images/win/versions/2/delta');
      expect(delta.statusCode).toBe(200);

      // Everything lives in the bucket; the data folder holds only the cache of it.
      const client = (await S3ChunkStore.open(url, cred(), opts())).client;
      const inBucket = await keys(client, prefix);
      for (const c of chunks) expect(inBucket).toContain(`${prefix}chunks/${c.id.slice(0, 2)}/${c.id}`);
      expect(inBucket.filter((k) => k.startsWith(`${prefix}blobs/`)).length).toBeGreaterThanOrEqual(3); // layers and indexes
      const v2Layer = (v2.json() as { version: { layer: string } }).version.layer;
      expect(inBucket).toContain(`${prefix}deltas/${v2Layer}`);
      expect(digest((await client.request('GET', `${prefix}deltas/${v2Layer}`, 'the delta')).body)).toBe(digest(delta.rawPayload));
      const local = await fsp.readdir(dataA);
      expect(local).toContain('store-cache');
      expect(local).not.toContain('chunks');
      expect(local).not.toContain('blobs');

      // A second server on the same bucket (its own, empty cache): the chunks come from S3, byte-exact.
      b = await open(freshDir(), url);
      for (const c of chunks) {
        const r = await req(b, b.newAdminToken!, 'GET', `/chunks/${c.id}`);
        expect(r.statusCode).toBe(200);
        expect(digest(r.rawPayload)).toBe(digest(c.frame));
      }
    } finally {
      await b?.close();
      await a.close();
    }
  });

  it('start-time errors: a missing bucket, wrong credentials, an unreachable endpoint — each coded, naming what failed, no secret', async () => {
    const url = rgw.url(freshPrefix());
    const noBucket = await rejection(open(freshDir(), url.replace(`s3://${rgw.bucket}/`, 's3://no-such-bucket-x/')));
    expect(noBucket.code).toBe('DF_ERR_S3_NO_BUCKET');
    expect(noBucket.message).toContain('no-such-bucket-x');
    expect(noBucket.message).toContain(rgw.endpoint);

    const wrongSecret = `wrong-${randomBytes(16).toString('hex')}`;
    const denied = await rejection(open(freshDir(), url, { AWS_ACCESS_KEY_ID: rgw.accessKeyId, AWS_SECRET_ACCESS_KEY: wrongSecret }));
    expect(denied.code).toBe('DF_ERR_S3_DENIED');
    expect(denied.message).toContain(rgw.endpoint);
    expect(denied.message).toContain(rgw.bucket);

    const port = await closedPort();
    const down = `s3://${rgw.bucket}/x/?endpoint=${encodeURIComponent(`http://127.0.0.1:${port}`)}`;
    const unreachable = await rejection(open(freshDir(), down));
    expect(unreachable.code).toBe('DF_ERR_S3_UNREACHABLE');
    expect(unreachable.message).toContain(`http://127.0.0.1:${port}`);
    expect(unreachable.fields).toMatchObject({ bucket: rgw.bucket, reason: 'ECONNREFUSED' });

    for (const e of [noBucket, denied, unreachable]) {
      const all = JSON.stringify({ message: e.message, ...e.toJSON(), cause: String(e.cause) });
      expect(all).not.toContain(wrongSecret);
      expect(all).not.toContain(rgw.secretAccessKey);
    }
  });

  it('configuration: every problem at once, and the secret never appears in the config as printed', () => {
    const bad = (() => {
      try {
        loadServerConfig({ flags: { store: 's3://Bad_Bucket/p?endpoint=ftp://x' }, env: { AWS_ACCESS_KEY_ID: 'AKID' }, file: undefined });
      } catch (err) {
        return err as { code: string; fields: { problems: string[] } };
      }
      throw new Error('expected a config error');
    })();
    expect(bad.code).toBe('DF_ERR_CONFIG');
    expect(bad.fields.problems.some((p) => p.includes('not a valid bucket name'))).toBe(true);
    expect(bad.fields.problems.some((p) => p.includes('AWS_SECRET_ACCESS_KEY'))).toBe(true);

    const secret = `s3cr3t-${randomBytes(8).toString('hex')}`;
    const config = loadServerConfig({ flags: { store: rgw.url('p/') }, env: { AWS_ACCESS_KEY_ID: 'AKID', AWS_SECRET_ACCESS_KEY: secret, DESKFUSE_STORE_CACHE_MIB: '128' } });
    expect(config.store.s3?.credentials.secretAccessKey).toBe(secret);
    expect(config.store.cacheMiB).toBe(128);
    expect(JSON.stringify(config)).not.toContain(secret);
    expect(inspect(config, { depth: 10 })).not.toContain(secret);
    expect(JSON.stringify({ ...config.store.s3 })).not.toContain(secret);
    expect(loadServerConfig({}).store).toEqual({ s3: null, cacheMiB: 4096, retrySeconds: 120 });
  });
});

/** A loopback port with no listener (bound, then closed). */
async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((res) => srv.listen(0, '127.0.0.1', res));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((res) => srv.close(() => res()));
  return port;
}
