import { setTimeout as sleep } from 'node:timers/promises';
import { DeskfuseError, dfError, ERRORS, type ErrorCode } from '../errors.js';

/**
 * HTTP client of the image server API, shared by the CLI and (later) the agent. Node's fetch keeps
 * connections alive. Transport failures and 5xx answers of idempotent calls are retried with
 * backoff; error bodies become DeskfuseErrors with the server's code and fields.
 */
export interface ClientOptions {
  server: string;
  token?: string;
  /** Attempts for idempotent calls (default 4: waits 0.25, 0.5, 1 s). */
  attempts?: number;
}

export interface RequestOptions {
  body?: unknown;
  raw?: { data: Buffer; type: string };
  /** Retry on transport errors and 5xx (default: true for GET/HEAD/PUT). */
  idempotent?: boolean;
  /** Statuses returned to the caller instead of thrown. */
  accept?: number[];
}

export interface ApiResponse<T> {
  status: number;
  body: T;
  bytesSent: number;
}

export class ApiClient {
  readonly base: string;
  /** Requests sent and body bytes each way, for reports (`requests`, `bytesFetched`, `bytesUploaded`). */
  readonly stats = { requests: 0, bytesSent: 0, bytesReceived: 0 };
  private readonly attempts: number;

  constructor(private readonly opts: ClientOptions) {
    this.base = opts.server.replace(/\/+$/, '');
    this.attempts = opts.attempts ?? 4;
  }

  async json<T>(method: string, path: string, o: RequestOptions = {}): Promise<ApiResponse<T>> {
    const { res, body: text } = await this.sendAndRead(method, path, o, (r) => r.text());
    this.stats.bytesReceived += Buffer.byteLength(text);
    return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T, bytesSent: bodySize(o) };
  }

  async binary(method: string, path: string, o: RequestOptions = {}): Promise<ApiResponse<Buffer>> {
    const { res, body } = await this.sendAndRead(method, path, o, async (r) => Buffer.from(await r.arrayBuffer()));
    this.stats.bytesReceived += body.length;
    return { status: res.status, body, bytesSent: bodySize(o) };
  }

  /**
   * send() and read the whole body. A connection that breaks mid-body (the server died while
   * answering) is DF_ERR_UNREACHABLE, retried like a failed connect when the call is idempotent.
   */
  private async sendAndRead<B>(method: string, path: string, o: RequestOptions, read: (res: Response) => Promise<B>): Promise<{ res: Response; body: B }> {
    const idempotent = o.idempotent ?? ['GET', 'HEAD', 'PUT'].includes(method);
    for (let attempt = 1; ; attempt++) {
      const res = await this.send(method, path, o);
      try {
        return { res, body: await read(res) };
      } catch (cause) {
        if (idempotent && attempt < this.attempts) {
          await sleep(250 * 2 ** (attempt - 1));
          continue;
        }
        throw dfError('DF_ERR_UNREACHABLE', `${method} ${path}: the connection to ${this.base} broke mid-body: ${causeText(cause)}`, { server: this.base, url: `${this.base}${path}` }, cause);
      }
    }
  }

  /** A response body as it arrives (for deltas: decoded frame by frame with bounded memory). */
  async *stream(method: string, path: string, o: RequestOptions = {}): AsyncGenerator<Uint8Array> {
    const res = await this.send(method, path, o);
    if (!res.body) return;
    try {
      for await (const piece of res.body as unknown as AsyncIterable<Uint8Array>) {
        this.stats.bytesReceived += piece.byteLength;
        yield piece;
      }
    } catch (cause) {
      throw dfError('DF_ERR_UNREACHABLE', `${method} ${path}: the connection broke mid-body: ${causeText(cause)}`, { server: this.base }, cause);
    }
  }

  /** Server-Sent Events: yields each event's `data` (one JSON document per event). */
  async *sse(path: string): AsyncGenerator<string> {
    const headers: Record<string, string> = { accept: 'text/event-stream' };
    if (this.opts.token) headers.authorization = `Bearer ${this.opts.token}`;
    let res: Response;
    try {
      res = await fetch(`${this.base}${path}`, { headers });
    } catch (cause) {
      throw dfError('DF_ERR_UNREACHABLE', `cannot reach ${this.base}: ${causeText(cause)}`, { server: this.base }, cause);
    }
    if (!res.ok || !res.body) throw toError(res.status, await res.text(), 'GET', path);
    let buf = '';
    for await (const piece of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += Buffer.from(piece).toString('utf8');
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = block.split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\n');
        if (data) yield data;
      }
    }
  }

  private async send(method: string, path: string, o: RequestOptions): Promise<Response> {
    const idempotent = o.idempotent ?? ['GET', 'HEAD', 'PUT'].includes(method);
    const headers: Record<string, string> = {};
    if (this.opts.token) headers.authorization = `Bearer ${this.opts.token}`;
    let body: string | Uint8Array | undefined;
    if (o.raw) {
      body = new Uint8Array(o.raw.data.buffer, o.raw.data.byteOffset, o.raw.data.byteLength);
      headers['content-type'] = o.raw.type;
    } else if (o.body !== undefined) {
      body = JSON.stringify(o.body);
      headers['content-type'] = 'application/json';
    }
    const url = `${this.base}${path}`;
    for (let attempt = 1; ; attempt++) {
      let res: Response;
      this.stats.requests++;
      this.stats.bytesSent += bodySize(o);
      try {
        res = await fetch(url, { method, headers, ...(body !== undefined ? { body: body as BodyInit } : {}) });
      } catch (cause) {
        if (idempotent && attempt < this.attempts) {
          await sleep(250 * 2 ** (attempt - 1));
          continue;
        }
        throw dfError('DF_ERR_UNREACHABLE', `cannot reach ${this.base}: ${causeText(cause)}`, { server: this.base, url }, cause);
      }
      if (res.ok || o.accept?.includes(res.status)) return res;
      const text = await res.text();
      // 507: a full store does not empty itself in a few seconds; the caller says so at once.
      if (res.status >= 500 && res.status !== 507 && idempotent && attempt < this.attempts) {
        await sleep(250 * 2 ** (attempt - 1));
        continue;
      }
      throw toError(res.status, text, method, path);
    }
  }
}

function bodySize(o: RequestOptions): number {
  return o.raw ? o.raw.data.length : o.body !== undefined ? Buffer.byteLength(JSON.stringify(o.body)) : 0;
}

function causeText(cause: unknown): string {
  const c = cause as { cause?: { code?: string; message?: string }; message?: string };
  return c.cause?.code ?? c.cause?.message ?? c.message ?? String(cause);
}

export function toError(status: number, text: string, method: string, path: string): DeskfuseError {
  let parsed: Record<string, unknown> | undefined;
  try {
    parsed = JSON.parse(text) as Record<string, unknown>;
  } catch {
    parsed = undefined;
  }
  const code = parsed?.code as string | undefined;
  if (code && code in ERRORS) {
    const { code: _c, message, ...fields } = parsed!;
    return new DeskfuseError(code as ErrorCode, String(message ?? ERRORS[code as ErrorCode].message), { ...fields, status });
  }
  return dfError('DF_ERR_HTTP', `${method} ${path}: HTTP ${status} ${text.slice(0, 200)}`, { status });
}
