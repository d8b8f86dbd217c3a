import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
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
 *
 * Resilience: no answer (refused, reset, timeout) and 5xx answers (500, 502, 503 SlowDown, 504) are
 * retried with full-jitter exponential backoff (100 ms doubling to 5 s between tries) for `retryMs`
 * (default 120 s: a radosgw restart takes 30–60 s), so during an engine restart the server answers
 * late rather than failing. Past that budget the call is DF_ERR_S3_UNREACHABLE (HTTP 503: the agent
 * retries). Every request sent, retries included, is counted by method in `requests`.
 * A retried conditional PUT whose first try was stored but unanswered answers 412 (already there).
 */
export interface S3Response {
  status: number;
  headers: Headers;
  body: Buffer;
}

/** A body read from a file (sent unsigned, `UNSIGNED-PAYLOAD`, guarded by Content-MD5): a delta of any size. */
export interface S3FileBody {
  file: string;
  size: number;
  /** base64 MD5 of the file's bytes. */
  md5: string;
}

export interface S3RequestInit {
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: Buffer | S3FileBody;
  /** Statuses the caller handles itself (others throw). 2xx always pass. */
  expect?: number[];
  /** Largest body accepted (a bigger one is DF_ERR_S3). */
  maxBody?: number;
  /** This call's retry budget instead of the client's (a start-time probe fails fast). */
  retryMs?: number;
}

/** A 2xx answer whose body is left to the caller, streamed (`stream` is undefined for other statuses). */
export interface S3StreamResponse {
  status: number;
  headers: Headers;
  stream?: AsyncIterable<Uint8Array>;
}

export interface S3ClientOptions {
  /** Per request, headers and body (default 30 s). */
  timeoutMs?: number;
  /** How long a call keeps retrying an engine that does not answer or answers 5xx (default 120 s; 0: no retry). */
  retryMs?: number;
}

/** Statuses that mean "the engine is busy or restarting": retried. */
const RETRY_STATUS = new Set([500, 502, 503, 504]);
const BACKOFF_FIRST_MS = 100;
const BACKOFF_MAX_MS = 5_000;

const ERROR_BODY_MAX = 64 * 1024;

export class S3Client {
  private readonly timeoutMs: number;
  private readonly retryMs: number;
  private readonly host: string;
  /** Requests sent, by method (retries count): what a test or a benchmark observes. */
  readonly requests: Record<string, number> = {};

  constructor(readonly loc: S3Location, private readonly cred: S3Credentials, opts: S3ClientOptions = {}) {
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.retryMs = opts.retryMs ?? 120_000;
    this.host = new URL(loc.endpoint).host;
  }

  /** `what` names the request in errors ("PUT of chunk 1a2b…"). `key` undefined = the bucket itself. */
  async request(method: string, key: string | undefined, what: string, init: S3RequestInit = {}): Promise<S3Response> {
    return this.retrying(method, what, init, async (res) => {
      const ok = res.status >= 200 && res.status < 300;
      return { status: res.status, headers: res.headers, body: await readBody(res, ok ? (init.maxBody ?? Number.MAX_SAFE_INTEGER) : ERROR_BODY_MAX) };
    }, key);
  }

  /**
   * As `request`, but a 2xx body is not read: the caller streams it (to a file). Retries cover the
   * answer's arrival, not a body that breaks mid-way (the caller's read then throws).
   */
  async stream(method: string, key: string, what: string, init: S3RequestInit = {}): Promise<S3StreamResponse> {
    const r = await this.retrying(method, what, init, async (res) => {
      if (res.status >= 200 && res.status < 300) return { status: res.status, headers: res.headers, body: Buffer.alloc(0), stream: (res.body ?? undefined) as AsyncIterable<Uint8Array> | undefined };
      return { status: res.status, headers: res.headers, body: await readBody(res, ERROR_BODY_MAX) };
    }, key);
    return { status: r.status, headers: r.headers, ...(r.stream ? { stream: wrapStream(r.stream, (err) => this.unreachable(err, method, what)) } : {}) };
  }

  private async retrying<R extends S3Response>(method: string, what: string, init: S3RequestInit, take: (res: Response) => Promise<R>, key: string | undefined): Promise<R> {
    const deadline = Date.now() + (init.retryMs ?? this.retryMs);
    for (let attempt = 0; ; attempt++) {
      let last: DeskfuseError;
      try {
        const r = await this.once(method, key, init, take);
        if ((r.status >= 200 && r.status < 300) || init.expect?.includes(r.status)) return r;
        last = this.failed(r.status, r.body, method, what);
        if (!RETRY_STATUS.has(r.status)) throw last;
      } catch (err) {
        if (isDeskfuseError(err)) throw err; // an answer we do not retry (403, 404, too large…)
        last = this.unreachable(err, method, what);
      }
      const wait = Math.random() * Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt); // full jitter
      if (Date.now() + wait >= deadline) throw this.gaveUp(last, attempt + 1, method, what);
      await new Promise((res) => setTimeout(res, wait));
    }
  }

  /** One try: throws the transport's error (not coded) when there is no answer. */
  private async once<R>(method: string, key: string | undefined, init: S3RequestInit, take: (res: Response) => Promise<R>): Promise<R> {
    const base = new URL(this.loc.endpoint).pathname.replace(/\/+$/, '');
    const path = `${base}/${uriEncode(this.loc.bucket)}${key === undefined ? '' : `/${uriEncode(key, true)}`}`;
    const query = canonicalQuery(init.query ?? {});
    const body = init.body;
    const headers: Record<string, string> = { host: this.host, ...lower(init.headers ?? {}) };
    let payloadHash = EMPTY_SHA256;
    let send: BodyInit | undefined;
    if (Buffer.isBuffer(body)) {
      headers['content-md5'] = createHash('md5').update(body).digest('base64'); // RGW checks it (400 BadDigest)
      payloadHash = sha256Hex(body);
      send = new Uint8Array(body.buffer as ArrayBuffer, body.byteOffset, body.byteLength); // no copy
    } else if (body) {
      headers['content-md5'] = body.md5;
      headers['content-length'] = String(body.size);
      payloadHash = 'UNSIGNED-PAYLOAD';
      send = Readable.toWeb(createReadStream(body.file, { highWaterMark: 1024 * 1024 })) as unknown as BodyInit;
    }
    const signed = signV4({ method, path, query, headers, payloadHash, region: this.loc.region }, this.cred);
    const { host: _host, ...sendHeaders } = { ...headers, ...signed }; // fetch sets Host itself, from the URL
    const url = `${new URL(this.loc.endpoint).origin}${path}${query ? `?${query}` : ''}`;
    this.requests[method] = (this.requests[method] ?? 0) + 1;
    const res = await fetch(url, { method, headers: sendHeaders, body: send, signal: AbortSignal.timeout(this.timeoutMs), ...(send && !Buffer.isBuffer(body) ? { duplex: 'half' } : {}) } as RequestInit);
    return take(res);
  }

  /** The error after the retry budget: the engine is (still) down or busy. */
  private gaveUp(last: DeskfuseError, tries: number, method: string, what: string): DeskfuseError {
    if (last.code === 'DF_ERR_S3_UNREACHABLE' && tries === 1) return last;
    const reason = last.code === 'DF_ERR_S3_UNREACHABLE' ? String(last.fields.reason) : `${String(last.fields.status)}${last.fields.s3Code ? ` ${String(last.fields.s3Code)}` : ''}`;
    return dfError(
      'DF_ERR_S3_UNREACHABLE',
      `the S3 store ${this.loc.endpoint} did not answer ${what} after ${tries} tries: ${reason}`,
      { endpoint: this.loc.endpoint, bucket: this.loc.bucket, op: method, reason, tries, ...(last.fields.status !== undefined ? { status: last.fields.status } : {}) },
      last,
    );
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

  unreachable(err: unknown, method: string, what: string): DeskfuseError {
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

/** A response body whose transport errors become coded errors. */
async function* wrapStream(body: AsyncIterable<Uint8Array>, coded: (err: unknown) => DeskfuseError): AsyncIterable<Uint8Array> {
  try {
    yield* body;
  } catch (err) {
    throw isDeskfuseError(err) ? err : coded(err);
  }
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
