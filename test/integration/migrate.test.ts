import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openAppliance } from '../../server/appliance.js';
import { FsChunkStore } from '../../src/chunk/fs-store.js';
import { S3ChunkStore } from '../../src/chunk/s3-store.js';
import { parseS3Url } from '../../src/chunk/s3-url.js';
import { loadServerConfig } from '../../src/config/server.js';
import { openEngine } from '../../src/meta/engine.js';
import type { SqlEngine } from '../../src/meta/sql.js';
import { MIGRATED_TABLES } from '../../src/transfer/migrate.js';
import { baseDisk, makeDisk, patch, prng, sha256, textish } from '../helpers/disk.js';
import { sharedPostgres, sharedRgw, type SharedPostgres, type SharedRgw } from '../helpers/engines.js';
import { CLI, cli, freePort, startProcess, stopProcess, tempDir } from '../helpers/server.js';

/**
 * `deskfuse admin migrate` on real engines: a single-box install made the real way (a server process on
 * SQLite and the local store: images with versions, refs moved, a desktop with a lease, tokens, an
 * endpoint with boot events), stopped, moved to PostgreSQL 15 + Ceph RGW by the CLI, and a server
 * started on the destination with an empty data folder: every version exports the same bytes, the
 * source's tokens work, its rows are all there, and new commits number on. An interrupted run (kill -9
 * mid-copy) is carried on by running it again. Bad input changes nothing and says what is wrong.
 */
const KiB = 1024;
const MiB = 1024 * KiB;
const MAC = '52:54:00:6d:69:01';
let pgA: SharedPostgres;
let rgw: SharedRgw;
let tmp: ReturnType<typeof tempDir>;
const f = (n: string) => path.join(tmp.dir, n);
let src: string;
let admin: string;
let deskToken: string;
/** The source's answers to the CLI's read commands (JSON), before the migration. */
let before: Record<string, any>;
/** sha256 of every version exported from the source: `image@version` → digest. */
const exported: Record<string, string> = {};
const aws = () => ({ AWS_ACCESS_KEY_ID: rgw.accessKeyId, AWS_SECRET_ACCESS_KEY: rgw.secretAccessKey });
const VERSIONS = ['desk@1', 'desk@2', 'desk@3', 'bulk@1'];

/** The read commands whose answers must be the same after the move (token last-use times aside). */
async function views(env: Record<string, string>): Promise<Record<string, any>> {
  const j = async (args: string[]) => {
    const r = await cli([...args, '--json'], env);
    expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
    return r.json;
  };
  const tokens = (await j(['token', 'list'])).tokens.map((t: { id: string; scope: string; createdAt: string; expiresAt: string | null }) =>
    ({ id: t.id, scope: t.scope, createdAt: t.createdAt, expiresAt: t.expiresAt }));
  const endpoint = await j(['endpoint', 'show', 'pc-1']);
  return {
    images: await j(['image', 'list']),
    log: await j(['image', 'log', 'desk']),
    bulk: await j(['image', 'show', 'bulk']),
    refs: await j(['ref', 'list', 'desk']),
    reflog: await j(['ref', 'log', 'desk']),
    desktop: await j(['desktop', 'show', 'pc']),
    endpoint: { ...endpoint, lastSeen: undefined },
    events: await j(['endpoint', 'events', 'pc-1']),
    tokens,
  };
}

beforeAll(async () => {
  [pgA, rgw] = await Promise.all([sharedPostgres('migrate'), sharedRgw('migrate')]);
  tmp = tempDir('df-migrate-');
  src = f('src');
  const s = await startProcess(src);
  admin = s.token;
  try {
    const env = { DESKFUSE_SERVER: s.url, DESKFUSE_TOKEN: admin };
    const ok = async (args: string[]) => {
      const r = await cli(args, env);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
      return r;
    };
    const r = prng(11);
    baseDisk(f('base.img'), 7);
    copyFileSync(f('base.img'), f('v2.img'));
    patch(f('v2.img'), 5 * MiB + 100, textish(r, 300 * KiB));
    copyFileSync(f('v2.img'), f('v3.img'));
    patch(f('v3.img'), 12 * MiB, r(200 * KiB));
    // Enough chunks that a copy to the bucket takes a while (the interrupted run is killed mid-copy).
    makeDisk(f('bulk.img'), 12 * MiB, [{ at: 0, data: r(12 * MiB) }]);
    await ok(['image', 'create', 'desk', '--from', f('base.img'), '--chunk-size', '16K', '-m', 'first "quoted" message, ünïcödé']);
    await ok(['image', 'publish', 'desk', '--from', f('v2.img'), '-m', 'second']);
    await ok(['image', 'publish', 'desk', '--from', f('v3.img'), '--ref', 'test', '-m', 'third']);
    await ok(['ref', 'set', 'desk', 'main', '3', '--expect', '2', '--reason', 'promote test']);
    await ok(['image', 'create', 'bulk', '--from', f('bulk.img'), '--chunk-size', '8K']);
    await ok(['desktop', 'create', 'pc', '--image', 'desk']);
    const lease = await fetch(`${s.url}/api/v1/desktops/pc/lease`, {
      method: 'POST', headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' }, body: JSON.stringify({ holder: 'pc-1', ttlSeconds: 86400 }),
    });
    expect(lease.status).toBe(200);
    deskToken = (await ok(['token', 'create', '--scope', 'desktop:pc', '--json'])).json.token;
    await ok(['endpoint', 'add', MAC, '--desktop', 'pc', '--name', 'pc-1']);
    const script = await fetch(`${s.url}/boot/ipxe?mac=${MAC}&platform=efi`);
    expect(script.status).toBe(200);
    const ev = await fetch(`${s.url}/boot/events`, {
      method: 'POST', headers: { authorization: `Bearer ${deskToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({ mac: MAC, phase: 'synced', detail: { version: 3, seconds: 2.5, note: 'ünïcödé "q" \\ \n' } }),
    });
    expect(ev.status).toBe(201);
    // A commit request: endpoints.commit_requested holds epoch milliseconds (a BIGINT past 2^31).
    const order = await fetch(`${s.url}/boot/commit-request?mac=${MAC}`, { method: 'POST' });
    expect(await order.json()).toMatchObject({ action: 'commit-poweroff' });
    for (const v of VERSIONS) {
      await ok(['image', 'export', v, '--to', f(`src-${v}.img`)]);
      exported[v] = sha256(f(`src-${v}.img`));
    }
    expect(exported['desk@3']).toBe(sha256(f('v3.img')));
    expect(exported['bulk@1']).toBe(sha256(f('bulk.img')));
    before = await views(env);
    expect(before.desktop.lease).toMatchObject({ holder: 'pc-1' });
    expect(before.endpoint.commitRequested).toEqual(expect.any(String));
    expect(before.events.events.length).toBeGreaterThanOrEqual(2);
    expect(before.reflog.entries.length).toBeGreaterThanOrEqual(3);
  } finally {
    await stopProcess(s.proc);
  }
}, 300_000);

afterAll(() => {
  tmp?.cleanup();
});

const migrate = (to: { meta: string; store: string }, extra: string[] = [], env: Record<string, string> = aws()) =>
  cli(['admin', 'migrate', '--data', src, '--to-meta', to.meta, '--to-store', to.store, ...extra], env);

/** `deskfuse server` on PostgreSQL + S3 with a data folder of its own (no admin.token of its own: the source's works). */
async function startOn(meta: string, store: string, data: string): Promise<{ proc: ChildProcess; url: string }> {
  const port = await freePort();
  const proc = spawn(process.execPath, [CLI, 'server', '--data', data, '--meta', meta, '--store', store, '--listen', `127.0.0.1:${port}`, '--log-level', 'warn', '--nbd-listen', 'off'], {
    stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...aws() },
  });
  let stderr = '';
  proc.stderr!.on('data', (d) => (stderr += String(d)));
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 300; i++) {
    if (proc.exitCode !== null) throw new Error(`server exited with ${proc.exitCode}: ${stderr}`);
    try {
      if ((await fetch(`${url}/healthz`)).ok) return { proc, url };
    } catch {
      /* not up yet */
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  await stopProcess(proc);
  throw new Error(`server did not answer: ${stderr}`);
}

/** Every row of every table, values as text, sorted: engine-neutral (BIGINT is a string on PostgreSQL). */
async function dump(db: SqlEngine): Promise<Record<string, string[]>> {
  const out: Record<string, string[]> = {};
  for (const t of MIGRATED_TABLES) {
    out[t] = (await db.all(`SELECT * FROM ${t}`)).map((row) => JSON.stringify(Object.keys(row).sort().map((k) => [k, row[k] === null ? null : String(row[k])]))).sort();
  }
  return out;
}

async function sourceDump(): Promise<Record<string, string[]>> {
  const db = await openEngine(path.join(src, 'meta.sqlite'));
  try {
    return await dump(db);
  } finally {
    await db.close();
  }
}

async function listAll(store: { list(): AsyncIterable<string> }): Promise<string[]> {
  const ids: string[] = [];
  for await (const id of store.list()) ids.push(id);
  return ids.sort();
}
const s3 = (url: string, folder?: 'blobs') => new S3ChunkStore(parseS3Url(url), { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey }, { maxChunkSize: 1 << 30, ...(folder ? { folder } : {}) });

describe('deskfuse admin migrate', () => {
  it('moves the install: exit 0 and a summary; a server on the destination exports every version byte-exact, the tokens work, every row is there, new commits number on', async () => {
    const to = { meta: pgA.url, store: rgw.url('install/') };
    const m = await migrate(to);
    expect(m.code, m.stderr).toBe(0);
    expect(m.stdout).toMatch(/^OK: .* moved to PostgreSQL \+ S3 and verified/);
    expect(m.stdout).toMatch(/chunks\s+\d+ \(\d+ copied now\)/);
    expect(m.stdout).toContain('verified');
    expect(m.stdout).toContain(`--store ${to.store}`);
    // Progress a human can follow, one line per step, on stderr.
    expect(m.stderr).toContain('destination: empty');
    expect(m.stderr).toMatch(/chunks: \d+ in the source, 0 already in the destination, \d+ to copy/);
    expect(m.stderr).toMatch(/chunks: done, \d+ copied/);
    expect(m.stderr).toMatch(/layers\/indexes: done/);
    expect(m.stderr).toMatch(/rows: versions 4 \[/);
    expect(m.stderr).toMatch(/verify: \d+ rows equal on both sides/);
    expect(m.stderr).toContain('verify: 4/4 versions');
    for (const out of [m.stdout, m.stderr]) {
      expect(out).not.toContain(pgA.password);
      expect(out).not.toContain(rgw.secretAccessKey);
    }

    const srv = await startOn(to.meta, to.store, f('new'));
    try {
      const env = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: admin };
      // Every answer the same (the admin token of the source works: views() uses it).
      const after = await views(env);
      for (const k of ['images', 'log', 'bulk', 'refs', 'reflog', 'desktop', 'tokens', 'endpoint', 'events'] as const) expect(after[k], k).toEqual(before[k]);
      // The source's desktop token works too, and a new boot event is numbered after the copied ones.
      const asDesk = await fetch(`${srv.url}/boot/events`, {
        method: 'POST', headers: { authorization: `Bearer ${deskToken}`, 'content-type': 'application/json' }, body: JSON.stringify({ mac: MAC, phase: 'error', detail: { after: 'migrate' } }),
      });
      expect(asDesk.status, await asDesk.text()).toBe(201);
      const evs = (await cli(['endpoint', 'events', 'pc-1', '--json'], env)).json.events as Array<{ seq: number; phase: string }>;
      expect(evs.filter((e) => e.phase !== 'error')).toEqual(before.events.events);
      const newest = evs.find((e) => e.phase === 'error')!;
      expect(newest.seq).toBeGreaterThan(Math.max(...before.events.events.map((e: { seq: number }) => e.seq)));

      for (const v of VERSIONS) {
        const e = await cli(['image', 'export', v, '--to', f(`new-${v}.img`)], env);
        expect(e.code, e.stderr).toBe(0);
        expect(sha256(f(`new-${v}.img`)), v).toBe(exported[v]);
      }

      // New commits on the new server: version 4 after 3, the ref log and its seq carry on.
      copyFileSync(f('v3.img'), f('v4.img'));
      patch(f('v4.img'), 30 * MiB, prng(3)(100 * KiB));
      const p = await cli(['image', 'publish', 'desk', '--from', f('v4.img'), '--json'], env);
      expect(p.code, p.stderr).toBe(0);
      expect(p.json).toMatchObject({ version: 4, parent: 3, ref: 'main', conflict: null });
      const log = (await cli(['ref', 'log', 'desk', 'main', '--json'], env)).json.entries as Array<{ oldVersion: number | null; newVersion: number }>;
      expect(log.map((e) => [e.oldVersion, e.newVersion])).toEqual([[3, 4], [2, 3], [1, 2], [null, 1]]);
      const e4 = await cli(['image', 'export', 'desk@4', '--to', f('new-desk@4.img')], env);
      expect(e4.code, e4.stderr).toBe(0);
      expect(sha256(f('new-desk@4.img'))).toBe(sha256(f('v4.img')));
    } finally {
      await stopProcess(srv.proc);
    }
    const v = await cli(['store', 'verify', '--data', f('new'), '--meta', to.meta, '--store', to.store], aws());
    expect(v.code, v.stderr + v.stdout).toBe(0);
    expect(v.stdout).toMatch(/^OK: /);
  }, 300_000);

  it('an interrupted migration (kill -9 mid-copy) is carried on by running it again: it copies only the rest, to the same end state', async () => {
    const pgB = await sharedPostgres('migrate-resume');
    const to = { meta: pgB.url, store: rgw.url('resume/') };
    const proc = spawn(process.execPath, [CLI, 'admin', 'migrate', '--data', src, '--to-meta', to.meta, '--to-store', to.store], {
      stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...aws() },
    });
    const exited = new Promise<void>((r) => proc.once('exit', () => r()));
    const lines: string[] = [];
    let killedAt: { copied: number; todo: number } | undefined;
    for await (const line of createInterface({ input: proc.stderr! })) {
      lines.push(line);
      const m = /^chunks: (\d+)\/(\d+) copied/.exec(line);
      if (m) {
        proc.kill('SIGKILL');
        killedAt = { copied: Number(m[1]), todo: Number(m[2]) };
        break;
      }
    }
    await exited;
    expect(killedAt, lines.join('\n')).toBeDefined();
    expect(proc.signalCode).toBe('SIGKILL');

    const sourceChunks = await listAll(await FsChunkStore.open(path.join(src, 'chunks'), 4 * MiB));
    const chunks = s3(to.store);
    const present = (await listAll(chunks)).length;
    expect(present).toBeGreaterThanOrEqual(killedAt!.copied);
    expect(present).toBeLessThan(sourceChunks.length); // it was killed mid-copy

    const again = await migrate(to, ['--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.json).toMatchObject({ ok: true });
    expect(again.json.chunks).toEqual({ total: sourceChunks.length, present, copied: sourceChunks.length - present });
    expect(again.stderr).toContain(`chunks: ${sourceChunks.length} in the source, ${present} already in the destination, ${sourceChunks.length - present} to copy`);
    const third = await migrate(to, ['--json']);
    expect(third.code, third.stderr).toBe(0);
    expect(third.json.chunks).toEqual({ total: sourceChunks.length, present: sourceChunks.length, copied: 0 });
    expect(third.json.blobs.copied).toBe(0);
    expect(Object.values(third.json.rows as Record<string, { copied: number }>).every((r) => r.copied === 0)).toBe(true);
    expect(third.stderr).toMatch(/destination: \d+ rows of an earlier run of this migration: carrying on/);

    // The same end state: the source's rows, chunks, layers and indexes, exactly.
    const db = await openEngine(to.meta);
    try {
      expect(await dump(db)).toEqual(await sourceDump());
    } finally {
      await db.close();
    }
    expect(await listAll(chunks)).toEqual(sourceChunks);
    expect(await listAll(s3(to.store, 'blobs'))).toEqual(await listAll(await FsChunkStore.open(path.join(src, 'blobs'), 1 << 30)));
    const v = await cli(['store', 'verify', '--data', f('resume-data'), '--meta', to.meta, '--store', to.store], aws());
    expect(v.code, v.stderr + v.stdout).toBe(0);
  }, 300_000);
});

describe('bad input changes nothing and says what is wrong', () => {
  const srcState = () => ({ meta: sha256(path.join(src, 'meta.sqlite')) });
  const fresh = async (label: string) => ({ pg: await sharedPostgres(label), store: rgw.url(`${label}/`) });
  async function tablesIn(url: string): Promise<number> {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      return Number((await c.query("SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = 'public'")).rows[0].n);
    } finally {
      await c.end();
    }
  }
  const nothingIn = async (d: { pg: SharedPostgres; store: string }) => {
    expect(await tablesIn(d.pg.url)).toBe(0);
    expect(await listAll(s3(d.store))).toEqual([]);
    expect(await listAll(s3(d.store, 'blobs'))).toEqual([]);
  };

  it('help, a typo, missing options: usage and exit 0 or 2', async () => {
    const h = await cli(['admin', '--help']);
    expect(h.code).toBe(0);
    expect(h.stdout).toContain('deskfuse admin migrate [--data DIR]');
    const mh = await cli(['admin', 'migrate', '--help']);
    expect(mh.code).toBe(0);
    expect(mh.stdout).toContain('--to-meta postgres://');
    expect(mh.stdout).toContain('AWS_ACCESS_KEY_ID');
    const none = await cli(['admin']);
    expect(none.code).toBe(2);
    const typo = await cli(['admin', 'migrat', '--data', src]);
    expect(typo.code).toBe(2);
    expect(typo.stderr).toContain('DF_ERR_USAGE: unknown admin command "migrat" (did you mean migrate?)');
    const before = srcState();
    const d = await fresh('usage');
    const noMeta = await cli(['admin', 'migrate', '--data', src, '--to-store', d.store], aws());
    expect(noMeta.code).toBe(2);
    expect(noMeta.stderr).toContain('admin migrate needs --to-meta postgres://…');
    const noStore = await cli(['admin', 'migrate', '--data', src, '--to-meta', d.pg.url, '--json'], aws());
    expect(noStore.code).toBe(2);
    expect(noStore.json.error).toMatchObject({ code: 'DF_ERR_USAGE' });
    expect(noStore.json.error.message).toContain('--to-store s3://…');
    const neither = await cli(['admin', 'migrate', '--data', src]);
    expect(neither.stderr).toContain('needs --to-meta postgres://… and --to-store s3://…');
    const swapped = await cli(['admin', 'migrate', '--data', src, '--to-meta', d.store, '--to-store', d.pg.url], aws());
    expect(swapped.code).toBe(2);
    expect(swapped.stderr).toContain('--to-meta: expected postgres://');
    const noCreds = await migrate({ meta: d.pg.url, store: d.store }, [], {});
    expect(noCreds.code).toBe(1);
    expect(noCreds.stderr).toContain('AWS_SECRET_ACCESS_KEY');
    expect(srcState()).toEqual(before);
    await nothingIn(d);
  });

  it('a wrong PostgreSQL password: DF_ERR_META_DENIED, never the password', async () => {
    const before = srcState();
    const d = await fresh('denied');
    const wrong = `wr0ng-${Date.now()}`;
    const u = new URL(d.pg.url);
    u.password = wrong;
    const r = await migrate({ meta: u.toString(), store: d.store }, ['--json']);
    expect(r.code).toBe(1);
    expect(r.json.error.code).toBe('DF_ERR_META_DENIED');
    expect(r.stderr).toContain('DF_ERR_META_DENIED');
    expect(r.stdout + r.stderr).not.toContain(wrong);
    expect(r.stdout + r.stderr).not.toContain(d.pg.password);
    expect(srcState()).toEqual(before);
    await nothingIn(d);
  });

  it('a missing bucket: DF_ERR_S3_NO_BUCKET, and the database is left untouched', async () => {
    const before = srcState();
    const d = await fresh('nobucket');
    const r = await migrate({ meta: d.pg.url, store: d.store.replace(`s3://${rgw.bucket}/`, 's3://no-such-bucket-migrate/') });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('DF_ERR_S3_NO_BUCKET');
    expect(r.stderr).toContain('no-such-bucket-migrate');
    expect(srcState()).toEqual(before);
    await nothingIn(d);
  });

  it('--data without meta.sqlite: DF_ERR_FILE_UNREADABLE naming the folder', async () => {
    const d = await fresh('nodata');
    mkdirSync(f('empty'));
    const r = await cli(['admin', 'migrate', '--data', f('empty'), '--to-meta', d.pg.url, '--to-store', d.store], aws());
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('DF_ERR_FILE_UNREADABLE');
    expect(r.stderr).toContain(`${f('empty')} holds no deskfuse data (no meta.sqlite)`);
    await nothingIn(d);
  });

  it("a destination database with another install's data: refused before anything is copied (DF_ERR_MIGRATE_NOT_EMPTY), its rows unchanged", async () => {
    const d = await fresh('other');
    // Another install: a server that ran on that database (with a bucket prefix of its own).
    const other = await openAppliance(loadServerConfig({ flags: { data: f('other'), meta: d.pg.url, store: rgw.url('other-install/'), logLevel: 'silent' }, env: aws() }));
    await other.close();
    const rowsBefore = await (async () => {
      const db = await openEngine(d.pg.url);
      try {
        return await dump(db);
      } finally {
        await db.close();
      }
    })();
    expect(rowsBefore.tokens).toHaveLength(1);
    const before = srcState();
    const r = await migrate({ meta: d.pg.url, store: d.store }, ['--json']);
    expect(r.code).toBe(1);
    expect(r.json.error).toMatchObject({ code: 'DF_ERR_MIGRATE_NOT_EMPTY', rows: 1 });
    expect(r.stderr).toContain('the destination database holds 1 row(s) that are not this install\'s (tokens');
    expect(r.stderr).toContain('Nothing was copied: migrate into an empty database');
    expect(srcState()).toEqual(before);
    expect(await listAll(s3(d.store))).toEqual([]);
    expect(await listAll(s3(d.store, 'blobs'))).toEqual([]);
    const db = await openEngine(d.pg.url);
    try {
      expect(await dump(db)).toEqual(rowsBefore);
    } finally {
      await db.close();
    }
  });
});
