import { execFileSync } from 'node:child_process';
import { copyFileSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseDisk, patch, prng, sha256, sha256Prefix } from '../helpers/disk.js';
import { cli, startInProcess, tempDir } from '../helpers/server.js';

/**
 * Retention, prune and deletes through the real server, the CLI and the agent (issue 13, part A):
 * a version an endpoint's disk records is never pruned and that disk's next sync works across the
 * gap; a dry run changes nothing; a prune drops rows and deltas but not the ref log; deletes refuse,
 * coded, while something depends on them, and --force works; typos and wrong tokens change nothing.
 */
const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
const DAY = 86_400_000;
let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startInProcess>>;
let admin: Record<string, string>;
// The server's clock starts at the agent's (it only moves forward from there): an endpoint refuses a
// signed head stamped long before its own clock (DF_ERR_SIG_STALE, src/sign/verify.ts).
let clock = Date.now();
const f = (n: string) => path.join(tmp.dir, n);
const imageSha = (disk: string) => sha256Prefix(disk, SIZE);
const agent = (args: string[], token: string) => cli(['agent', ...args, '--json'], { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: token });
const ok = async (args: string[], env = admin) => {
  const r = await cli(args, env);
  expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r;
};
const refused = async (args: string[], code: string, env = admin) => {
  const r = await cli([...args, '--json'], env);
  expect(r.code, r.stdout).not.toBe(0);
  expect(r.json?.error?.code, r.stderr).toBe(code);
  return r.json.error;
};
/** Every version of the image (not only main's line, which a prune may cut). */
const versions = async (image: string) => {
  const r = await fetch(`${srv.url}/api/v1/images/${image}/versions?limit=100`, { headers: { authorization: `Bearer ${srv.token}` } });
  return ((await r.json()) as { versions: Array<{ version: number; layer: string }> }).versions;
};
const deltaLayers = () => readdirSync(f('data/deltas')).map((n) => n.slice(0, 64));

beforeAll(async () => {
  tmp = tempDir('df-retention-');
  srv = await startInProcess(f('data'), { now: () => new Date(clock) });
  admin = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  baseDisk(f('base.img'));
  await ok(['image', 'create', 'win', '--from', f('base.img')]);
});
afterAll(async () => {
  await srv.close();
  tmp.cleanup();
});

/** Publish a variant of the base disk (a new 64 KiB region per k) as the next version of main. */
async function publish(k: number): Promise<string> {
  const file = f(`v${k}.img`);
  copyFileSync(k > 2 ? f(`v${k - 1}.img`) : f('base.img'), file);
  patch(file, (k * 3 % 30) * MiB + 8192, prng(k)(64 * 1024));
  await ok(['image', 'publish', 'win', '--from', file]);
  return file;
}

describe('retention: prune', () => {
  it("never prunes the version an endpoint's disk records; that disk's next sync still works across the pruned gap", async () => {
    await ok(['desktop', 'create', 'pc', '--image', 'win']);
    const token = (await ok(['desktop', 'token', 'pc', '--ttl', String(365 * 86400)])).stdout.trim();
    execFileSync('truncate', ['-s', String(SIZE + 4 * MiB), f('pc.img')]);
    const first = await agent(['sync', '--disk', f('pc.img'), '--desktop', 'pc'], token);
    expect(first.code, first.stderr).toBe(0);
    expect(first.json).toMatchObject({ from: null, to: 1 });
    // What the boot flow records when the agent reports its sync (src/endpoint/endpoints.ts record 'synced').
    const endpoints = srv.appliance.ctx.endpoints;
    await endpoints.add('02:00:00:00:0a:01', { desktop: 'pc', name: 'pc01' });
    await endpoints.record('synced', '02:00:00:00:0a:01', { version: 1 });
    expect((await ok(['endpoint', 'show', 'pc01', '--json'])).json).toMatchObject({ desktop: 'pc', diskVersion: 1 });

    let last = '';
    for (let k = 2; k <= 7; k++) last = await publish(k);
    await ok(['desktop', 'reset', 'pc', '--to', 'main', '--force']);
    const before = await versions('win');
    expect(before.map((v) => v.version)).toEqual([7, 6, 5, 4, 3, 2, 1]);
    const layer = new Map(before.map((v) => [v.version, v.layer]));
    // Publishes warm each new version's delta.
    await expect.poll(() => deltaLayers().length, { timeout: 20_000 }).toBeGreaterThanOrEqual(6);
    const reflog = (await ok(['ref', 'log', 'win', '--limit', '100', '--json'])).json.entries;

    clock += 20 * DAY;
    const pol = await ok(['image', 'policy', 'win', '--keep-last', '2', '--json']);
    expect(pol.json).toMatchObject({ override: { keepLast: 2, keepDays: null, conflictDays: null }, effective: { keepLast: 2, keepDays: 14, conflictDays: 30 } });
    const show = await ok(['image', 'show', 'win']);
    expect(show.stdout).toContain("retention: keep the last 2 versions of each ref's line, versions younger than 14 (server default) days");

    const dry = await ok(['image', 'prune', 'win', '--dry-run', '--json']);
    expect(dry.json).toMatchObject({ dryRun: true, dropped: [{ version: 5 }, { version: 4 }, { version: 3 }, { version: 2 }] });
    expect(dry.json.kept.find((x: { version: number }) => x.version === 1).why).toEqual(['endpoint pc01 (its disk records it, desktop pc)']);
    expect(dry.json.bytes.total).toBeGreaterThan(0);
    expect(dry.json.bytes.deltas).toBeGreaterThan(0);
    expect(dry.json.chunks).toContain('deskfuse store gc');
    expect((await versions('win')).length).toBe(7); // nothing changed
    expect(deltaLayers()).toContain(layer.get(3));
    const text = await ok(['image', 'prune', 'win', '--dry-run', '--verbose']);
    expect(text.stdout).toContain('win: would drop 4 versions: 5 4 3 2; 3 kept');
    expect(text.stdout).toMatch(/1\s+endpoint pc01/);

    const real = await ok(['image', 'prune', 'win', '--json']);
    expect(real.json.dropped.map((v: { version: number }) => v.version)).toEqual([5, 4, 3, 2]);
    expect((await versions('win')).map((v) => v.version)).toEqual([7, 6, 1]);
    expect((await ok(['ref', 'log', 'win', '--limit', '100', '--json'])).json.entries).toEqual(reflog);
    for (const v of [2, 3, 4, 5]) expect(deltaLayers()).not.toContain(layer.get(v));
    expect(deltaLayers()).toContain(layer.get(7));
    const gone = await fetch(`${srv.url}/api/v1/images/win/versions/3`, { headers: { authorization: `Bearer ${srv.token}` } });
    expect([gone.status, ((await gone.json()) as { code: string }).code]).toEqual([404, 'DF_ERR_VERSION_NOT_FOUND']);

    // The disk at version 1 syncs to 7: the line is cut at 6 → 5, so whole changed chunks come instead of deltas.
    const next = await agent(['sync', '--disk', f('pc.img'), '--desktop', 'pc'], token);
    expect(next.code, next.stderr).toBe(0);
    expect(next.json).toMatchObject({ from: 1, to: 7 });
    expect(imageSha(f('pc.img'))).toBe(sha256(last));
    // The timer's pass (every image) finds nothing more to drop.
    expect(await srv.appliance.pruneVersions()).toMatchObject({ images: 1, versions: 0 });
    // Deltas are a cache: one dropped (idle, or by hand) is built again when a sync asks for it.
    for (const n of readdirSync(f('data/deltas'))) if (n.startsWith(layer.get(7)!)) rmSync(f(`data/deltas/${n}`));
    const again = await fetch(`${srv.url}/api/v1/images/win/versions/7/delta`, { headers: { authorization: `Bearer ${token}` } });
    expect(again.status).toBe(200);
    expect((await again.arrayBuffer()).byteLength).toBeGreaterThan(0);
    expect(deltaLayers()).toContain(layer.get(7));
  });
});

describe('deletes', () => {
  it('refuse, coded and naming what depends, while something does; --force works; the ref log records the ref deletions', async () => {
    const d = await refused(['desktop', 'delete', 'pc'], 'DF_ERR_IN_USE');
    // The agent's sync holds the desktop's lease (until it expires or the agent releases it), and pc01 is assigned to it.
    expect(d.dependents).toEqual([
      { kind: 'lease', name: expect.stringMatching(/^agent:/), detail: expect.stringContaining('holds the lease (fencing 2)') },
      { kind: 'endpoint', name: 'pc01', detail: 'enrolled endpoint assigned to it (its disk is at version 1)' },
    ]);
    expect(d.message).toContain('pc01');
    expect((await refused(['ref', 'delete', 'win', 'desktops/pc', '--force'], 'DF_ERR_REF_IN_USE')).message).toContain('desktop pc');
    expect((await refused(['image', 'delete', 'win'], 'DF_ERR_IN_USE')).dependents[0]).toMatchObject({ kind: 'desktop', name: 'pc' });
    await refused(['endpoint', 'delete', 'pc01'], 'DF_ERR_IN_USE');
    expect((await ok(['endpoint', 'delete', '02:00:00:00:0a:01', '--force'])).stdout).toContain('endpoint pc01 (ep-020000000a01) deleted');
    await refused(['endpoint', 'show', 'pc01'], 'DF_ERR_ENDPOINT_NOT_FOUND');
    // A lease holds the desktop: refused; forced, the lease goes with it.
    await ok(['desktop', 'create', 'lab', '--image', 'win', '--mode', 'restore']);
    await srv.appliance.ctx.desktops.acquireLease('lab', 'endpoint:lab01', 600);
    expect((await refused(['desktop', 'delete', 'lab'], 'DF_ERR_IN_USE')).dependents).toEqual([expect.objectContaining({ kind: 'lease', name: 'endpoint:lab01' })]);
    expect((await ok(['desktop', 'delete', 'lab', '--force', '--json'])).json).toMatchObject({ desktop: 'lab', image: 'win' });
    // An open VDI session holds its desktop: refused; forced, the session is discarded through its owner first.
    await ok(['desktop', 'create', 'vd', '--image', 'win']);
    const session = (await ok(['vdi', 'session', 'create', 'vd', '--json'])).json.session as string;
    expect((await refused(['desktop', 'delete', 'vd'], 'DF_ERR_IN_USE')).dependents.map((x: { kind: string; name: string }) => [x.kind, x.name]))
      .toEqual([['lease', `vdi:${session}`], ['vdi-session', session]]);
    expect((await ok(['desktop', 'delete', 'vd', '--force', '--json'])).json).toMatchObject({ desktop: 'vd', sessionsDiscarded: [] });
    expect((await ok(['vdi', 'session', 'show', session, '--json'])).json).toMatchObject({ state: 'discarded' });
    // Once the agent's lease is broken and pc01 gone, nothing depends on pc.
    await ok(['desktop', 'lease', 'break', 'pc']);
    const del = await ok(['desktop', 'delete', 'pc', '--json']);
    expect(del.json).toMatchObject({ desktop: 'pc', image: 'win', tokensRevoked: 1 });
    const log = (await ok(['ref', 'log', 'win', 'desktops/pc', '--json'])).json.entries;
    expect(log[0]).toMatchObject({ ref: 'desktops/pc', oldVersion: 7, deleted: true, reason: 'desktop pc deleted' });
    expect((await ok(['ref', 'log', 'win', 'desktops/pc'])).stdout).toContain('(deleted)');
    // A plain ref no desktop uses goes without --force.
    await ok(['ref', 'set', 'win', 'test', '6', '--expect', 'none']);
    expect((await ok(['ref', 'delete', 'win', 'test'])).stdout).toBe('win@test deleted (it was at version 6)');
    await refused(['ref', 'delete', 'win', 'test'], 'DF_ERR_REF_NOT_FOUND');
    const img = await ok(['image', 'delete', 'win', '--json']);
    expect(img.json).toMatchObject({ image: 'win', versions: 3, desktops: [] });
    await refused(['image', 'show', 'win'], 'DF_ERR_IMAGE_NOT_FOUND');
    expect(deltaLayers()).toEqual([]);
  });

  it('typos and wrong tokens get a clear coded error and change nothing; --help says how', async () => {
    await ok(['image', 'create', 'keep', '--from', f('base.img')]);
    await ok(['desktop', 'create', 'kd', '--image', 'keep']);
    await refused(['desktop', 'delete', 'kd2'], 'DF_ERR_DESKTOP_NOT_FOUND');
    await refused(['desktop', 'delete', 'Bad Name'], 'DF_ERR_BAD_REQUEST');
    await refused(['image', 'delete', 'kep'], 'DF_ERR_IMAGE_NOT_FOUND');
    await refused(['image', 'prune', 'kep'], 'DF_ERR_IMAGE_NOT_FOUND');
    await refused(['ref', 'delete', 'keep', 'mian'], 'DF_ERR_REF_NOT_FOUND');
    await refused(['endpoint', 'delete', 'nosuch'], 'DF_ERR_ENDPOINT_NOT_FOUND');
    await refused(['image', 'prune', 'keep', '--dryrun'], 'DF_ERR_USAGE');
    await refused(['image', 'policy', 'keep', '--keep-last', '0'], 'DF_ERR_USAGE');
    await refused(['image', 'policy', 'keep', '--keep-days', 'two'], 'DF_ERR_USAGE');
    const desk = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: (await ok(['desktop', 'token', 'kd'])).stdout.trim() };
    await refused(['image', 'prune', 'keep'], 'DF_ERR_FORBIDDEN', desk);
    await refused(['desktop', 'delete', 'kd'], 'DF_ERR_FORBIDDEN', desk);
    await refused(['image', 'policy', 'keep', '--keep-last', '3'], 'DF_ERR_FORBIDDEN', desk);
    await refused(['image', 'delete', 'keep', '--force'], 'DF_ERR_UNAUTHORIZED', { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: 'dfa_wrong' });
    // Nothing changed.
    expect((await ok(['desktop', 'show', 'kd', '--json'])).json).toMatchObject({ name: 'kd', head: 1 });
    expect((await ok(['image', 'policy', 'keep', '--json'])).json.override).toEqual({ keepLast: null, keepDays: null, conflictDays: null });
    const help = await ok(['image', '--help']);
    expect(help.stdout).toContain('deskfuse image prune NAME [--dry-run] [--verbose]');
    expect(help.stdout).toContain('deskfuse image delete NAME [--force]');
    expect((await ok(['ref', '--help'])).stdout).toContain('deskfuse ref delete IMAGE REF [--force]');
    expect((await ok(['desktop', '--help'])).stdout).toContain('deskfuse desktop delete NAME [--force]');
    expect((await ok(['endpoint', '--help'])).stdout).toContain('deskfuse endpoint delete ID [--force]');
  });
});
