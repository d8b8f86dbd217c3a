/**
 * Faults and bad input for the endpoint agent (issue 3): kill -9 of the agent during sync and
 * commit, the server killed or unreachable mid-fetch, corrupted chunks (in the store, or flipped on
 * the wire by a proxy), refused disks and tokens, restore mode. Every agent run goes through the
 * built CLI (`dist/`), so scans use the real worker threads; outcomes are checked on the disk
 * (sha256, chunk by chunk), on the server (versions, refs, indexes, `store verify`) and in the
 * coded `--json` errors.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { closeSync, copyFileSync, openSync, readdirSync, readFileSync, readSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { agentHandoff, agentStatus } from '../../src/agent/commands.js';
import { encodeFrame } from '../../src/chunk/frame.js';
import { hashBytes, idHex } from '../../src/chunk/id.js';
import { ChunkIndex } from '../../src/image/chunk-index.js';
import { baseDisk, patch, prng, sha256, textish } from '../helpers/disk.js';
import { startProxy, type TestProxy } from '../helpers/proxy.js';
import { CLI, cli, freePort, startProcess, stopProcess, tempDir, type CliResult } from '../helpers/server.js';

const MiB = 1024 * 1024;
const CS = 64 * 1024;
const VS = 32 * MiB;
const N = VS / CS;
const DISK = VS + 4 * MiB;
const ZERO = '0'.repeat(64);

let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startProcess>>;
let admin: Record<string, string>;
const f = (n: string) => path.join(tmp.dir, n);
const dataDir = () => f('data');

/** Target images and their chunk ids, by name. */
const img: Record<'base' | 'v2' | 'alt', { sha: string; ids: string[] }> = {} as never;
const tokens: Record<string, string> = {};

// ---------------------------------------------------------------- disks

/** sha256 of a disk's image region (its first VS bytes; the state area follows). */
function imageSha(file: string): string {
  const h = createHash('sha256');
  const fd = openSync(file, 'r');
  const buf = Buffer.alloc(4 * MiB);
  try {
    for (let off = 0; off < VS; off += buf.length) h.update(buf.subarray(0, readSync(fd, buf, 0, buf.length, off)));
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

/** BLAKE3 id of every chunk of a disk's image region (zero chunks as 64 zeros, as in an index). */
function chunkIds(file: string): string[] {
  const out: string[] = [];
  const fd = openSync(file, 'r');
  const buf = Buffer.alloc(CS);
  try {
    for (let k = 0; k < N; k++) {
      buf.fill(0);
      readSync(fd, buf, 0, CS, k * CS);
      out.push(buf.every((b) => b === 0) ? ZERO : idHex(hashBytes(buf)));
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/** Every chunk of the disk is the old or the new version's: nothing else was ever written. */
function expectOldOrNew(file: string, before: string[], after: string[]): { old: number; new: number } {
  const ids = chunkIds(file);
  const wrong = ids.map((id, k) => (id === before[k] || id === after[k] ? -1 : k)).filter((k) => k >= 0);
  expect(wrong, `chunks holding neither version: ${wrong.slice(0, 8).join(',')}`).toEqual([]);
  return { old: ids.filter((id, k) => id === before[k] && id !== after[k]).length, new: ids.filter((id, k) => id === after[k] && id !== before[k]).length };
}

function blankDisk(name: string): string {
  writeFileSync(f(name), '');
  truncateSync(f(name), DISK);
  return f(name);
}

function copyDisk(from: string, name: string): string {
  copyFileSync(from, f(name));
  return f(name);
}

const fileSha = (file: string) => sha256(file);

// ---------------------------------------------------------------- CLI and API

function agent(args: string[], opts: { token?: string; server?: string } = {}): Promise<CliResult> {
  return cli(['agent', ...args, '--json'], { DESKFUSE_SERVER: opts.server ?? srv.url, DESKFUSE_TOKEN: opts.token ?? srv.token });
}

/** `agent …` as a child process, SIGKILLed after `delayMs` unless it exits first. */
async function agentKilled(args: string[], delayMs: number, token: string): Promise<{ killed: boolean; code: number | null }> {
  const child = spawn(process.execPath, [CLI, 'agent', ...args, '--json'], {
    env: { ...process.env, DESKFUSE_DATA: '/nonexistent', DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: token },
    stdio: ['ignore', 'ignore', 'ignore'],
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), delayMs);
  const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
  clearTimeout(timer);
  return { killed: signal === 'SIGKILL', code };
}

/** Wall time of one agent run and the seconds it reports itself: the difference is process startup. */
async function timed(args: string[], token: string): Promise<{ r: CliResult; wall: number; startup: number }> {
  const t0 = performance.now();
  const r = await agent(args, { token });
  const wall = performance.now() - t0;
  expect(r.code, r.stderr).toBe(0);
  return { r, wall, startup: Math.max(0, wall - r.json.seconds * 1000) };
}

async function api<T = any>(method: string, url: string, body?: unknown): Promise<T> {
  const res = await fetch(`${srv.url}${url}`, {
    method,
    headers: { authorization: `Bearer ${srv.token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  expect(res.ok, `${method} ${url}: ${text}`).toBe(true);
  return JSON.parse(text) as T;
}

async function serverIndex(version: number): Promise<ChunkIndex> {
  const res = await fetch(`${srv.url}/api/v1/images/win/versions/${version}/index`, { headers: { authorization: `Bearer ${srv.token}` } });
  return ChunkIndex.decode(Buffer.from(await res.arrayBuffer()));
}

type Version = { version: number; parent: number | null; kind: string; author: string };
const versions = async (): Promise<Version[]> => (await api<{ versions: Version[] }>('GET', '/api/v1/images/win/versions?limit=1000')).versions;
const conflictRefs = async (): Promise<string[]> =>
  (await api<{ refs: Array<{ name: string }> }>('GET', '/api/v1/images/win/refs')).refs.map((r) => r.name).filter((n) => n.startsWith('conflicts/'));

async function desktop(name: string, from: string, mode = 'persistent'): Promise<string> {
  const c = await cli(['desktop', 'create', name, '--image', 'win', '--from', from, '--mode', mode], admin);
  expect(c.code, c.stderr).toBe(0);
  const t = await cli(['desktop', 'token', name], admin);
  expect(t.code, t.stderr).toBe(0);
  return (tokens[name] = t.stdout.trim());
}

async function reset(name: string, to: string): Promise<void> {
  const r = await cli(['desktop', 'reset', name, '--to', to], admin);
  expect(r.code, r.stderr).toBe(0);
}

async function killServer(): Promise<void> {
  await stopProcess(srv.proc, 'SIGKILL');
}

async function restartServer(): Promise<void> {
  srv = await startProcess(dataDir(), srv.port);
}

async function storeVerify(): Promise<CliResult> {
  await stopProcess(srv.proc);
  const v = await cli(['store', 'verify', '--data', dataDir(), '--json']);
  await restartServer();
  return v;
}

/** Uniform in [0, 1) from a seeded generator. */
function uniform(seed: number): () => number {
  const r = prng(seed);
  return () => r(4).readUInt32LE(0) / 2 ** 32;
}

const status = async (disk: string) => (await agentStatus(disk)) as { state: string; version: number | null; desktop?: string; target?: number | null };

// ---------------------------------------------------------------- images

beforeAll(async () => {
  tmp = tempDir('df-agent-faults-');
  srv = await startProcess(dataDir());
  admin = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  const r = prng(303);
  // base: ~13 MiB of data in several extents, holes between
  baseDisk(f('base.img'), 3);
  patch(f('base.img'), 12 * MiB, r(4 * MiB));
  // v2: scattered 4 KiB edits (inside data and in holes), an edit across chunks, data zeroed, new data
  copyFileSync(f('base.img'), f('v2.img'));
  for (let k = 0; k < 300; k++) patch(f('v2.img'), ((k * 2654435761) % (VS / 4096)) * 4096, r(4096));
  patch(f('v2.img'), 20 * MiB + 12345, textish(r, 300_000));
  patch(f('v2.img'), 8 * MiB, Buffer.alloc(512 * 1024));
  patch(f('v2.img'), 28 * MiB, r(MiB));
  // alt (a branch from base): whole chunks of new data, so a disk holding v2 fetches them whole
  copyFileSync(f('base.img'), f('alt.img'));
  for (let k = 0; k < 48; k++) patch(f('alt.img'), (k * 7 + 3) * CS, r(CS));

  const ok = async (args: string[]) => {
    const x = await cli(args, admin);
    expect(x.code, `${args.join(' ')}: ${x.stderr}`).toBe(0);
  };
  await ok(['image', 'create', 'win', '--from', f('base.img')]); // 1
  await ok(['ref', 'set', 'win', 'base', '1', '--expect', 'none']);
  await ok(['image', 'publish', 'win', '--from', f('v2.img')]); // 2 on main
  await ok(['ref', 'set', 'win', 'alt', '1', '--expect', 'none']);
  await ok(['image', 'publish', 'win', '--from', f('alt.img'), '--ref', 'alt']); // 3 on alt, parent 1
  for (const n of ['base', 'v2', 'alt'] as const) img[n] = { sha: sha256(f(`${n}.img`)), ids: chunkIds(f(`${n}.img`)) };
  expect((await versions()).map((v) => [v.version, v.parent])).toEqual([[3, 1], [2, 1], [1, null]]);

  // Desktop k: a disk holding base, sealed clean (the template for updates), then k moves to v2.
  await desktop('k', 'base');
  const s = await agent(['sync', '--disk', blankDisk('tpl-base.img'), '--desktop', 'k', '--holder', 'endpoint-k'], { token: tokens.k });
  expect(s.code, s.stderr).toBe(0);
  expect(imageSha(f('tpl-base.img'))).toBe(img.base.sha);
  await reset('k', 'main');
}, 120_000);

afterAll(async () => {
  if (srv) await stopProcess(srv.proc);
  tmp?.cleanup();
});

// ---------------------------------------------------------------- 1. kill -9 during sync

describe('kill -9 of the agent', () => {
  it('at random points during sync (blank provisioning and base → v2), then a rerun: byte-identical, clean at the target', async () => {
    const token = tokens.k!;
    const syncArgs = (disk: string) => ['sync', '--disk', disk, '--desktop', 'k', '--holder', 'endpoint-k'];
    // How long an uninterrupted run takes, and how much of it is process startup.
    const blank = await timed(syncArgs(blankDisk('k.img')), token);
    expect(blank.r.json).toMatchObject({ from: null, to: 2 });
    expect(imageSha(f('k.img'))).toBe(img.v2.sha);
    const update = await timed(syncArgs(copyDisk(f('tpl-base.img'), 'k.img')), token);
    expect(update.r.json).toMatchObject({ from: 1, to: 2, scanned: false });
    expect(imageSha(f('k.img'))).toBe(img.v2.sha);

    const rnd = uniform(2026);
    const seen: Record<string, number> = {};
    let kills = 0;
    for (let i = 0; i < 20; i++) {
      const kind = i % 2 === 0 ? 'blank' : 'update';
      const disk = kind === 'blank' ? blankDisk('k.img') : copyDisk(f('tpl-base.img'), 'k.img');
      const before = kind === 'blank' ? Array<string>(N).fill(ZERO) : img.base.ids;
      const t = kind === 'blank' ? blank : update;
      // Every third iteration also kills the rerun (which resumes the interrupted apply, scanning first).
      for (let round = 0; round < (i % 3 === 2 ? 2 : 1); round++) {
        const delay = 0.8 * t.startup + rnd() * (t.wall * 1.1 - 0.8 * t.startup);
        const k = await agentKilled(syncArgs(disk), delay, token);
        if (k.killed) kills++;
        else expect(k.code).toBe(0);
        const st = await status(disk);
        const where = `${kind}:${k.killed ? st.state : 'finished'}`;
        seen[where] = (seen[where] ?? 0) + 1;
        expectOldOrNew(disk, before, img.v2.ids);
      }
      const fin = await agent(syncArgs(disk), { token });
      expect(fin.code, `iteration ${i}: ${fin.stderr}`).toBe(0);
      expect(fin.json.to).toBe(2);
      expect(imageSha(disk), `iteration ${i} (${kind})`).toBe(img.v2.sha);
      expect(await status(disk)).toMatchObject({ state: 'clean', version: 2, desktop: 'k' });
    }
    console.log(`sync kills: ${kills}; state after each kill: ${JSON.stringify(seen)}`);
    expect(kills).toBeGreaterThanOrEqual(20);
    // The kills landed in the middle of the work, not only before or after it.
    const mid = Object.entries(seen).filter(([w]) => /:(applying|dirty)$/.test(w)).reduce((n, [, c]) => n + c, 0);
    expect(mid).toBeGreaterThanOrEqual(5);
    // The CLI's own status agrees.
    expect((await agent(['status', '--disk', f('k.img')])).json).toMatchObject({ state: 'clean', version: 2, desktop: 'k', image: 'win', slotOk: true });
  }, 150_000);

  it('at random points during commit, then a rerun of commit or sync: exactly one new version per change, exported byte-exact; the store verifies', async () => {
    const token = await desktop('c', 'main');
    const disk = blankDisk('c.img');
    expect((await agent(['sync', '--disk', disk, '--desktop', 'c'], { token })).code).toBe(0);
    let head = 2;
    let last = Math.max(...(await versions()).map((v) => v.version));
    const done: Array<{ version: number; sha: string }> = [];

    /** OS writes on the endpoint: a few 4 KiB blocks (some in holes), sometimes a whole chunk. */
    const localWrites = async (i: number) => {
      await agentHandoff(disk);
      const r = prng(1000 + i);
      const pos = uniform(2000 + i);
      for (let w = 0; w < 1 + (i % 5); w++) patch(disk, Math.floor(pos() * (VS / 4096)) * 4096, r(4096 * (1 + (w % 3))));
      if (i % 4 === 0) patch(disk, Math.floor(pos() * N) * CS, r(CS));
    };
    /** After each finished commit: one new voi-commit on the desktop, the disk clean at it, same chunks as the server's index. */
    const check = async (label: string) => {
      const all = await versions();
      const fresh = all.filter((v) => v.version > last);
      expect(fresh, label).toHaveLength(1);
      expect(fresh[0], label).toMatchObject({ kind: 'voi-commit', parent: head });
      const v = fresh[0]!.version;
      expect((await api('GET', '/api/v1/desktops/c')).head, label).toBe(v);
      expect(await conflictRefs(), label).toEqual([]);
      expect(await status(disk), label).toMatchObject({ state: 'clean', version: v });
      const idx = await serverIndex(v);
      expect(Array.from({ length: N }, (_, k) => (idx.isZeroAt(k) ? ZERO : idHex(idx.idAt(k)))), label).toEqual(chunkIds(disk));
      done.push({ version: v, sha: imageSha(disk) });
      last = v;
      head = v;
    };

    // One uninterrupted commit, timed.
    await localWrites(0);
    const t = await timed(['commit', '--disk', disk], token);
    expect(t.r.json).toMatchObject({ committed: true, parent: 2, conflict: null, ref: 'desktops/c' });
    await check('uninterrupted');

    const rnd = uniform(77);
    const seen: Record<string, number> = {};
    let kills = 0;
    for (let i = 1; i <= 22; i++) {
      await localWrites(i);
      const viaSync = i % 2 === 0;
      const args = viaSync ? ['sync', '--disk', disk, '--desktop', 'c'] : ['commit', '--disk', disk];
      const delay = 0.8 * t.startup + rnd() * (t.wall * 1.2 - 0.8 * t.startup);
      const k = await agentKilled(args, delay, token);
      if (k.killed) kills++;
      // Where the kill landed: before the commit reached the server, after it landed but before
      // the disk was sealed (the rerun must not make a second version), or after the seal.
      const landed = (await versions()).some((v) => v.version > last);
      const st = await status(disk);
      const where = !k.killed ? 'finished' : !landed ? `before-commit:${st.state}` : st.state === 'dirty' ? 'landed-unsealed' : `landed:${st.state}`;
      seen[where] = (seen[where] ?? 0) + 1;
      const again = await agent(viaSync ? args : ['commit', '--disk', disk], { token });
      expect(again.code, `iteration ${i}: ${again.stderr}`).toBe(0);
      await check(`iteration ${i} (${where}, rerun by ${viaSync ? 'sync' : 'commit'})`);
    }
    console.log(`commit kills: ${kills}; where: ${JSON.stringify(seen)}`);
    expect(kills).toBeGreaterThanOrEqual(20);

    // The window that could duplicate a version, made certain: the commit lands and the disk is
    // then put back as it was before the seal (as if the agent died right after the server answered).
    await localWrites(99);
    const unsealed = copyDisk(disk, 'c-unsealed.img');
    const first = await agent(['commit', '--disk', disk], { token });
    expect(first.json).toMatchObject({ committed: true, parent: head, conflict: null });
    await check('commit before the replay');
    for (const how of ['commit', 'sync']) {
      copyFileSync(unsealed, disk);
      expect(await status(disk)).toMatchObject({ state: 'dirty', version: first.json.parent });
      const replay = await agent(how === 'commit' ? ['commit', '--disk', disk] : ['sync', '--disk', disk, '--desktop', 'c'], { token });
      expect(replay.code, replay.stderr).toBe(0);
      expect(replay.json, how).toMatchObject(how === 'commit' ? { version: first.json.version, conflict: null } : { committed: first.json.version, conflict: null, to: first.json.version });
      expect((await versions()).filter((v) => v.version > last), how).toEqual([]);
      expect(await conflictRefs()).toEqual([]);
      expect(await status(disk)).toMatchObject({ state: 'clean', version: first.json.version });
    }

    // Every committed version exports byte-exact (first, a middle one, the last).
    for (const d of [done[0]!, done[Math.floor(done.length / 2)]!, done[done.length - 1]!]) {
      const out = f(`c-${d.version}.out`);
      const e = await cli(['image', 'export', `win@${d.version}`, '--to', out], admin);
      expect(e.code, e.stderr).toBe(0);
      expect(sha256(out), `version ${d.version}`).toBe(d.sha);
    }
    // The desktop's line: one voi-commit per change, nothing else.
    const log = await cli(['image', 'log', 'win@desktops/c', '--json', '--limit', '1000'], admin);
    const line = (log.json.versions as Version[]).filter((v) => v.version > 3);
    expect(line.map((v) => v.version)).toEqual(done.map((d) => d.version).reverse());
    expect(new Set(line.map((v) => v.kind))).toEqual(new Set(['voi-commit']));

    const v = await storeVerify();
    expect(v.code, v.stdout + v.stderr).toBe(0);
    expect(v.json).toMatchObject({ ok: true, corrupt: [], missing: [] });
  }, 150_000);
});
