import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseDisk, makeDisk, prng, sha256 } from '../helpers/disk.js';
import { startProxy } from '../helpers/proxy.js';
import { CLI, cli, startInProcess, tempDir } from '../helpers/server.js';
import { encodeFrame } from '../../src/chunk/frame.js';
import { hashBytes, idHex } from '../../src/chunk/id.js';

/** `deskfuse image export` through the built CLI: no overwrite without --force, --to DIR, coded path errors, resume, a bad stored chunk refused. */
const MiB = 1024 * 1024;
let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startInProcess>>;
let admin: Record<string, string>;
const f = (n: string) => path.join(tmp.dir, n);
const parts = (dir: string) => readdirSync(dir).filter((n) => n.endsWith('.part'));

beforeAll(async () => {
  tmp = tempDir('df-export-');
  srv = await startInProcess(f('data'));
  admin = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  baseDisk(f('base.img'));
  expect((await cli(['image', 'create', 'win', '--from', f('base.img')], admin)).code).toBe(0);
  // 80 MiB of incompressible data in 1 MiB chunks: five fetch requests of 16 chunks each.
  makeDisk(f('big.img'), 96 * MiB, [{ at: 8 * MiB, data: prng(3)(80 * MiB) }]);
  expect((await cli(['image', 'create', 'big', '--from', f('big.img'), '--chunk-size', '1M'], admin)).code).toBe(0);
}, 120_000);
afterAll(async () => {
  await srv.close();
  tmp.cleanup();
});

describe('image export --to', () => {
  it('refuses to overwrite an existing file unless --force', async () => {
    writeFileSync(f('kept.img'), 'the admin wants this file\n');
    const r = await cli(['image', 'export', 'win', '--to', f('kept.img'), '--json'], admin);
    expect(r.code).toBe(1);
    expect(r.json.error).toMatchObject({ code: 'DF_ERR_FILE_EXISTS', path: f('kept.img') });
    expect(r.stderr).toContain('--force replaces it');
    expect(readFileSync(f('kept.img'), 'utf8')).toBe('the admin wants this file\n');
    expect(parts(tmp.dir)).toEqual([]);

    const forced = await cli(['image', 'export', 'win', '--to', f('kept.img'), '--force'], admin);
    expect(forced.code, forced.stderr).toBe(0);
    expect(sha256(f('kept.img'))).toBe(sha256(f('base.img')));
  });

  it('an existing directory gets IMAGE-vN.img inside it; nothing is left beside it', async () => {
    mkdirSync(f('exports'));
    const r = await cli(['image', 'export', 'win@1', '--to', f('exports')], admin);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`to ${f('exports/win-v1.img')} as raw`);
    expect(readdirSync(f('exports'))).toEqual(['win-v1.img']);
    expect(sha256(f('exports/win-v1.img'))).toBe(sha256(f('base.img')));
    expect(parts(tmp.dir)).toEqual([]);
    const q = await cli(['image', 'export', 'win', '--to', `${f('exports')}/`, '--format', 'qcow2'], admin);
    expect(q.code, q.stderr).toBe(0);
    expect(readdirSync(f('exports')).sort()).toEqual(['win-v1.img', 'win-v1.qcow2']);
  });

  it('a missing directory is a coded error naming it; nothing is created', async () => {
    const r = await cli(['image', 'export', 'win', '--to', f('no/such/dir/out.img'), '--json'], admin);
    expect(r.code).toBe(1);
    expect(r.json.error).toMatchObject({ code: 'DF_ERR_OUTPUT_DIR', dir: f('no/such/dir') });
    expect(r.stderr).toContain(`no such directory: ${f('no/such/dir')}`);
    expect(existsSync(f('no'))).toBe(false);
    const notDir = await cli(['image', 'export', 'win', '--to', f('kept.img/out.img')], admin);
    expect(notDir.stderr).toContain(`DF_ERR_OUTPUT_DIR: --to ${f('kept.img/out.img')}: is not a directory: ${f('kept.img')}`);
  });

  it('an export killed mid-way resumes from its .part and ends byte-exact', async () => {
    const out = f('big.out');
    let fetches = 0;
    let child: ReturnType<typeof spawn> | undefined;
    let killed: Promise<unknown> = Promise.resolve();
    const proxy = await startProxy(srv.url, {
      onRequest: async (_m, url) => {
        // The 5th fetch is asked for once the first batch is written: kill the CLI there.
        if (url.startsWith('/api/v1/chunks/fetch') && ++fetches === 5) {
          killed = new Promise((r) => child!.once('exit', r));
          child!.kill('SIGKILL');
          await killed;
        }
      },
    });
    try {
      child = spawn(process.execPath, [CLI, 'image', 'export', 'big', '--to', out], { env: { ...process.env, DESKFUSE_SERVER: proxy.url, DESKFUSE_TOKEN: srv.token }, stdio: 'ignore' });
      const code = await new Promise((r) => child!.once('exit', (c, sig) => r(sig ?? c)));
      expect(code).toBe('SIGKILL');
    } finally {
      await proxy.close();
    }
    expect(existsSync(out)).toBe(false);
    expect(parts(tmp.dir)).toEqual(['big.out.part']); // beside the target

    const again = await cli(['image', 'export', 'big', '--to', out, '--json'], admin);
    expect(again.code, again.stderr).toBe(0);
    expect(again.json.chunksResumed).toBeGreaterThanOrEqual(12); // the first batch of 16, less what was still buffered
    expect(again.json.chunksResumed).toBeLessThan(80);
    expect(sha256(out)).toBe(sha256(f('big.img')));
    expect(parts(tmp.dir)).toEqual([]);

    // A full export for comparison: same bytes, and the resumed run fetched less than it.
    const full = await cli(['image', 'export', 'big', '--to', f('big.full'), '--json'], admin);
    expect(sha256(f('big.full'))).toBe(sha256(out));
    expect(full.json.chunksResumed).toBe(0);
    expect(again.json.bytesFetched).toBeLessThan(full.json.bytesFetched - 10 * MiB);
  }, 120_000);

  it('zero chunks and zero 4 KiB blocks stay holes in the raw output, its bytes those of the image', async () => {
    // 64 KiB chunks: 8 MiB of data at 4 MiB, one chunk of it with every other 4 KiB block zero, and one
    // more data chunk at 30 MiB; the rest of the 32 MiB disk is zero chunks.
    const data = prng(21)(8 * MiB);
    for (let at = MiB; at < MiB + 64 * 1024; at += 8192) data.fill(0, at, at + 4096);
    const tail = prng(22)(64 * 1024);
    makeDisk(f('holes.img'), 32 * MiB, [{ at: 4 * MiB, data }, { at: 30 * MiB, data: tail }]);
    expect((await cli(['image', 'create', 'holes', '--from', f('holes.img')], admin)).code).toBe(0);
    const r = await cli(['image', 'export', 'holes', '--to', f('holes.out'), '--json'], admin);
    expect(r.code, r.stderr).toBe(0);
    expect(sha256(f('holes.out'))).toBe(sha256(f('holes.img')));
    const nonzero = data.length - 32 * 1024 + tail.length;
    expect(r.json.bytesWritten).toBe(nonzero);
    // What the file system allocated: the written bytes (and some metadata blocks at most), not 32 MiB.
    expect(statSync(f('holes.out')).blocks * 512).toBeLessThan(nonzero + MiB);
  }, 60_000);

  it('a stored chunk gone bad is refused by the exporting client: DF_ERR_CHUNK_INVALID, its bytes never written', async () => {
    // The server sends stored frames as they are (verified when they were stored, not on every
    // fetch): the client is where a chunk is verified before it reaches the disk.
    const data = prng(11)(8 * MiB);
    makeDisk(f('rot.img'), 16 * MiB, [{ at: 4 * MiB, data }]);
    expect((await cli(['image', 'create', 'rot', '--from', f('rot.img'), '--chunk-size', '1M'], admin)).code).toBe(0);
    // The chunk at 6 MiB: its file now holds a valid frame of other bytes, of the same length.
    const raw = data.subarray(2 * MiB, 3 * MiB);
    const id = idHex(hashBytes(raw));
    const file = path.join(f('data'), 'chunks', id.slice(0, 3), `${id}.zst`);
    const good = readFileSync(file);
    const evil = Buffer.from(raw);
    evil[1000]! ^= 0xff;
    const bad = encodeFrame(evil);
    expect(bad.length).toBe(good.length);
    writeFileSync(file, bad);
    try {
      const r = await cli(['image', 'export', 'rot', '--to', f('rot.out'), '--json'], admin);
      expect(r.code).toBe(1);
      expect(r.json.error).toMatchObject({ code: 'DF_ERR_CHUNK_INVALID', id, got: idHex(hashBytes(evil)) });
      expect(existsSync(f('rot.out'))).toBe(false);
      const part = readFileSync(f('rot.out.part'));
      expect(part.subarray(6 * MiB, 7 * MiB).equals(Buffer.alloc(MiB))).toBe(true); // nothing of it on disk
      expect(part.indexOf(evil.subarray(0, 4096))).toBe(-1);
    } finally {
      writeFileSync(file, good);
    }
    // Once the store holds the right bytes again, the export resumes from the .part and ends byte-exact.
    const again = await cli(['image', 'export', 'rot', '--to', f('rot.out'), '--json'], admin);
    expect(again.code, again.stderr).toBe(0);
    expect(sha256(f('rot.out'))).toBe(sha256(f('rot.img')));
  }, 60_000);
});
