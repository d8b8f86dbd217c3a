/**
 * A VDI FLUSH whose fdatasync fails (issue 10 item 10). The server's session folder (data/vdi) is an
 * ext4 on a thin loop device whose pool runs out: the VM's writes land in the page cache, their
 * writeback fails, fdatasync reports it once. Retrying would "succeed" with the writes lost (Linux
 * drops the error once reported), so the session must fail for good: that FLUSH and every later
 * WRITE and FLUSH get NBD errors, the session shows `failed` with the reason, it cannot be committed,
 * and an admin can discard it. Needs root.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CMD, ERRNO } from '../../src/nbd/packet.js';
import { baseDisk } from '../helpers/disk.js';
import { RawNbd } from '../helpers/nbd-client.js';
import { cli, tempDir } from '../helpers/server.js';
import { thinDisk, type ThinDisk } from '../helpers/thin-disk.js';
import { startVdiAppliance, type VdiAppliance } from '../helpers/vdi.js';

const MiB = 1024 * 1024;
let tmp: ReturnType<typeof tempDir>;
let thin: ThinDisk | undefined;
/** Kept so that afterAll undoes the mounts even when a slow machine timed the setup out half-way. */
let making: Promise<ThinDisk> | undefined;
let app: VdiAppliance | undefined;
let admin: Record<string, string>;
const f = (n: string) => path.join(tmp.dir, n);
const vdi = async (args: string[]) => cli(['vdi', ...args, '--json'], admin);

beforeAll(async () => {
  tmp = tempDir('df-vdi-flush-');
  making = thinDisk(tmp.dir, { poolBytes: 24 * MiB, deviceBytes: 128 * MiB, mountExt4At: f('data/vdi') });
  thin = await making;
  app = await startVdiAppliance(f('data'));
  admin = { DESKFUSE_SERVER: app.url, DESKFUSE_TOKEN: app.token };
  baseDisk(f('base.img'));
  expect((await cli(['image', 'create', 'win', '--from', f('base.img')], admin)).code).toBe(0);
  expect((await cli(['desktop', 'create', 'alice', '--image', 'win'], admin)).code).toBe(0);
}, 180_000);

afterAll(async () => {
  await app?.close();
  await (await making?.catch(() => undefined))?.close();
  tmp?.cleanup();
});

describe('VDI flush failure', () => {
  it('a FLUSH whose fdatasync failed fails the session: NBD EIO now and for every later write and flush, state failed with the reason, no commit, discard works', async () => {
    const s = (await vdi(['session', 'create', 'alice'])).json;
    const c = await RawNbd.connect(app!.nbdPort);
    await c.open(s.export);
    const good = Buffer.alloc(256 * 1024, 0x11);
    expect((await c.request({ type: CMD.WRITE, offset: 0 }, good)).error).toBe(0);
    expect((await c.request({ type: CMD.FLUSH })).error).toBe(0);

    await thin!.fill();
    // 8 MiB the pool cannot hold: the writes are cached and answered, their writeback fails.
    for (let k = 0; k < 8; k++) expect((await c.request({ type: CMD.WRITE, offset: (4 + k) * MiB }, Buffer.alloc(MiB, 0x22 + k))).error).toBe(0);
    expect((await c.request({ type: CMD.FLUSH })).error).toBe(ERRNO.EIO);

    // Space comes back; the session stays failed: nothing can prove the lost writes were written.
    await thin!.unfill();
    expect((await c.request({ type: CMD.FLUSH })).error).toBe(ERRNO.EIO);
    expect((await c.request({ type: CMD.WRITE, offset: 0 }, Buffer.alloc(4096, 0x33))).error).not.toBe(0);
    expect((await c.request({ type: CMD.WRITE_ZEROES, offset: 0, length: 4096 })).error).not.toBe(0);
    // Reads still answer (the VM can shut down).
    expect((await c.request({ type: CMD.READ, offset: 0, length: 4096 })).error).toBe(0);

    const shown = (await vdi(['session', 'show', s.session])).json;
    expect(shown.state).toBe('failed');
    expect(shown.failure).toMatch(/flush failed \((ENOSPC|EIO)/);
    const text = await cli(['vdi', 'session', 'show', s.session], admin);
    expect(text.stdout).toContain('FAILED');
    // Listed by default: an admin must see what needs discarding.
    expect((await vdi(['session', 'list'])).json.sessions.map((x: { id: string; state: string }) => [x.id, x.state])).toContainEqual([s.session, 'failed']);

    c.disconnect();
    await c.closed;
    // A clean disconnect does not commit a failed session, and an admin cannot either.
    const desk = (await cli(['desktop', 'show', 'alice', '--json'], admin)).json;
    expect(desk.head).toBe(1);
    const commit = await vdi(['session', 'commit', s.session]);
    expect(commit.code).toBe(1);
    expect(commit.json.error.code).toBe('DF_ERR_VDI_SESSION_STATE');
    // A new client cannot open it.
    const again = await RawNbd.connect(app!.nbdPort);
    await expect(again.open(s.export)).rejects.toThrow();
    again.destroy();

    const gone = (await vdi(['session', 'discard', s.session])).json;
    expect(gone.state).toBe('discarded');
    expect((await cli(['desktop', 'show', 'alice', '--json'], admin)).json.lease).toBeNull();
  });
});
