/**
 * The endpoint's own disk failing under the agent (issue 10 item 10), through the built CLI:
 *   - a disk file on a small tmpfs that fills up mid-sync: DF_ERR_DISK_FULL;
 *   - a block device whose backing store runs out (a loop device over a sparse file on a full tmpfs,
 *     as a thin LUN does): its writeback fails, fdatasync reports it: DF_ERR_DISK_IO.
 * Either way the run stops with the coded error, `agent status` shows the failure recorded in the
 * disk's state area (the rest of the state untouched), and once the disk has room again the next
 * sync resumes and lands on the target byte for byte. Needs root (mount, losetup).
 */

import { execFileSync } from 'node:child_process';
import { promises as fsp, statfsSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeDisk, prng, sha256Prefix } from '../helpers/disk.js';
import { cli, startInProcess, tempDir, type CliResult } from '../helpers/server.js';
import { thinDisk, type ThinDisk, unmount } from '../helpers/thin-disk.js';

const MiB = 1024 * 1024;
const VS = 16 * MiB;
const DISK = VS + 2 * MiB; // the image, the state area and the 1 MiB GPT reserve

let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startInProcess>> | undefined;
let admin: Record<string, string>;
let pool: string | undefined;
/** Kept so that afterAll undoes the mounts even when a slow machine timed the test out half-way. */
let making: Promise<ThinDisk> | undefined;
const f = (n: string) => path.join(tmp.dir, n);

const imageSha = (disk: string) => sha256Prefix(disk, VS); // the image region; the state area follows

const agent = (args: string[]): Promise<CliResult> => cli(['agent', ...args, '--json'], admin);
const status = async (disk: string) => (await agent(['status', '--disk', disk])).json;

beforeAll(async () => {
  tmp = tempDir('df-agent-disk-');
  srv = await startInProcess(f('data'));
  admin = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  const r = prng(4242);
  const v1 = r(2 * MiB);
  makeDisk(f('v1.img'), VS, [{ at: 0, data: v1 }]);
  makeDisk(f('v2.img'), VS, [{ at: 0, data: v1 }, { at: 4 * MiB, data: r(8 * MiB) }]);
  expect((await cli(['image', 'create', 'win', '--from', f('v1.img')], admin)).code).toBe(0);
  for (const d of ['full', 'thin']) expect((await cli(['desktop', 'create', d, '--image', 'win'], admin)).code).toBe(0);
  expect((await cli(['image', 'publish', 'win', '--from', f('v2.img'), '-m', 'v2'], admin)).code).toBe(0);
});

afterAll(async () => {
  await srv?.close();
  if (pool) await unmount(pool);
  await (await making?.catch(() => undefined))?.close();
  tmp?.cleanup();
});

describe('agent on a failing local disk', () => {
  it('a disk file whose file system fills up mid-sync: DF_ERR_DISK_FULL, recorded in the state area; after freeing space the sync resumes and completes', async () => {
    const dir = f('pool-full');
    await fsp.mkdir(dir);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', dir]);
    pool = dir;
    const disk = path.join(dir, 'disk.img');
    writeFileSync(disk, '');
    truncateSync(disk, DISK);
    const first = await agent(['sync', '--disk', disk, '--desktop', 'full']);
    expect(first.code, first.stderr).toBe(0);
    expect(first.json.to).toBe(1);

    const filler = path.join(dir, 'filler');
    const s = statfsSync(dir);
    writeFileSync(filler, Buffer.alloc(s.bavail * s.bsize - 2 * MiB));
    expect((await cli(['desktop', 'reset', 'full', '--to', 'main', '--force'], admin)).code).toBe(0);
    const r = await agent(['sync', '--disk', disk, '--desktop', 'full']);
    expect(r.code).toBe(1);
    expect(r.json.error).toMatchObject({ code: 'DF_ERR_DISK_FULL', errno: 'ENOSPC', recorded: true });
    expect(r.stderr).toContain('is full');
    const st = await status(disk);
    expect(st).toMatchObject({ state: 'applying', version: 1, target: 2, slotOk: true });
    expect(st.lastFailure).toMatchObject({ code: 'DF_ERR_DISK_FULL', errno: 'ENOSPC', op: 'write' });
    expect(st.lastFailure.message).toContain('is full');

    await fsp.rm(filler);
    const again = await agent(['sync', '--disk', disk, '--desktop', 'full']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.json.to).toBe(2);
    expect(imageSha(disk)).toBe(imageSha(f('v2.img')));
    expect(await status(disk)).toMatchObject({ state: 'clean', version: 2, lastFailure: null });
  });

  it('a block device whose backing store fails its writeback: DF_ERR_DISK_IO, recorded in the state area; once it has room the sync resumes and completes', async () => {
    making = thinDisk(f('thin'), { poolBytes: 16 * MiB, deviceBytes: DISK });
    const thin = await making;
    const disk = thin.device;
    const first = await agent(['sync', '--disk', disk, '--desktop', 'thin']);
    expect(first.code, first.stderr).toBe(0);

    await thin.fill();
    expect((await cli(['desktop', 'reset', 'thin', '--to', 'main', '--force'], admin)).code).toBe(0);
    const r = await agent(['sync', '--disk', disk, '--desktop', 'thin']);
    expect(r.code).toBe(1);
    expect(r.json.error).toMatchObject({ code: 'DF_ERR_DISK_IO', recorded: true });
    expect(r.stderr).toContain('failed');
    const st = await status(disk);
    expect(st).toMatchObject({ state: 'applying', version: 1, target: 2 });
    expect(st.lastFailure).toMatchObject({ code: 'DF_ERR_DISK_IO', op: 'fdatasync' });
    expect(['ENOSPC', 'EIO']).toContain(st.lastFailure.errno);

    await thin.unfill();
    const again = await agent(['sync', '--disk', disk, '--desktop', 'thin']);
    expect(again.code, again.stderr).toBe(0);
    expect(imageSha(disk)).toBe(imageSha(f('v2.img')));
    expect(await status(disk)).toMatchObject({ state: 'clean', version: 2, lastFailure: null });
  });
});
