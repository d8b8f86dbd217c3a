import { setTimeout as sleep } from 'node:timers/promises';
import { DeskfuseError, dfError, ERRORS, type ErrorCode } from '../errors.js';
import { TlsPins, untrustedError, type TlsTrust } from './tls-pin.js';

/**
 * The one HTTP client of the image server API: the CLI, the agent and the boot stage use it.
 * Node's fetch (undici) keeps connections alive.
 *
 * Servers: one base URL or several (`http://a:8080,http://b:8080`), all serving the same API. A
 * client talks to one at a time and stays with it while it answers. A failure that another server
 * may not share (connection refused or reset, a timeout, a 5xx other than 507) moves the client to
 * the next URL (failover), so a sync that began on server A goes on on server B.
 *
 * Retries: a request is sent again, up to `attempts` times plus once per extra server, when
 *   - it is retry-safe: GET, HEAD and PUT, or a call the caller flags `idempotent` (the server makes
 *     it so: chunk uploads are keyed by content, commits by the server's commit key);
 *   - or it never left: the connection was refused or could not be made (any method).
 * A non-idempotent call that may have reached the server is never sent twice. The first retry on a
 * server not tried yet in this request goes at once; later ones wait a jittered exponential backoff
 * (`backoffMs` × 2^k, between half and all of it, at most 10 s).
 *
 * Busy: a server at its limit of clients transferring answers 503 DF_ERR_BUSY with Retry-After, a
 * ticket and the client's place in line (server/admission.ts). That request was not processed, so any
 * method waits Retry-After (jittered ±25 %) and goes again to the same server with its ticket, without
 * using an attempt, for up to `busyWaitMs` in all; `onBusy` hears each wait ("waiting for the server").
 * The ticket a server gives (header `x-deskfuse-ticket`, on a refusal or an admission) goes with every
 * later request to it: admitted, it is the client's pass until its transfers pause.
 *
 * Timeouts: `timeoutMs` until the answer's headers, then at most `timeoutMs` between two pieces of
 * its body (a long download that keeps moving is never cut). Errors: DF_ERR_UNREACHABLE (no answer,
 * a timeout, a connection broken mid-body), the server's own coded error (its code, message and
 * fields, with `status`), else DF_ERR_HTTP {status, serverCode?}.
 *
 * TLS: `https://` servers are verified, against the system's CAs or only the pinned CA (`tls`:
 * src/api/tls-pin.ts); a certificate refused is DF_ERR_TLS_UNTRUSTED, a pin not in the server's chain
 * DF_ERR_TLS_PIN (nothing sent), neither retried.
 */
export interface ClientOptions {
  /** Base URL, several comma-separated, an array of them, or a ServerList shared with other clients. */
  server: string | readonly string[] | ServerList;
  token?: string;
  /** Attempts per request on one server (default 4: the waits are about 0.25, 0.5, 1 s). */
  attempts?: number;
  /** Milliseconds until the headers, and between body pieces (default 60,000). */
  timeoutMs?: number;
  /** First backoff step in milliseconds (default 250). */
  backoffMs?: number;
  /** Called before each retry (logs, tests). */
  onRetry?: (r: RetryInfo) => void;
  /** How long one request may wait in a busy server's line, in all (default 30 minutes). */
  busyWaitMs?: number;
  /** Called before each wait in a busy server's line. */
  onBusy?: (b: BusyInfo) => void;
  /** The CA https servers must chain to (PEM or a SHA-256 pin); default the system's CAs. */
  tls?: TlsTrust | TlsPins;
}

export interface BusyInfo {
  method: string;
  path: string;
  server: string;
  /** Place in the server's line (1 = next). */
  position: number;
  delayMs: number;
}

export interface RetryInfo {
  method: string;
  path: string;
  /** The attempt that failed (1 = the first) and where it went. */
  attempt: number;
  from: string;
  /** Where the next attempt goes, and after how long. */
  to: string;
  delayMs: number;
  reason: string;
}

export interface RequestOptions {
  body?: unknown;
  raw?: { data: Buffer; type: string };
  /** Retry-safe: retried on transport errors and 5xx (default: true for GET/HEAD/PUT). */
  idempotent?: boolean;
  /** Statuses returned to the caller instead of thrown. */
  accept?: number[];
  /** Attempts for this request (default: the client's). */
  attempts?: number;
}

export interface ApiResponse<T> {
  status: number;
  body: T;
  bytesSent: number;
}

/** The server URLs and which one answers now; clients made from one list share the choice. */
export class ServerList {
  readonly urls: readonly string[];
  private at = 0;

  constructor(spec: string | readonly string[]) {
    this.urls = parseServers(spec);
  }

  get current(): string {
    return this.urls[this.at]!;
  }

  /** Move on from `url` (the next request goes to the following URL); no-op if already moved. */
  failed(url: string): string {
    if (this.current === url) this.at = (this.at + 1) % this.urls.length;
    return this.current;
  }

  toString(): string {
    return this.urls.join(',');
  }
}

/**
 * `http://a:8080,http://b:8080/` → ['http://a:8080', 'http://b:8080'] (spaces and trailing slashes
 * dropped, duplicates once). Anything but http(s) URLs is DF_ERR_USAGE naming the bad entry.
 */
export function parseServers(spec: string | readonly string[]): string[] {
  const parts = (typeof spec === 'string' ? spec.split(',') : spec.flatMap((s) => s.split(','))).map((s) => s.trim().replace(/\/+$/, ''));
  const bad = parts.filter((s) => !/^https?:\/\/[^\s/,]+(\/[^\s,]*)?$/.test(s));
  if (bad.length || parts.length === 0) {
    throw dfError('DF_ERR_USAGE', `server: expected http://HOST[:PORT], or several separated by commas, got ${JSON.stringify(typeof spec === 'string' ? spec : spec.join(','))}`, { option: 'server' });
  }
  return [...new Set(parts)];
}

/** Transport errors where the request cannot have reached a server (safe to send elsewhere). */
const NOT_SENT = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'UND_ERR_CONNECT_TIMEOUT']);
const RETRY_SAFE_METHODS = ['GET', 'HEAD', 'PUT'];
const MAX_BACKOFF_MS = 10_000;

class Timeout extends Error {
  constructor(readonly ms: number, readonly phase: string) {
    super(`no ${phase} within ${ms} ms`);
  }
}

/** One attempt's deadline: armed until the headers, re-armed per body piece, cleared at the end. */
class Deadline {
  readonly controller = new AbortController();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly ms: number) {
    this.timer = setTimeout(() => this.controller.abort(new Timeout(ms, 'answer')), ms);
    this.timer.unref?.();
  }

  /** A body piece arrived: the next one has `ms` again. */
  progress(): void {
    this.timer?.refresh();
  }

  /** The next wait is for the body (the message says so). */
  body(): void {
    if (!this.timer) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.controller.abort(new Timeout(this.ms, 'body data')), this.ms);
    this.timer.unref?.();
  }

  clear(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}

interface Sent {
  res: Response;
  server: string;
  deadline: Deadline;
}

/** One request's retry state, across its attempts (sends and body reads). */
interface Try {
  method: string;
  path: string;
  safe: boolean;
  budget: number;
  attempt: number;
  tried: Set<string>;
  /** Backoff waits so far (retries to a server this request already tried). */
  waits: number;
  /** Time spent waiting in busy servers' lines. */
  busyMs: number;
}

export class ApiClient {
  readonly servers: ServerList;
  /**
   * Requests sent (every attempt), body bytes each way, retries and moves to another server, for
   * reports (`requests`, `bytesFetched`, `bytesUploaded`) and tests.
   */
  readonly stats = { requests: 0, bytesSent: 0, bytesReceived: 0, retries: 0, failovers: 0 };
  /** The admission ticket each server gave this client (its place in line, then its pass). */
  private readonly tickets = new Map<string, string>();
  /** A heavy request sent without a ticket, by server: the others wait for its answer (and ticket). */
  private readonly ticketGates = new Map<string, Promise<void>>();
  private readonly attempts: number;
  private readonly timeoutMs: number;
  private readonly backoffMs: number;
  private readonly pins: TlsPins;

  constructor(private readonly opts: ClientOptions) {
    this.servers = opts.server instanceof ServerList ? opts.server : new ServerList(opts.server);
    this.pins = opts.tls instanceof TlsPins ? opts.tls : new TlsPins(opts.tls ?? {});
    this.attempts = opts.attempts ?? 4;
    this.timeoutMs = opts.timeoutMs ?? 60_000;
    this.backoffMs = opts.backoffMs ?? 250;
  }

  /** How https servers are verified (clients made for the same servers share it). */
  get tls(): TlsPins {
    return this.pins;
  }

  /** The URL requests go to now. */
  get base(): string {
    return this.servers.current;
  }

  /** A client with another token (or none) on the same servers (it shares their failover state). */
  withToken(token: string | undefined): ApiClient {
    const { token: _t, ...rest } = this.opts;
    return new ApiClient({ ...rest, server: this.servers, tls: this.pins, ...(token ? { token } : {}) });
  }

  /** Closes the connections of pinned https servers (shared with the clients withToken made). */
  async close(): Promise<void> {
    await this.pins.close();
  }

  async json<T>(method: string, path: string, o: RequestOptions = {}): Promise<ApiResponse<T>> {
    const { res, body } = await this.sendAndRead(method, path, o);
    const text = body.toString('utf8');
    return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T, bytesSent: bodySize(o) };
  }

  async binary(method: string, path: string, o: RequestOptions = {}): Promise<ApiResponse<Buffer>> {
    const { res, body } = await this.sendAndRead(method, path, o);
    return { status: res.status, body, bytesSent: bodySize(o) };
  }

  /** A response body as it arrives (for deltas: decoded frame by frame with bounded memory). */
  async *stream(method: string, path: string, o: RequestOptions = {}): AsyncGenerator<Uint8Array> {
    const { res, server, deadline } = await this.send(this.try(method, path, o), o);
    try {
      if (!res.body) return;
      deadline.body();
      for await (const piece of res.body as unknown as AsyncIterable<Uint8Array>) {
        deadline.progress();
        this.stats.bytesReceived += piece.byteLength;
        yield piece;
      }
    } catch (cause) {
      // Not resumable here: the caller's retry goes to the next server.
      this.moveOn(server);
      throw this.unreachable(method, path, server, `the connection broke mid-body: ${causeText(cause)}`, cause);
    } finally {
      deadline.clear();
    }
  }

  /**
   * A large body handed to `sink.piece` as it arrives, never held whole (undici's request API: no web
   * streams in between). Retried as binary() is: a connection that breaks mid-body on a retry-safe
   * call is sent again, to the next server, after `sink.restart()` (the sink forgets what it had). An
   * error thrown by the sink ends the request and is thrown as it is.
   */
  async consume(method: string, path: string, o: RequestOptions, sink: { piece(p: Buffer): void; restart(): void }): Promise<number> {
    const t = this.try(method, path, o);
    for (let first = true; ; first = false) {
      if (!first) sink.restart();
      const { res, server, deadline } = await this.send(t, o, {}, true);
      let sinkFailed: { err: unknown } | undefined;
      try {
        deadline.body();
        for await (const piece of (res.body ?? []) as unknown as AsyncIterable<Buffer>) {
          deadline.progress();
          this.stats.bytesReceived += piece.length;
          try {
            sink.piece(piece);
          } catch (err) {
            sinkFailed = { err };
            break; // leaving the loop destroys the body (and its connection)
          }
        }
        if (sinkFailed) throw sinkFailed.err;
        return res.status;
      } catch (cause) {
        if (sinkFailed) throw sinkFailed.err;
        await this.afterBrokenBody(t, server, cause);
      } finally {
        deadline.clear();
      }
    }
  }

  /** Server-Sent Events: yields each event's `data` (one JSON document per event). No idle limit. */
  async *sse(path: string): AsyncGenerator<string> {
    const { res, server, deadline } = await this.send(this.try('GET', path, {}), {}, { accept: 'text/event-stream' });
    deadline.clear(); // events may be minutes apart
    if (!res.body) return;
    let buf = '';
    try {
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
    } catch (cause) {
      this.moveOn(server);
      throw this.unreachable('GET', path, server, `the event stream broke: ${causeText(cause)}`, cause);
    }
  }

  /**
   * send() and read the whole body. A connection that breaks mid-body (the server died while
   * answering) is retried like a failed connect when the call is retry-safe, on the next server.
   */
  private async sendAndRead(method: string, path: string, o: RequestOptions): Promise<{ res: Response; body: Buffer }> {
    const t = this.try(method, path, o);
    for (;;) {
      const { res, server, deadline } = await this.send(t, o);
      try {
        deadline.body();
        const body = await readBody(res, deadline);
        this.stats.bytesReceived += body.length;
        return { res, body };
      } catch (cause) {
        await this.afterBrokenBody(t, server, cause);
      } finally {
        deadline.clear();
      }
    }
  }

  /**
   * A body that broke mid-way (the server died while answering): a retry-safe call waits its turn
   * and goes again, to the next server (the caller loops); any other is DF_ERR_UNREACHABLE.
   */
  private async afterBrokenBody(t: Try, server: string, cause: unknown): Promise<void> {
    if (t.safe && t.attempt < t.budget) return this.retry(t, server, `the body broke: ${causeText(cause)}`);
    this.moveOn(server);
    throw this.unreachable(t.method, t.path, server, `the connection broke mid-body: ${causeText(cause)}`, cause);
  }

  /** Send until a server answers with headers; the caller reads the body and clears the deadline. */
  private async send(t: Try, o: RequestOptions, extra: Record<string, string> = {}, viaRequest = false): Promise<Sent> {
    const { method, path } = t;
    const headers: Record<string, string> = { ...extra };
    if (this.opts.token) headers.authorization = `Bearer ${this.opts.token}`;
    let body: string | Uint8Array | undefined;
    if (o.raw) {
      body = new Uint8Array(o.raw.data.buffer, o.raw.data.byteOffset, o.raw.data.byteLength);
      headers['content-type'] = o.raw.type;
    } else if (o.body !== undefined) {
      body = JSON.stringify(o.body);
      headers['content-type'] = 'application/json';
    }
    for (;;) {
      t.attempt++;
      const server = this.servers.current;
      t.tried.add(server);
      // One ticket per client: of heavy requests sent at once without one, the first goes alone and
      // the others wait for its answer (two tickets would put this client twice in the server's line,
      // the second a ghost holding a place until it is forgotten).
      let gate: (() => void) | undefined;
      if (!this.tickets.has(server) && HEAVY.test(`${method} ${path}`)) {
        const first = this.ticketGates.get(server);
        if (first) {
          await first;
          t.attempt--;
          continue;
        }
        this.ticketGates.set(server, new Promise<void>((resolve) => { gate = resolve; }));
      }
      const opened = () => {
        if (!gate) return;
        this.ticketGates.delete(server);
        gate();
        gate = undefined;
      };
      const ticket = this.tickets.get(server);
      if (ticket) headers['x-deskfuse-ticket'] = ticket;
      else delete headers['x-deskfuse-ticket'];
      // Two requests sent at once without a ticket get one each: the client keeps the first it hears
      // of (the other, never shown again, leaves the server's line), unless it sent one, now stale.
      const adopt = (t: string) => { if (ticket !== undefined || !this.tickets.has(server)) this.tickets.set(server, t); };
      const deadline = new Deadline(this.timeoutMs);
      let res: Response;
      this.stats.requests++;
      this.stats.bytesSent += bodySize(o);
      try {
        const fetchFn = viaRequest ? await this.pins.requestFor(server) : await this.pins.fetchFor(server);
        res = await fetchFn(`${server}${path}`, { method, headers, signal: deadline.controller.signal, ...(body !== undefined ? { body: body as BodyInit } : {}) });
      } catch (cause) {
        opened();
        deadline.clear();
        // A server that is not who it should be: no retry, no other server tried in its place.
        const refused = untrustedError(cause, server, this.pins);
        if (refused) throw refused;
        const why = causeText(deadline.controller.signal.reason ?? cause);
        if ((t.safe || notSent(cause)) && t.attempt < t.budget) {
          await this.retry(t, server, why);
          continue;
        }
        this.moveOn(server);
        throw this.unreachable(method, path, server, why, cause);
      }
      const given = res.headers.get('x-deskfuse-ticket');
      if (given) adopt(given);
      if (res.ok || o.accept?.includes(res.status)) {
        opened();
        return { res, server, deadline };
      }
      let text: string;
      try {
        deadline.body();
        text = (await readBody(res, deadline)).toString('utf8');
      } catch {
        text = '';
      } finally {
        deadline.clear();
      }
      const busy = res.status === 503 ? busyAnswer(text, res.headers.get('retry-after')) : undefined;
      if (busy) adopt(busy.ticket);
      opened();
      if (busy && t.busyMs < (this.opts.busyWaitMs ?? BUSY_WAIT_MS)) {
        const delayMs = Math.round(busy.retryAfterMs * (0.75 + Math.random() * 0.5));
        t.attempt--; // refused before anything was done: it costs no attempt
        t.busyMs += delayMs;
        this.opts.onBusy?.({ method, path, server, position: busy.position, delayMs });
        await sleep(delayMs);
        continue;
      }
      // 507: a full store does not empty itself in a few seconds; the caller says so at once.
      if (res.status >= 500 && res.status !== 507) {
        if (t.safe && t.attempt < t.budget) {
          await this.retry(t, server, `HTTP ${res.status}`);
          continue;
        }
        this.moveOn(server);
      }
      throw toError(res.status, text, method, path);
    }
  }

  /** A request's retry state: `attempts` on one server, one more per extra server. */
  private try(method: string, path: string, o: RequestOptions): Try {
    const budget = (o.attempts ?? this.attempts) + this.servers.urls.length - 1;
    return { method, path, safe: o.idempotent ?? RETRY_SAFE_METHODS.includes(method), budget, attempt: 0, tried: new Set(), waits: 0, busyMs: 0 };
  }

  /**
   * Count, move to the next server and wait: not at all for a server this request has not tried
   * yet, else backoffMs × 2^k (k = the waits before), jittered between half and all of it.
   */
  private async retry(t: Try, from: string, reason: string): Promise<void> {
    const to = this.moveOn(from);
    this.stats.retries++;
    let delayMs = 0;
    if (t.tried.has(to)) {
      const step = Math.min(MAX_BACKOFF_MS, this.backoffMs * 2 ** t.waits++);
      delayMs = Math.round(step / 2 + Math.random() * (step / 2));
    }
    this.opts.onRetry?.({ method: t.method, path: t.path, attempt: t.attempt, from, to, delayMs, reason });
    if (delayMs > 0) await sleep(delayMs);
  }

  private moveOn(from: string): string {
    const to = this.servers.failed(from);
    if (to !== from) this.stats.failovers++;
    return to;
  }

  private unreachable(method: string, path: string, server: string, why: string, cause: unknown): DeskfuseError {
    const many = this.servers.urls.length > 1;
    return dfError('DF_ERR_UNREACHABLE', `${method} ${path}: cannot reach ${server}: ${why}${many ? ` (servers: ${this.servers})` : ''}`, {
      server, url: `${server}${path}`, ...(many ? { servers: [...this.servers.urls] } : {}),
    }, cause);
  }
}

const BUSY_WAIT_MS = 30 * 60 * 1000;
/** The routes the server admits by client (`config: { heavy: true }` in server/routes/chunks.ts and sync.ts). */
const HEAVY = /^(POST \/api\/v1\/chunks\/(fetch|pack|patch)|GET \/api\/v1\/images\/[^/]+\/versions\/[^/]+\/delta)(\?|$)/;

/** What the agent and the CLI print while they wait in a busy server's line. */
export function busyLine(who: string, b: BusyInfo): string {
  return `${who}: waiting for the server (position ${b.position} in line at ${b.server}, next try in ${Math.round(b.delayMs / 100) / 10} s)\n`;
}

/** A 503 DF_ERR_BUSY's ticket, place in line and wait (Retry-After in seconds, else the body's). */
function busyAnswer(text: string, retryAfter: string | null): { ticket: string; position: number; retryAfterMs: number } | undefined {
  let b: { code?: unknown; ticket?: unknown; position?: unknown; retryAfter?: unknown };
  try {
    b = JSON.parse(text) as typeof b;
  } catch {
    return undefined;
  }
  if (b.code !== 'DF_ERR_BUSY' || typeof b.ticket !== 'string') return undefined;
  const s = Number(retryAfter ?? b.retryAfter);
  return { ticket: b.ticket, position: Number(b.position) || 0, retryAfterMs: (Number.isFinite(s) && s > 0 ? Math.min(s, 600) : 5) * 1000 };
}

/** A refused or impossible connection: the request was never sent. */
function notSent(cause: unknown): boolean {
  const c = (cause as { cause?: { code?: string } }).cause;
  return NOT_SENT.has(c?.code ?? '');
}

/** Bodies up to this size with a Content-Length are copied into one buffer as they arrive. */
const PREALLOCATE_MAX = 64 * 1024 * 1024;

/**
 * The whole body, each piece re-arming the deadline. With a Content-Length, each piece is copied into
 * one buffer of that size as it arrives (the agent's 16 MiB packs were held twice: pieces, then their
 * concatenation); without, one piece is used as is, several are copied once into one buffer.
 */
async function readBody(res: Response, deadline: Deadline): Promise<Buffer> {
  if (!res.body) return Buffer.alloc(0);
  const pieces: Uint8Array[] = [];
  let total = 0;
  const declared = Number(res.headers.get('content-length') ?? NaN);
  const into = res.headers.get('content-encoding') === null && Number.isSafeInteger(declared) && declared > 0 && declared <= PREALLOCATE_MAX
    ? Buffer.allocUnsafe(declared) : null;
  for await (const piece of res.body as unknown as AsyncIterable<Uint8Array>) {
    deadline.progress();
    if (into && total + piece.byteLength <= into.length) into.set(piece, total);
    else pieces.push(piece);
    total += piece.byteLength;
  }
  if (into) {
    // What the header said, or (a body that disagrees with it) the pieces as a plain body would be.
    if (total === into.length && pieces.length === 0) return into;
    throw new TypeError('terminated', { cause: Object.assign(new Error(`body of ${total} bytes, Content-Length ${declared}`), { code: 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH' }) });
  }
  if (pieces.length === 1) return Buffer.from(pieces[0]!.buffer, pieces[0]!.byteOffset, pieces[0]!.byteLength);
  return Buffer.concat(pieces, total);
}

function bodySize(o: RequestOptions): number {
  return o.raw ? o.raw.data.length : o.body !== undefined ? Buffer.byteLength(JSON.stringify(o.body)) : 0;
}

function causeText(cause: unknown): string {
  if (cause instanceof Timeout) return cause.message;
  const c = cause as { cause?: { code?: string; message?: string }; message?: string };
  return c.cause?.code ?? c.cause?.message ?? c.message ?? String(cause);
}

/**
 * An error answer as a coded error: the server's own code (known to this client) with its message
 * and fields; else DF_ERR_HTTP with the status and, when the server sent one, its code and message.
 */
export function toError(status: number, text: string, method: string, path: string): DeskfuseError {
  let parsed: Record<string, unknown> | undefined;
  try {
    parsed = JSON.parse(text) as Record<string, unknown>;
  } catch {
    parsed = undefined;
  }
  const code = typeof parsed?.code === 'string' ? parsed.code : undefined;
  if (code && code in ERRORS) {
    const { code: _c, message, ...fields } = parsed!;
    return new DeskfuseError(code as ErrorCode, String(message ?? ERRORS[code as ErrorCode].message), { ...fields, status });
  }
  const serverMessage = typeof parsed?.message === 'string' ? parsed.message : undefined;
  const shown = code ? `${code}: ${serverMessage ?? ''}` : text.slice(0, 200);
  return dfError('DF_ERR_HTTP', `${method} ${path}: HTTP ${status} ${shown}`, { status, ...(code ? { serverCode: code } : {}), ...(serverMessage ? { serverMessage } : {}) });
}
