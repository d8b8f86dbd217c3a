import { dfError, isDeskfuseError } from '../errors.js';
import { encodeFrame } from './frame.js';
import { isIdHex } from './id.js';
import { S3Client, type S3ClientOptions } from './s3-client.js';
import type { S3Credentials } from './s3-sigv4.js';
import { parseS3Url, type S3Location } from './s3-url.js';
import type { PrunableStore, StoredChunk } from './store.js';
import { chunkWorkers, type ChunkWorkers } from './workers.js';

/**
 * A chunk store in an S3 bucket (Ceph RGW, AWS, MinIO…). Layout, one object per chunk:
 *
 *   <prefix>chunks/<id[0..2]>/<id>     the zstd frame of the chunk's raw bytes (as fs-store's .zst)
 *   <prefix>blobs/<id[0..2]>/<id>      layers and chunk indexes, the same way (option `folder`)
 *
 * Writes are conditional, `If-None-Match: *` (412 when the key exists), so two servers storing the
 * same chunk at once end with one object and both succeed; `Content-MD5` makes the engine refuse a
 * body damaged on the way. An engine without conditional writes (`conditionalPut: false`) gets
 * HEAD-then-PUT: a race may then write the same bytes twice, harmless for content-addressed keys.
 * Reads are verified against the id in a worker (as fs-store): a damaged object is
 * DF_ERR_CHUNK_CORRUPT, never served. `has` is a HEAD where only 404 means absent (a HEAD answer
 * has no body to tell a missing key from a missing bucket, so `open` checks the bucket first).
 */
export interface S3StoreOptions extends S3ClientOptions {
  maxChunkSize: number;
  workers?: ChunkWorkers;
  /** false: HEAD then PUT, for engines that ignore If-None-Match on PUT (RGW ≥ 16 and AWS honour it). */
  conditionalPut?: boolean;
  /** PUTs in flight in one putMany (default 16). */
  concurrency?: number;
  /** Keys per listing page (S3 max-keys; default and most 1,000). */
  listPageSize?: number;
  /** The folder under the prefix (default `chunks`; the server keeps layers and indexes under `blobs`). */
  folder?: string;
  /** Retry budget of the bucket check in `open` (default 5 s: a start fails soon, naming what failed). */
  probeRetryMs?: number;
}

export class S3ChunkStore implements PrunableStore {
  readonly client: S3Client;
  private readonly workers: ChunkWorkers;
  private readonly conditional: boolean;
  private readonly concurrency: number;
  /** A frame is at most a little larger than its raw bytes (zstd's bound: +1/128 and a header). */
  private readonly maxFrame: number;
  /** `<prefix><folder>/` */
  readonly root: string;

  constructor(readonly loc: S3Location, cred: S3Credentials, readonly opts: S3StoreOptions) {
    this.client = new S3Client(loc, cred, opts);
    this.workers = opts.workers ?? chunkWorkers();
    this.conditional = opts.conditionalPut ?? true;
    this.concurrency = opts.concurrency ?? 16;
    this.maxFrame = opts.maxChunkSize + (opts.maxChunkSize >> 7) + 65_536;
    this.root = `${loc.prefix}${opts.folder ?? 'chunks'}/`;
  }

  /**
   * Parse `s3://BUCKET/PREFIX?endpoint=…&region=…` and check that the bucket answers with these
   * credentials: DF_ERR_CONFIG, DF_ERR_S3_UNREACHABLE, DF_ERR_S3_DENIED or DF_ERR_S3_NO_BUCKET at start.
   */
  static async open(url: string | S3Location, cred: S3Credentials, opts: S3StoreOptions): Promise<S3ChunkStore> {
    if (!cred.accessKeyId || !cred.secretAccessKey) throw dfError('DF_ERR_CONFIG', 'the S3 store needs credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)', { field: 'store' });
    const store = new S3ChunkStore(typeof url === 'string' ? parseS3Url(url) : url, cred, opts);
    await store.probe();
    return store;
  }

  /**
   * A one-key listing, not a HEAD: its error body says why (NoSuchBucket, InvalidAccessKeyId,
   * SignatureDoesNotMatch…), and it proves the right to list that garbage collection needs.
   */
  async probe(): Promise<void> {
    await this.client.request('GET', undefined, 'the bucket check (a listing)', {
      query: { 'list-type': '2', 'max-keys': '1', prefix: this.root }, maxBody: 1 << 20, retryMs: this.opts.probeRetryMs ?? 5_000,
    });
  }

  keyOf(id: string): string {
    if (!isIdHex(id)) throw dfError('DF_ERR_BAD_REQUEST', `invalid chunk id ${JSON.stringify(id.slice(0, 80))}`, { id });
    return `${this.root}${id.slice(0, 2)}/${id}`;
  }

  async has(id: string): Promise<boolean> {
    if (!isIdHex(id)) return false; // no chunk has that name
    const r = await this.client.request('HEAD', this.keyOf(id), `HEAD of chunk ${id}`, { expect: [404] });
    return r.status !== 404;
  }

  async get(id: string): Promise<StoredChunk> {
    const key = this.keyOf(id);
    const r = await this.client.request('GET', key, `GET of chunk ${id}`, { expect: [404], maxBody: this.maxFrame });
    if (r.status === 404) {
      if (/<Code>NoSuchBucket<\/Code>/.test(r.body.toString('utf8'))) throw this.client.noBucket();
      throw dfError('DF_ERR_CHUNK_NOT_FOUND', `chunk ${id} is not in the store`, { id });
    }
    const frame = r.body;
    try {
      return { frame, raw: await this.workers.open(id, frame, this.opts.maxChunkSize) };
    } catch (cause) {
      if (isDeskfuseError(cause, 'DF_ERR_CHUNK_INVALID')) {
        throw dfError('DF_ERR_CHUNK_CORRUPT', `stored chunk ${id} is corrupt: ${cause.message}`, { id, got: cause.fields.got, key }, cause);
      }
      throw cause;
    }
  }

  async put(id: string, chunk: { frame: Buffer } | { raw: Buffer }): Promise<boolean> {
    const frame = 'frame' in chunk ? chunk.frame : encodeFrame(chunk.raw);
    return this.putOne(id, frame);
  }

  async putMany(chunks: Array<{ id: string; frame: Buffer }>): Promise<{ stored: number; existing: number }> {
    const unique = [...new Map(chunks.map((c) => [c.id, c.frame]))];
    let stored = 0;
    let existing = chunks.length - unique.length;
    const errors: unknown[] = [];
    let next = 0;
    // A few PUTs in flight; every one settles before the batch answers, the first failure answers for it.
    const lane = async () => {
      while (next < unique.length) {
        const [id, frame] = unique[next++]!;
        try {
          if (await this.putOne(id, frame)) stored++;
          else existing++;
        } catch (err) {
          errors.push(err);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.concurrency, unique.length) }, lane));
    if (errors.length) throw errors[0];
    return { stored, existing };
  }

  /** True when this call stored the chunk, false when it was already there. */
  private async putOne(id: string, frame: Buffer): Promise<boolean> {
    const key = this.keyOf(id);
    for (let attempt = 0; ; attempt++) {
      if (!this.conditional && (await this.has(id))) return false;
      const r = await this.client.request('PUT', key, `PUT of chunk ${id}`, {
        body: frame,
        headers: { 'content-type': 'application/zstd', ...(this.conditional ? { 'if-none-match': '*' } : {}) },
        expect: [409, 412],
      });
      if (r.status === 412) return false; // the key exists: a chunk's bytes never change
      if (r.status !== 409) return true;
      // 409 ConditionalRequestConflict (AWS): another conditional write of this key is in flight.
      if (attempt >= 4) throw this.client.failed(r.status, r.body, 'PUT', `PUT of chunk ${id}`);
      await new Promise((res) => setTimeout(res, 50 * 2 ** attempt));
    }
  }

  async *list(): AsyncIterable<string> {
    for await (const o of this.objects()) yield o.id;
  }

  async remove(id: string): Promise<void> {
    await this.client.request('DELETE', this.keyOf(id), `DELETE of chunk ${id}`); // 204 also when absent
  }

  async size(): Promise<{ chunks: number; bytes: number }> {
    let chunks = 0;
    let bytes = 0;
    for await (const o of this.objects()) {
      chunks++;
      bytes += o.size;
    }
    return { chunks, bytes };
  }

  /**
   * Remove an object unless it was written after `mtime` (epoch ms; S3 answers a HEAD's Last-Modified
   * in whole seconds). A conditional PUT of an existing key does not write it, so "newer" means it was
   * deleted and written again.
   */
  async removeIfUnchanged(id: string, mtime: number): Promise<'removed' | 'newer' | 'absent'> {
    const head = await this.client.request('HEAD', this.keyOf(id), `HEAD of chunk ${id}`, { expect: [404] });
    if (head.status === 404) return 'absent';
    const lm = Date.parse(head.headers.get('last-modified') ?? '');
    if (Number.isFinite(lm) && lm > Math.floor(mtime / 1000) * 1000) return 'newer';
    await this.remove(id);
    return 'removed';
  }

  /** Every chunk object, in key order (ListObjectsV2, 1,000 a page, following continuation tokens), with its LastModified (epoch ms). */
  async *objects(): AsyncIterable<{ id: string; size: number; mtime: number }> {
    const prefix = this.root;
    for await (const o of listObjects(this.client, prefix, this.opts.listPageSize ?? 1000)) {
      const id = o.key.slice(o.key.lastIndexOf('/') + 1);
      // Only well-formed chunk keys count: <prefix><folder>/<id[0..2]>/<id>
      if (isIdHex(id) && o.key === `${prefix}${id.slice(0, 2)}/${id}`) yield { id, size: o.size, mtime: o.mtime };
    }
  }
}

/** Every object under `prefix`, in key order (ListObjectsV2, following continuation tokens): key, size, LastModified (epoch ms, 0 if unsaid). */
export async function* listObjects(client: S3Client, prefix: string, pageSize = 1000): AsyncIterable<{ key: string; size: number; mtime: number }> {
  let token: string | undefined;
  do {
    const query: Record<string, string> = { 'list-type': '2', prefix, 'max-keys': String(pageSize) };
    if (token) query['continuation-token'] = token;
    const r = await client.request('GET', undefined, 'a listing', { query, maxBody: 16 * 1024 * 1024 });
    const xml = r.body.toString('utf8');
    for (const m of xml.matchAll(/<Contents>([\s\S]*?)<\/Contents>/g)) {
      const key = xmlText(/<Key>([^<]*)<\/Key>/.exec(m[1]!)?.[1] ?? '');
      const size = Number(/<Size>(\d+)<\/Size>/.exec(m[1]!)?.[1] ?? NaN);
      const mtime = Date.parse(/<LastModified>([^<]*)<\/LastModified>/.exec(m[1]!)?.[1] ?? '');
      if (Number.isFinite(size)) yield { key, size, mtime: Number.isFinite(mtime) ? mtime : 0 };
    }
    const truncated = /<IsTruncated>true<\/IsTruncated>/.test(xml);
    token = truncated ? xmlText(/<NextContinuationToken>([^<]*)<\/NextContinuationToken>/.exec(xml)?.[1] ?? '') : undefined;
    if (truncated && !token) throw dfError('DF_ERR_S3', `the S3 store ${client.loc.endpoint} sent a truncated listing without a continuation token`, { bucket: client.loc.bucket });
  } while (token);
}

/** The five predefined XML entities and numeric references (S3 escapes keys and tokens this way). */
function xmlText(s: string): string {
  return s.replace(/&(#x[0-9a-fA-F]+|#\d+|amp|lt|gt|quot|apos);/g, (_, e: string) => {
    if (e[0] === '#') return String.fromCodePoint(e[1] === 'x' ? parseInt(e.slice(2), 16) : Number(e.slice(1)));
    return ({ amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" } as Record<string, string>)[e]!;
  });
}
