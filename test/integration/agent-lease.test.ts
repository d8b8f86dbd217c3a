import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseDisk, patch, prng, sha256, sha256Prefix } from '../helpers/disk.js';
import { cli, startInProcess, tempDir } from '../helpers/server.js';

/** Two endpoints on one desktop through the built CLI: a displaced holder's commit is a conflict, a forced take-over is named. */
const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startInProcess>>;
let admin: Record<string, string>;
const f = (n: string) => path.join(tmp.dir, n);
const imageSha = (disk: string) => sha256Prefix(disk, SIZE);

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
