import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startInProcess, tempDir } from '../helpers/server.js';

/** Issue 14 point 8: the OpenAPI document says what every route answers, errors included. */
type Op = { responses?: Record<string, { content?: Record<string, { schema?: Record<string, unknown> }> }> };

let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startInProcess>>;
let ops: Array<[string, Op]>;

beforeAll(async () => {
  tmp = tempDir('df-openapi-');
  srv = await startInProcess(tmp.dir);
  const r = await fetch(`${srv.url}/api/v1/openapi.json`);
  expect(r.status).toBe(200);
  const doc = (await r.json()) as { paths: Record<string, Record<string, Op>> };
  ops = Object.entries(doc.paths).flatMap(([p, byMethod]) => Object.entries(byMethod).map(([m, op]) => [`${m.toUpperCase()} ${p}`, op] as [string, Op]));
});
afterAll(async () => {
  await srv?.close();
  tmp?.cleanup();
});

const schemaOf = (op: Op, code: string) => Object.values(op.responses?.[code]?.content ?? {})[0]?.schema;

describe('the OpenAPI document', () => {
  it('lists the API, chunk and boot routes (and hides /metrics, /healthz and itself)', () => {
    const names = ops.map(([n]) => n);
    expect(names.length).toBeGreaterThanOrEqual(60);
    expect(names).toEqual(expect.arrayContaining(['GET /api/v1/images', 'POST /api/v1/desktops/{name}/commits', 'GET /chunks/{id}', 'GET /boot/ipxe', 'POST /api/v1/tokens']));
    expect(names.filter((n) => /metrics|healthz|openapi/.test(n))).toEqual([]);
  });

  it('gives every route a 2xx response with a schema', () => {
    const without = ops.filter(([, op]) => !Object.keys(op.responses ?? {}).some((c) => c.startsWith('2') && schemaOf(op, c) && Object.keys(schemaOf(op, c)!).length > 0));
    expect(without.map(([n]) => n)).toEqual([]);
  });

  it('gives every route the error shape for 4XX and 5XX: {code, message, …fields}', () => {
    for (const [name, op] of ops) {
      for (const code of ['4XX', '5XX']) {
        const s = schemaOf(op, code);
        expect(s, `${name} ${code}`).toMatchObject({ type: 'object', required: ['code', 'message'], properties: { code: { type: 'string' }, message: { type: 'string' } } });
      }
    }
  });

  it('documents binary answers by their media type', () => {
    const chunk = ops.find(([n]) => n === 'GET /chunks/{id}')![1];
    expect(Object.keys(chunk.responses!['200']!.content!)).toEqual(['application/zstd']);
    expect(schemaOf(chunk, '200')).toMatchObject({ type: 'string', format: 'binary' });
  });

  it('keeps the routes answering as before: an error still carries its fields', async () => {
    const r = await fetch(`${srv.url}/api/v1/images/nope`, { headers: { authorization: `Bearer ${srv.token}` } });
    expect(r.status).toBe(404);
    expect(await r.json()).toMatchObject({ code: 'DF_ERR_IMAGE_NOT_FOUND' });
  });
});
