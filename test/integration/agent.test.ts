import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseDisk, patch, prng, sha256, sha256Prefix, textish } from '../helpers/disk.js';
import { cli, startInProcess, tempDir } from '../helpers/server.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startInProcess>>;
let admin: Record<string, string>;
const f = (n: string) => path.join(tmp.dir, n);

const sha256Hex = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const imageSha = (disk: string) => sha256Prefix(disk, SIZE); // the image region; the state area follows
const blankDisk = (name: string) => execFileSync('truncate', ['-s', String(SIZE + 4 * MiB), f(name)]);
const agent = (args: string[], token: string) => cli(['agent', ...args, '--json'], { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: token });

beforeAll(async () => {
  tmp = tempDir('df-agent-');
  srv = await startInProcess(f('data'));
  admin = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  baseDisk(f('base.img'));
  copyFileSync(f('base.img'), f('v2.img'));
  copyFileSync(f('base.img'), f('local.img'));
  const r = prng(11);
  patch(f('v2.img'), 4096 * 7, r(4096)); // one block inside a chunk
  patch(f('v2.img'), 20 * MiB + 12345, textish(r, 300_000)); // an edit across chunks
  patch(f('v2.img'), 14 * MiB, r(256 * 1024)); // new data where there was a hole
  patch(f('local.img'), 2 * MiB + 4096 * 5, r(8192)); // the endpoint's own changes
  patch(f('local.img'), 26 * MiB, textish(r, 100_000));
  expect((await cli(['image', 'create', 'win', '--from', f('base.img')], admin)).code).toBe(0);
  expect((await cli(['ref', 'set', 'win', 'base', '1', '--expect', 'none'], admin)).code).toBe(0);
  expect((await cli(['image', 'publish', 'win', '--from', f('v2.img')], admin)).code).toBe(0);
});
afterAll(async () => {
  await srv.close();
  tmp.cleanup();
});

async function desktop(name: string, from = 'main', mode = 'persistent'): Promise<string> {
  expect((await cli(['desktop', 'create', name, '--image', 'win', '--from', from, '--mode', mode], admin)).code).toBe(0);
  const t = await cli(['desktop', 'token', name], admin);
  return t.stdout.trim();
}

describe('agent sync', () => {
  it('provisions a blank disk and updates base → v2 byte-identically, in few requests, using deltas', async () => {
    const t = await desktop('up', 'base');
    blankDisk('up.img');
    const p = await agent(['sync', '--disk', f('up.img'), '--desktop', 'up'], t);
    expect(p.code, p.stderr).toBe(0);
    expect(p.json).toMatchObject({ from: null, to: 1, scanned: true, committed: null });
    expect(imageSha(f('up.img'))).toBe(sha256(f('base.img')));
    expect((await agent(['status', '--disk', f('up.img')], t)).json).toMatchObject({ state: 'clean', version: 1, desktop: 'up', image: 'win' });

    expect((await cli(['desktop', 'reset', 'up', '--to', 'main', '--force'], admin)).code).toBe(0);
    const u = await agent(['sync', '--disk', f('up.img'), '--desktop', 'up'], t);
    expect(u.code, u.stderr).toBe(0);
    expect(u.json).toMatchObject({ from: 1, to: 2, scanned: false, localChanges: 0 });
    expect(u.json.chunksWritten).toBeGreaterThan(0);
    expect(u.json.chunksPatched).toBe(u.json.chunksWritten); // every chunk rebuilt from 4 KiB blocks
    expect(u.json.requests).toBeLessThanOrEqual(10);
    expect(u.json.bytesFetched).toBeLessThan(1 * MiB);
    expect(imageSha(f('up.img'))).toBe(sha256(f('v2.img')));

    // provisioning straight to v2 gives the same disk
    const t2 = await desktop('up2');
    blankDisk('up2.img');
    const p2 = await agent(['sync', '--disk', f('up2.img'), '--desktop', 'up2'], t2);
    expect(p2.json).toMatchObject({ from: null, to: 2 });
    expect(imageSha(f('up2.img'))).toBe(sha256(f('v2.img')));

    // nothing to do: no scan, no chunk
    const again = await agent(['sync', '--disk', f('up.img'), '--desktop', 'up'], t);
    expect(again.json).toMatchObject({ from: 2, to: 2, scanned: false, chunksWritten: 0 });

    // dirty but unchanged, at the head already: scanned, the index not downloaded again (the slot's
    // hashes to the signed id), and the slots and fingerprints left as they were (only a header written)
    expect((await agent(['handoff', '--disk', f('up.img')], t)).json.state).toBe('dirty');
    const area = () => sha256Hex(readFileSync(f('up.img')).subarray(SIZE, SIZE + 3 * MiB - 8192)); // up to the two headers
    const before = area();
    const scanned = await agent(['sync', '--disk', f('up.img'), '--desktop', 'up'], t);
    expect(scanned.code, scanned.stderr).toBe(0);
    expect(scanned.json).toMatchObject({ from: 2, to: 2, scanned: true, localChanges: 0, chunksWritten: 0 });
    expect(scanned.json.bytesFetched).toBeLessThan(SIZE / (64 * 1024) * 32); // less than the index alone
    expect(area()).toBe(before);
    expect((await agent(['status', '--disk', f('up.img')], t)).json).toMatchObject({ state: 'clean', version: 2, slotOk: true });
    expect(imageSha(f('up.img'))).toBe(sha256(f('v2.img')));
  });

  it('refuses a disk too small or holding another desktop, touching nothing', async () => {
    const t = await desktop('small');
    execFileSync('truncate', ['-s', String(SIZE), f('small.img')]);
    const r = await agent(['sync', '--disk', f('small.img'), '--desktop', 'small'], t);
    expect(r.json.error.code).toBe('DF_ERR_DISK_TOO_SMALL');
    expect(sha256(f('small.img'))).toBe(createHash('sha256').update(Buffer.alloc(SIZE)).digest('hex'));
  });
});

describe('agent commit', () => {
  it('commits local changes; the new version exports byte-exact and a second disk syncs to it', async () => {
    const t = await desktop('cap', 'base');
    blankDisk('cap.img');
    expect((await agent(['sync', '--disk', f('cap.img'), '--desktop', 'cap'], t)).json.to).toBe(1);
    expect((await agent(['handoff', '--disk', f('cap.img')], t)).json.state).toBe('dirty');
    execFileSync('dd', [`if=${f('local.img')}`, `of=${f('cap.img')}`, 'bs=1M', 'conv=notrunc', 'status=none']);
    const c = await agent(['commit', '--disk', f('cap.img')], t);
    expect(c.code, c.stderr).toBe(0);
    expect(c.json).toMatchObject({ parent: 1, conflict: null, ref: 'desktops/cap', committed: true });
    expect(c.json.bytesUploaded).toBeLessThan(400 * 1024); // ~110 KB of changed blocks, not whole chunks
    const version = c.json.version as number;
    expect((await agent(['status', '--disk', f('cap.img')], t)).json).toMatchObject({ state: 'clean', version });

    await cli(['image', 'export', `win@${version}`, '--to', f('cap.out')], admin);
    expect(sha256(f('cap.out'))).toBe(sha256(f('local.img')));
    const log = await cli(['image', 'log', 'win@desktops/cap', '--json'], admin);
    expect(log.json.versions[0]).toMatchObject({ version, kind: 'voi-commit', parent: 1 });

    // another endpoint whose disk holds base (copied there by the admin, no state: adopted only with
    // --reprovision, see 'a disk with data but no state') reaches the committed version
    blankDisk('cap2.img');
    execFileSync('dd', [`if=${f('base.img')}`, `of=${f('cap2.img')}`, 'bs=1M', 'conv=notrunc,sparse', 'status=none']);
    const s2 = await agent(['sync', '--disk', f('cap2.img'), '--desktop', 'cap', '--holder', 'second', '--force', '--reprovision'], t);
    expect(s2.code, s2.stderr).toBe(0);
    expect(s2.json.to).toBe(version);
    expect(imageSha(f('cap2.img'))).toBe(sha256(f('local.img')));

    // a clean disk has nothing to commit and is not scanned
    const none = await agent(['commit', '--disk', f('cap2.img'), '--holder', 'second'], t);
    expect(none.json).toMatchObject({ committed: false, version });
  });

  it('two agents on one desktop: the second is refused the lease; forced, the later commit is kept as a conflict', async () => {
    const t = await desktop('duo', 'base');
    blankDisk('a.img');
    blankDisk('b.img');
    expect((await agent(['sync', '--disk', f('a.img'), '--desktop', 'duo'], t)).code).toBe(0);
    const refused = await agent(['sync', '--disk', f('b.img'), '--desktop', 'duo'], t);
    expect(refused.json.error.code).toBe('DF_ERR_LEASE_HELD');
    expect(refused.json.error.holder).toContain('a.img');
    expect(imageSha(f('b.img'))).toBe(createHash('sha256').update(Buffer.alloc(SIZE)).digest('hex'));
    const forced = await agent(['sync', '--disk', f('b.img'), '--desktop', 'duo', '--force'], t);
    expect(forced.code, forced.stderr).toBe(0);

    await agent(['handoff', '--disk', f('a.img')], t);
    await agent(['handoff', '--disk', f('b.img')], t);
    patch(f('a.img'), 3 * MiB, prng(21)(50_000));
    patch(f('b.img'), 5 * MiB, prng(22)(50_000));
    // b holds the lease now: its commit lands on the desktop; a's (stale fencing) is kept as a conflict
    const b = await agent(['commit', '--disk', f('b.img')], t);
    expect(b.json).toMatchObject({ committed: true, conflict: null, parent: 1 });
    const a = await agent(['commit', '--disk', f('a.img')], t);
    expect(a.code).toBe(3);
    expect(a.json.conflict.conflictRef).toMatch(/^conflicts\/desktops\/duo\//);
    await cli(['image', 'export', `win@${b.json.version}`, '--to', f('b.out')], admin);
    await cli(['image', 'export', `win@${a.json.conflict.conflictRef}`, '--to', f('a.out')], admin);
    expect(sha256(f('b.out'))).toBe(imageSha(f('b.img')));
    expect(sha256(f('a.out'))).toBe(imageSha(f('a.img')));
    // a's next sync moves it from its conflict version to the desktop's head; nothing was lost
    const next = await agent(['sync', '--disk', f('a.img'), '--desktop', 'duo', '--force'], t);
    expect(next.json).toMatchObject({ from: a.json.version, to: b.json.version });
    expect(imageSha(f('a.img'))).toBe(sha256(f('b.out')));
  });

  it('restore mode: local changes are discarded at the next sync and never uploaded', async () => {
    const t = await desktop('kiosk', 'main', 'restore');
    blankDisk('k.img');
    expect((await agent(['sync', '--disk', f('k.img'), '--desktop', 'kiosk'], t)).json.to).toBe(2);
    blankDisk('k2.img'); // a second kiosk follows the same restore desktop: no lease between them
    expect((await agent(['sync', '--disk', f('k2.img'), '--desktop', 'kiosk'], t)).json.to).toBe(2);
    await agent(['handoff', '--disk', f('k.img')], t);
    const junk = prng(31)(200_000);
    patch(f('k.img'), 9 * MiB, junk);
    const versionsBefore = (await cli(['image', 'show', 'win', '--json'], admin)).json.versions;
    const chunksBefore = (await cli(['store', 'verify', '--data', f('data'), '--json'])).json.chunks;
    const refusedCommit = await agent(['commit', '--disk', f('k.img')], t);
    expect(refusedCommit.json.error.code).toBe('DF_ERR_RESTORE_MODE');
    const s = await agent(['sync', '--disk', f('k.img'), '--desktop', 'kiosk'], t);
    expect(s.json).toMatchObject({ to: 2, committed: null, scanned: true });
    expect(imageSha(f('k.img'))).toBe(sha256(f('v2.img')));
    expect((await cli(['image', 'show', 'win', '--json'], admin)).json.versions).toBe(versionsBefore);
    const after = await cli(['store', 'verify', '--data', f('data'), '--json']);
    expect(after.json).toMatchObject({ ok: true, chunks: chunksBefore }); // no chunk of the local changes reached the server
  });
});
