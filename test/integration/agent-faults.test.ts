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
import { closeSync, copyFileSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { agentHandoff, agentStatus } from '../../src/agent/commands.js';
import { encodeFrame } from '../../src/chunk/frame.js';
import { hashBytes, idHex } from '../../src/chunk/id.js';
import { ChunkIndex } from '../../src/image/chunk-index.js';
import { baseDisk, makeDisk, patch, prng, sha256, sha256Prefix, textish } from '../helpers/disk.js';
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
/** A transparent proxy the kill tests run the agent through, to time kills from its first request. */
let relay: TestProxy;
const f = (n: string) => path.join(tmp.dir, n);
const dataDir = () => f('data');

/** Target images and their chunk ids, by name. */
const img: Record<'base' | 'v2' | 'alt', { sha: string; ids: string[] }> = {} as never;
const tokens: Record<string, string> = {};

// ---------------------------------------------------------------- disks

const imageSha = (disk: string) => sha256Prefix(disk, VS); // the image region; the state area follows

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
function expectOldOrNew(file: string, before: string[], after: string[]): void {
  const ids = chunkIds(file);
  const wrong = ids.map((id, k) => (id === before[k] || id === after[k] ? -1 : k)).filter((k) => k >= 0);
  expect(wrong, `chunks holding neither version: ${wrong.slice(0, 8).join(',')}`).toEqual([]);
}

function blankDisk(name: string): string {
  writeFileSync(f(name), '');
  truncateSync(f(name), DISK);
  return f(name);
}

/** A copy of a disk file with its mtime (cp -p): a copy with a new mtime is a file changed since its seal, and scanned. */
function copyDisk(from: string, name: string): string {
  copyFileSync(from, f(name));
  const st = statSync(from);
  utimesSync(f(name), st.atime, st.mtime);
  return f(name);
}

const fileSha = (file: string) => sha256(file);

// ---------------------------------------------------------------- CLI and API

function agent(args: string[], opts: { token?: string; server?: string } = {}): Promise<CliResult> {
  return cli(['agent', ...args, '--json'], { DESKFUSE_SERVER: opts.server ?? srv.url, DESKFUSE_TOKEN: opts.token ?? srv.token });
}

/**
 * `agent …` as a child process talking to the server through `relay`, SIGKILLed `delayMs` after
 * its first request (or its first request whose path matches `anchor`) reached the relay, so the
 * kill lands in its work, not in Node's startup; unless it exits first.
 */
async function agentKilled(args: string[], delayMs: number, token: string, anchor = /./): Promise<{ killed: boolean; code: number | null }> {
  const child = spawn(process.execPath, [CLI, 'agent', ...args, '--json'], {
    env: { ...process.env, DESKFUSE_DATA: '/nonexistent', DESKFUSE_SERVER: relay.url, DESKFUSE_TOKEN: token },
    stdio: ['ignore', 'ignore', 'ignore'],
  });
  let timer: NodeJS.Timeout | undefined;
  relay.hooks.onRequest = (_method, url) => {
    if (anchor.test(url.split('?')[0]!)) timer ??= setTimeout(() => child.kill('SIGKILL'), delayMs);
  };
  const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
  clearTimeout(timer);
  relay.hooks.onRequest = undefined;
  return { killed: signal === 'SIGKILL', code };
}

/** The seconds an uninterrupted agent run (through the relay) reports: its work, without startup. */
async function timed(args: string[], token: string): Promise<{ r: CliResult; work: number }> {
  const r = await agent(args, { token, server: relay.url });
  expect(r.code, r.stderr).toBe(0);
  return { r, work: r.json.seconds * 1000 };
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
  const r = await cli(['desktop', 'reset', name, '--to', to, '--force'], admin);
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
  // base: ~9 MiB of data in several extents, holes between
  baseDisk(f('base.img'), 3);
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
  relay = await startProxy(srv.url);
}, 120_000);

afterAll(async () => {
  await relay?.close();
  if (srv) await stopProcess(srv.proc);
  tmp?.cleanup();
});

// ---------------------------------------------------------------- 1. kill -9 during sync

describe('kill -9 of the agent', () => {
  it('at random points during sync (blank provisioning: whole chunks; base → v2: deltas), then a rerun: byte-identical, clean at the target', async () => {
    const token = tokens.k!;
    const syncArgs = (disk: string) => ['sync', '--disk', disk, '--desktop', 'k', '--holder', 'endpoint-k'];
    // How long the work of an uninterrupted run takes: kills are spread over it.
    const blank = await timed(syncArgs(blankDisk('k.img')), token);
    expect(blank.r.json).toMatchObject({ from: null, to: 2 });
    expect(imageSha(f('k.img'))).toBe(img.v2.sha);
    let update = { work: Infinity };
    // (measured twice: the first run after the blank one can be slower)
    for (let m = 0; m < 2; m++) {
      const u = await timed(syncArgs(copyDisk(f('tpl-base.img'), 'k.img')), token);
      expect(u.r.json).toMatchObject({ from: 1, to: 2, scanned: false });
      expect(imageSha(f('k.img'))).toBe(img.v2.sha);
      if (u.work < update.work) update = u;
    }

    const rnd = uniform(2026);
    const window = { blank: blank.work * 1.1, update: update.work * 1.1 };
    const seen: Record<string, number> = {};
    let kills = 0;
    let i = 0;
    for (; kills < 20 && i < 36; i++) {
      const kind = i % 2 === 0 ? ('blank' as const) : ('update' as const);
      const disk = kind === 'blank' ? blankDisk('k.img') : copyDisk(f('tpl-base.img'), 'k.img');
      const before = kind === 'blank' ? Array<string>(N).fill(ZERO) : img.base.ids;
      // Every third iteration also kills the rerun (which resumes the interrupted apply, scanning first).
      for (let round = 0; round < (i % 3 === 2 ? 2 : 1); round++) {
        const k = await agentKilled(syncArgs(disk), rnd() * window[kind], token);
        if (k.killed) kills++;
        else {
          expect(k.code).toBe(0);
          window[kind] *= 0.7; // the machine is faster than measured: aim earlier
        }
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
    console.log(`sync: ${i} iterations, ${kills} kills (blank ${blank.work.toFixed(0)} ms, update ${update.work.toFixed(0)} ms of work); state after each kill: ${JSON.stringify(seen)}`);
    expect(kills).toBeGreaterThanOrEqual(20);
    // Many kills landed in the middle of the work, not only before or after it.
    const mid = Object.entries(seen).filter(([w]) => /:(applying|dirty)$/.test(w)).reduce((n, [, c]) => n + c, 0);
    expect(mid).toBeGreaterThanOrEqual(4);
    // The CLI's own status agrees.
    expect((await agent(['status', '--disk', f('k.img')])).json).toMatchObject({ state: 'clean', version: 2, desktop: 'k', image: 'win', slotOk: true });
  }, 300_000); // dozens of agent processes: generous on a loaded 2-core machine

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
    const window = { all: t.work * 1.1, end: 30 };
    const seen: Record<string, number> = {};
    let kills = 0;
    let i = 1;
    for (; kills < 20 && i <= 36; i++) {
      await localWrites(i);
      const viaSync = i % 2 === 0;
      const args = viaSync ? ['sync', '--disk', disk, '--desktop', 'c'] : ['commit', '--disk', disk];
      // Odd iterations aim at the end of the work: a few ms after the commit request went out,
      // when the server may have made the version but the disk is not sealed yet. Each window
      // shrinks when a run finished before its kill (timings vary with the machine's load).
      const odd = i % 2 === 1;
      const k = odd ? await agentKilled(args, rnd() * window.end, token, /\/commits$/) : await agentKilled(args, rnd() * window.all, token);
      if (!k.killed) window[odd ? 'end' : 'all'] *= 0.7;
      if (k.killed) kills++;
      // Where the kill landed: before the commit reached the server, after it landed but before
      // the disk was sealed (the rerun must not make a second version), or after the seal.
      if (k.killed) await sleep(50); // a commit request already sent is still being answered
      const landed = (await versions()).some((v) => v.version > last);
      const st = await status(disk);
      const where = !k.killed ? 'finished' : !landed ? `before-commit:${st.state}` : st.state === 'dirty' ? 'landed-unsealed' : `landed:${st.state}`;
      seen[where] = (seen[where] ?? 0) + 1;
      const again = await agent(viaSync ? args : ['commit', '--disk', disk], { token });
      expect(again.code, `iteration ${i}: ${again.stderr}`).toBe(0);
      await check(`iteration ${i} (${where}, rerun by ${viaSync ? 'sync' : 'commit'})`);
    }
    console.log(`commit: ${i - 1} iterations, ${kills} kills (${t.work.toFixed(0)} ms of work); where: ${JSON.stringify(seen)}`);
    expect(kills).toBeGreaterThanOrEqual(20);
    expect(Object.keys(seen).filter((w) => w.startsWith('landed')).length, 'some kills came after the version was made').toBeGreaterThan(0);

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
  }, 300_000);
});

// ---------------------------------------------------------------- 3. the server goes away

describe('the server killed, restarted or unreachable', () => {
  /** The agent syncs through a proxy that kills the server when the first request matching `at` arrives. */
  async function syncWhileServerDies(disk: string, desk: string, at: RegExp, downMs: number | null): Promise<{ r: CliResult; proxy: TestProxy }> {
    const proxy = await startProxy(srv.url);
    let restarted: Promise<void> | undefined;
    proxy.hooks.onRequest = async (_method, url) => {
      if (restarted || !at.test(url)) return;
      const killed = killServer();
      restarted = killed.then(async () => {
        if (downMs !== null) {
          await sleep(downMs);
          await restartServer();
        }
      });
      await killed;
      // The request in flight dies with the server: its connection is dropped.
      throw new Error('server killed');
    };
    const r = await agent(['sync', '--disk', disk, '--desktop', desk, '--holder', `endpoint-${desk}`], { token: tokens[desk]!, server: proxy.url });
    await restarted;
    await proxy.close();
    expect(restarted, 'the server was killed').toBeDefined();
    return { r, proxy };
  }

  it('killed mid-fetch and back within seconds: the agent retries with backoff and completes', async () => {
    // base → v2 through deltas; the server dies at the first delta request, back after 0.8 s
    const kd = copyDisk(f('tpl-base.img'), 'k-srv.img');
    const a = await syncWhileServerDies(kd, 'k', /\/delta$/, 800);
    expect(a.r.code, a.r.stdout + a.r.stderr).toBe(0);
    expect(a.r.json).toMatchObject({ from: 1, to: 2 });
    expect(a.proxy.seen.filter((x) => x.endsWith('/delta')).length).toBeGreaterThan(1); // retried
    expect(imageSha(kd)).toBe(img.v2.sha);

    // blank → v2 through whole-chunk pack fetches; the server dies at the first fetch, back after
    // 2.5 s (longer than one request's retries: the agent retries the whole sync after a pause)
    await desktop('s', 'main');
    const disk = blankDisk('s.img');
    const b = await syncWhileServerDies(disk, 's', /\/chunks\/fetch$/, 2500);
    if (b.r.code !== 0) {
      // allowed: a clear error, then a rerun completes
      expect(b.r.json.error.code).toBe('DF_ERR_UNREACHABLE');
      const again = await agent(['sync', '--disk', disk, '--desktop', 's', '--holder', 'endpoint-s'], { token: tokens.s! });
      expect(again.code, again.stderr).toBe(0);
    } else {
      expect(b.r.json).toMatchObject({ from: null, to: 2 });
    }
    expect(b.proxy.seen.filter((x) => x.endsWith('/chunks/fetch')).length).toBeGreaterThan(1);
    expect(imageSha(disk)).toBe(img.v2.sha);
    expect(await status(disk)).toMatchObject({ state: 'clean', version: 2 });
  }, 60_000);

  it('killed mid-fetch and down for good: DF_ERR_UNREACHABLE naming the server, nothing wrong written; a rerun completes', async () => {
    // the disk of the test above holds v2; to alt through whole-chunk fetches
    await reset('s', 'alt');
    const disk = f('s.img');
    const a = await syncWhileServerDies(disk, 's', /\/chunks\/fetch$/, null);
    expect(a.r.code).toBe(1);
    expect(a.r.json.error).toMatchObject({ code: 'DF_ERR_UNREACHABLE', server: a.proxy.url });
    expect(a.r.json.error.message).toContain(a.proxy.url);
    expect(a.r.stderr).toContain('DF_ERR_UNREACHABLE');
    expectOldOrNew(disk, img.v2.ids, img.alt.ids);
    await restartServer();
    const again = await agent(['sync', '--disk', disk, '--desktop', 's', '--holder', 'endpoint-s'], { token: tokens.s! });
    expect(again.code, again.stderr).toBe(0);
    expect(again.json).toMatchObject({ to: 3 });
    expect(imageSha(disk)).toBe(img.alt.sha);
  }, 60_000);

  it('a connection that breaks mid-body (pack fetch, delta) is retried and the sync completes', async () => {
    const proxy = await startProxy(srv.url);
    const cut = new Set<string>();
    proxy.hooks.onResponse = ({ url }, body) => {
      const what = url.split('?')[0]!.split('/').pop()!;
      if ((what === 'fetch' || what === 'delta') && !cut.has(what)) {
        cut.add(what);
        return { cut: body.length >> 1 };
      }
      return undefined;
    };
    try {
      // alt → v2: pack fetches
      await reset('s', 'main');
      const disk = f('s.img');
      const a = await agent(['sync', '--disk', disk, '--desktop', 's', '--holder', 'endpoint-s'], { token: tokens.s!, server: proxy.url });
      expect(a.code, a.stdout + a.stderr).toBe(0);
      expect(imageSha(disk)).toBe(img.v2.sha);
      // base → v2: a delta
      const kd = copyDisk(f('tpl-base.img'), 'k-cut.img');
      const b = await agent(['sync', '--disk', kd, '--desktop', 'k', '--holder', 'endpoint-k'], { token: tokens.k!, server: proxy.url });
      expect(b.code, b.stdout + b.stderr).toBe(0);
      expect(imageSha(kd)).toBe(img.v2.sha);
      expect([...cut].sort()).toEqual(['delta', 'fetch']);
    } finally {
      await proxy.close();
    }
  }, 60_000);

  it('unreachable from the start: DF_ERR_UNREACHABLE with the URL, disk untouched', async () => {
    const url = `http://127.0.0.1:${await freePort()}`;
    const disk = copyDisk(f('tpl-base.img'), 'unreach.img');
    const before = fileSha(disk);
    const r = await agent(['sync', '--disk', disk, '--desktop', 'k', '--holder', 'endpoint-k'], { token: tokens.k!, server: url });
    expect(r.code).toBe(1);
    expect(r.json.error).toMatchObject({ code: 'DF_ERR_UNREACHABLE', server: url });
    expect(r.json.error.message).toContain(url);
    expect(fileSha(disk)).toBe(before);
  }, 30_000);
});

// ---------------------------------------------------------------- 4. corrupted chunks

describe('a corrupted chunk served', () => {
  const chunkFile = (id: string) => path.join(dataDir(), 'chunks', id.slice(0, 3), `${id}.zst`);
  /** A chunk of `to` that none of `others` holds, and its position. */
  const newChunk = (to: string[], others: string[][], skip = 0): { pos: number; id: string } => {
    const pos = to.map((id, k) => (id !== ZERO && others.every((o) => !o.includes(id)) ? k : -1)).filter((k) => k >= 0)[skip]!;
    return { pos, id: to[pos]! };
  };

  it('a chunk file altered in the store: a coded error naming the chunk, never written (pack fetch and delta); after repair a rerun completes', async () => {
    await desktop('h', 'main');
    const disk = blankDisk('h.img');
    expect((await agent(['sync', '--disk', disk, '--desktop', 'h', '--holder', 'endpoint-h'], { token: tokens.h! })).code).toBe(0);

    // v2 → alt fetches whole chunks; one of alt's own is damaged in the store (it still decodes, to other bytes)
    await reset('h', 'alt');
    const victim = newChunk(img.alt.ids, [img.base.ids, img.v2.ids], 5);
    const good = readFileSync(chunkFile(victim.id));
    writeFileSync(chunkFile(victim.id), encodeFrame(Buffer.alloc(CS, 0x5a)));
    const r = await agent(['sync', '--disk', disk, '--desktop', 'h', '--holder', 'endpoint-h'], { token: tokens.h! });
    expect(r.code).toBe(1);
    expect(['DF_ERR_CHUNK_CORRUPT', 'DF_ERR_CHUNK_INVALID']).toContain(r.json.error.code);
    expect(r.json.error.id).toBe(victim.id);
    expect(r.json.error.message).toContain(victim.id);
    expectOldOrNew(disk, img.v2.ids, img.alt.ids);
    expect(chunkIds(disk)[victim.pos]).toBe(img.v2.ids[victim.pos]);
    expect((await status(disk)).state).not.toBe('clean');

    // base → alt through the delta of version 3, which the server must rebuild (its cached copy
    // lost) from the corrupt chunk: it cannot
    for (const n of readdirSync(path.join(dataDir(), 'deltas'))) rmSync(path.join(dataDir(), 'deltas', n));
    await reset('k', 'alt');
    const disk2 = copyDisk(f('tpl-base.img'), 'k-corrupt.img');
    const d = await agent(['sync', '--disk', disk2, '--desktop', 'k', '--holder', 'endpoint-k'], { token: tokens.k! });
    expect(d.code, d.stdout).toBe(1);
    expect(d.json.error).toMatchObject({ code: 'DF_ERR_CHUNK_CORRUPT', id: victim.id });
    expectOldOrNew(disk2, img.base.ids, img.alt.ids);
    expect(chunkIds(disk2)[victim.pos]).toBe(img.base.ids[victim.pos]);

    // repaired: both complete byte-exact
    writeFileSync(chunkFile(victim.id), good);
    for (const [x, desk] of [[disk, 'h'], [disk2, 'k']] as const) {
      const again = await agent(['sync', '--disk', x, '--desktop', desk, '--holder', `endpoint-${desk}`], { token: tokens[desk]! });
      expect(again.code, again.stderr).toBe(0);
      expect(imageSha(x)).toBe(img.alt.sha);
      expect(await status(x)).toMatchObject({ state: 'clean', version: 3 });
    }
    await reset('k', 'main');
  }, 60_000);

  it('a byte flipped on the wire in a pack fetch: DF_ERR_CHUNK_INVALID naming the chunk, never written; a rerun without the proxy completes', async () => {
    // the disk holds alt (3); back to main (2) through whole-chunk fetches
    await reset('h', 'main');
    const disk = f('h.img');
    const proxy = await startProxy(srv.url);
    let flipped: string | undefined;
    proxy.hooks.onResponse = ({ url }, body) => {
      if (flipped || !url.endsWith('/chunks/fetch')) return undefined;
      // first record: header 8, id 32, raw length 4, frame length 4, then the frame
      flipped = body.subarray(8, 40).toString('hex');
      const frameLen = body.readUInt32BE(44);
      const out = Buffer.from(body);
      out[48 + (frameLen >> 1)]! ^= 0x01;
      return { body: out };
    };
    const r = await agent(['sync', '--disk', disk, '--desktop', 'h', '--holder', 'endpoint-h'], { token: tokens.h!, server: proxy.url });
    await proxy.close();
    expect(flipped).toBeDefined();
    expect(r.code).toBe(1);
    expect(r.json.error).toMatchObject({ code: 'DF_ERR_CHUNK_INVALID', id: flipped });
    expectOldOrNew(disk, img.alt.ids, img.v2.ids);
    img.v2.ids.forEach((id, k) => {
      if (id === flipped) expect(chunkIds(disk)[k]).toBe(img.alt.ids[k]);
    });
    const again = await agent(['sync', '--disk', disk, '--desktop', 'h', '--holder', 'endpoint-h'], { token: tokens.h! });
    expect(again.code, again.stderr).toBe(0);
    expect(imageSha(disk)).toBe(img.v2.sha);
  }, 60_000);

  it('a byte flipped in a delta: DF_ERR_DECODE or the rebuilt chunk refused and fetched whole; never a wrong chunk on the disk', async () => {
    // disks holding base for desktop k (at v2): base → v2 through the delta of version 2
    const flips: Array<[string, (frame0: number, zlen: number) => number]> = [
      ['the frame header (raw length)', () => 44],
      ['the compressed bytes', (frame0, zlen) => frame0 + 8 + (zlen >> 1)],
      ['the last compressed byte', (frame0, zlen) => frame0 + 8 + zlen - 1],
    ];
    const outcomes: string[] = [];
    for (const [where, at] of flips) {
      const disk = copyDisk(f('tpl-base.img'), 'k-flip.img');
      const proxy = await startProxy(srv.url);
      let done = false;
      proxy.hooks.onResponse = ({ url }, body) => {
        if (done || !url.endsWith('/versions/2/delta')) return undefined;
        done = true;
        const out = Buffer.from(body);
        out[at(44, body.readUInt32BE(48))]! ^= 0x10;
        return { body: out };
      };
      const r = await agent(['sync', '--disk', disk, '--desktop', 'k', '--holder', 'endpoint-k'], { token: tokens.k!, server: proxy.url });
      await proxy.close();
      expect(done, where).toBe(true);
      outcomes.push(`${where}: ${r.code === 0 ? `synced, ${r.json.chunksWritten - r.json.chunksPatched} chunks refetched whole` : r.json.error.code}`);
      if (r.code === 0) {
        expect(imageSha(disk), where).toBe(img.v2.sha);
      } else {
        expect(['DF_ERR_DECODE', 'DF_ERR_CHUNK_INVALID'], `${where}: ${r.stdout}`).toContain(r.json.error.code);
        expectOldOrNew(disk, img.base.ids, img.v2.ids);
        const again = await agent(['sync', '--disk', disk, '--desktop', 'k', '--holder', 'endpoint-k'], { token: tokens.k! });
        expect(again.code, again.stderr).toBe(0);
        expect(imageSha(disk), where).toBe(img.v2.sha);
      }
      if (where.startsWith('the frame header')) expect(r.json.error?.code, where).toBe('DF_ERR_DECODE');
    }
    console.log(`delta flips: ${outcomes.join('; ')}`);
  }, 60_000);
});

// ---------------------------------------------------------------- 5. bad input

describe('bad input: a coded error and the disk untouched', () => {
  it('disk too small, a disk of another desktop or image (then --reprovision), lease held, expired token, commit on a blank disk', async () => {
    const token = await desktop('b', 'main');
    // a second, small image with a desktop of its own
    makeDisk(f('lin-src.img'), 4 * MiB, [{ at: 0, data: prng(44)(MiB) }]);
    expect((await cli(['image', 'create', 'lin', '--from', f('lin-src.img')], admin)).code).toBe(0);
    expect((await cli(['desktop', 'create', 'l', '--image', 'lin'], admin)).code).toBe(0);
    tokens.l = (await cli(['desktop', 'token', 'l'], admin)).stdout.trim();
    const expired = (await cli(['desktop', 'token', 'b', '--ttl', '1'], admin)).stdout.trim();
    const minted = Date.now();
    const sync = (disk: string, extra: string[] = [], t = token) => agent(['sync', '--disk', disk, '--desktop', 'b', ...extra], { token: t });
    const untouched = async (disk: string, run: () => Promise<CliResult>) => {
      const before = fileSha(disk);
      const r = await run();
      expect(r.code, r.stdout).toBe(1);
      expect(fileSha(disk)).toBe(before);
      return r.json.error;
    };

    // too small: the image fits, the state area does not
    const small = copyDisk(f('base.img'), 'small.img');
    truncateSync(small, VS + 4096);
    const e1 = await untouched(small, () => sync(small));
    expect(e1).toMatchObject({ code: 'DF_ERR_DISK_TOO_SMALL', deviceSize: VS + 4096, virtualSize: VS });
    expect(e1.need).toBeGreaterThan(VS + 4096);

    // a disk of desktop k
    const foreign = copyDisk(f('tpl-base.img'), 'foreign.img');
    const e2 = await untouched(foreign, () => sync(foreign, ['--holder', 'endpoint-b']));
    expect(e2).toMatchObject({ code: 'DF_ERR_DISK_FOREIGN', desktop: 'k', image: 'win' });
    expect(e2.message).toContain('--reprovision');
    expect((await untouched(foreign, () => agent(['commit', '--disk', foreign, '--desktop', 'b'], { token }))).code).toBe('DF_ERR_DISK_FOREIGN');
    // a disk of another image
    const lin = copyDisk(f('tpl-base.img'), 'lin.img');
    const e2b = await untouched(lin, () => agent(['sync', '--disk', lin, '--desktop', 'l', '--holder', 'endpoint-l'], { token: tokens.l! }));
    expect(e2b).toMatchObject({ code: 'DF_ERR_DISK_FOREIGN', image: 'win', desktop: 'k' });
    const relin = await agent(['sync', '--disk', lin, '--desktop', 'l', '--holder', 'endpoint-l', '--reprovision'], { token: tokens.l! });
    expect(relin.code, relin.stderr).toBe(0);
    expect(createHash('sha256').update(readFileSync(lin).subarray(0, 4 * MiB)).digest('hex')).toBe(sha256(f('lin-src.img')));
    expect(await status(lin)).toMatchObject({ state: 'clean', version: 1, desktop: 'l', image: 'lin' });

    const re = await sync(foreign, ['--holder', 'endpoint-b', '--reprovision']);
    expect(re.code, re.stderr).toBe(0);
    expect(re.json).toMatchObject({ from: null, to: 2 });
    expect(imageSha(foreign)).toBe(img.v2.sha);
    expect(await status(foreign)).toMatchObject({ state: 'clean', version: 2, desktop: 'b' });

    // the lease is held by endpoint-b (a sync keeps it until the commit at shutdown)
    const blank = blankDisk('b-blank.img');
    const e3 = await untouched(blank, () => sync(blank, ['--holder', 'intruder']));
    expect(e3).toMatchObject({ code: 'DF_ERR_LEASE_HELD', holder: 'endpoint-b' });
    expect(e3.message).toContain('endpoint-b');
    await agentHandoff(foreign);
    patch(foreign, 5 * MiB, prng(55)(8192));
    // a commit while another holds the lease is kept as a conflict, never on the line (issue 14 point 4)
    const e4 = await agent(['commit', '--disk', foreign, '--holder', 'intruder'], { token });
    expect(e4.code, e4.stderr).toBe(3);
    expect(e4.json).toMatchObject({ committed: true, leaseHeldBy: { holder: 'endpoint-b' }, conflict: { reason: 'fencing' } });
    expect((await api('GET', '/api/v1/desktops/b')).lease).toMatchObject({ holder: 'endpoint-b' });

    // commit (and handoff) on a blank disk
    expect((await untouched(blank, () => agent(['commit', '--disk', blank], { token }))).code).toBe('DF_ERR_DISK_BLANK');
    expect((await untouched(blank, () => agent(['commit', '--disk', blank, '--desktop', 'b'], { token }))).code).toBe('DF_ERR_DISK_BLANK');
    expect((await untouched(blank, () => agent(['handoff', '--disk', blank]))).code).toBe('DF_ERR_DISK_BLANK');
    expect((await agent(['status', '--disk', blank])).json).toMatchObject({ state: 'blank' });

    // an expired token
    await sleep(Math.max(0, minted + 1500 - Date.now()));
    const e5 = await untouched(foreign, () => sync(foreign, ['--holder', 'endpoint-b'], expired));
    expect(e5).toMatchObject({ code: 'DF_ERR_TOKEN_EXPIRED', scope: 'desktop:b' });
    expect((await untouched(foreign, () => agent(['commit', '--disk', foreign], { token: expired }))).code).toBe('DF_ERR_TOKEN_EXPIRED');
    expect((await untouched(blank, () => sync(blank, [], expired))).code).toBe('DF_ERR_TOKEN_EXPIRED');
    expect((await api('GET', '/api/v1/desktops/b')).head).toBe(2); // nothing was committed on the line
  }, 60_000);
});

// ---------------------------------------------------------------- 6. restore mode

describe('restore mode', () => {
  it('local changes are gone after the sync and were never uploaded', async () => {
    const token = await desktop('kiosk', 'main', 'restore');
    const disk = blankDisk('kiosk.img');
    expect((await agent(['sync', '--disk', disk, '--desktop', 'kiosk'], { token })).json).toMatchObject({ to: 2 });
    expect((await agent(['handoff', '--disk', disk], { token })).json).toMatchObject({ state: 'dirty', version: 2 });
    const r = prng(66);
    patch(disk, 3 * MiB + 4096, r(20_000)); // inside data
    patch(disk, 17 * MiB, r(3 * CS)); // in a hole
    patch(disk, 8 * MiB, r(4096)); // where v2 zeroed data
    const local = chunkIds(disk).filter((id, k) => id !== img.v2.ids[k] && id !== ZERO);
    expect(local.length).toBeGreaterThanOrEqual(5);

    const chunkFiles = () => readdirSync(path.join(dataDir(), 'chunks'), { recursive: true }).filter((n) => String(n).endsWith('.zst')).length;
    const filesBefore = chunkFiles();
    const versionsBefore = (await versions()).length;
    const s = await agent(['sync', '--disk', disk, '--desktop', 'kiosk'], { token });
    expect(s.code, s.stderr).toBe(0);
    expect(s.json).toMatchObject({ from: 2, to: 2, committed: null, scanned: true });
    expect(s.json.localChanges).toBeGreaterThanOrEqual(5);
    expect(imageSha(disk)).toBe(img.v2.sha);
    expect(await status(disk)).toMatchObject({ state: 'clean', version: 2, desktop: 'kiosk' });

    // never uploaded: no new version, no new chunk file, and the server lacks every local chunk
    expect((await versions()).length).toBe(versionsBefore);
    expect(chunkFiles()).toBe(filesBefore);
    expect((await api<{ missing: string[] }>('POST', '/api/v1/chunks/missing', { ids: local })).missing.sort()).toEqual([...local].sort());
  }, 60_000);
});

// ---------------------------------------------------------------- 7. after everything

it('after all the faults above, the server store verifies', async () => {
  const v = await storeVerify();
  expect(v.code, v.stdout + v.stderr).toBe(0);
  expect(v.json).toMatchObject({ ok: true, corrupt: [], missing: [] });
  const images = (await api<{ images: Array<{ versions: number }> }>('GET', '/api/v1/images')).images;
  expect(v.json.versions).toBe(images.reduce((n, x) => n + x.versions, 0));
}, 60_000);
