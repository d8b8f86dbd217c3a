import { type ChildProcess, spawn } from 'node:child_process';
import { promises as fsp, readdirSync, existsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseDisk, makeDisk, patch, prng, sha256 } from '../helpers/disk.js';
import { CLI, cli, startProcess, stopProcess, tempDir } from '../helpers/server.js';

let tmp: ReturnType<typeof tempDir>;
const f = (n: string) => path.join(tmp.dir, n);
const procs: ChildProcess[] = [];

beforeAll(() => {
  tmp = tempDir('df-crash-');
});
afterAll(async () => {
  for (const p of procs) await stopProcess(p, 'SIGKILL');
  tmp.cleanup();
});

async function server(data: string) {
  const s = await startProcess(data);
  procs.push(s.proc);
  return { ...s, env: { DESKFUSE_SERVER: s.url, DESKFUSE_TOKEN: s.token } };
}

function countChunks(dir: string): number {
  if (!existsSync(dir)) return 0;
  return readdirSync(dir).reduce((n, fan) => n + readdirSync(path.join(dir, fan)).filter((x) => x.endsWith('.zst')).length, 0);
}

async function waitFor(cond: () => boolean, ms = 30_000): Promise<void> {
  const t = Date.now();
  while (!cond()) {
    if (Date.now() - t > ms) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('two commits with the same parent', () => {
  it('the second answers 409, is kept under conflicts/, and both export byte-exact', async () => {
    const s = await server(f('data-c'));
    baseDisk(f('base.img'));
    await fsp.copyFile(f('base.img'), f('a.img'));
    await fsp.copyFile(f('base.img'), f('b.img'));
    patch(f('a.img'), 1024 * 1024, prng(1)(100_000));
    patch(f('b.img'), 9 * 1024 * 1024, prng(2)(300_000));
    expect((await cli(['image', 'create', 'c', '--from', f('base.img')], s.env)).code).toBe(0);
    const a = await cli(['image', 'publish', 'c', '--from', f('a.img'), '--parent', '1', '--json'], s.env);
    expect(a.json).toMatchObject({ version: 2, parent: 1, conflict: null });
    const b = await cli(['image', 'publish', 'c', '--from', f('b.img'), '--parent', '1', '--json'], s.env);
    expect(b.code).toBe(3);
    expect(b.json).toMatchObject({ version: 3, parent: 1, ref: 'main', conflict: { head: 2 } });
    const cref = b.json.conflict.conflictRef as string;
    expect(cref).toMatch(/^conflicts\/main\//);
    expect((await cli(['image', 'export', 'c@main', '--to', f('main.out')], s.env)).code).toBe(0);
    expect((await cli(['image', 'export', `c@${cref}`, '--to', f('conflict.out')], s.env)).code).toBe(0);
    expect(sha256(f('main.out'))).toBe(sha256(f('a.img')));
    expect(sha256(f('conflict.out'))).toBe(sha256(f('b.img')));
  });
});

describe('kill -9 in the middle of a publish', () => {
  const MiB = 1024 * 1024;
  beforeAll(() => {
    const r = prng(5);
    makeDisk(f('big1.img'), 96 * MiB, [{ at: 0, data: r(4 * MiB) }]);
    makeDisk(f('big2.img'), 96 * MiB, [{ at: 0, data: r(4 * MiB) }, { at: 8 * MiB, data: r(80 * MiB) }]);
  });

  for (const victim of ['server', 'client'] as const) {
    it(`of the ${victim}: no partial version, store verifies, the rerun succeeds`, async () => {
      const data = f(`data-${victim}`);
      let s = await server(data);
      expect((await cli(['image', 'create', 'k', '--from', f('big1.img')], s.env)).code).toBe(0);
      const before = countChunks(path.join(data, 'chunks'));
      const pub = spawn(process.execPath, [CLI, 'image', 'publish', 'k', '--from', f('big2.img'), '--json'], { env: { ...process.env, ...s.env }, stdio: 'ignore' });
      procs.push(pub);
      // Strike once the first packs are stored and more are on the way.
      await waitFor(() => countChunks(path.join(data, 'chunks')) > before + 64);
      if (victim === 'server') await stopProcess(s.proc, 'SIGKILL');
      else await stopProcess(pub, 'SIGKILL');
      await stopProcess(pub, 'SIGKILL');
      const stored = countChunks(path.join(data, 'chunks'));
      expect(stored).toBeLessThan(before + 1280); // 80 MiB of new data = 1,280 chunks: we struck mid-way

      if (victim === 'server') s = await server(data);
      const log = await cli(['image', 'log', 'k', '--json'], s.env);
      expect(log.json.versions.map((v: { version: number }) => v.version)).toEqual([1]);
      await stopProcess(s.proc);
      const v = await cli(['store', 'verify', '--data', data, '--json']);
      expect(v.code, v.stdout).toBe(0);
      expect(v.json).toMatchObject({ ok: true, corrupt: [], missing: [] });

      s = await server(data);
      const again = await cli(['image', 'publish', 'k', '--from', f('big2.img'), '--json'], s.env);
      expect(again.code, again.stderr).toBe(0);
      expect(again.json).toMatchObject({ version: 2, parent: 1 });
      expect(again.json.chunksNew).toBeLessThan(1280); // what reached the store before the kill is not sent again
      await cli(['image', 'export', 'k', '--to', f(`k-${victim}.out`)], s.env);
      expect(sha256(f(`k-${victim}.out`))).toBe(sha256(f('big2.img')));
      await stopProcess(s.proc);
      expect((await cli(['store', 'verify', '--data', data])).code).toBe(0);
    }, 120_000);
  }
});

describe('store verify', () => {
  it('lists every corrupt and missing chunk and exits non-zero', async () => {
    const data = f('data-v');
    const s = await server(data);
    baseDisk(f('v.img'), 3);
    expect((await cli(['image', 'create', 'v', '--from', f('v.img')], s.env)).code).toBe(0);
    await stopProcess(s.proc);
    const dir = path.join(data, 'chunks');
    const files = readdirSync(dir).flatMap((fan) => readdirSync(path.join(dir, fan)).map((x) => path.join(dir, fan, x))).sort();
    const corrupt = files[0]!;
    const gone = files[1]!;
    const bytes = await fsp.readFile(corrupt);
    bytes[Math.floor(bytes.length / 2)]! ^= 0x55;
    await fsp.writeFile(corrupt, bytes);
    await fsp.rm(gone);
    const r = await cli(['store', 'verify', '--data', data, '--json']);
    expect(r.code).toBe(1);
    expect(r.json.ok).toBe(false);
    expect(r.json.corrupt.map((c: { id: string }) => c.id)).toEqual([path.basename(corrupt, '.zst')]);
    expect(r.json.missing).toEqual([{ id: path.basename(gone, '.zst'), image: 'v', versions: [1], what: 'chunk' }]);
    const text = await cli(['store', 'verify', '--data', data]);
    expect(text.stdout).toContain(`corrupt chunk ${path.basename(corrupt, '.zst')}`);
    expect(text.stdout).toContain(`missing chunk ${path.basename(gone, '.zst')} needed by v version 1`);
  });
});
