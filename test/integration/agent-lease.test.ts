import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseDisk, patch, prng, sha256, sha256Prefix } from '../helpers/disk.js';
import { startProxy } from '../helpers/proxy.js';
import { cli, startInProcess, tempDir } from '../helpers/server.js';

/** Two endpoints on one desktop through the built CLI: a displaced holder's commit is a conflict, a forced take-over is named. */
const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startInProcess>>;
let admin: Record<string, string>;
const f = (n: string) => path.join(tmp.dir, n);
const imageSha = (disk: string) => sha256Prefix(disk, SIZE);
const KEEPALIVE = path.resolve(import.meta.dirname, '../../initramfs/os-integration/deskfuse-commit-at-shutdown.sh');

beforeAll(async () => {
  tmp = tempDir('df-lease-');
  srv = await startInProcess(f('data'));
  admin = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  baseDisk(f('base.img'));
  expect((await cli(['image', 'create', 'win', '--from', f('base.img')], admin)).code).toBe(0);
});
afterAll(async () => {
  await srv.close();
  tmp.cleanup();
});

async function desktop(name: string): Promise<(args: string[]) => ReturnType<typeof cli>> {
  expect((await cli(['desktop', 'create', name, '--image', 'win'], admin)).code).toBe(0);
  const token = (await cli(['desktop', 'token', name], admin)).stdout.trim();
  return (args) => cli(['agent', ...args], { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: token });
}
const show = async (name: string) => (await cli(['desktop', 'show', name, '--json'], admin)).json;
const exportSha = async (rev: string, out: string) => {
  const e = await cli(['image', 'export', rev, '--to', f(out)], admin);
  expect(e.code, e.stderr).toBe(0);
  return sha256(f(out));
};

describe('a displaced lease holder', () => {
  it("commits as a conflict version, never taking the lease; --force names whose lease it took", async () => {
    const agent = await desktop('duo');
    for (const d of ['a.img', 'b.img']) execFileSync('truncate', ['-s', String(SIZE + 4 * MiB), f(d)]);
    expect((await agent(['sync', '--disk', f('a.img'), '--desktop', 'duo', '--holder', 'endpoint:a'])).code).toBe(0);
    expect((await agent(['handoff', '--disk', f('a.img')])).code).toBe(0);

    // b takes the desktop over: the CLI says from whom
    const b = await agent(['sync', '--disk', f('b.img'), '--desktop', 'duo', '--holder', 'endpoint:b', '--force']);
    expect(b.code, b.stderr).toBe(0);
    expect(b.stderr).toMatch(/took the lease of desktop duo from endpoint:a \(fencing 1, since .+\): its next commit will be kept as a conflict/);
    const bj = await agent(['sync', '--disk', f('b.img'), '--desktop', 'duo', '--holder', 'endpoint:b', '--json']);
    expect(bj.json.tookLeaseFrom).toBeNull(); // renewing one's own lease takes nothing
    expect((await agent(['handoff', '--disk', f('b.img')])).code).toBe(0);

    // a, displaced, commits its work: kept as a conflict; the line and b's lease are untouched
    patch(f('a.img'), 3 * MiB, prng(21)(50_000));
    const a = await agent(['commit', '--disk', f('a.img'), '--holder', 'endpoint:a']);
    expect(a.code, a.stderr).toBe(3);
    expect(a.stdout).toMatch(/^duo: endpoint:b holds the desktop's lease \(since .+\), so these changes were not put on its line: they became conflict ref conflicts\/desktops\/duo\/\S+ \(version 2\)/);
    expect(a.stdout).toContain('deskfuse desktop reset duo --to conflicts/desktops/duo/');
    const conflictRef = /conflict ref (\S+)/.exec(a.stdout)![1]!;
    expect(await show('duo')).toMatchObject({ head: 1, lease: { holder: 'endpoint:b', fencing: 2 } });
    expect(await exportSha(`win@${conflictRef}`, 'a.out')).toBe(imageSha(f('a.img')));
    expect((await agent(['status', '--disk', f('a.img'), '--json'])).json).toMatchObject({ state: 'clean', version: 2, lastConflict: 2 });

    // b, the holder, commits on the line
    patch(f('b.img'), 5 * MiB, prng(22)(50_000));
    const bc = await agent(['commit', '--disk', f('b.img'), '--holder', 'endpoint:b', '--json']);
    expect(bc.code, bc.stderr).toBe(0);
    expect(bc.json).toMatchObject({ committed: true, conflict: null, parent: 1, leaseHeldBy: null });
    expect((await show('duo')).head).toBe(bc.json.version);

    // --force on a commit takes the lease and names its holder
    expect((await agent(['sync', '--disk', f('b.img'), '--desktop', 'duo', '--holder', 'endpoint:b'])).code).toBe(0);
    await agent(['handoff', '--disk', f('a.img')]);
    patch(f('a.img'), 7 * MiB, prng(23)(10_000));
    const forced = await agent(['commit', '--disk', f('a.img'), '--holder', 'endpoint:a', '--force']);
    expect(forced.stderr).toMatch(/took the lease of desktop duo from endpoint:b \(fencing 3, since .+\)/);
    expect(forced.code).toBe(3); // a's parent is its conflict version, not the line's head: still a conflict
  });

  it('racing commits of the holder and a displaced endpoint: the holder advances the line, the other is a conflict', async () => {
    const agent = await desktop('race');
    for (const d of ['ra.img', 'rb.img']) execFileSync('truncate', ['-s', String(SIZE + 4 * MiB), f(d)]);
    expect((await agent(['sync', '--disk', f('ra.img'), '--desktop', 'race', '--holder', 'endpoint:ra'])).code).toBe(0);
    expect((await agent(['sync', '--disk', f('rb.img'), '--desktop', 'race', '--holder', 'endpoint:rb', '--force'])).code).toBe(0);
    for (const [d, seed] of [['ra.img', 31], ['rb.img', 32]] as const) {
      await agent(['handoff', '--disk', f(d)]);
      patch(f(d), 9 * MiB, prng(seed)(40_000));
    }
    const [ra, rb] = await Promise.all([
      agent(['commit', '--disk', f('ra.img'), '--holder', 'endpoint:ra', '--json']),
      agent(['commit', '--disk', f('rb.img'), '--holder', 'endpoint:rb', '--json']),
    ]);
    expect(rb.code, rb.stderr).toBe(0);
    expect(rb.json.conflict).toBeNull();
    expect(ra.code, ra.stderr).toBe(3);
    expect(ra.json.conflict.conflictRef).toMatch(/^conflicts\/desktops\/race\//);
    expect(ra.json.tookLeaseFrom).toBeNull();
    expect((await show('race')).head).toBe(rb.json.version);
    expect(await exportSha(`win@${ra.json.conflict.conflictRef}`, 'ra.out')).toBe(imageSha(f('ra.img')));
    expect(await exportSha(`win@${rb.json.version}`, 'rb.out')).toBe(imageSha(f('rb.img')));
  });
});

describe('an endpoint lease', () => {
  it('is renewed while the endpoint lives and runs out soon after it dies; a VDI session can then take the desktop', async () => {
    const agent = await desktop('live');
    const mac = '02:00:00:00:09:09';
    expect((await cli(['endpoint', 'add', mac, '--desktop', 'live', '--name', 'pc9'], admin)).code).toBe(0);
    expect((await fetch(`${srv.url}/boot/ipxe?mac=${mac}`)).status).toBe(200); // its boot: the server learns its address
    execFileSync('truncate', ['-s', String(SIZE + 4 * MiB), f('live.img')]);
    const s = await agent(['sync', '--disk', f('live.img'), '--desktop', 'live', '--holder', 'endpoint:pc9', '--lease-ttl', '10']);
    expect(s.code, s.stderr).toBe(0);
    const lease = (await show('live')).lease;
    expect(lease.holder).toBe('endpoint:pc9');
    expect(Date.parse(lease.expiresAt) - Date.now()).toBeLessThanOrEqual(10_000);

    // the desktop's OS says it is alive every 3 s, with the shipped script (its timer: every minute)
    const keepalive = async () => (await fetch(`${srv.url}/boot/keepalive`, {
      method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `mac=${mac}&ttlSeconds=10`,
    })).json();
    // (asynchronously: the server answers from this process)
    const script = async () => (await execa('sh', [KEEPALIVE, '--keepalive', srv.url], { env: { PATH: process.env.PATH!, DESKFUSE_MAC: mac, DESKFUSE_CONF: '/nonexistent', DESKFUSE_LEASE_SECONDS: '10' }, extendEnv: false })).stdout;
    const t0 = Date.now();
    let renewals = 0;
    while (Date.now() - t0 < 14_000) {
      const out = await script();
      expect(out).toContain(`deskfuse: lease renewed (${mac})`);
      renewals++;
      await new Promise((r) => setTimeout(r, 3000));
    }
    expect(renewals).toBeGreaterThanOrEqual(4);
    expect(await keepalive()).toMatchObject({ renewed: true, desktop: 'live' });
    const refused = await cli(['vdi', 'session', 'create', 'live', '--json'], admin);
    expect(refused.code).toBe(1);
    expect(refused.json.error).toMatchObject({ code: 'DF_ERR_LEASE_HELD', holder: 'endpoint:pc9' });

    // the endpoint dies: no more renewals; within the lease time the desktop is free
    await new Promise((r) => setTimeout(r, 10_500));
    expect((await show('live')).lease).toBeNull();
    const vdi = await cli(['vdi', 'session', 'create', 'live', '--json'], admin);
    expect(vdi.code, vdi.stderr).toBe(0);
    expect((await show('live')).lease.holder).toBe(`vdi:${vdi.json.session}`);
    // the dead endpoint's keepalive, were it to come back, does not take the desktop from the session
    expect(await keepalive()).toMatchObject({ renewed: false, reason: `the lease is held by vdi:${vdi.json.session}` });
  }, 60_000);

  it('an agent run renews its own lease while it lasts: a sync slower than --lease-ttl keeps the desktop', async () => {
    expect((await cli(['desktop', 'create', 'slow', '--image', 'win'], admin)).code).toBe(0);
    const token = (await cli(['desktop', 'token', 'slow'], admin)).stdout.trim();
    let leasedAt = 0;
    let held = false;
    const proxy = await startProxy(srv.url, {
      onRequest: async (method, url) => {
        if (method === 'POST' && url === '/api/v1/desktops/slow/lease' && !leasedAt) leasedAt = Date.now();
        // the first chunk request waits 14 s: the run outlives its 10 s lease unless it renews it
        if (url.startsWith('/api/v1/chunks/') && !held) {
          held = true;
          await new Promise((r) => setTimeout(r, 14_000));
        }
      },
    });
    try {
      execFileSync('truncate', ['-s', String(SIZE + 4 * MiB), f('slow.img')]);
      const run = cli(['agent', 'sync', '--disk', f('slow.img'), '--desktop', 'slow', '--holder', 'endpoint:slow', '--lease-ttl', '10', '--json'], { DESKFUSE_SERVER: proxy.url, DESKFUSE_TOKEN: token });
      while (!held) await new Promise((r) => setTimeout(r, 100));
      await new Promise((r) => setTimeout(r, Math.max(0, leasedAt + 12_000 - Date.now())));
      const lease = (await show('slow')).lease; // 12 s after it was taken for 10 s
      expect(lease).toMatchObject({ holder: 'endpoint:slow', fencing: 1 });
      expect(Date.parse(lease.expiresAt)).toBeGreaterThan(Date.now());
      const r = await run;
      expect(r.code, r.stderr).toBe(0);
      expect(r.json).toMatchObject({ from: null, to: 1 });
      expect(proxy.seen.filter((x) => x === 'POST /api/v1/desktops/slow/lease').length).toBeGreaterThanOrEqual(4); // taken, then renewed every ~3.3 s
    } finally {
      await proxy.close();
    }
  }, 60_000);

  it('a keepalive with a bad lease time or MAC is a coded error', async () => {
    const r = await fetch(`${srv.url}/boot/keepalive`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ mac: '02:00:00:00:09:09', ttlSeconds: 5 }) });
    expect(r.status).toBe(400);
    expect((await r.json()).code).toBe('DF_ERR_BAD_REQUEST');
    const other = await fetch(`${srv.url}/boot/keepalive`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ mac: 'zz' }) });
    expect(other.status).toBe(400);
    expect(await other.json()).toMatchObject({ code: 'DF_ERR_BAD_REQUEST', field: 'mac' });
  });
});
