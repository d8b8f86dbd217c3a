import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { engineContract } from '../../src/meta/engine-contract.js';
import { openEngine } from '../../src/meta/engine.js';
import { PgEngine } from '../../src/meta/pg-engine.js';
import type { SqlEngine } from '../../src/meta/sql.js';
import { sharedPostgres } from '../helpers/engines.js';
import { rejection } from '../helpers/expect.js';
import { startPostgres, type Postgres } from '../helpers/postgres.js';

// PgEngine on a real PostgreSQL 15 (scripts/engines/postgres.sh): the engine contract on the run's
// shared cluster (a fresh database per test), then what only a networked engine has: credentials,
// reachability, and the server restarting under an open engine (on a cluster of this file's own).

engineContract('PostgreSQL 15', async () => {
  const db = await sharedPostgres('contract');
  return { engine: await PgEngine.open(db.url), another: () => PgEngine.open(db.url) };
});

/** A loopback port nothing listens on (bound, then closed). */
async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

describe('PgEngine: opening', () => {
  it('a wrong password is DF_ERR_META_DENIED at open, never showing a password', async () => {
    const db = await sharedPostgres('denied');
    const u = new URL(db.url);
    u.password = 'wrong-secret-123';
    const err = await rejection(openEngine(u.toString()));
    expect(err.code).toBe('DF_ERR_META_DENIED');
    expect(err.fields).toMatchObject({ host: '127.0.0.1', port: db.port, user: db.user });
    const all = JSON.stringify({ m: err.message, f: err.fields, c: String(err.cause) });
    expect(all).not.toContain('wrong-secret-123');
    expect(all).not.toContain(db.password);
  });

  it('an unknown role is DF_ERR_META_DENIED too', async () => {
    const db = await sharedPostgres('role');
    const u = new URL(db.url);
    u.username = 'nobody';
    expect((await rejection(openEngine(u.toString()))).code).toBe('DF_ERR_META_DENIED');
  });

  it('a closed port is DF_ERR_META_UNREACHABLE naming host:port', async () => {
    const port = await closedPort();
    const err = await rejection(openEngine(`postgres://deskfuse:secret-pw@127.0.0.1:${port}/deskfuse`));
    expect(err.code).toBe('DF_ERR_META_UNREACHABLE');
    expect(err.message).toContain(`127.0.0.1:${port}`);
    expect(err.message).not.toContain('secret-pw');
    expect(err.fields).toMatchObject({ host: '127.0.0.1', port });
  });

  it('a missing database is DF_ERR_META_UNREACHABLE naming the database', async () => {
    const db = await sharedPostgres('missing');
    const u = new URL(db.url);
    u.pathname = '/no_such_db';
    const err = await rejection(openEngine(u.toString()));
    expect(err.code).toBe('DF_ERR_META_UNREACHABLE');
    expect(err.message).toContain('"no_such_db"');
    expect(err.fields).toMatchObject({ database: 'no_such_db', sqlstate: '3D000' });
  });

  it('openEngine picks the engine from the spec', async () => {
    const db = await sharedPostgres('open');
    const pgEngine = await openEngine(db.url.replace(/^postgres:/, 'postgresql:'));
    try {
      expect(pgEngine.dialect).toBe('postgres');
      expect(await pgEngine.get('SELECT current_database() AS d')).toEqual({ d: db.database });
    } finally {
      await pgEngine.close();
    }
    const file = path.join(os.tmpdir(), `deskfuse-open-${process.pid}-${Date.now()}.sqlite`);
    for (const spec of [file, `sqlite:${file}`]) {
      const e = await openEngine(spec);
      try {
        expect(e.dialect).toBe('sqlite');
        expect(await e.get('SELECT 1 AS one')).toEqual({ one: 1 });
      } finally {
        await e.close();
      }
    }
    await import('node:fs/promises').then((fs) => Promise.all(['', '-wal', '-shm'].map((x) => fs.rm(file + x, { force: true }))));
  });
});

describe('PgEngine: transactions', () => {
  it('a serialization failure reruns fn (which then sees the winner) and ends exact; with one attempt allowed it is DF_ERR_META 40001', async () => {
    const db = await sharedPostgres('retry');
    const a = await PgEngine.open(db.url);
    const strict = await PgEngine.open(db.url, { txAttempts: 1 });
    const b = await PgEngine.open(db.url);
    try {
      await a.run('CREATE TABLE counter (id INTEGER PRIMARY KEY, n BIGINT NOT NULL)');
      await a.run('INSERT INTO counter (id, n) VALUES (1, 0)');
      // fn reads, then another engine commits an increment, then fn writes from its stale read
      const conflicted = (e: SqlEngine, interfere: () => boolean) =>
        e.tx(async (q) => {
          const n = Number((await q.get('SELECT n FROM counter WHERE id = 1'))!.n);
          if (interfere()) await b.run('UPDATE counter SET n = n + 1 WHERE id = 1');
          await q.run('UPDATE counter SET n = ? WHERE id = 1', [n + 1]);
          return n + 1;
        });
      let attempts = 0;
      expect(await conflicted(a, () => ++attempts === 1)).toBe(2);
      expect(attempts).toBe(2);
      expect(Number((await a.get('SELECT n FROM counter WHERE id = 1'))!.n)).toBe(2);

      const err = await rejection(conflicted(strict, () => true));
      expect(err).toMatchObject({ code: 'DF_ERR_META', fields: { attempts: 1, sqlstate: '40001' } });
      expect(Number((await a.get('SELECT n FROM counter WHERE id = 1'))!.n)).toBe(3); // only b's increment
    } finally {
      await Promise.all([a.close(), strict.close(), b.close()]);
    }
  });

  it('a genuine duplicate (a unique violation no re-read explains) fails with its own error after 3 attempts, not 30', async () => {
    const db = await sharedPostgres('dup');
    const e = await PgEngine.open(db.url);
    try {
      await e.run('CREATE TABLE names (name TEXT PRIMARY KEY)');
      await e.run("INSERT INTO names (name) VALUES ('a')");
      let attempts = 0;
      const err = await rejection(e.tx(async (q) => {
        attempts++;
        await q.run("INSERT INTO names (name) VALUES ('a')");
      }));
      expect(err).toMatchObject({ code: 'DF_ERR_META', fields: { sqlstate: '23505' } });
      expect(attempts).toBe(3);
      expect(Number((await e.get('SELECT COUNT(*) AS n FROM names'))!.n)).toBe(1);
    } finally {
      await e.close();
    }
  });

  it('a failing statement is DF_ERR_META with its SQLSTATE and cause', async () => {
    const db = await sharedPostgres('bad-sql');
    const e = await PgEngine.open(db.url);
    try {
      const err = await rejection(e.all('SELECT * FROM no_such_table WHERE id = ?', [1]));
      expect(err).toMatchObject({ code: 'DF_ERR_META', fields: { sqlstate: '42P01' } });
      expect(err.message).toContain('no_such_table');
      expect(err.cause).toBeInstanceOf(Error);
    } finally {
      await e.close();
    }
  });
});

describe('PgEngine: the server restarting under an open engine', () => {
  let cluster: Postgres;
  beforeAll(async () => {
    cluster = await startPostgres();
  }, 120_000);
  afterAll(async () => {
    await cluster?.destroy();
  }, 120_000);

  it('queries fail DF_ERR_META_UNREACHABLE while it is down (no crash) and work again after; LISTEN resumes', async () => {
    const engine = await PgEngine.open(cluster.url);
    const sender = await PgEngine.open(cluster.url);
    try {
      await engine.run('CREATE TABLE t (id INTEGER PRIMARY KEY)');
      await engine.run('INSERT INTO t (id) VALUES (1)');
      const seen: string[] = [];
      let wake: () => void = () => {};
      await engine.listen('df_restart', (p) => {
        seen.push(p);
        wake();
      });
      const next = (pred: (p: string) => boolean) =>
        new Promise<string>((resolve) => {
          wake = () => {
            const p = seen.find(pred);
            if (p) resolve(p);
          };
          wake();
        });
      const before = next((p) => p === 'before');
      await sender.notify('df_restart', 'before');
      await before;

      // a transaction open while the server stops fails coded, and does not crash the process
      const midTx = engine.tx(async (q) => {
        await q.get('SELECT id FROM t');
        await cluster.stop();
        return q.get('SELECT id FROM t');
      });
      expect((await rejection(midTx)).code).toBe('DF_ERR_META_UNREACHABLE');

      for (const p of [engine.get('SELECT 1 AS one'), engine.run('INSERT INTO t (id) VALUES (2)'), engine.tx((q) => q.all('SELECT id FROM t')), sender.notify('df_restart', 'lost')]) {
        const err = await rejection(p);
        expect(err.code).toBe('DF_ERR_META_UNREACHABLE');
        expect(err.message).toContain(`127.0.0.1:${cluster.port}`);
        expect(err.message).not.toContain(cluster.password);
      }

      await cluster.start();
      expect(await engine.get('SELECT 1 AS one')).toEqual({ one: 1 });
      expect(await engine.run('INSERT INTO t (id) VALUES (2)')).toBe(1);
      expect(await engine.tx((q) => q.all('SELECT id FROM t ORDER BY id'))).toEqual([{ id: 1 }, { id: 2 }]);

      // LISTEN comes back on its own: notify until the re-established listener hears one
      const resumed = next((p) => p.startsWith('after-'));
      let i = 0;
      let heard = false;
      void resumed.then(() => (heard = true));
      while (!heard) {
        await sender.notify('df_restart', `after-${i++}`);
        await Promise.race([resumed, new Promise((r) => setTimeout(r, 100))]);
      }
      expect(await resumed).toMatch(/^after-\d+$/);
      expect(seen).not.toContain('lost');
    } finally {
      await Promise.all([engine.close(), sender.close()]);
    }
  }, 120_000);

  it('an engine opened while the server is down fails DF_ERR_META_UNREACHABLE, and opens once it is back', async () => {
    await cluster.stop();
    try {
      expect((await rejection(PgEngine.open(cluster.url))).code).toBe('DF_ERR_META_UNREACHABLE');
    } finally {
      await cluster.start();
    }
    const e = await PgEngine.open(cluster.url);
    expect(await e.get('SELECT 2 AS two')).toEqual({ two: 2 });
    await e.close();
  }, 60_000);
});
