import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blakeLib } from '../../src/chunk/native-libs.js';
import { S3ChunkStore } from '../../src/chunk/s3-store.js';
import { S3DeltaBucket } from '../../src/sync/delta-bucket.js';
import { DeltaCache } from '../../src/sync/delta-cache.js';
import { sharedRgw, type SharedRgw } from '../helpers/engines.js';

// Deltas are a cache (issue 13) on the S3 store too: a pruned version's delta goes from this server's
// folder and from the bucket (the run's shared Ceph RGW), and removing an absent one is fine.
let rgw: SharedRgw;
let dir: string;
beforeAll(async () => {
  rgw = await sharedRgw('deltadrop');
  dir = mkdtempSync(path.join(os.tmpdir(), 'df-deltadrop-'));
}, 300_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('DeltaCache.drop with an S3 bucket', () => {
  it('deletes the object and the local file; a second drop is a no-op', async () => {
    const remote = await S3ChunkStore.open(rgw.url(), { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey }, { maxChunkSize: 1 << 20, folder: 'blobs' });
    const bucket = new S3DeltaBucket(remote.client);
    const layer = 'c'.repeat(64);
    const bytes = Buffer.from('a delta, as far as the bucket knows');
    const hash = new (blakeLib().Blake3Hasher)().update(bytes).digest('hex');
    const file = path.join(dir, `${layer}.${hash}.dfdl`);
    writeFileSync(file, bytes);
    expect(await bucket.store(layer, { path: file, size: bytes.length, hash, md5: createHash('md5').update(bytes).digest('base64') })).toBe(true);
    const cache = new DeltaCache(dir, remote, remote, bucket);
    expect(await cache.drop([layer])).toBe(bytes.length);
    expect(await bucket.fetch(layer, dir)).toBeUndefined();
    expect(await cache.drop([layer])).toBe(0);
  });
});
