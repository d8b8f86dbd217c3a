/**
 * A publish into a server whose chunk store is full (issue 10 item 10). The store is a real 8 MiB
 * tmpfs mounted at data/chunks, filled nearly to the brim; the publish goes through the built CLI.
 * It must stop with DF_ERR_NO_SPACE ("the server's store is full", HTTP 507), leave no temp file and
 * give back the space its failed writes took; once space is freed, the same command succeeds.
 * Needs root (mount).
 */
import { execFileSync } from 'node:child_process';
import { promises as fsp, statfsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeFrame } from '../../src/chunk/frame.js';
import { hashBytes, idHex } from '../../src/chunk/id.js';
import { encodePack, PACK_CONTENT_TYPE } from '../../src/chunk/pack.js';
import { makeDisk, patch, prng, sha256 } from '../helpers/disk.js';
import { cli, startInProcess, tempDir } from '../helpers/server.js';
import { unmount } from '../helpers/thin-disk.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const VS = 16 * MiB;

let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startInProcess>> | undefined;
let env: Record<string, string>;
let mounted = false;
const f = (n: string) => path.join(tmp.dir, n);
const chunksDir = () => f('data/chunks');
const free = () => { const s = statfsSync(chunksDir()); return s.bavail * s.bsize; };

async function tempFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fsp.readdir(dir, { withFileTypes: true, recursive: true })) if (e.name.startsWith('.tmp-')) out.push(path.join(e.parentPath, e.name));
  return out;
}

beforeAll(async () => {
  tmp = tempDir('df-full-');
  await fsp.mkdir(chunksDir(), { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', chunksDir()]);
  mounted = true;
  srv = await startInProcess(f('data'));
  env = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  const r = prng(1010);
  makeDisk(f('v1.img'), VS, [{ at: 0, data: r(512 * KiB) }]);
  // v2: 4 MiB of new, incompressible data: more than the store has left.
  makeDisk(f('v2.img'), VS, [{ at: 0, data: r(512 * KiB) }, { at: 4 * MiB, data: r(4 * MiB) }]);
});

afterAll(async () => {
  await srv?.close();
  if (mounted) await unmount(chunksDir());
  tmp?.cleanup();
});

describe('publish into a full store', () => {
  it('stops with DF_ERR_NO_SPACE (507, "the server\'s store is full"), leaves no temp file, and succeeds once space is freed', async () => {
    const c = await cli(['image', 'create', 'full', '--from', f('v1.img'), '--json'], env);
    expect(c.code, c.stderr).toBe(0);

    const filler = path.join(chunksDir(), 'filler');
    await fsp.writeFile(filler, Buffer.alloc(free() - 600 * KiB));
    const before = free();

    // The HTTP answer itself: a pack the store cannot hold is 507 with the code.
    const raw = prng(7)(1 * MiB);
    const id = idHex(hashBytes(raw));
    const res = await fetch(`${srv!.url}/api/v1/chunks/pack`, {
      method: 'POST', headers: { authorization: `Bearer ${srv!.token}`, 'content-type': PACK_CONTENT_TYPE },
      body: new Uint8Array(encodePack([{ id, rawLength: raw.length, frame: encodeFrame(raw) }])),
    });
    expect(res.status).toBe(507);
    const body = await res.json() as { code: string; message: string };
    expect(body.code).toBe('DF_ERR_NO_SPACE');
    expect(body.message).toContain("the server's store is full");
    expect(await tempFiles(chunksDir())).toEqual([]);
    expect(free()).toBe(before);

    // The CLI: a coded error a person can act on, non-zero exit, nothing half-written left behind.
    const p = await cli(['image', 'publish', 'full', '--from', f('v2.img'), '-m', 'too big', '--json'], env);
    expect(p.code).toBe(1);
    expect(p.stderr).toContain('DF_ERR_NO_SPACE');
    expect(p.stderr).toContain("the server's store is full");
    expect(p.json?.error?.code).toBe('DF_ERR_NO_SPACE');
    expect(await tempFiles(chunksDir())).toEqual([]);
    const log = await cli(['image', 'log', 'full', '--json'], env);
    expect(log.json.versions.map((v: { version: number }) => v.version)).toEqual([1]);

    // Space freed: the same command goes through, and the version reads back byte for byte.
    await fsp.rm(filler);
    const again = await cli(['image', 'publish', 'full', '--from', f('v2.img'), '-m', 'retry', '--json'], env);
    expect(again.code, again.stderr).toBe(0);
    expect(again.json.version).toBe(2);
    const e = await cli(['image', 'export', 'full@2', '--to', f('out.img')], env);
    expect(e.code, e.stderr).toBe(0);
    expect(sha256(f('out.img'))).toBe(sha256(f('v2.img')));
    expect(await tempFiles(chunksDir())).toEqual([]);
  });

  it('an agent commit into a full store: DF_ERR_NO_SPACE "the server\'s store is full", the disk stays dirty, and the commit goes through once space is freed', async () => {
    expect((await cli(['desktop', 'create', 'd', '--image', 'full'], env)).code).toBe(0);
    const disk = f('endpoint.img');
    makeDisk(disk, VS + 2 * MiB, []);
    const agent = (args: string[]) => cli(['agent', ...args, '--disk', disk, '--json'], env);
    expect((await agent(['sync', '--desktop', 'd'])).code).toBe(0);
    expect((await agent(['handoff'])).code).toBe(0);
    patch(disk, 8 * MiB, prng(8)(2 * MiB)); // the OS wrote 2 MiB the server has never seen

    const filler = path.join(chunksDir(), 'filler');
    await fsp.writeFile(filler, Buffer.alloc(free() - 600 * KiB));
    const r = await agent(['commit']);
    expect(r.code).toBe(1);
    expect(r.json.error.code).toBe('DF_ERR_NO_SPACE');
    expect(r.stderr).toContain("the server's store is full");
    expect(await tempFiles(chunksDir())).toEqual([]);
    // Not the disk's fault: its state still says dirty (the commit is still to do), no disk failure.
    expect((await agent(['status'])).json).toMatchObject({ state: 'dirty', version: 2, lastFailure: null });

    await fsp.rm(filler);
    const again = await agent(['commit']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.json).toMatchObject({ committed: true, version: 3 });
  });
});
