import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openAppliance, type Appliance } from '../../server/appliance.js';
import { loadServerConfig } from '../../src/config/server.js';
import { openEngine } from '../../src/meta/engine.js';
import { lifecycleContract } from '../../src/meta/lifecycle-contract.js';
import type { MetaEngineFixture } from '../../src/meta/meta-contract.js';
import { openMeta } from '../../src/meta/open.js';
import { sharedPostgres } from '../helpers/engines.js';
import { tempDir } from '../helpers/server.js';

// The lifecycle contract (retention, prune, deletes) on a real PostgreSQL 15: the same answers as on
// SQLite (src/meta/lifecycle-contract-sqlite.test.ts).
let url: string | undefined;
const fixture: MetaEngineFixture = {
  open: async () => {
    url = (await sharedPostgres('lifecycle')).url;
    return openMeta(await openEngine(url));
  },
  second: async () => openMeta(await openEngine(url!)),
  drop: async () => {
    url = undefined;
  },
};

lifecycleContract('PostgreSQL 15', fixture);

describe('the retention routes on PostgreSQL (the server with --meta postgres://…)', () => {
  let tmp: ReturnType<typeof tempDir>;
  let ap: Appliance;
  let token: string;
  const now = Date.UTC(2026, 5, 1);
  beforeAll(async () => {
    tmp = tempDir('df-lifecycle-pg-');
    const db = await sharedPostgres('lifecycle-app');
    ap = await openAppliance(loadServerConfig({ flags: { data: path.join(tmp.dir, 'a'), meta: db.url, logLevel: 'silent', nbdListen: 'off' } }), undefined, { now: () => new Date(now) });
    token = ap.newAdminToken!;
  });
  afterAll(async () => {
    await ap?.close();
    tmp?.cleanup();
  });
  const call = (method: 'GET' | 'PUT' | 'POST' | 'DELETE', url: string, payload?: object) =>
    ap.app.inject({ method, url, headers: { authorization: `Bearer ${token}` }, ...(payload ? { payload } : {}) });

  it('policy, prune (dry and real) and a refused, then forced, desktop delete', async () => {
    const meta = ap.ctx.meta;
    await meta.images.createImage({ name: 'pgimg', virtualSize: 1 << 20, chunkSize: 65536, hashAlg: 'blake3', createdAt: 't' });
    for (let k = 1; k <= 6; k++) {
      const at = new Date(now - (100 - k) * 86_400_000).toISOString();
      await meta.images.commitVersion({ image: 'pgimg', parent: k === 1 ? null : k - 1, layer: `${k}`.repeat(64), index: `${k + 1}`.repeat(64).slice(0, 64), kind: 'publish', author: 'a', message: '', chunksChanged: 1, chunksTotal: 1, at }, 'main', `conflicts/main/${k}`);
    }
    expect((await call('PUT', '/api/v1/images/pgimg/policy', { keepLast: 2 })).json()).toMatchObject({ override: { keepLast: 2, keepDays: null }, effective: { keepLast: 2, keepDays: 14 } });
    // Bad values are refused, not coerced (0 and false would read as null, "the server's default").
    for (const bad of [{ keepLast: 0 }, { keepDays: false }, { conflictDays: -1 }, { keepLast: 1.5 }, { keepDays: 'two' }, { colour: 1 }]) {
      const r = await call('PUT', '/api/v1/images/pgimg/policy', bad);
      expect([r.statusCode, r.json().code], JSON.stringify(bad)).toEqual([400, 'DF_ERR_BAD_REQUEST']);
    }
    expect((await call('GET', '/api/v1/images/pgimg/policy')).json().override).toEqual({ keepLast: 2, keepDays: null, conflictDays: null });
    const dry = await call('POST', '/api/v1/images/pgimg/prune', { dryRun: true });
    expect(dry.json().dropped.map((v: { version: number }) => v.version)).toEqual([4, 3, 2, 1]);
    expect(await meta.images.versionCount('pgimg')).toBe(6);
    expect((await call('POST', '/api/v1/images/pgimg/prune')).json().dropped).toHaveLength(4);
    expect(await meta.images.versionCount('pgimg')).toBe(2);
    expect((await call('POST', '/api/v1/desktops', { name: 'pgd', image: 'pgimg' })).statusCode).toBe(201);
    expect((await call('POST', '/api/v1/desktops/pgd/lease', { holder: 'endpoint:x' })).statusCode).toBe(200);
    const refused = await call('DELETE', '/api/v1/desktops/pgd');
    expect([refused.statusCode, refused.json().code, refused.json().dependents[0].name]).toEqual([409, 'DF_ERR_IN_USE', 'endpoint:x']);
    expect((await call('DELETE', '/api/v1/desktops/pgd?force=true')).json()).toMatchObject({ desktop: 'pgd', image: 'pgimg' });
    expect((await call('DELETE', '/api/v1/images/pgimg')).json()).toMatchObject({ image: 'pgimg', versions: 2, desktops: [] });
  });
});
