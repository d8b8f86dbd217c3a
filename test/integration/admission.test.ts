import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openAppliance, type Appliance } from '../../server/appliance.js';
import { loadServerConfig } from '../../src/config/server.js';
import { makeDisk, prng, sha256, sha256Prefix } from '../helpers/disk.js';
import { cli, tempDir } from '../helpers/server.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

let tmp: ReturnType<typeof tempDir>;
let ap: Appliance;
let url = '';
let token = '';
const f = (n: string) => path.join(tmp.dir, n);
const admin = () => ({ DESKFUSE_SERVER: url, DESKFUSE_TOKEN: token });

/** A client that holds the one slot: a pack upload whose body never ends, until `release`. */
async function holdSlot(): Promise<() => void> {
  // a pass frees its slot 2 s after its client's last request (server/admission.ts)
  for (let i = 0; i < 200 && (await running()) > 0; i++) await new Promise((r) => setTimeout(r, 25));
  const before = await running();
  const req = http.request(`${url}/api/v1/chunks/pack`, {
    method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/vnd.deskfuse.pack', 'content-length': '1000000' },
  });
  req.on('error', () => {});
  req.write(Buffer.alloc(100));
  for (let i = 0; i < 200 && (await running()) === before; i++) await new Promise((r) => setTimeout(r, 25));
  expect(await running()).toBe(before + 1);
  return () => req.destroy();
}

async function metrics(): Promise<string> {
  return (await ap.app.inject({ url: '/metrics', headers: { authorization: `Bearer ${token}` } })).body;
}
async function running(): Promise<number> {
  return Number(/^deskfuse_heavy_transfers\{state="running"\} (\d+)$/m.exec(await metrics())?.[1] ?? 0);
}
const fetchPack = (ticket?: string, bearer = token) =>
  fetch(`${url}/api/v1/chunks/fetch`, {
    method: 'POST', body: JSON.stringify({ ids: [] }),
    headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json', ...(ticket ? { 'x-deskfuse-ticket': ticket } : {}) },
  });

beforeAll(async () => {
  tmp = tempDir('df-admission-');
  writeFileSync(f('config.json'), JSON.stringify({ admission: { heavyTransfers: 1, retryAfterSeconds: 1 } }));
  ap = await openAppliance(loadServerConfig({ flags: { data: f('data'), logLevel: 'silent' }, file: f('config.json') }));
  url = await ap.app.listen({ host: '127.0.0.1', port: 0 });
  token = readFileSync(f('data/admin.token'), 'utf8').trim();
  makeDisk(f('base.img'), SIZE, [{ at: 0, data: prng(5)(3 * MiB) }]);
  expect((await cli(['image', 'create', 'win', '--from', f('base.img')], admin())).code).toBe(0);
  expect((await cli(['desktop', 'create', 'd1', '--image', 'win'], admin())).code).toBe(0);
}, 60_000);
afterAll(async () => {
  await ap?.close();
  tmp?.cleanup();
});

describe('admission: heavy transfers past the limit wait in line', () => {
  it('an agent that finds the server full waits, says where it stands, and completes byte-exact once a slot frees', async () => {
    const release = await holdSlot();
    expect(await running()).toBe(1);
    const dt = (await cli(['desktop', 'token', 'd1'], admin())).stdout.trim();
    writeFileSync(f('d1.img'), '');
    truncateSync(f('d1.img'), SIZE + 4 * MiB);
    const run = cli(['agent', 'sync', '--disk', f('d1.img'), '--desktop', 'd1', '--json'], { DESKFUSE_SERVER: url, DESKFUSE_TOKEN: dt });
    // the agent was refused at least twice (it keeps its ticket and place) before the slot frees
    for (let i = 0; i < 600 && !/deskfuse_admission_refused_total 2/.test(await metrics()); i++) await new Promise((r) => setTimeout(r, 50));
    release();
    const r = await run;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/deskfuse agent: waiting for the server \(position 1 in line at http:\/\/127\.0\.0\.1:\d+, next try in [\d.]+ s\)/);
    expect(sha256Prefix(f('d1.img'), SIZE)).toBe(sha256(f('base.img')));
    // the agent's pass frees its slot shortly after its last transfer
    for (let i = 0; i < 200 && (await running()) > 0; i++) await new Promise((r) => setTimeout(r, 25));
    expect(await running()).toBe(0);
  }, 60_000);

  it('refused: 503 DF_ERR_BUSY with Retry-After, a ticket and a place that holds; small calls, the boot script and a wrong token are answered as ever', async () => {
    const release = await holdSlot();
    try {
      const first = await fetchPack();
      expect(first.status).toBe(503);
      expect(first.headers.get('retry-after')).toBe('1');
      const b1 = (await first.json()) as { code: string; ticket: string; position: number; retryAfter: number; message: string };
      expect(b1).toMatchObject({ code: 'DF_ERR_BUSY', position: 1, retryAfter: 1 });
      expect(b1.message).toContain('number 1 in line');
      const b2 = (await (await fetchPack()).json()) as { ticket: string; position: number };
      expect(b2.position).toBe(2);
      expect((await (await fetchPack(b1.ticket)).json()) as object).toMatchObject({ ticket: b1.ticket, position: 1 });

      expect((await fetch(`${url}/healthz`)).status).toBe(200);
      expect((await fetch(`${url}/api/v1/images`, { headers: { authorization: `Bearer ${token}` } })).status).toBe(200);
      expect((await fetch(`${url}/boot/ipxe?mac=52:54:00:aa:00:01&platform=pcbios`)).status).toBe(200);
      const wrong = await fetchPack(undefined, 'dfa_wrong');
      expect(wrong.status).toBe(401);
      expect(((await wrong.json()) as { code: string }).code).toBe('DF_ERR_UNAUTHORIZED');
      expect(await metrics()).toMatch(/^deskfuse_heavy_transfers\{state="waiting"\} 2$/m);

      release();
      for (let i = 0; i < 200 && (await running()) > 0; i++) await new Promise((r) => setTimeout(r, 25));
      // the slot goes to the head of the line: the second in line still waits, the first gets it
      expect((await fetchPack(b2.ticket)).status).toBe(503);
      const go = await fetchPack(b1.ticket);
      expect(go.status).toBe(200);
      expect(Buffer.from(await go.arrayBuffer()).subarray(0, 4).toString()).toBe('DFPK');
    } finally {
      release();
    }
  }, 60_000);
});
