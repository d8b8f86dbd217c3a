import { execFileSync } from 'node:child_process';
import { chmodSync, promises as fsp, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseDisk, patch, prng, sha256, textish } from '../helpers/disk.js';
import { cli, startInProcess, tempDir } from '../helpers/server.js';

let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startInProcess>>;
let env: Record<string, string>;
const f = (n: string) => path.join(tmp.dir, n);

beforeAll(async () => {
  tmp = tempDir('df-cli-');
  srv = await startInProcess(f('data'));
  env = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  baseDisk(f('base.img'));
  await fsp.copyFile(f('base.img'), f('v2.img'));
  const r = prng(99);
  patch(f('v2.img'), 4096 * 5, r(4096)); // one block in chunk 0
  patch(f('v2.img'), 20 * 1024 * 1024 + 70000, textish(r, 200_000)); // a few chunks
  patch(f('v2.img'), 12 * 1024 * 1024, r(128 * 1024)); // in a former hole
});
afterAll(async () => {
  await srv.close();
  tmp.cleanup();
});

describe('image create / publish / export round trip', () => {
  it('exports byte-exact versions, and the second publish uploads only what changed', async () => {
    const c = await cli(['image', 'create', 'desk', '--from', f('base.img'), '--json'], env);
    expect(c.code, c.stderr).toBe(0);
    expect(c.json).toMatchObject({ image: 'desk', version: 1, parent: null, ref: 'main' });
    const base = c.json;
    expect(base.chunksNew).toBe(base.chunks);

    const p = await cli(['image', 'publish', 'desk', '--from', f('v2.img'), '-m', 'update', '--json'], env);
    expect(p.code, p.stderr).toBe(0);
    expect(p.json).toMatchObject({ version: 2, parent: 1, ref: 'main', conflict: null });
    // 1 block in chunk 0, 200 KB spanning 4-5 chunks, a new 128 KiB region = 2 chunks
    expect(p.json.chunksChanged).toBeGreaterThanOrEqual(7);
    expect(p.json.chunksChanged).toBeLessThanOrEqual(9);
    expect(p.json.chunksNew).toBe(p.json.chunksChanged);
    expect(p.json.bytesUploaded).toBeLessThan(base.bytesUploaded / 10);

    const e1 = await cli(['image', 'export', 'desk@1', '--to', f('out1.img'), '--json'], env);
    expect(e1.code, e1.stderr).toBe(0);
    const e2 = await cli(['image', 'export', 'desk@main', '--to', f('out2.img')], env);
    expect(e2.code, e2.stderr).toBe(0);
    expect(sha256(f('out1.img'))).toBe(sha256(f('base.img')));
    expect(sha256(f('out2.img'))).toBe(sha256(f('v2.img')));
    // sparse: the export allocates about what the data needs, not the virtual size
    const st = await fsp.stat(f('out1.img'));
    expect(st.size).toBe(32 * 1024 * 1024);
    expect(st.blocks * 512).toBeLessThan(14 * 1024 * 1024);

    const log = await cli(['image', 'log', 'desk', '--json'], env);
    expect(log.json.versions.map((v: { version: number; kind: string }) => [v.version, v.kind])).toEqual([[2, 'publish'], [1, 'import']]);
    const list = await cli(['image', 'list'], env);
    expect(list.stdout).toMatch(/desk\s+32\.0 MiB\s+64\.0 KiB\s+2\s+main=2/);
  });

  it('reads qcow2 through qemu-img and exports qcow2', async () => {
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', f('base.img'), f('base.qcow2')]);
    const c = await cli(['image', 'create', 'q', '--from', f('base.qcow2'), '--chunk-size', '256K', '--json'], env);
    expect(c.code, c.stderr).toBe(0);
    const show = await cli(['image', 'show', 'q', '--json'], env);
    expect(show.json).toMatchObject({ virtualSize: 32 * 1024 * 1024, chunkSize: 256 * 1024 });
    await cli(['image', 'export', 'q', '--to', f('q.raw')], env);
    expect(sha256(f('q.raw'))).toBe(sha256(f('base.img')));
    const e = await cli(['image', 'export', 'q@1', '--to', f('q-out.qcow2'), '--format', 'qcow2'], env);
    expect(e.code, e.stderr).toBe(0);
    expect(JSON.parse(execFileSync('qemu-img', ['info', '--output=json', f('q-out.qcow2')], { encoding: 'utf8' })).format).toBe('qcow2');
    execFileSync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', f('q-out.qcow2'), f('base.img')]); // throws when they differ
  });

  it('promotes and rolls back with ref set --expect, keeping the ref log', async () => {
    await cli(['image', 'create', 'r', '--from', f('base.img')], env);
    const pub = await cli(['image', 'publish', 'r', '--from', f('v2.img'), '--ref', 'test', '--json'], env);
    expect(pub.json).toMatchObject({ version: 2, parent: 1, ref: 'test' });
    const refs = await cli(['ref', 'list', 'r', '--json'], env);
    expect(refs.json.refs.map((x: { name: string; version: number }) => `${x.name}=${x.version}`)).toEqual(['main=1', 'test=2']);
    const stale = await cli(['ref', 'set', 'r', 'main', '2', '--expect', '2'], env);
    expect(stale.code).toBe(1);
    expect(stale.stderr).toContain('DF_ERR_REF_MOVED');
    expect((await cli(['ref', 'set', 'r', 'main', '2', '--expect', '1'], env)).code).toBe(0);
    expect((await cli(['ref', 'set', 'r', 'main', '1', '--expect', '2', '--reason', 'rollback'], env)).code).toBe(0);
    const log = await cli(['ref', 'log', 'r', 'main', '--json'], env);
    expect(log.json.entries.map((e: { oldVersion: number | null; newVersion: number; reason: string }) => [e.oldVersion, e.newVersion, e.reason]))
      .toEqual([[2, 1, 'rollback'], [1, 2, 'ref set'], [null, 1, 'import']]);
  });
});

describe('bad input changes nothing', () => {
  it('a file that is no disk image, an unreadable file, a missing file', async () => {
    writeFileSync(f('notes.txt'), 'hello, not a disk\n');
    const a = await cli(['image', 'create', 'bad', '--from', f('notes.txt'), '--json'], env);
    expect(a.code).toBe(1);
    expect(a.json.error.code).toBe('DF_ERR_NOT_A_DISK');
    const b = await cli(['image', 'create', 'bad', '--from', f('nope.img')], env);
    expect(b.stderr).toContain('DF_ERR_FILE_UNREADABLE');
    if (process.getuid?.() !== 0) {
      writeFileSync(f('locked.img'), Buffer.alloc(4096));
      chmodSync(f('locked.img'), 0);
      expect((await cli(['image', 'create', 'bad', '--from', f('locked.img')], env)).stderr).toContain('DF_ERR_FILE_UNREADABLE');
    }
    const list = await cli(['image', 'list', '--json'], env);
    expect(list.json.images.map((i: { name: string }) => i.name)).not.toContain('bad');
  });

  it('publish with another virtual size is refused before anything is uploaded', async () => {
    await cli(['image', 'create', 's', '--from', f('base.img')], env);
    execFileSync('truncate', ['-s', '48M', f('big.img')]);
    const r = await cli(['image', 'publish', 's', '--from', f('big.img'), '--json'], env);
    expect(r.code).toBe(1);
    expect(r.json.error).toMatchObject({ code: 'DF_ERR_SIZE_MISMATCH', virtualSize: 48 * 1024 * 1024, imageSize: 32 * 1024 * 1024 });
    expect((await cli(['image', 'show', 's', '--json'], env)).json.versions).toBe(1);
  });

  it('no token or a wrong token: 401 with a coded error; usage errors exit 2', async () => {
    const r = await cli(['image', 'list', '--json'], { DESKFUSE_SERVER: srv.url });
    expect(r.code).toBe(1);
    expect(r.json.error.code).toBe('DF_ERR_UNAUTHORIZED');
    const w = await cli(['image', 'list', '--token', 'dfa_wrong'], { DESKFUSE_SERVER: srv.url });
    expect(w.stderr).toContain('DF_ERR_UNAUTHORIZED');
    const u = await cli(['image', 'create', 'x'], env);
    expect(u.code).toBe(2);
    expect(u.stderr).toContain('missing --from FILE');
    const down = await cli(['image', 'list'], { DESKFUSE_SERVER: 'http://127.0.0.1:9', DESKFUSE_TOKEN: 'x' });
    expect(down.stderr).toContain('DF_ERR_UNREACHABLE');
  }, 30_000);
});
