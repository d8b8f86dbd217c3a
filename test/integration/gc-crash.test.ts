import { type ChildProcess } from 'node:child_process';
import { existsSync, promises as fsp, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openMeta } from '../../src/meta/open.js';
import { SqliteEngine } from '../../src/meta/sqlite-engine.js';
import { baseDisk, patch, prng, sha256 } from '../helpers/disk.js';
import { cli, startProcess, stopProcess, tempDir } from '../helpers/server.js';

/**
 * `kill -9` of a real server at random points of a garbage collection (each batch slowed down by
 * DESKFUSE_TEST_GC_STEP_MS), then reruns: the killed run's lease runs out (2 s here), the next run
 * takes over and finishes what it started (objects it was removing), nothing a version reaches is
 * lost (every version exports byte-exact, `store verify` is clean) and the garbage is gone.
 */
let tmp: ReturnType<typeof tempDir>;
const f = (n: string) => path.join(tmp.dir, n);
const procs: ChildProcess[] = [];

beforeAll(() => {
  tmp = tempDir('df-gc-crash-');
});
afterAll(async () => {
  for (const p of procs) await stopProcess(p, 'SIGKILL').catch(() => {});
  tmp.cleanup();
});

function countChunks(dir: string): number {
  if (!existsSync(dir)) return 0;
  return readdirSync(dir).reduce((n, fan) => n + readdirSync(path.join(dir, fan)).filter((x) => x.endsWith('.zst')).length, 0);
}

describe('garbage collection killed with -9 at random points', () => {
  it('a rerun completes it and nothing reachable is lost', async () => {
    const data = f('data');
    const config = f('server.json');
    writeFileSync(config, JSON.stringify({ gc: { intervalSeconds: 0, graceSeconds: 0, leaseSeconds: 2 } }));
    const start = async (slow: boolean) => {
      const s = await startProcess(data, undefined, undefined, { args: ['--config', config], env: slow ? { DESKFUSE_TEST_GC_STEP_MS: '40' } : {} });
      procs.push(s.proc);
      return { ...s, env: { DESKFUSE_SERVER: s.url, DESKFUSE_TOKEN: s.token } };
    };

    // Five versions, each changing a few MiB; then the first three rows go (as retention would drop
    // them): their own chunks, layers and indexes are garbage, the rest is shared with what stays.
    let s = await start(false);
    baseDisk(f('v.img'));
    expect((await cli(['image', 'create', 'g', '--from', f('v.img'), '--chunk-size', '65536'], s.env)).code).toBe(0);
    const r = prng(9);
    for (let k = 0; k < 4; k++) {
      patch(f('v.img'), (k * 5 + 1) * 1024 * 1024, r(2 * 1024 * 1024));
      expect((await cli(['image', 'publish', 'g', '--from', f('v.img')], s.env)).code).toBe(0);
      await fsp.copyFile(f('v.img'), f(`v${k + 2}.img`));
    }
    await stopProcess(s.proc, 'SIGKILL');
    const meta = await openMeta(new SqliteEngine(path.join(data, 'meta.sqlite')));
    await meta.engine.run('DELETE FROM versions WHERE image = ? AND version <= 3', ['g']);
    await meta.close();
    const before = countChunks(path.join(data, 'chunks'));

    // Runs killed at random points: start one, wait a random while, kill -9, start again.
    const rnd = prng(42)(16);
    const killedIn: string[] = [];
    for (let k = 0; k < 5; k++) {
      s = await start(true);
      let started = false;
      for (let tries = 0; tries < 50 && !started; tries++) {
        const res = await fetch(`${s.url}/api/v1/store/gc`, { method: 'POST', headers: { authorization: `Bearer ${s.token}` } });
        if (res.status === 202) started = true;
        else {
          expect(((await res.json()) as { code: string }).code).toBe('DF_ERR_GC_RUNNING'); // the killed run's lease
          await new Promise((res2) => setTimeout(res2, 250));
        }
      }
      expect(started).toBe(true);
      await new Promise((res) => setTimeout(res, 50 + (rnd[k]! % 8) * 60));
      await stopProcess(s.proc, 'SIGKILL');
      const m = await openMeta(new SqliteEngine(path.join(data, 'meta.sqlite')));
      const lock = await m.gc.state();
      await m.close();
      if (lock?.holder) killedIn.push(lock.phase ?? '?');
    }
    expect(killedIn.length).toBeGreaterThanOrEqual(2); // most kills strike a run in the middle (phases in killedIn)

    // A rerun (and the one after it, for the candidates of the first) completes.
    s = await start(false);
    for (let k = 0; k < 2; k++) {
      let out;
      for (let tries = 0; tries < 20; tries++) {
        out = await cli(['store', 'gc', '--json'], s.env);
        if (out.code === 0) break;
        expect(out.stderr).toMatch(/DF_ERR_GC_RUNNING/);
        await new Promise((res) => setTimeout(res, 500));
      }
      expect(out!.code).toBe(0);
    }
    const after = countChunks(path.join(data, 'chunks'));
    expect(after).toBeLessThan(before);
    for (const v of [4, 5]) {
      expect((await cli(['image', 'export', `g@${v}`, '--to', f(`out${v}.img`)], s.env)).code).toBe(0);
      expect(sha256(f(`out${v}.img`))).toBe(sha256(f(`v${v}.img`)));
    }
    const usage = await cli(['store', 'usage', '--json'], s.env);
    expect(usage.code).toBe(0);
    expect(usage.json).toMatchObject({ kinds: { unreferencedChunks: { count: 0 } } });
    await stopProcess(s.proc, 'SIGKILL');
    const verify = await cli(['store', 'verify', '--data', data]);
    expect(verify.stdout).toMatch(/^OK/);
    expect(verify.code).toBe(0);
  }, 240_000);
});
