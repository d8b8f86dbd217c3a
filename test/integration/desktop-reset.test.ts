import { execFileSync } from 'node:child_process';
import { copyFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseDisk, patch, prng } from '../helpers/disk.js';
import { cli, startInProcess, tempDir } from '../helpers/server.js';

/** `deskfuse desktop reset` through the built CLI: compare-and-swap, refused while leased, the dropped head printed. */
const MiB = 1024 * 1024;
let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startInProcess>>;
let admin: Record<string, string>;
const f = (n: string) => path.join(tmp.dir, n);

beforeAll(async () => {
  tmp = tempDir('df-reset-');
  srv = await startInProcess(f('data'));
  admin = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  baseDisk(f('base.img'));
  copyFileSync(f('base.img'), f('v2.img'));
  patch(f('v2.img'), 3 * MiB, prng(5)(64 * 1024));
  expect((await cli(['image', 'create', 'win', '--from', f('base.img')], admin)).code).toBe(0);
  expect((await cli(['image', 'publish', 'win', '--from', f('v2.img')], admin)).code).toBe(0);
});
afterAll(async () => {
  await srv.close();
  tmp.cleanup();
});

const head = async (name: string) => (await cli(['desktop', 'show', name, '--json'], admin)).json.head as number;

describe('desktop reset', () => {
  it('--expect is a compare-and-swap on the head; a stale one changes nothing', async () => {
    expect((await cli(['ref', 'set', 'win', 'old', '1', '--expect', 'none'], admin)).code).toBe(0);
    expect((await cli(['desktop', 'create', 'cas', '--image', 'win'], admin)).code).toBe(0);
    const stale = await cli(['desktop', 'reset', 'cas', '--to', 'old', '--expect', '1'], admin);
    expect(stale.code).toBe(1);
    expect(stale.stderr).toContain('DF_ERR_REF_MOVED');
    expect(stale.stderr).toContain('desktop cas is at version 2, not at the expected 1');
    expect(await head('cas')).toBe(2);
    const bad = await cli(['desktop', 'reset', 'cas', '--expect', 'two'], admin);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--expect: expected a version number or none');

    const ok = await cli(['desktop', 'reset', 'cas', '--to', 'old', '--expect', '2'], admin);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toBe('desktop cas: desktops/cas is now version 1 (reset to old); dropped head v2 (kept in the ref log)');
    expect(await head('cas')).toBe(1);
    const log = await cli(['ref', 'log', 'win', 'desktops/cas', '--json'], admin);
    expect(log.json.entries[0]).toMatchObject({ oldVersion: 2, newVersion: 1, reason: 'reset to old@1' });
  });

  it('is refused while an endpoint holds the lease; --force resets and names the holder', async () => {
    expect((await cli(['desktop', 'create', 'held', '--image', 'win', '--from', 'old'], admin)).code).toBe(0);
    const token = (await cli(['desktop', 'token', 'held'], admin)).stdout.trim();
    execFileSync('truncate', ['-s', String(36 * MiB), f('held.img')]);
    const sync = await cli(['agent', 'sync', '--disk', f('held.img'), '--desktop', 'held', '--holder', 'endpoint:pc07'], { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: token });
    expect(sync.code, sync.stderr).toBe(0);

    const refused = await cli(['desktop', 'reset', 'held', '--to', 'main', '--json'], admin);
    expect(refused.code).toBe(1);
    expect(refused.json.error).toMatchObject({ code: 'DF_ERR_LEASE_HELD', holder: 'endpoint:pc07' });
    expect(refused.stderr).toContain('endpoint:pc07 holds its lease');
    expect(refused.stderr).toContain('reset --force');
    expect(await head('held')).toBe(1);

    const forced = await cli(['desktop', 'reset', 'held', '--to', 'main', '--expect', '1', '--force'], admin);
    expect(forced.code, forced.stderr).toBe(0);
    expect(forced.stdout).toContain('desktops/held is now version 2 (reset to main); dropped head v1 (kept in the ref log)');
    expect(forced.stdout).toMatch(/the lease of endpoint:pc07 \(fencing 1, since .+\) was left in place: its next commit will be kept as a conflict/);
    expect(await head('held')).toBe(2);
  });
});
