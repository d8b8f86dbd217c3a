import { createHash } from 'node:crypto';
import { dfError, isDeskfuseError, type DeskfuseError } from '../errors.js';
import { EMPTY_SHA256, canonicalQuery, sha256Hex, signV4, uriEncode, type S3Credentials } from './s3-sigv4.js';
import type { S3Location } from './s3-url.js';

/**
 * The few S3 calls a chunk store makes, over Node's own fetch (undici, keep-alive pool) with our
 * SigV4 (s3-sigv4.ts): no SDK (the AWS SDK v3 is megabytes and sends aws-chunked bodies RGW 16
 * refuses). Every failure is a coded error naming the endpoint, bucket and what was asked, never
 * the credentials:
 *   DF_ERR_S3_UNREACHABLE  no answer (refused, reset, DNS, timeout)
 *   DF_ERR_S3_DENIED       403: wrong key id, wrong secret, no permission
 *   DF_ERR_S3_NO_BUCKET    404 NoSuchBucket
 *   DF_ERR_S3              any other unexpected answer (its S3 error code in `s3Code`)
 */
export interface S3Response {
  status: number;
  headers: Headers;
  body: Buffer;
}

export interface S3RequestInit {
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: Buffer;
  /** Statuses the caller handles itself (others throw). 2xx always pass. */
  expect?: number[];
  /** Largest body accepted (a bigger one is DF_ERR_S3). */
  maxBody?: number;
}

export interface S3ClientOptions {
  /** Per request, headers and body (default 30 s). */
  timeoutMs?: number;
}

const ERROR_BODY_MAX = 64 * 1024;

export class S3Client {
  private readonly timeoutMs: number;
  private readonly host: string;

  constructor(readonly loc: S3Location, private readonly cred: S3Credentials, opts: S3ClientOptions = {}) {
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.host = new URL(loc.endpoint).host;
  }

  /** `what` names the request in errors ("PUT of chunk 1a2b…"). `key` undefined = the bucket itself. */
  async request(method: string, key: string | undefined, what: string, init: S3RequestInit = {}): Promise<S3Response> {
    const base = new URL(this.loc.endpoint).pathname.replace(/\/+$/, '');
    const path = `${base}/${uriEncode(this.loc.bucket)}${key === undefined ? '' : `/${uriEncode(key, true)}`}`;
    const query = canonicalQuery(init.query ?? {});
    const body = init.body;
    const headers: Record<string, string> = { host: this.host, ...lower(init.headers ?? {}) };
    if (body) headers['content-md5'] = createHash('md5').update(body).digest('base64'); // RGW checks it (400 BadDigest)
    const signed = signV4({ method, path, query, headers, payloadHash: body ? sha256Hex(body) : EMPTY_SHA256, region: this.loc.region }, this.cred);
    const { host: _host, ...send } = { ...headers, ...signed }; // fetch sets Host itself, from the URL
    const url = `${new URL(this.loc.endpoint).origin}${path}${query ? `?${query}` : ''}`;

    let res: Response;
    let data: Buffer;
    try {
      const view = body && new Uint8Array(body.buffer as ArrayBuffer, body.byteOffset, body.byteLength); // no copy
      res = await fetch(url, { method, headers: send, body: view, signal: AbortSignal.timeout(this.timeoutMs) });
      const ok = res.status >= 200 && res.status < 300;
      data = await readBody(res, ok ? (init.maxBody ?? Number.MAX_SAFE_INTEGER) : ERROR_BODY_MAX);
    } catch (err) {
      if (isDeskfuseError(err)) throw err;
      throw this.unreachable(err, method, what);
    }
    if ((res.status >= 200 && res.status < 300) || init.expect?.includes(res.status)) return { status: res.status, headers: res.headers, body: data };
    throw this.failed(res.status, data, method, what);
  }

  /** A coded error for an answer the caller did not expect. */
  failed(status: number, body: Buffer, method: string, what: string): DeskfuseError {
    const s3Code = /<Code>([^<]{1,100})<\/Code>/.exec(body.toString('utf8'))?.[1];
    const fields = { endpoint: this.loc.endpoint, bucket: this.loc.bucket, op: method, status, ...(s3Code ? { s3Code } : {}) };
    const at = `the S3 store ${this.loc.endpoint} (bucket ${this.loc.bucket})`;
    if (status === 403) {
      return dfError('DF_ERR_S3_DENIED', `${at} refused ${what}: ${s3Code ?? '403 Forbidden'} (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the user's permissions)`, fields);
    }
    if (s3Code === 'NoSuchBucket') return this.noBucket(fields);
    return dfError('DF_ERR_S3', `${at} answered ${what} with ${status}${s3Code ? ` ${s3Code}` : ''}`, fields);
  }

  noBucket(fields: Record<string, unknown> = { endpoint: this.loc.endpoint, bucket: this.loc.bucket }): DeskfuseError {
    return dfError('DF_ERR_S3_NO_BUCKET', `the S3 store ${this.loc.endpoint} has no bucket ${this.loc.bucket} (create it, or fix the store URL)`, fields);
  }

  private unreachable(err: unknown, method: string, what: string): DeskfuseError {
    const e = err as { name?: string; cause?: { code?: string; message?: string } };
    const reason = e?.name === 'TimeoutError' ? `no answer within ${this.timeoutMs / 1000} s` : (e?.cause?.code ?? e?.cause?.message ?? String((err as Error)?.message ?? err));
    return dfError(
      'DF_ERR_S3_UNREACHABLE',
      `the S3 store ${this.loc.endpoint} did not answer ${what}: ${reason}`,
      { endpoint: this.loc.endpoint, bucket: this.loc.bucket, op: method, reason },
      err,
    );
  }
}

function lower(h: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(h).map(([k, v]) => [k.toLowerCase(), v]));
}

/** The whole body, refusing more than `max` bytes (a hostile or broken endpoint cannot fill memory). */
async function readBody(res: Response, max: number): Promise<Buffer> {
  const declared = Number(res.headers.get('content-length') ?? NaN);
  if (declared > max) {
    await res.body?.cancel();
    throw dfError('DF_ERR_S3', `the S3 store sent ${declared} bytes, above the ${max} expected`, { status: res.status, size: declared });
  }
  if (!res.body) return Buffer.alloc(0);
  const parts: Buffer[] = [];
  let n = 0;
  for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) {
    n += part.byteLength;
    if (n > max) throw dfError('DF_ERR_S3', `the S3 store sent more than the ${max} bytes expected`, { status: res.status });
    parts.push(Buffer.from(part.buffer, part.byteOffset, part.byteLength));
  }
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
}
