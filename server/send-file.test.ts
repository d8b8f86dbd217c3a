import { randomBytes } from 'node:crypto';
import { promises as fsp, readdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../test/helpers/server.js';
import { sendFile, sendFileStats } from './send-file.js';

/** One request on `agent`: status, headers and the whole body. */
function get(url: string, agent: http.Agent, method = 'GET'): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer; socket: unknown }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { agent, method }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts), socket: req.socket }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

describe('sendFile: a file as the response body (sendfile(2) on plain TCP, a stream elsewhere)', () => {
  const tmp = tempDir('df-sendfile-http-');
  const data = randomBytes((8 << 20) + 123);
  const file = path.join(tmp.dir, 'body');
  writeFileSync(file, data);
  let app: FastifyInstance;
  let base = '';
  const finished: number[] = [];

  beforeAll(async () => {
    app = Fastify();
    app.addHook('onResponse', async (_req, reply) => { finished.push(reply.statusCode); });
    app.get('/f', async (_req, reply) => {
      const fh = await fsp.open(file, 'r');
      reply.type('application/octet-stream').header('etag', '"x"');
      return sendFile(reply, fh, data.length);
    });
    base = await app.listen({ host: '127.0.0.1', port: 0 });
  });
  afterAll(async () => {
    await app.close();
    tmp.cleanup();
  });

  it('sends the exact bytes with the headers, twice on one keep-alive connection, and runs onResponse for each', async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      finished.length = 0;
      const via = { ...sendFileStats };
      const a = await get(`${base}/f`, agent);
      const b = await get(`${base}/f`, agent);
      for (const r of [a, b]) {
        expect(r.status).toBe(200);
        expect(r.headers['content-length']).toBe(String(data.length));
        expect(r.headers['content-type']).toBe('application/octet-stream');
        expect(r.headers.etag).toBe('"x"');
        expect(r.body.equals(data)).toBe(true);
      }
      expect(b.socket).toBe(a.socket); // the connection went on after a body sent beside Node
      expect(finished).toEqual([200, 200]);
      expect(sendFileStats).toEqual({ sendfile: via.sendfile + 2, stream: via.stream, parts: via.parts });
    } finally {
      agent.destroy();
    }
  });

  it('HEAD answers the length without a body; inject() (no socket) streams the same bytes', async () => {
    const agent = new http.Agent();
    const via = { ...sendFileStats };
    const h = await get(`${base}/f`, agent, 'HEAD');
    expect(h.status).toBe(200);
    expect(h.headers['content-length']).toBe(String(data.length));
    expect(h.body.length).toBe(0);
    const r = await app.inject({ url: '/f' });
    expect(r.statusCode).toBe(200);
    expect(r.rawPayload.equals(data)).toBe(true);
    expect(sendFileStats).toEqual({ sendfile: via.sendfile, stream: via.stream + 1, parts: via.parts });
  });

  it('a client that leaves mid-body leaves no open file behind and the server answering', async () => {
    const fds = () => readdirSync('/proc/self/fd').length;
    await get(`${base}/f`, new http.Agent()); // the sender thread is up before counting
    const before = fds();
    await new Promise<void>((resolve) => {
      const req = http.get(`${base}/f`, (res) => {
        res.on('error', () => {}); // the cut we make
        res.once('data', () => { req.destroy(); resolve(); });
      });
      req.on('error', () => resolve());
    });
    for (let i = 0; i < 50 && fds() > before; i++) await new Promise((r) => setTimeout(r, 100));
    expect(fds()).toBeLessThanOrEqual(before);
    const again = await get(`${base}/f`, new http.Agent());
    expect(again.body.equals(data)).toBe(true);
  });
});
