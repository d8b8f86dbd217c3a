import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { beforeAll, describe, expect, it } from 'vitest';
import { S3ChunkStore, type S3StoreOptions } from '../../src/chunk/s3-store.js';
import { CONTRACT_MAX, chunkOf, listed, storeContract } from '../../src/chunk/store-contract.js';
import { rejection } from '../helpers/expect.js';
import { sharedRgw, type SharedRgw } from '../helpers/engines.js';

// The S3 chunk store against a real Ceph RADOS Gateway (mon + BlueStore OSD + radosgw on loopback):
// the run's shared one (scripts/engines/ceph-rgw.sh, started once per run, stopped by its recorded
// PIDs at the end), under a prefix of this file's own.
let rgw: SharedRgw;
beforeAll(async () => {
  rgw = await sharedRgw('s3-store');
}, 300_000);

const cred = () => ({ accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey });
const opts = (o: Partial<S3StoreOptions> = {}): S3StoreOptions => ({ maxChunkSize: CONTRACT_MAX, ...o });
/** Every test its own prefix in the one bucket: a fresh, empty store. */
const freshPrefix = () => `t-${randomBytes(6).toString('hex')}/`;

storeContract('S3ChunkStore on Ceph RGW', async () => {
  const url = rgw.url(freshPrefix());
  const store = await S3ChunkStore.open(url, cred(), opts());
  return {
    store,
    // an unconditional signed PUT straight to the object's key (bit rot, a bad copy)
    overwrite: async (id, bytes) => {
      await store.client.request('PUT', store.keyOf(id), 'an overwrite', { body: bytes });
    },
    another: () => S3ChunkStore.open(url, cred(), opts()),
  };
});

describe('S3ChunkStore on Ceph RGW', () => {
  it('stores a chunk as the zstd frame at PREFIX/chunks/<id[0:2]>/<id>', async () => {
    const prefix = freshPrefix();
    const store = await S3ChunkStore.open(rgw.url(`deep/${prefix}`), cred(), opts());
    const c = chunkOf('layout');
    await store.put(c.id, { frame: c.frame });
    const key = `${rgw.prefix}deep/${prefix}chunks/${c.id.slice(0, 2)}/${c.id}`;
    expect(store.keyOf(c.id)).toBe(key);
    const r = await store.client.request('GET', key, 'a raw read');
    expect(r.body).toEqual(c.frame);
    expect(r.headers.get('etag')).toBe(`"${(await import('node:crypto')).createHash('md5').update(c.frame).digest('hex')}"`);
  });

  it('of 8 conditional PUTs of one chunk at once, exactly one stores it; all succeed', async () => {
    const url = rgw.url(freshPrefix());
    const stores = await Promise.all(Array.from({ length: 8 }, () => S3ChunkStore.open(url, cred(), opts())));
    const c = chunkOf('eight at once');
    const results = await Promise.all(stores.map((s) => s.put(c.id, { frame: c.frame })));
    expect(results.filter((r) => r === true)).toHaveLength(1);
    expect(await listed(stores[0]!)).toEqual([c.id]);
    expect((await stores[7]!.get(c.id)).raw).toEqual(c.raw);
  });

  it('without conditional PUTs (HEAD then PUT, for engines that lack If-None-Match) a second put reports the chunk there', async () => {
    const store = await S3ChunkStore.open(rgw.url(freshPrefix()), cred(), opts({ conditionalPut: false }));
    const c = chunkOf('head then put');
    expect(await store.put(c.id, { frame: c.frame })).toBe(true);
    expect(await store.put(c.id, { frame: c.frame })).toBe(false);
    expect((await store.get(c.id)).raw).toEqual(c.raw);
  });

  it('lists across pages (ListObjectsV2 continuation tokens)', async () => {
    const store = await S3ChunkStore.open(rgw.url(freshPrefix()), cred(), opts({ listPageSize: 2 }));
    const cs = Array.from({ length: 5 }, (_, i) => chunkOf(`paged ${i}`));
    expect(await store.putMany(cs.map(({ id, frame }) => ({ id, frame })))).toEqual({ stored: 5, existing: 0 });
    expect(await listed(store)).toEqual(cs.map((c) => c.id).sort());
    expect((await store.size()).chunks).toBe(5);
  });

  it('ignores objects under the prefix that are not chunk keys', async () => {
    const store = await S3ChunkStore.open(rgw.url(freshPrefix()), cred(), opts());
    const c = chunkOf('among strangers');
    await store.put(c.id, { frame: c.frame });
    const stray = `${store.loc.prefix}chunks/zz/${c.id}`; // wrong fan-out folder
    await store.client.request('PUT', stray, 'a stray object', { body: Buffer.from('x') });
    await store.client.request('PUT', `${store.loc.prefix}chunks/${c.id.slice(0, 2)}/notes.txt`, 'a stray object', { body: Buffer.from('y') });
    expect(await listed(store)).toEqual([c.id]);
  });

  it('a missing bucket is DF_ERR_S3_NO_BUCKET at open, naming the bucket', async () => {
    const url = rgw.url(freshPrefix()).replace(`s3://${rgw.bucket}/`, 's3://no-such-bucket/');
    const err = await rejection(S3ChunkStore.open(url, cred(), opts()));
    expect(err.code).toBe('DF_ERR_S3_NO_BUCKET');
    expect(err.message).toContain('no-such-bucket');
    expect(err.fields).toMatchObject({ bucket: 'no-such-bucket', endpoint: rgw.endpoint });
  });

  it('a wrong secret or an unknown key id is DF_ERR_S3_DENIED, and the message carries no secret', async () => {
    const url = rgw.url(freshPrefix());
    const wrongSecret = 'wrong-secret-0123456789-abcdefghijklmnop';
    const err = await rejection(S3ChunkStore.open(url, { accessKeyId: rgw.accessKeyId, secretAccessKey: wrongSecret }, opts()));
    expect(err.code).toBe('DF_ERR_S3_DENIED');
    expect(err.fields.s3Code).toBe('SignatureDoesNotMatch');
    const unknown = await rejection(S3ChunkStore.open(url, { accessKeyId: 'NOSUCHKEY00000000000', secretAccessKey: rgw.secretAccessKey }, opts()));
    expect(unknown.code).toBe('DF_ERR_S3_DENIED');
    expect(unknown.fields.s3Code).toBe('InvalidAccessKeyId');
    for (const e of [err, unknown]) {
      const all = JSON.stringify({ message: e.message, ...e.toJSON() });
      expect(all).not.toContain(wrongSecret);
      expect(all).not.toContain(rgw.secretAccessKey);
    }
  });

  it('an endpoint nobody answers on is DF_ERR_S3_UNREACHABLE naming it', async () => {
    const port = await closedPort();
    const url = `s3://${rgw.bucket}/x/?endpoint=${encodeURIComponent(`http://127.0.0.1:${port}`)}`;
    const err = await rejection(S3ChunkStore.open(url, cred(), opts()));
    expect(err.code).toBe('DF_ERR_S3_UNREACHABLE');
    expect(err.message).toContain(`http://127.0.0.1:${port}`);
    expect(err.fields.reason).toBe('ECONNREFUSED');
  });

  it('a chunk whose bucket went away is DF_ERR_S3_NO_BUCKET on get, not "not found"', async () => {
    const store = await S3ChunkStore.open(rgw.url(freshPrefix()), cred(), opts());
    // the same store, pointed at a bucket that does not exist (as if deleted after the start)
    const gone = new S3ChunkStore({ ...store.loc, bucket: 'gone-bucket' }, cred(), opts());
    const err = await rejection(gone.get(chunkOf('orphan').id));
    expect(err.code).toBe('DF_ERR_S3_NO_BUCKET');
    expect((await rejection(gone.put(chunkOf('orphan').id, { raw: chunkOf('orphan').raw }))).code).toBe('DF_ERR_S3_NO_BUCKET');
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
