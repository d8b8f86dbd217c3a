import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseDisk, patch, prng } from '../helpers/disk.js';
import { cli, tempDir } from '../helpers/server.js';
import { fails, requireNbdClients, run, startVdiAppliance, type VdiAppliance } from '../helpers/vdi.js';

/**
 * Issue 10 item 5: a desktop's line is its user's data. Two desktops on one image: alice's token
 * reads alice's line (desktops/alice, its conflicts, main which it follows, the versions they
 * reach) and nothing of bob's or of other image refs, over HTTP and NBD; and its own sync and
 * commit still work end to end.
 */
const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
let tmp: ReturnType<typeof tempDir>;
let srv: VdiAppliance;
let admin: Record<string, string>;
const f = (n: string) => path.join(tmp.dir, n);
const tokens: Record<string, string> = {};
/** Versions: 1 import and 2 publish on main; bob's commit; a test publish; alice's commit. */
const v: Record<'main1' | 'main2' | 'bob' | 'test' | 'alice', number> = { main1: 1, main2: 2, bob: 0, test: 0, alice: 0 };

const blankDisk = (name: string) => execFileSync('truncate', ['-s', String(SIZE + 4 * MiB), f(name)]);
const agent = (args: string[], token: string) => cli(['agent', ...args, '--json'], { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: token });
const get = async (who: string, url: string) => {
  const r = await fetch(`${srv.url}${url}`, { headers: { authorization: `Bearer ${tokens[who]}` } });
  const body = r.headers.get('content-type')?.includes('json') ? await r.json() : await r.arrayBuffer();
  return { status: r.status, body: body as any };
};

/** A desktop's full sync then commit of local changes with its own token (what an endpoint does). */
async function syncAndCommit(name: string, seed: number): Promise<number> {
  blankDisk(`${name}.img`);
  const s = await agent(['sync', '--disk', f(`${name}.img`), '--desktop', name], tokens[name]!);
  expect(s.code, s.stderr).toBe(0);
  expect((await agent(['handoff', '--disk', f(`${name}.img`)], tokens[name]!)).json.state).toBe('dirty');
  patch(f(`${name}.img`), 3 * MiB, prng(seed)(100_000));
  const c = await agent(['commit', '--disk', f(`${name}.img`)], tokens[name]!);
  expect(c.code, c.stderr).toBe(0);
  expect(c.json).toMatchObject({ committed: true, conflict: null, ref: `desktops/${name}` });
  return c.json.version as number;
}

beforeAll(async () => {
  requireNbdClients();
  tmp = tempDir('df-scope-');
  srv = await startVdiAppliance(f('data'));
  admin = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  tokens.admin = srv.token;
  baseDisk(f('base.img'));
  expect((await cli(['image', 'create', 'win', '--from', f('base.img')], admin)).code).toBe(0);
  patch(f('base.img'), 9 * MiB, prng(3)(50_000));
  expect((await cli(['image', 'publish', 'win', '--from', f('base.img')], admin)).code).toBe(0);
  for (const name of ['alice', 'bob']) {
    expect((await cli(['desktop', 'create', name, '--image', 'win'], admin)).code).toBe(0);
    tokens[name] = (await cli(['desktop', 'token', name], admin)).stdout.trim();
  }
  v.bob = await syncAndCommit('bob', 5);
  patch(f('base.img'), 12 * MiB, prng(4)(50_000));
  expect((await cli(['ref', 'set', 'win', 'test', '2', '--expect', 'none'], admin)).code).toBe(0);
  const t = await cli(['image', 'publish', 'win', '--from', f('base.img'), '--ref', 'test', '--json'], admin);
  expect(t.code, t.stderr).toBe(0);
  v.test = t.json.version as number;
  v.alice = await syncAndCommit('alice', 6);
}, 120_000);
afterAll(async () => {
  await srv?.close();
  tmp?.cleanup();
});

describe('a desktop token reads its own line only', () => {
  it("alice's own sync and commit worked with alice's token (setup), and a second sync reads its line again", async () => {
    expect([v.bob, v.test, v.alice]).toEqual([3, 4, 5]);
    blankDisk('alice2.img');
    const s = await agent(['sync', '--disk', f('alice2.img'), '--desktop', 'alice', '--holder', 'second', '--force'], tokens.alice!);
    expect(s.code, s.stderr).toBe(0);
    expect(s.json.to).toBe(v.alice);
  });

  it("bob's ref, bob's versions, the test ref and their layers, indexes and deltas are 403 DF_ERR_FORBIDDEN for alice", async () => {
    const denied = [
      '/api/v1/images/win/refs/desktops/bob',
      '/api/v1/images/win/refs/test',
      `/api/v1/images/win/versions/${v.bob}`,
      `/api/v1/images/win/versions/${v.bob}/layer`,
      `/api/v1/images/win/versions/${v.bob}/index`,
      `/api/v1/images/win/versions/${v.bob}/delta`,
      `/api/v1/images/win/versions/${v.test}/index`,
      '/api/v1/images/win/versions/999',
      '/api/v1/images/win/resolve?rev=desktops/bob',
      `/api/v1/images/win/resolve?rev=${v.bob}`,
      '/api/v1/images/win/versions?ref=desktops/bob',
      `/api/v1/images/win/versions?ref=${v.test}`,
      '/api/v1/images/win/reflog?ref=desktops/bob',
      '/api/v1/desktops/bob',
    ];
    for (const url of denied) {
      const r = await get('alice', url);
      expect(r.status, url).toBe(403);
      expect(r.body, url).toMatchObject({ code: 'DF_ERR_FORBIDDEN', scope: 'desktop:alice' });
      // bob reads his own line; the admin reads everything
      if (url.includes('bob') || url.includes(`/${v.bob}`)) expect((await get('bob', url)).status, url).toBeLessThan(300);
      if (!url.includes('999')) expect((await get('admin', url)).status, url).toBeLessThan(300);
    }
  });

  it("alice reads her line: her ref and versions, main (which she follows) and what it reaches, by ref, number and list", async () => {
    const allowed = [
      '/api/v1/images/win/refs/desktops/alice', '/api/v1/images/win/refs/main',
      ...[v.main1, v.main2, v.alice].flatMap((n) => [`/api/v1/images/win/versions/${n}`, `/api/v1/images/win/versions/${n}/index`, `/api/v1/images/win/versions/${n}/layer`]),
      `/api/v1/images/win/versions/${v.alice}/delta`,
      '/api/v1/images/win/resolve?rev=main', `/api/v1/images/win/versions?ref=${v.alice}`, '/api/v1/images/win/reflog?ref=desktops/alice',
    ];
    for (const url of allowed) expect((await get('alice', url)).status, url).toBe(200);
    // lists show only what she reads
    const names = (refs: Array<{ name: string }>) => refs.map((r) => r.name);
    expect(names((await get('alice', '/api/v1/images/win/refs')).body.refs)).toEqual(['desktops/alice', 'main']);
    expect(names((await get('alice', '/api/v1/images/win')).body.refs)).toEqual(['desktops/alice', 'main']);
    expect((await get('alice', '/api/v1/images/win/versions')).body.versions.map((x: { version: number }) => x.version)).toEqual([v.alice, v.main2, v.main1]);
    const log = (await get('alice', '/api/v1/images/win/reflog')).body.entries as Array<{ ref: string }>;
    expect(new Set(log.map((e) => e.ref))).toEqual(new Set(['desktops/alice', 'main']));
    expect(names((await get('admin', '/api/v1/images/win/refs')).body.refs)).toEqual(['desktops/alice', 'desktops/bob', 'main', 'test']);
  });

  it("a commit that lost a race (conflicts/desktops/bob/…) is bob's to read, not alice's", async () => {
    const lease = await fetch(`${srv.url}/api/v1/desktops/bob/lease`, { method: 'POST', headers: { authorization: `Bearer ${tokens.bob}`, 'content-type': 'application/json' }, body: JSON.stringify({ holder: 'x', force: true }) });
    expect(lease.status).toBe(200);
    // bob commits a layer on a stale parent: kept as conflicts/desktops/bob/…
    const layer = await (await fetch(`${srv.url}/api/v1/images/win/versions/${v.main1}/layer`, { headers: { authorization: `Bearer ${tokens.bob}` } })).arrayBuffer();
    const staged = await (await fetch(`${srv.url}/api/v1/images/win/layers`, { method: 'POST', headers: { authorization: `Bearer ${tokens.bob}`, 'content-type': 'application/octet-stream' }, body: Buffer.from(layer) })).json();
    const c = await fetch(`${srv.url}/api/v1/desktops/bob/commits`, {
      method: 'POST', headers: { authorization: `Bearer ${tokens.bob}`, 'content-type': 'application/json' },
      body: JSON.stringify({ parent: v.main1, layer: staged.layer, kind: 'voi-commit', fencing: (await lease.json()).fencing }),
    });
    expect(c.status).toBe(409);
    const conflict = (await c.json()) as { conflictRef: string; version: { version: number } };
    expect(conflict.conflictRef).toMatch(/^conflicts\/desktops\/bob\//);
    expect((await get('bob', `/api/v1/images/win/refs/${conflict.conflictRef}`)).status).toBe(200);
    expect((await get('bob', `/api/v1/images/win/versions/${conflict.version.version}/index`)).status).toBe(200);
    expect((await get('alice', `/api/v1/images/win/refs/${conflict.conflictRef}`)).status).toBe(403);
    expect((await get('alice', `/api/v1/images/win/versions/${conflict.version.version}/index`)).status).toBe(403);
  });

  it("NBD: alice's token opens her line's exports and is refused bob's ref, bob's version and test (qemu-img)", async () => {
    const t = tokens.alice!;
    for (const name of ['win@desktops/alice', 'win@main', `win@${v.alice}`, `win@${v.main1}`]) {
      expect(JSON.parse(await run('qemu-img', ['info', '--output=json', srv.nbdUrl(`${name}:${t}`)]))['virtual-size'], name).toBe(SIZE);
    }
    for (const name of ['win@desktops/bob', `win@${v.bob}`, 'win@test']) {
      const r = await fails('qemu-img', ['info', srv.nbdUrl(`${name}:${t}`)]);
      expect(r.status, name).not.toBe(0);
      expect(r.stderr, name).toMatch(/policy|denied|not permitted|refus/i);
      await run('qemu-img', ['info', srv.nbdUrl(`${name}:${srv.token}`)]); // the admin token reads it
    }
    await expect(srv.appliance.exports.open(`win@desktops/bob:${t}`, { remote: 'test', purpose: 'info' })).rejects.toMatchObject({ code: 'DF_ERR_FORBIDDEN' });
  });
});
