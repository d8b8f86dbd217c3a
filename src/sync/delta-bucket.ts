import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { blakeLib } from '../chunk/native-libs.js';
import { writeDurable } from '../fs/durable.js';
import type { S3Client } from '../chunk/s3-client.js';
import { isIdHex } from '../chunk/id.js';
import { listObjects } from '../chunk/s3-store.js';
import { dfError } from '../errors.js';
import type { DeltaBucket, DeltaFile } from './delta-cache.js';

/**
 * Per-version deltas in the S3 bucket, beside the chunks:
 *
 *   <prefix>deltas/<layer id>     the delta's bytes (src/sync/delta.ts), metadata x-amz-meta-blake3:
 *                                 the BLAKE3 of those bytes (the local cache names its file by it)
 *
 * One object per layer whatever its bytes, written with `If-None-Match: *`: of two servers storing
 * the same delta at once, one write wins (the other gets 412 and the stored object's hash, by HEAD).
 * Bodies are streamed from and to files (a delta can be large): the upload is unsigned
 * (`UNSIGNED-PAYLOAD`) and guarded by Content-MD5; a download is hashed on its way to disk and
 * kept only when it matches its metadata (a damaged object is deleted, so it is built again).
 */
export class S3DeltaBucket implements DeltaBucket {
  constructor(private readonly client: S3Client) {}

  keyOf(layerId: string): string {
    if (!isIdHex(layerId)) throw dfError('DF_ERR_BAD_REQUEST', `invalid layer id ${JSON.stringify(layerId.slice(0, 80))}`, { layer: layerId });
    return `${this.client.loc.prefix}deltas/${layerId}`;
  }

  async *list(): AsyncIterable<{ layer: string; size: number; mtime: number }> {
    const prefix = `${this.client.loc.prefix}deltas/`;
    for await (const o of listObjects(this.client, prefix)) {
      const layer = o.key.slice(prefix.length);
      if (isIdHex(layer)) yield { layer, size: o.size, mtime: o.mtime };
    }
  }

  async fetch(layerId: string, dir: string): Promise<DeltaFile | undefined> {
    const key = this.keyOf(layerId);
    const what = `GET of the delta of layer ${layerId}`;
    const r = await this.client.stream('GET', key, what, { expect: [404] });
    if (r.status === 404 || !r.stream) return undefined;
    const want = r.headers.get('x-amz-meta-blake3') ?? '';
    const h = new (blakeLib().Blake3Hasher)();
    let size = 0;
    const body = r.stream;
    async function* hashed(): AsyncIterable<Buffer> {
      for await (const part of body) {
        const b = Buffer.from(part.buffer, part.byteOffset, part.byteLength);
        h.update(b);
        size += b.length;
        yield b;
      }
    }
    let got = '';
    const file = await writeDurable({ dir, name: () => `${layerId}.${(got = h.digest('hex'))}.dfdl` }, hashed(), true, `the delta of layer ${layerId}`);
    if (got === want) return { path: file, size };
    // Damaged in the bucket (or stored without its hash): delete it, so that it is built and stored again.
    await fsp.rm(path.join(dir, path.basename(file)), { force: true });
    await this.client.request('DELETE', key, `DELETE of the damaged delta of layer ${layerId}`);
    return undefined;
  }

  async remove(layerId: string): Promise<void> {
    await this.client.request('DELETE', this.keyOf(layerId), `DELETE of the delta of layer ${layerId}`, { expect: [404] });
  }

  async store(layerId: string, f: DeltaFile & { hash: string; md5: string }): Promise<true | { hash: string | undefined }> {
    const key = this.keyOf(layerId);
    for (let attempt = 0; ; attempt++) {
      const r = await this.client.request('PUT', key, `PUT of the delta of layer ${layerId}`, {
        body: { file: f.path, size: f.size, md5: f.md5 },
        headers: { 'content-type': 'application/vnd.deskfuse.delta', 'if-none-match': '*', 'x-amz-meta-blake3': f.hash },
        expect: [409, 412],
      });
      if (r.status === 412) {
        const head = await this.client.request('HEAD', key, `HEAD of the delta of layer ${layerId}`, { expect: [404] });
        if (head.status === 404) continue; // deleted meanwhile (found damaged): store ours
        return { hash: head.headers.get('x-amz-meta-blake3') ?? undefined };
      }
      if (r.status !== 409) return true;
      // 409 ConditionalRequestConflict (AWS): another conditional write of this key is in flight.
      if (attempt >= 4) throw this.client.failed(r.status, r.body, 'PUT', `PUT of the delta of layer ${layerId}`);
      await new Promise((res) => setTimeout(res, 50 * 2 ** attempt));
    }
  }
}
