import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import { openAppliance, type Appliance } from '../../server/appliance.js';
import { startPruneService } from '../../server/services/prune.js';
import { DEFAULTS, loadServerConfig, type ServerConfig } from '../../src/config/server.js';
import { silentLogger } from '../../src/log.js';
import { makeDisk, prng } from '../helpers/disk.js';
import { cli, tempDir } from '../helpers/server.js';

/**
 * Issue 10 item 7: the routes anyone can call must not let anyone change state or grow tables.
 * Unknown MACs are capped and rate-limited; a commit request is heard only from the endpoint's
 * address; old rows are pruned on a timer.
 */
const T0 = Date.parse('2026-03-02T08:00:00.000Z');
const mac = (i: number) => `02:00:00:00:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 0xff).toString(16).padStart(2, '0')}`;

let tmp: ReturnType<typeof tempDir> | undefined;
let ap: Appliance | undefined;
let clock = T0;
let cfg: ServerConfig;

async function open(over: Partial<Pick<ServerConfig, 'enrolment' | 'retention'>> = {}): Promise<FastifyInstance> {
  tmp = tempDir('df-anon-');
  clock = T0;
  const bootDir = path.join(tmp.dir, 'boot');
  mkdirSync(bootDir);
  writeFileSync(path.join(bootDir, 'vmlinuz'), 'kernel');
  const base = loadServerConfig({ flags: { data: path.join(tmp.dir, 'data'), logLevel: 'silent', bootDir } });
  cfg = { ...base, ...over };
  ap = await openAppliance(cfg, undefined, { now: () => new Date(clock) });
  return ap.app;
}
afterEach(async () => {
  await ap?.close();
  tmp?.cleanup();
  ap = undefined;
  tmp = undefined;
});

const admin = (app: FastifyInstance, method: 'GET' | 'POST' | 'PATCH', url: string, payload?: object) =>
  app.inject({ method, url, headers: { authorization: `Bearer ${ap!.newAdminToken}` }, ...(payload ? { payload } : {}) });
const endpointCount = async (app: FastifyInstance) => (await admin(app, 'GET', '/api/v1/endpoints')).json().endpoints.length as number;
const eventCount = async (app: FastifyInstance) => (await admin(app, 'GET', '/api/v1/events?limit=1000')).json().events.length as number;

describe('unknown MACs on /boot/ipxe', () => {
  it('past the pending cap: the pending answer, no new row, no event', async () => {
    const app = await open({ enrolment: { pendingMax: 10, perMinute: 1000, pendingSeconds: 3600 } });
    for (let i = 0; i < 50; i++) {
      const r = await app.inject({ method: 'GET', url: `/boot/ipxe?mac=${mac(i)}&platform=pcbios` });
      expect(r.statusCode).toBe(200);
      expect(r.payload).toContain('waiting for an admin to approve this endpoint');
      expect(r.payload).not.toContain('deskfuse.token');
    }
    expect(await endpointCount(app)).toBe(10);
    expect(await eventCount(app)).toBe(20); // enrol + script for each of the ten
    // a pending row not seen for pendingSeconds no longer counts, and the prune deletes it
    clock += 3601_000;
    expect((await app.inject({ method: 'GET', url: `/boot/ipxe?mac=${mac(60)}` })).statusCode).toBe(200);
    expect(await endpointCount(app)).toBe(11);
    expect(await ap!.prune()).toMatchObject({ pending: 10 });
    expect((await admin(app, 'GET', '/api/v1/endpoints')).json().endpoints.map((e: { macs: string[] }) => e.macs[0])).toEqual([mac(60)]);
  });

  it('past the rate: no new row until the minute refills; a known MAC is always answered', async () => {
    const app = await open({ enrolment: { pendingMax: 1000, perMinute: 5, pendingSeconds: 3600 } });
    for (let i = 0; i < 50; i++) expect((await app.inject({ method: 'GET', url: `/boot/ipxe?mac=${mac(i)}` })).statusCode).toBe(200);
    expect(await endpointCount(app)).toBe(5);
    // the five known ones keep their rows and are answered as before
    await admin(app, 'POST', `/api/v1/endpoints/${mac(0)}/approve`, {});
    expect((await app.inject({ method: 'GET', url: `/boot/ipxe?mac=${mac(0)}` })).payload).toContain('no desktop is assigned');
    clock += 60_000;
    for (let i = 100; i < 110; i++) await app.inject({ method: 'GET', url: `/boot/ipxe?mac=${mac(i)}` });
    expect(await endpointCount(app)).toBe(10);
  });

  it('fetching the boot files with an unknown MAC leaves no event', async () => {
    const app = await open();
    const before = await eventCount(app);
    const r = await app.inject({ method: 'GET', url: `/boot/vmlinuz?mac=${mac(7)}` });
    expect([r.statusCode, r.payload]).toEqual([200, 'kernel']);
    expect(await eventCount(app)).toBe(before);
  });
});

describe('commit requests', () => {
  it("are heard only from the endpoint's last-known address; others get 403 and change nothing", async () => {
    const app = await open();
    const img = path.join(tmp!.dir, 'base.img');
    makeDisk(img, 4 * 1024 * 1024, [{ at: 0, data: prng(3)(256 * 1024) }]);
    await ap!.app.listen({ host: '127.0.0.1', port: 0 });
    const env = { DESKFUSE_SERVER: `http://127.0.0.1:${(ap!.app.server.address() as { port: number }).port}`, DESKFUSE_TOKEN: ap!.newAdminToken! };
    expect((await cli(['image', 'create', 'os', '--from', img], env)).code).toBe(0);
    expect((await cli(['desktop', 'create', 'alice', '--image', 'os'], env)).code).toBe(0);
    const M = mac(1);
    // the endpoint boots from 10.0.0.5
    expect((await app.inject({ method: 'GET', url: `/boot/ipxe?mac=${M}`, remoteAddress: '10.0.0.5' })).statusCode).toBe(200);
    expect((await admin(app, 'POST', `/api/v1/endpoints/${M}/approve`, { desktop: 'alice' })).statusCode).toBe(200);
    const ask = (remoteAddress: string) => app.inject({
      method: 'POST', url: '/boot/commit-request', payload: `mac=${M}`, remoteAddress, headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    const other = await ask('10.0.0.66');
    expect(other.statusCode).toBe(403);
    expect(other.json()).toMatchObject({ code: 'DF_ERR_FORBIDDEN', endpoint: 'ep-020000000001', ip: '10.0.0.66' });
    expect((await admin(app, 'GET', `/api/v1/endpoints/${M}`)).json().commitRequested).toBeNull();
    // an IPv4 client seen through a dual-stack socket is the same address
    const own = await ask('::ffff:10.0.0.5');
    expect(own.statusCode, own.payload).toBe(200);
    expect(own.json().action).toBe('commit-poweroff');
    expect((await admin(app, 'GET', `/api/v1/endpoints/${M}`)).json().commitRequested).toEqual(expect.any(String));
    // an endpoint never seen booting has no known address: refused too
    expect((await admin(app, 'POST', '/api/v1/endpoints', { mac: mac(2), desktop: 'alice' })).statusCode).toBe(201);
    const unseen = await app.inject({ method: 'POST', url: '/boot/commit-request', payload: { mac: mac(2) } });
    expect([unseen.statusCode, unseen.json().code]).toEqual([403, 'DF_ERR_FORBIDDEN']);
  });
});

describe('pruning', () => {
  it('the prune service (started by the server program) prunes when it starts', async () => {
    const app = await open({ retention: { ...DEFAULTS.retention, intervalSeconds: 1, eventsSeconds: 3600, tokensSeconds: 0 } });
    for (let i = 0; i < 3; i++) await app.inject({ method: 'GET', url: `/boot/ipxe?mac=${mac(i)}` });
    const minted = (await admin(app, 'POST', '/api/v1/tokens', { scope: 'hypervisor', ttlSeconds: 60 })).json();
    clock += 2 * 3600_000;
    await app.inject({ method: 'GET', url: `/boot/ipxe?mac=${mac(0)}` }); // one fresh event
    const svc = startPruneService(cfg.retention, ap!, silentLogger);
    try {
      await svc.first; // its first pass runs at once (each commit of it waits for its sync)
      expect(await eventCount(app)).toBe(1);
      expect((await admin(app, 'GET', '/api/v1/tokens')).json().tokens.map((t: { id: string }) => t.id)).not.toContain(minted.id);
    } finally {
      svc.close();
    }
  });
});
