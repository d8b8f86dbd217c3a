import { execFileSync } from 'node:child_process';
import { statSync, utimesSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseDisk, patch, prng, sha256, sha256Prefix } from '../helpers/disk.js';
import { cli, startInProcess, tempDir } from '../helpers/server.js';

/** `deskfuse agent commit` through the built CLI on a disk file changed outside the boot flow. */
const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startInProcess>>;
let admin: Record<string, string>;
let agent: (args: string[]) => ReturnType<typeof cli>;
const f = (n: string) => path.join(tmp.dir, n);

beforeAll(async () => {
  tmp = tempDir('df-commit-');
  srv = await startInProcess(f('data'));
  admin = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  baseDisk(f('base.img'));
  expect((await cli(['image', 'create', 'win', '--from', f('base.img')], admin)).code).toBe(0);
  expect((await cli(['desktop', 'create', 'desk', '--image', 'win'], admin)).code).toBe(0);
  const token = (await cli(['desktop', 'token', 'desk'], admin)).stdout.trim();
  agent = (args) => cli(['agent', ...args], { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: token });
});
afterAll(async () => {
  await srv.close();
  tmp.cleanup();
});

const exported = async (version: number) => {
  const out = f(`v${version}.out`);
  expect((await cli(['image', 'export', `win@${version}`, '--to', out], admin)).code).toBe(0);
  return sha256(out);
};

describe('agent commit on a sealed disk file', () => {
  it('commits bytes written after the disk was sealed clean; an untouched one is not scanned', async () => {
    const disk = f('desk.img');
    execFileSync('truncate', ['-s', String(SIZE + 4 * MiB), disk]);
    expect((await agent(['sync', '--disk', disk, '--desktop', 'desk'])).code).toBe(0);
    const clean = await agent(['commit', '--disk', disk]);
    expect(clean.code, clean.stderr).toBe(0);
    expect(clean.stdout).toBe('desk: nothing to commit: the disk was sealed clean at version 1 and its file is unchanged since (agent commit --scan hashes it anyway)');

    // written outside the boot flow (no handoff): a loop mount, dd, a VM
    patch(disk, 4 * MiB + 1234, prng(7)(20_000));
    const c = await agent(['commit', '--disk', disk, '--json']);
    expect(c.code, c.stderr).toBe(0);
    expect(c.json).toMatchObject({ committed: true, unsealed: true, parent: 1, version: 2, conflict: null });
    expect(await exported(2)).toBe(sha256Prefix(disk, SIZE));
    // sealed again: the next commit trusts it without a scan
    const again = await agent(['commit', '--disk', disk, '--json']);
    expect(again.json).toMatchObject({ committed: false, version: 2, scanSeconds: null, sealCheck: 'mtime' });
  });

  it('a writer that puts the old mtime back is not seen, and the message says how to commit: --scan does', async () => {
    const disk = f('desk.img');
    const before = statSync(disk);
    patch(disk, 9 * MiB, prng(8)(10_000));
    utimesSync(disk, before.atime, before.mtime);
    const missed = await agent(['commit', '--disk', disk]);
    expect(missed.code).toBe(0);
    expect(missed.stdout).toContain('agent commit --scan hashes it anyway');
    const scanned = await agent(['commit', '--disk', disk, '--scan', '--json']);
    expect(scanned.code, scanned.stderr).toBe(0);
    expect(scanned.json).toMatchObject({ committed: true, parent: 2, version: 3 });
    expect(await exported(3)).toBe(sha256Prefix(disk, SIZE));
  });
});

describe('agent commit -m and the progress line', () => {
  it('stores the message on the version; --progress draws the upload on stderr even off a terminal, and nothing without it', async () => {
    const disk = f('desk.img');
    patch(disk, 14 * MiB, prng(9)(2 * MiB));
    const c = await agent(['commit', '--disk', disk, '-m', 'installed the office suite', '--progress']);
    expect(c.code, c.stderr).toBe(0);
    expect(c.stdout).toMatch(/^desk: committed version 4 \(parent 3\)/);
    expect(c.stderr).toMatch(/^commit \[#{24}\] 2\.0 MiB\/2\.0 MiB 100% .+\/s ETA 0s$/m);
    const log = await cli(['image', 'log', 'win@desktops/desk', '--json'], admin);
    expect(log.json.versions[0]).toMatchObject({ version: 4, kind: 'voi-commit', message: 'installed the office suite' });

    patch(disk, 20 * MiB, prng(10)(256 * 1024));
    const quiet = await agent(['commit', '--disk', disk]); // stderr is a pipe here, not a terminal
    expect(quiet.code, quiet.stderr).toBe(0);
    expect(quiet.stderr).toBe('');
    expect((await cli(['image', 'log', 'win@desktops/desk', '--json'], admin)).json.versions[0]).toMatchObject({ version: 5, message: '' });
  });
});
