/**
 * Scale out, end to end (issue 11, "Several servers" and "Real engines in CI"): REAL `deskfuse server`
 * processes on one PostgreSQL and one Ceph RGW, driven by the built CLI (`dist/`) and plain HTTP.
 *
 * Shared engines (sharedPostgres / sharedRgw), servers A and B:
 *   1. publish through A, `agent sync` through B: byte-exact;
 *   2. a boot token issued by A is traded at B, and is then spent at A too;
 *   3. a desktop lease taken through A is refused through B (409 DF_ERR_LEASE_HELD naming the holder);
 *   4. two agents commit on one parent at once, one through A, one through B: one fast-forward, one
 *      conflict, both versions export byte-exact;
 *   5. kill -9 of A while an agent (`--server A,B`) uploads a commit: it completes on B, one new version,
 *      byte-exact, `store verify` clean.
 * Private engines (startPostgres / startRgw: this file stops and starts them), servers C and D:
 *   6. radosgw stopped during a sync through D, started again ~10 s later: the sync completes byte-exact;
 *   7. PostgreSQL restarted while C and D run: requests during the outage get 503 coded errors (never a
 *      200 with another body), and both answer correctly afterwards without a restart (reads, writes, a
 *      sync through each, a boot event at C in D's live stream once D listens again).
 * Both pairs start at once on an empty database: one admin token is made, by one of them.
 * DESKFUSE_E2E_LOGS=DIR keeps the servers' logs (at debug: one request per line) for a failed run.
 * Images are small (64 MiB virtual, 64 KiB chunks, sparse). Every process and engine started here is
 * stopped by PID in afterAll.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newEndpointSecret, proveEndpoint } from '../../src/endpoint/proof.js';
import { makeDisk, patch, prng, sha256, sha256Prefix, textish } from '../helpers/disk.js';
import { sharedPostgres, sharedRgw } from '../helpers/engines.js';
import { startPostgres, type Postgres } from '../helpers/postgres.js';
import { rgwCommand, rgwStart, startRgw, type Rgw, type RgwSettings } from '../helpers/rgw.js';
import { CLI, cli, freePort, tempDir, type CliResult } from '../helpers/server.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const DISK = SIZE + 8 * MiB;
const ZERO_SHA = createHash('sha256').update(Buffer.alloc(SIZE)).digest('hex');

let tmp: ReturnType<typeof tempDir>;
const f = (n: string) => path.join(tmp.dir, n);
const imageSha = (disk: string) => sha256Prefix(disk, SIZE); // the image region; the state area follows
const blankDisk = (name: string) => makeDisk(f(name), DISK, []);

// ---------------------------------------------------------------- servers as processes

interface Server {
  name: string;
  url: string;
  port: number;
  data: string;
  proc: ChildProcess;
  /** Everything it printed (pino JSON lines at level info: one per request). */
  log(): string;
}
const servers: Server[] = [];

/** `deskfuse server` on PostgreSQL + S3, NBD off, logging every request; resolves when /healthz answers. */
async function startServer(name: string, meta: string, store: string, s3: RgwSettings, port?: number): Promise<Server> {
  const p = port ?? (await freePort());
  const data = f(`data-${name}`);
  const proc = spawn(process.execPath, [
    CLI, 'server', '--meta', meta, '--store', store, '--data', data, '--listen', `127.0.0.1:${p}`, '--nbd-listen', 'off', '--server-name', name, '--log-level', 'debug', // debug: one line per request (the tests read which server was asked)
  ], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey } });
  const out: string[] = [];
  proc.stdout!.on('data', (b: Buffer) => out.push(b.toString('utf8')));
  proc.stderr!.on('data', (b: Buffer) => out.push(b.toString('utf8')));
  const s: Server = { name, url: `http://127.0.0.1:${p}`, port: p, data, proc, log: () => out.join('') };
  servers.push(s);
  for (let i = 0; ; i++) {
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`server ${name} exited (${proc.exitCode ?? proc.signalCode}):\n${s.log().slice(-4000)}`);
    try {
      if ((await fetch(`${s.url}/healthz`)).ok) return s;
    } catch {
      /* not up yet */
    }
    if (i > 600) throw new Error(`server ${name} did not answer /healthz:\n${s.log().slice(-4000)}`);
    await sleep(100);
  }
}

async function stopServer(s: Server, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  const p = s.proc;
  if (p.exitCode !== null || p.signalCode !== null) return;
  const done = new Promise((r) => p.once('exit', r));
  p.kill(signal);
  const t = setTimeout(() => p.kill('SIGKILL'), 15_000);
  await done;
  clearTimeout(t);
}

/** The admin token: made once in the database by whichever server started first; its admin.token holds it. */
function adminToken(...ss: Server[]): string {
  const holders = ss.filter((s) => existsSync(path.join(s.data, 'admin.token')));
  expect(holders.map((s) => s.name)).toHaveLength(1);
  return readFileSync(path.join(holders[0]!.data, 'admin.token'), 'utf8').trim();
}

/** Polls until `cond` holds (no timing assert: it fails only if the condition never comes). */
async function until(what: string, cond: () => boolean, ms = 60_000): Promise<void> {
  for (const end = Date.now() + ms; !cond(); ) {
    if (Date.now() > end) throw new Error(`never happened: ${what}`);
    await sleep(20);
  }
}

/** A CLI run whose end can be watched while it runs. */
function running(args: string[], env: Record<string, string>): { done: Promise<CliResult>; finished: () => boolean } {
  let over = false;
  const done = cli(args, env).finally(() => {
    over = true;
  });
  return { done, finished: () => over };
}

async function http(server: Server, method: string, url: string, token?: string, body?: unknown): Promise<{ status: number; body: any; text: string; sha: string }> {
  const headers: Record<string, string> = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(`${server.url}${url}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  const bytes = Buffer.from(await r.arrayBuffer());
  const text = bytes.toString('utf8');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: r.status, body: json, text, sha: createHash('sha256').update(bytes).digest('hex') };
}

// ---------------------------------------------------------------- disks

/** base: ~10 MiB of data in a 64 MiB image; v2: edits inside chunks, across chunks, into holes. */
function makeImages(): void {
  const r = prng(5);
  makeDisk(f('base.img'), SIZE, [
    { at: 0, data: r(2 * MiB) },
    { at: 4 * MiB + 4096 * 3, data: textish(r, 3 * MiB) },
    { at: 16 * MiB, data: Buffer.concat([r(512 * 1024), Buffer.alloc(256 * 1024), r(1 * MiB)]) },
    { at: 40 * MiB, data: textish(r, 3 * MiB + 1234) },
    { at: SIZE - 64 * 1024, data: r(64 * 1024) },
  ]);
  copyFileSync(f('base.img'), f('v2.img'));
  patch(f('v2.img'), 4096 * 7, r(4096));
  patch(f('v2.img'), 41 * MiB + 12345, textish(r, 300_000));
  patch(f('v2.img'), 24 * MiB, r(512 * 1024));
}

async function publish(env: Record<string, string>): Promise<void> {
  const c = await cli(['image', 'create', 'win', '--from', f('base.img'), '--chunk-size', '64K', '--json'], env);
  expect(c.code, c.stderr).toBe(0);
  const p = await cli(['image', 'publish', 'win', '--from', f('v2.img'), '--json'], env);
  expect(p.code, p.stderr).toBe(0);
}

async function desktopToken(env: Record<string, string>, name: string): Promise<string> {
  const c = await cli(['desktop', 'create', name, '--image', 'win'], env);
  expect(c.code, c.stderr).toBe(0);
  const t = await cli(['desktop', 'token', name], env);
  expect(t.code, t.stderr).toBe(0);
  return t.stdout.trim();
}

const agent = (args: string[], server: string, token: string) => cli(['agent', ...args, '--server', server, '--json'], { DESKFUSE_TOKEN: token });

// The private engines start at once, beside the first cases (RGW takes ≈ 25 s), and are destroyed at the end.
let privatePg: Promise<Postgres> | undefined;
let privateRgw: Promise<Rgw> | undefined;

beforeAll(() => {
  tmp = tempDir('df-scale-out-');
  makeImages();
  privatePg = startPostgres();
  privateRgw = startRgw();
  // awaited (and their failures reported) by the second describe
  privatePg.catch(() => {});
  privateRgw.catch(() => {});
});
afterAll(async () => {
  await Promise.all(servers.map((s) => stopServer(s)));
  // DESKFUSE_E2E_LOGS=DIR keeps each server's log there (pino JSON lines)
  const keep = process.env.DESKFUSE_E2E_LOGS;
  if (keep) for (const s of servers) writeFileSync(path.join(keep, `scale-out-${s.name}-${s.port}.log`), s.log());
  await Promise.all([privatePg?.then((e) => e.destroy()).catch(() => {}), privateRgw?.then((e) => e.destroy()).catch(() => {})]);
  tmp?.cleanup();
}, 180_000);

// ---------------------------------------------------------------- A and B on the shared engines

describe('two servers on one PostgreSQL and one RGW', () => {
  let a: Server;
  let b: Server;
  let token: string;
  let meta: string;
  let store: string;
  let s3: RgwSettings;
  const asAdmin = (s: Server | string) => ({ DESKFUSE_SERVER: typeof s === 'string' ? s : s.url, DESKFUSE_TOKEN: token });

  beforeAll(async () => {
    const [db, rgw] = await Promise.all([sharedPostgres('scale-out'), sharedRgw('scale-out')]);
    meta = db.url;
    store = rgw.url();
    s3 = rgw;
    // Both at once on an empty database: one admin token is made (in one transaction), by one of them.
    [a, b] = await Promise.all([startServer('a', meta, store, s3), startServer('b', meta, store, s3)]);
    token = adminToken(a, b);
    const list = await cli(['token', 'list', '--json'], asAdmin(b));
    expect(list.code, list.stderr).toBe(0);
    expect(list.json.tokens.filter((t: { scope: string }) => t.scope === 'admin')).toHaveLength(1);
    await publish(asAdmin(a));
  }, 240_000);

  it('1. publish through A, agent sync through B: the disk is byte-exact', async () => {
    const t = await desktopToken(asAdmin(a), 'one');
    blankDisk('one.img');
    const s = await agent(['sync', '--disk', f('one.img'), '--desktop', 'one'], b.url, t);
    expect(s.code, s.stderr).toBe(0);
    expect(s.json).toMatchObject({ from: null, to: 2 });
    expect(imageSha(f('one.img'))).toBe(sha256(f('v2.img')));
    // B had nothing of the image in its own cache: it read the bucket A wrote
    expect(b.log()).toContain('/api/v1/chunks/fetch');
    // and exports what A published, byte-exact
    const e = await cli(['image', 'export', 'win@1', '--to', f('one-base.out')], asAdmin(b));
    expect(e.code, e.stderr).toBe(0);
    expect(sha256(f('one-base.out'))).toBe(sha256(f('base.img')));
  }, 120_000);

  it('2. a boot token issued by A is traded at B, once', async () => {
    const MAC = '52:54:00:11:00:01';
    const env = asAdmin(a);
    makeDisk(f('os.img'), 4 * MiB, [{ at: 0, data: prng(3)(256 * 1024) }]);
    const c = await cli(['image', 'create', 'os', '--from', f('os.img'), '--chunk-size', '64K', '--boot-partition', '1', '--boot-kernel', '/vmlinuz', '--boot-initrd', '/initrd.img', '--boot-cmdline', 'console=ttyS0'], env);
    expect(c.code, c.stderr).toBe(0);
    expect((await cli(['desktop', 'create', 'booted', '--image', 'os'], env)).code).toBe(0);

    const first = await http(a, 'GET', `/boot/ipxe?mac=${MAC}&platform=pcbios`);
    expect(first.status).toBe(200);
    expect(first.text).toContain('waiting for an admin to approve this endpoint');
    // approved through B: the endpoint A enrolled is in the shared database
    const ok = await http(b, 'POST', `/api/v1/endpoints/${MAC}/approve`, token, { desktop: 'booted' });
    expect(ok.status, ok.text).toBe(200);
    const script = await http(a, 'GET', `/boot/ipxe?mac=${MAC}&platform=pcbios`);
    expect(script.status).toBe(200);
    const bootToken = /deskfuse\.token=(\S+)/.exec(script.text)?.[1];
    expect(bootToken).toMatch(/^dfb_/);

    const traded = await http(b, 'POST', '/boot/session', undefined, { token: bootToken, mac: MAC, offer: proveEndpoint(newEndpointSecret(), MAC, bootToken!) });
    expect(traded.status, traded.text).toBe(200);
    expect(traded.body).toMatchObject({ desktop: 'booted', action: 'sync', provision: true });
    expect(traded.body.token).toEqual(expect.any(String));
    // the session token B issued works at A
    expect((await http(a, 'GET', '/api/v1/desktops/booted', traded.body.token)).status).toBe(200);
    const again = await http(a, 'POST', '/boot/session', undefined, { token: bootToken, mac: MAC });
    expect(again.status).toBe(401);
    expect(again.body.code).toBe('DF_ERR_BOOT_TOKEN_USED');
  }, 60_000);

  it('2b. a wrong token is 401 at both servers; a token revoked through A stops working at B within the 5 s token cache', async () => {
    for (const s of [a, b]) {
      const r = await http(s, 'GET', '/api/v1/images', 'dfa_not-a-real-token');
      expect(r.status).toBe(401);
      expect(r.body.code).toBe('DF_ERR_UNAUTHORIZED');
      const c = await cli(['image', 'list'], { DESKFUSE_SERVER: s.url, DESKFUSE_TOKEN: `${token}x` });
      expect(c.code).not.toBe(0);
      expect(c.stderr).toContain('DF_ERR_UNAUTHORIZED');
    }
    const t = await cli(['token', 'create', '--scope', 'admin'], asAdmin(a));
    expect(t.code, t.stderr).toBe(0);
    const second = t.stdout.trim();
    const id = /token ([0-9a-f]{16}) of scope admin/.exec(t.stderr)![1]!;
    expect((await http(b, 'GET', '/api/v1/images', second)).status).toBe(200); // B now remembers it
    const rv = await cli(['token', 'revoke', id], asAdmin(a));
    expect(rv.code, rv.stderr).toBe(0);
    let status = 200;
    for (const end = Date.now() + 15_000; status !== 401 && Date.now() < end; ) {
      status = (await http(b, 'GET', '/api/v1/images', second)).status;
      if (status !== 401) await sleep(250);
    }
    expect(status).toBe(401);
    expect((await http(b, 'GET', '/api/v1/images', token)).status).toBe(200); // the other admin token still works
  }, 60_000);

  it('3. a desktop lease taken through A is refused through B', async () => {
    const t = await desktopToken(asAdmin(b), 'solo');
    blankDisk('s1.img');
    blankDisk('s2.img');
    const held = await agent(['sync', '--disk', f('s1.img'), '--desktop', 'solo'], a.url, t);
    expect(held.code, held.stderr).toBe(0);
    const refused = await agent(['sync', '--disk', f('s2.img'), '--desktop', 'solo'], b.url, t);
    expect(refused.code).not.toBe(0);
    expect(refused.json.error.code).toBe('DF_ERR_LEASE_HELD');
    expect(refused.json.error.holder).toContain(f('s1.img'));
    expect(imageSha(f('s2.img'))).toBe(ZERO_SHA); // untouched
    // the same over plain HTTP: 409 naming A's holder
    const r = await http(b, 'POST', '/api/v1/desktops/solo/lease', t, { holder: 'someone-else', ttlSeconds: 60 });
    expect(r.status).toBe(409);
    expect(r.body).toMatchObject({ code: 'DF_ERR_LEASE_HELD', holder: expect.stringContaining(f('s1.img')) });
  }, 120_000);

  it('4. two commits on one parent at once, through A and through B: one fast-forward, one conflict, both byte-exact', async () => {
    const t = await desktopToken(asAdmin(a), 'duo');
    // one holder for both disks (a renewal, one fencing): the race is on the parent alone
    const holder = ['--holder', 'duo-shared'];
    blankDisk('da.img');
    blankDisk('db.img');
    const sa = await agent(['sync', '--disk', f('da.img'), '--desktop', 'duo', ...holder], a.url, t);
    const sb = await agent(['sync', '--disk', f('db.img'), '--desktop', 'duo', ...holder], b.url, t);
    expect([sa.code, sb.code], sa.stderr + sb.stderr).toEqual([0, 0]);
    expect(sa.json.to).toBe(2);
    expect(sb.json.to).toBe(2);
    for (const d of ['da.img', 'db.img']) expect((await agent(['handoff', '--disk', f(d)], a.url, t)).code).toBe(0);
    patch(f('da.img'), 3 * MiB, prng(41)(300_000));
    patch(f('db.img'), 50 * MiB + 777, prng(42)(300_000));
    expect(imageSha(f('da.img'))).not.toBe(imageSha(f('db.img')));

    const [ca, cb] = await Promise.all([
      agent(['commit', '--disk', f('da.img'), ...holder], a.url, t),
      agent(['commit', '--disk', f('db.img'), ...holder], b.url, t),
    ]);
    const byDisk = [{ r: ca, disk: 'da.img' }, { r: cb, disk: 'db.img' }];
    const won = byDisk.filter((x) => x.r.code === 0);
    const lost = byDisk.filter((x) => x.r.code === 3);
    expect(won, ca.stdout + ca.stderr + cb.stdout + cb.stderr).toHaveLength(1);
    expect(lost).toHaveLength(1);
    expect(won[0]!.r.json).toMatchObject({ committed: true, conflict: null, parent: 2, ref: 'desktops/duo' });
    // 'parent' when both reached the database before either was done; 'fencing' when the winner had
    // already released the lease (an agent releases it after its commit): a conflict either way
    expect(lost[0]!.r.json.conflict).toMatchObject({ reason: expect.stringMatching(/^(parent|fencing)$/), head: won[0]!.r.json.version });
    expect(lost[0]!.r.json.conflict.conflictRef).toMatch(/^conflicts\/desktops\/duo\//);
    expect(lost[0]!.r.json.version).not.toBe(won[0]!.r.json.version);
    // the desktop's head is the fast-forward, seen alike through both servers
    for (const s of [a, b]) expect((await http(s, 'GET', '/api/v1/desktops/duo', token)).body.head).toBe(won[0]!.r.json.version);

    // both versions export byte-exact, each through the server the other one committed to
    const ew = await cli(['image', 'export', `win@${won[0]!.r.json.version}`, '--to', f('won.out')], asAdmin(won[0]!.disk === 'da.img' ? b : a));
    const el = await cli(['image', 'export', `win@${lost[0]!.r.json.conflict.conflictRef}`, '--to', f('lost.out')], asAdmin(lost[0]!.disk === 'da.img' ? b : a));
    expect([ew.code, el.code], ew.stderr + el.stderr).toEqual([0, 0]);
    expect(sha256(f('won.out'))).toBe(imageSha(f(won[0]!.disk)));
    expect(sha256(f('lost.out'))).toBe(imageSha(f(lost[0]!.disk)));
  }, 180_000);

  it('5. kill -9 of A in the middle of a commit: the agent completes on B, one new version, byte-exact, store verify clean', async () => {
    const t = await desktopToken(asAdmin(a), 'crash');
    blankDisk('crash.img');
    const both = `${a.url},${b.url}`;
    const s = await agent(['sync', '--disk', f('crash.img'), '--desktop', 'crash'], both, t);
    expect(s.code, s.stderr).toBe(0);
    expect((await agent(['handoff', '--disk', f('crash.img')], both, t)).code).toBe(0);
    // a sizable change: 24 MiB of new data (two patch bodies of 16 MiB at most, hundreds of S3 PUTs)
    patch(f('crash.img'), 26 * MiB, prng(51)(14 * MiB));
    patch(f('crash.img'), 44 * MiB, prng(52)(10 * MiB));
    const before = (await cli(['image', 'show', 'win', '--json'], asAdmin(b))).json;

    const from = a.log().length;
    const fromB = b.log().length;
    const sinceCommit = () => a.log().slice(from);
    const commit = running(['agent', 'commit', '--disk', f('crash.img'), '--server', both, '--json'], { DESKFUSE_TOKEN: t });
    // A is receiving the upload (the first patch body): kill it there, before the commit call
    await until('A receives the commit upload', () => sinceCommit().includes('/api/v1/chunks/patch') || commit.finished());
    const midFlight = !commit.finished() && !sinceCommit().includes('/commits');
    await stopServer(a, 'SIGKILL');
    expect(midFlight, sinceCommit().slice(-2000)).toBe(true);
    expect(a.proc.signalCode).toBe('SIGKILL');

    const c = await commit.done;
    expect(c.code, c.stderr).toBe(0);
    expect(c.json).toMatchObject({ committed: true, conflict: null, parent: 2, ref: 'desktops/crash' });
    // it went on on B: B took the upload A died in, and the commit
    expect(b.log().slice(fromB)).toContain('/api/v1/chunks/patch');
    expect(b.log().slice(fromB)).toContain('/api/v1/desktops/crash/commits');
    expect(a.log().slice(from)).not.toContain('/api/v1/desktops/crash/commits');
    const after = (await cli(['image', 'show', 'win', '--json'], asAdmin(b))).json;
    expect(after.versions).toBe(before.versions + 1);
    expect((await http(b, 'GET', '/api/v1/desktops/crash', token)).body.head).toBe(c.json.version);
    const e = await cli(['image', 'export', `win@${c.json.version}`, '--to', f('crash.out')], asAdmin(b));
    expect(e.code, e.stderr).toBe(0);
    expect(sha256(f('crash.out'))).toBe(imageSha(f('crash.img')));

    const v = await cli(['store', 'verify', '--meta', meta, '--store', store, '--data', f('verify'), '--json'], { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey });
    expect(v.code, v.stdout + v.stderr).toBe(0);
    expect(v.json).toMatchObject({ ok: true });
  }, 180_000);
});

// ---------------------------------------------------------------- C and D on private engines

describe('two servers while their engines stop and start', () => {
  let pg: Postgres;
  let rgw: Rgw;
  let c: Server;
  let d: Server;
  let token: string;
  const asAdmin = (s: Server | string) => ({ DESKFUSE_SERVER: typeof s === 'string' ? s : s.url, DESKFUSE_TOKEN: token });

  beforeAll(async () => {
    [pg, rgw] = await Promise.all([privatePg!, privateRgw!]);
    const store = rgw.url('scale-out/');
    [c, d] = await Promise.all([startServer('c', pg.url, store, rgw), startServer('d', pg.url, store, rgw)]);
    token = adminToken(c, d);
    await publish(asAdmin(c));
  }, 300_000);
  afterAll(async () => {
    // before their engines go (the file's afterAll destroys those)
    for (const s of [c, d]) if (s) await stopServer(s);
  }, 60_000);

  it('6. radosgw stopped during a sync through D and started again: the sync completes byte-exact', async () => {
    const t = await desktopToken(asAdmin(c), 'rgw');
    blankDisk('rgw.img');
    const pids = await rgwCommand('pids', rgw.dir);
    const pid = Number(/^rgw\.local (\d+)$/m.exec(pids)?.[1]);
    expect(pid).toBeGreaterThan(0);

    const from = d.log().length;
    const sync = running(['agent', 'sync', '--disk', f('rgw.img'), '--desktop', 'rgw', '--server', d.url, '--json'], { DESKFUSE_TOKEN: t });
    // the agent has reached D (its lease): D has none of the image's chunks yet, they are all in the bucket
    await until('the agent takes its lease at D', () => d.log().slice(from).includes('/api/v1/desktops/rgw/lease') || sync.finished());
    process.kill(pid, 'SIGTERM');
    const stoppedMidSync = !sync.finished();
    await until('radosgw exits', () => {
      try {
        process.kill(pid, 0);
        return false;
      } catch {
        return true;
      }
    }, 30_000).catch(() => process.kill(pid, 'SIGKILL'));
    expect(stoppedMidSync).toBe(true);
    await sleep(10_000);
    expect(sync.finished()).toBe(false); // it waited for the bucket
    await rgwStart(rgw.dir); // radosgw alone: the mon and the OSD still run

    const s = await sync.done;
    expect(s.code, s.stderr).toBe(0);
    expect(s.json).toMatchObject({ from: null, to: 2 });
    expect(imageSha(f('rgw.img'))).toBe(sha256(f('v2.img')));
  }, 240_000);

  it('7. PostgreSQL restarted while both servers run: 503 coded errors during the outage, right answers after, no server restart', async () => {
    const t = await desktopToken(asAdmin(d), 'pg');
    const calls: Array<[string, string, unknown?]> = [
      ['GET', '/api/v1/images/win'],
      ['GET', '/api/v1/images/win/versions'],
      ['GET', '/api/v1/desktops/pg'],
      ['GET', '/api/v1/images/win/versions/2/index'],
      ['POST', '/api/v1/desktops/pg/lease', { holder: 'outage', ttlSeconds: 60 }],
    ];
    const before = new Map<string, string>();
    for (const [m, u] of calls.filter(([m]) => m === 'GET')) {
      const r = await http(c, m, u, token);
      expect(r.status, `${m} ${u}: ${r.text}`).toBe(200);
      before.set(u, r.sha);
    }

    await pg.stop();
    const codes = new Set<string>();
    for (const s of [c, d]) {
      for (const [m, u, body] of calls) {
        const r = await http(s, m, u, m === 'GET' ? token : t, body);
        if (r.status === 200) expect(r.sha, `${s.name} ${m} ${u} answered 200 during the outage: ${r.text.slice(0, 300)}`).toBe(before.get(u));
        else {
          expect(r.status, `${s.name} ${m} ${u}: ${r.text}`).toBe(503);
          expect(r.body.code).toMatch(/^DF_ERR_/);
          codes.add(r.body.code);
        }
      }
    }
    // the CLI says so, coded, having tried both servers
    const show = await cli(['image', 'show', 'win', '--json'], asAdmin(`${c.url},${d.url}`));
    expect(show.code).not.toBe(0);
    expect(show.json.error.code).toBe('DF_ERR_META_UNREACHABLE');
    expect([...codes]).toEqual(['DF_ERR_META_UNREACHABLE']);

    await pg.start();
    for (const s of [c, d]) {
      for (const u of before.keys()) {
        const r = await http(s, 'GET', u, token);
        expect(r.status, `${s.name} GET ${u} after the restart: ${r.text}`).toBe(200);
        expect(r.sha).toBe(before.get(u));
      }
    }
    // writes and a whole sync, through each server
    blankDisk('pg.img');
    const s = await agent(['sync', '--disk', f('pg.img'), '--desktop', 'pg'], d.url, t);
    expect(s.code, s.stderr).toBe(0);
    expect(imageSha(f('pg.img'))).toBe(sha256(f('v2.img')));
    const t2 = await desktopToken(asAdmin(c), 'pg2');
    blankDisk('pg2.img');
    const s2 = await agent(['sync', '--disk', f('pg2.img'), '--desktop', 'pg2'], c.url, t2);
    expect(s2.code, s2.stderr).toBe(0);
    expect(imageSha(f('pg2.img'))).toBe(sha256(f('v2.img')));

    // boot events cross servers again (LISTEN/NOTIFY): once D has its LISTEN connection back, an
    // endpoint enrolled at C shows in D's live stream
    await until('D listens again', () => d.log().includes('LISTEN connection to PostgreSQL restored'));
    const MAC = '52:54:00:77:00:07';
    const stream = new AbortController();
    const res = await fetch(`${d.url}/api/v1/events`, { headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' }, signal: stream.signal });
    expect(res.status).toBe(200);
    let seen = '';
    const reading = (async () => {
      try {
        for await (const piece of res.body as unknown as AsyncIterable<Uint8Array>) {
          seen += Buffer.from(piece).toString('utf8');
          if (seen.includes(MAC)) return;
        }
      } catch {
        /* aborted */
      }
    })();
    expect((await http(c, 'GET', `/boot/ipxe?mac=${MAC}&platform=pcbios`)).status).toBe(200);
    await until('the enrolment at C reaches D', () => seen.includes(MAC), 30_000).finally(() => stream.abort());
    await reading;
    const ev = seen.split('\n').filter((l) => l.startsWith('data: ') && l.includes(MAC)).map((l) => JSON.parse(l.slice(6)));
    expect(ev[0]).toMatchObject({ mac: MAC, phase: 'enrol' });
    expect(c.proc.exitCode).toBeNull();
    expect(d.proc.exitCode).toBeNull();
  }, 240_000);
});
