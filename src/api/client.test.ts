import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { isDeskfuseError } from '../errors.js';
import { ApiClient, busyLine, parseServers, ServerList, type BusyInfo, type RetryInfo } from './client.js';

// Real HTTP servers on loopback: what each one saw, and a switch to kill it.
interface TestServer {
  url: string;
  seen: string[];
  kill: () => Promise<void>;
}
const live: TestServer[] = [];

async function serve(name: string, handle: (req: IncomingMessage, res: ServerResponse, body: string) => void): Promise<TestServer> {
  const seen: string[] = [];
  const srv: Server = createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      seen.push(`${req.method} ${req.url}`);
      handle(req, res, body);
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  let dead = false;
  const t: TestServer = {
    url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`,
    seen,
    kill: async () => {
      if (dead) return;
      dead = true;
      srv.closeAllConnections();
      await new Promise((r) => srv.close(r));
    },
  };
  live.push(t);
  void name;
  return t;
}

const json = (res: ServerResponse, status: number, body: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
const named = (name: string) => (_req: IncomingMessage, res: ServerResponse) => json(res, 200, { from: name });

async function caught(p: Promise<unknown>) {
  try {
    await p;
  } catch (err) {
    if (isDeskfuseError(err)) return err;
    throw err;
  }
  throw new Error('expected a coded error');
}

afterEach(async () => {
  await Promise.all(live.splice(0).map((s) => s.kill()));
});

describe('server lists', () => {
  it('parses one URL, a comma-separated list or an array; bad entries are DF_ERR_USAGE', async () => {
    expect(parseServers('http://a:8080/')).toEqual(['http://a:8080']);
    expect(parseServers(' http://a:8080, https://b:8443/ ,http://a:8080')).toEqual(['http://a:8080', 'https://b:8443']);
    expect(parseServers(['http://a:1', 'http://b:2,http://c:3'])).toEqual(['http://a:1', 'http://b:2', 'http://c:3']);
    for (const bad of ['', 'a:8080', 'http://a:8080,', 'http://a:8080,ftp://b', 'http://a b']) {
      expect(() => parseServers(bad)).toThrow(expect.objectContaining({ code: 'DF_ERR_USAGE' }));
    }
  });
});

describe('failover across servers', () => {
  it('a server killed between requests: the client moves to the next and stays there', async () => {
    const a = await serve('a', named('a'));
    const b = await serve('b', named('b'));
    const retries: RetryInfo[] = [];
    const c = new ApiClient({ server: `${a.url},${b.url}`, onRetry: (r) => retries.push(r) });
    expect((await c.json<{ from: string }>('GET', '/x')).body.from).toBe('a');
    await a.kill();
    expect((await c.json<{ from: string }>('GET', '/x')).body.from).toBe('b');
    expect((await c.json<{ from: string }>('GET', '/x')).body.from).toBe('b');
    expect(c.base).toBe(b.url);
    expect(retries).toEqual([expect.objectContaining({ from: a.url, to: b.url, delayMs: 0, reason: 'ECONNREFUSED' })]);
    expect(c.stats).toMatchObject({ requests: 4, retries: 1, failovers: 1 });
    expect(b.seen).toHaveLength(2);
  });

  it('a server killed mid-answer: the download completes on the other, byte-exact', async () => {
    const { blob, a, b } = await dyingThenWhole();
    const c = new ApiClient({ server: [a.url, b.url] });
    const r = await c.binary('POST', '/api/v1/chunks/fetch', { body: { ids: ['x'] }, idempotent: true });
    expect(r.body.equals(blob)).toBe(true);
    expect(a.seen).toEqual(['POST /api/v1/chunks/fetch']);
    expect(b.seen).toEqual(['POST /api/v1/chunks/fetch']);
    expect(c.base).toBe(b.url);
  });

  it('a sync that began on A goes on on B: 5xx and a dead server move it, every call answered', async () => {
    let calls = 0;
    const a = await serve('a', (req, res) => {
      calls++;
      if (calls === 3) return json(res, 503, { code: 'DF_ERR_META_UNREACHABLE', message: 'db gone' });
      named('a')(req, res);
    });
    const b = await serve('b', named('b'));
    const c = new ApiClient({ server: `${a.url},${b.url}`, backoffMs: 1 });
    const from: string[] = [];
    for (let i = 0; i < 6; i++) {
      if (i === 4) await a.kill();
      from.push((await c.json<{ from: string }>('GET', `/step/${i}`)).body.from);
    }
    expect(from).toEqual(['a', 'a', 'b', 'b', 'b', 'b']);
    expect(a.seen).toEqual(['GET /step/0', 'GET /step/1', 'GET /step/2']);
  });

  it('every server down: DF_ERR_UNREACHABLE naming them, after the attempt budget', async () => {
    const a = await serve('a', named('a'));
    const b = await serve('b', named('b'));
    await a.kill();
    await b.kill();
    const retries: RetryInfo[] = [];
    const c = new ApiClient({ server: [a.url, b.url], attempts: 3, backoffMs: 1, onRetry: (r) => retries.push(r) });
    const err = await caught(c.json('GET', '/x'));
    expect(err.code).toBe('DF_ERR_UNREACHABLE');
    expect(err.fields.servers).toEqual([a.url, b.url]);
    expect(c.stats.requests).toBe(4); // 3 attempts + 1 for the second server
    expect(retries.map((r) => [r.from, r.to])).toEqual([[a.url, b.url], [b.url, a.url], [a.url, b.url]]);
    expect(retries[0]!.delayMs).toBe(0); // b not tried yet: at once
    expect(retries[1]!.delayMs).toBeGreaterThan(0); // back to a: backoff
  });
});

describe('retries and backoff', () => {
  it('retries 5xx with jittered exponential backoff and counts them', async () => {
    let n = 0;
    const a = await serve('a', (req, res) => (++n <= 3 ? json(res, 502, { error: 'busy' }) : named('a')(req, res)));
    const retries: RetryInfo[] = [];
    const c = new ApiClient({ server: a.url, attempts: 4, backoffMs: 8, onRetry: (r) => retries.push(r) });
    expect((await c.json<{ from: string }>('GET', '/x')).body.from).toBe('a');
    expect(c.stats).toMatchObject({ requests: 4, retries: 3, failovers: 0 });
    expect(retries.map((r) => r.attempt)).toEqual([1, 2, 3]);
    // each wait is between half and all of 8, 16, 32 ms
    retries.forEach((r, k) => {
      expect(r.delayMs).toBeGreaterThanOrEqual(4 * 2 ** k);
      expect(r.delayMs).toBeLessThanOrEqual(8 * 2 ** k);
    });
  });

  it('gives up after `attempts`; the server code passes through with its status, an unknown one as DF_ERR_HTTP', async () => {
    const a = await serve('a', (req, res) => (req.url === '/known'
      ? json(res, 503, { code: 'DF_ERR_META_UNREACHABLE', message: 'the metadata database cannot be reached', engine: 'postgres' })
      : json(res, 500, { code: 'DF_ERR_FROM_THE_FUTURE', message: 'new server' })));
    const c = new ApiClient({ server: a.url, attempts: 2, backoffMs: 1 });
    const known = await caught(c.json('GET', '/known'));
    expect(known.code).toBe('DF_ERR_META_UNREACHABLE');
    expect(known.fields).toMatchObject({ status: 503, engine: 'postgres' });
    const unknown = await caught(c.json('GET', '/unknown'));
    expect(unknown.code).toBe('DF_ERR_HTTP');
    expect(unknown.fields).toMatchObject({ status: 500, serverCode: 'DF_ERR_FROM_THE_FUTURE', serverMessage: 'new server' });
    expect(a.seen).toEqual(['GET /known', 'GET /known', 'GET /unknown', 'GET /unknown']);
  });

  it('never retries a 507 (a full store) nor a 4xx', async () => {
    const a = await serve('a', (req, res) => (req.url === '/full' ? json(res, 507, { code: 'DF_ERR_NO_SPACE', message: 'full' }) : json(res, 404, { code: 'DF_ERR_NOT_FOUND', message: 'no' })));
    const b = await serve('b', named('b'));
    const c = new ApiClient({ server: [a.url, b.url], backoffMs: 1 });
    expect((await caught(c.json('PUT', '/full', { body: {} }))).code).toBe('DF_ERR_NO_SPACE');
    expect((await caught(c.json('GET', '/missing'))).code).toBe('DF_ERR_NOT_FOUND');
    expect(b.seen).toEqual([]);
    expect(c.stats.retries).toBe(0);
  });
});

describe('non-idempotent requests', () => {
  it('a POST without idempotency is sent once: no retry after a 5xx nor after a connection reset, not even on another server', async () => {
    const a = await serve('a', (req, res) => (req.url === '/reset' ? req.socket.destroy() : json(res, 503, { code: 'DF_ERR_META_UNREACHABLE', message: 'db' })));
    const b = await serve('b', named('b'));
    const c = new ApiClient({ server: [a.url, b.url], backoffMs: 1 });
    expect((await caught(c.json('POST', '/api/v1/endpoints', { body: { mac: 'x' } }))).code).toBe('DF_ERR_META_UNREACHABLE');
    expect(a.seen).toEqual(['POST /api/v1/endpoints']);
    expect(b.seen).toEqual([]);
    // the failure moved the client on: the next call (the caller's decision) goes to b
    expect(c.base).toBe(b.url);
    const c2 = new ApiClient({ server: [a.url, b.url], backoffMs: 1 });
    expect((await caught(c2.json('POST', '/reset', { body: {} }))).code).toBe('DF_ERR_UNREACHABLE');
    expect(a.seen.filter((s) => s === 'POST /reset')).toHaveLength(1);
    expect(b.seen).toEqual([]);
    expect(c.stats.retries + c2.stats.retries).toBe(0);
  });

  it('a POST the server makes idempotent (idempotent: true, e.g. a commit) is retried on the next server', async () => {
    const a = await serve('a', (_req, res) => json(res, 503, { code: 'DF_ERR_META_UNREACHABLE', message: 'db' }));
    const b = await serve('b', (_req, res, body) => json(res, 201, { from: 'b', got: JSON.parse(body) }));
    const c = new ApiClient({ server: [a.url, b.url], backoffMs: 1 });
    const r = await c.json<{ from: string; got: unknown }>('POST', '/api/v1/desktops/d/commits', { body: { parent: 3, layer: 'l' }, idempotent: true, accept: [409] });
    expect(r).toMatchObject({ status: 201, body: { from: 'b', got: { parent: 3, layer: 'l' } } });
    expect(a.seen).toEqual(['POST /api/v1/desktops/d/commits']);
  });

  it('a refused connection was never sent: even a plain POST goes to the next server', async () => {
    const a = await serve('a', named('a'));
    const b = await serve('b', named('b'));
    await a.kill();
    const c = new ApiClient({ server: [a.url, b.url], backoffMs: 1 });
    expect((await c.json<{ from: string }>('POST', '/api/v1/tokens', { body: {} })).body.from).toBe('b');
    expect(b.seen).toEqual(['POST /api/v1/tokens']);
  });
});

describe('a busy server (503 DF_ERR_BUSY)', () => {
  it('even a plain POST waits Retry-After with its ticket, on the same server, without using an attempt, then goes through', async () => {
    const tickets: Array<string | undefined> = [];
    let n = 0;
    const a = await serve('a', (req, res) => {
      tickets.push(req.headers['x-deskfuse-ticket'] as string | undefined);
      if (++n <= 3) res.setHeader('retry-after', '0.02');
      if (n <= 3) return json(res, 503, { code: 'DF_ERR_BUSY', message: 'busy', ticket: 'T1', position: 4 - n, retryAfter: 1 });
      json(res, 200, { ok: true });
    });
    const b = await serve('b', named('b'));
    const waits: Array<{ position: number; server: string; delayMs: number }> = [];
    const c = new ApiClient({ server: [a.url, b.url], attempts: 1, onBusy: (w) => waits.push(w) });
    expect((await c.json('POST', '/api/v1/chunks/pack', { body: {} })).body).toEqual({ ok: true });
    expect(tickets).toEqual([undefined, 'T1', 'T1', 'T1']);
    expect(waits.map((w) => [w.position, w.server])).toEqual([[3, a.url], [2, a.url], [1, a.url]]);
    for (const w of waits) expect(w.delayMs).toBeGreaterThanOrEqual(15); // Retry-After 20 ms, ±25 %
    expect(b.seen).toEqual([]);
    expect(busyLine('deskfuse agent', waits[0] as BusyInfo)).toMatch(/^deskfuse agent: waiting for the server \(position 3 in line at http:\/\/127\.0\.0\.1:\d+, next try in [\d.]+ s\)\n$/);
  });

  it('two requests refused at once get a ticket each: the client keeps the first, both come back with it, and later requests carry it; heavy ones wait for the first ticket', async () => {
    let n = 0;
    const seen: Array<string | undefined> = [];
    const a = await serve('a', (req, res) => {
      const t = req.headers['x-deskfuse-ticket'] as string | undefined;
      seen.push(t);
      if (t === undefined) {
        res.setHeader('retry-after', '0.02');
        return json(res, 503, { code: 'DF_ERR_BUSY', message: 'busy', ticket: `T${++n}`, position: n, retryAfter: 1 });
      }
      res.setHeader('x-deskfuse-ticket', t);
      json(res, 200, { ticket: t });
    });
    const c = new ApiClient({ server: a.url });
    const both = await Promise.all([c.json('POST', '/p', { body: {} }), c.json('POST', '/p', { body: {} })]);
    expect(both.map((r) => r.body)).toEqual([{ ticket: 'T1' }, { ticket: 'T1' }]);
    expect((await c.json('GET', '/later')).body).toEqual({ ticket: 'T1' });
    expect(seen.filter((t) => t === undefined)).toHaveLength(2);
    // heavy requests (the routes the server admits by client) sent at once: the first goes alone,
    // so the server's line holds this client once
    n = 0;
    seen.length = 0;
    const d = new ApiClient({ server: a.url });
    const fetches = await Promise.all([0, 1, 2].map(() => d.json('POST', '/api/v1/chunks/fetch', { body: { ids: [] } })));
    expect(fetches.map((r) => r.body)).toEqual([{ ticket: 'T1' }, { ticket: 'T1' }, { ticket: 'T1' }]);
    expect(seen.filter((t) => t === undefined)).toHaveLength(1);
    expect(n).toBe(1);
  });

  it('gives up after busyWaitMs with DF_ERR_BUSY and its fields; a 503 of another code is not a line to wait in', async () => {
    const a = await serve('a', (_req, res) => {
      res.setHeader('retry-after', '0.05');
      json(res, 503, { code: 'DF_ERR_BUSY', message: 'busy', ticket: 'T', position: 7, retryAfter: 1 });
    });
    const c = new ApiClient({ server: a.url, busyWaitMs: 120 });
    const err = await caught(c.json('POST', '/x', { body: {} }));
    expect(err).toMatchObject({ code: 'DF_ERR_BUSY', fields: { position: 7, ticket: 'T', status: 503 } });
    expect(a.seen.length).toBeGreaterThanOrEqual(2);
    const m = await serve('m', (_req, res) => json(res, 503, { code: 'DF_ERR_META_UNREACHABLE', message: 'db' }));
    const c2 = new ApiClient({ server: m.url, backoffMs: 1 });
    expect((await caught(c2.json('POST', '/y', { body: {} }))).code).toBe('DF_ERR_META_UNREACHABLE');
    expect(m.seen).toHaveLength(1);
  });
});

describe('timeouts', () => {
  it('no answer within timeoutMs: DF_ERR_UNREACHABLE, and a GET moves to the next server', async () => {
    const a = await serve('a', () => { /* never answers */ });
    const b = await serve('b', named('b'));
    const solo = new ApiClient({ server: a.url, attempts: 1, timeoutMs: 150 });
    const err = await caught(solo.json('GET', '/slow'));
    expect(err.code).toBe('DF_ERR_UNREACHABLE');
    expect(err.message).toContain('no answer within 150 ms');
    const c = new ApiClient({ server: [a.url, b.url], timeoutMs: 150 });
    expect((await c.json<{ from: string }>('GET', '/slow')).body.from).toBe('b');
  });

  it('consume: a server killed mid-answer: the sink restarts and the body completes on the other, byte-exact', async () => {
    const { blob, a, b } = await dyingThenWhole();
    const c = new ApiClient({ server: [a.url, b.url] });
    let got: Buffer[] = [];
    let restarts = 0;
    const status = await c.consume('POST', '/api/v1/chunks/fetch', { body: { ids: ['x'] }, idempotent: true }, {
      piece: (p) => got.push(p),
      restart: () => { restarts++; got = []; },
    });
    expect(status).toBe(200);
    expect(Buffer.concat(got).equals(blob)).toBe(true);
    expect(restarts).toBe(1);
    expect([a.seen, b.seen, c.base]).toEqual([['POST /api/v1/chunks/fetch'], ['POST /api/v1/chunks/fetch'], b.url]);
  });

  it('consume: an error of the sink ends the request as it is (no retry); a stalled body times out; coded errors as binary()', async () => {
    const a = await serve('a', (req, res) => {
      if (req.url === '/missing') return json(res, 404, { code: 'DF_ERR_CHUNK_NOT_FOUND', message: 'gone' });
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.write(Buffer.alloc(1000, 1));
      if (req.url !== '/stall') res.end(Buffer.alloc(1000, 2));
    });
    const c = new ApiClient({ server: a.url, attempts: 1, timeoutMs: 400 });
    const boom = new Error('sink says no');
    await expect(c.consume('GET', '/ok', {}, { piece: () => { throw boom; }, restart: () => {} })).rejects.toBe(boom);
    expect(a.seen).toEqual(['GET /ok']);
    const stalled = await caught(c.consume('GET', '/stall', {}, { piece: () => {}, restart: () => {} }));
    expect(stalled.code).toBe('DF_ERR_UNREACHABLE');
    expect(stalled.message).toContain('no body data within 400 ms');
    const missing = await caught(c.consume('GET', '/missing', {}, { piece: () => {}, restart: () => {} }));
    expect([missing.code, missing.fields.status]).toEqual(['DF_ERR_CHUNK_NOT_FOUND', 404]);
  });

  it('a body that stops moving times out; one that keeps moving is never cut', async () => {
    const a = await serve('a', (req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      let n = 0;
      const tick = setInterval(() => {
        if (req.url === '/stall' && n === 2) return; // stops after two pieces
        res.write(Buffer.alloc(1000, n));
        if (++n === 20) {
          clearInterval(tick);
          res.end();
        }
      }, 30);
      res.on('close', () => clearInterval(tick));
    });
    const c = new ApiClient({ server: a.url, attempts: 1, timeoutMs: 400 });
    // 20 pieces 30 ms apart: longer than timeoutMs in all, never 400 ms without a piece
    const pieces: number[] = [];
    for await (const p of c.stream('GET', '/moving')) pieces.push(p.byteLength);
    expect(pieces.reduce((x, y) => x + y, 0)).toBe(20_000);
    const err = await caught((async () => { for await (const _ of c.stream('GET', '/stall')) { /* drain */ } })());
    expect(err.code).toBe('DF_ERR_UNREACHABLE');
    expect(err.message).toContain('no body data within 400 ms');
  });
});

describe('clients sharing a server list', () => {
  it('withToken and a shared ServerList keep the failover choice', async () => {
    const a = await serve('a', named('a'));
    const b = await serve('b', (req, res) => json(res, 200, { from: 'b', auth: req.headers.authorization ?? null }));
    const list = new ServerList(`${a.url},${b.url}`);
    const c = new ApiClient({ server: list });
    await a.kill();
    await c.json('GET', '/x');
    const d = c.withToken('t1');
    expect(d.base).toBe(b.url);
    expect((await d.json<{ auth: string }>('GET', '/y')).body.auth).toBe('Bearer t1');
    expect(new ApiClient({ server: list }).base).toBe(b.url);
    expect(d.stats.retries).toBe(0);
  });
});

/** Two servers of one 4 MiB body: `a` dies after a quarter of it, `b` sends it whole. */
async function dyingThenWhole() {
  const blob = Buffer.alloc(4 << 20);
  for (let i = 0; i < blob.length; i += 4) blob.writeUInt32LE(i, i);
  const a = await serve('a', (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': blob.length });
    res.write(blob.subarray(0, 1 << 20), () => void a.kill());
  });
  const b = await serve('b', (_req, res) => res.writeHead(200, { 'content-length': blob.length }).end(blob));
  return { blob, a, b };
}
