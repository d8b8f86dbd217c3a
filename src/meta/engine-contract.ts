import { afterEach, describe, expect, it } from 'vitest';
import { DeskfuseError, dfError } from '../errors.js';
import type { Migration, SqlEngine } from './sql.js';

/**
 * The engine contract: the same tests for every SqlEngine (SQLite in engine-contract-sqlite.test.ts,
 * PostgreSQL 15 in test/integration/pg-engine.test.ts), so repositories written once over sql.ts get
 * the same answers on both. Test-only code (imports vitest; kept out of dist by tsconfig.build.json).
 */
export interface EngineSubject {
  /** An engine on a fresh, empty database. */
  engine: SqlEngine;
  /**
   * A second engine on the same database: another server (PostgreSQL: its own pool); on SQLite, the
   * one-server engine, another caller of the same connection. Closed by the suite.
   */
  another(): Promise<SqlEngine>;
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => {
      throw new Error('expected a rejection');
    },
    (e: unknown) => e,
  );
}

/** Resolves with the first payload `pred` accepts on `channel`. */
function received(engine: SqlEngine, channel: string, pred: (payload: string) => boolean = () => true) {
  let resolve!: (p: string) => void;
  const got = new Promise<string>((r) => (resolve = r));
  const seen: string[] = [];
  const subscribed = engine.listen(channel, (payload) => {
    seen.push(payload);
    if (pred(payload)) resolve(payload);
  });
  return { got, seen, subscribed };
}

const trail = (id: number, name: string): Migration => ({
  id,
  name,
  up: async (q) => {
    if (id === 1) await q.run('CREATE TABLE trail (seq INTEGER PRIMARY KEY, migration INTEGER NOT NULL)');
    const n = Number((await q.get('SELECT COUNT(*) AS n FROM trail'))!.n);
    await q.run('INSERT INTO trail (seq, migration) VALUES (?, ?)', [n + 1, id]);
  },
});

export function engineContract(name: string, open: () => Promise<EngineSubject>): void {
  describe(`SqlEngine contract: ${name}`, () => {
    const opened: SqlEngine[] = [];
    afterEach(async () => {
      await Promise.all(opened.splice(0).map((e) => e.close()));
    });
    const subject = async (): Promise<EngineSubject> => {
      const s = await open();
      opened.push(s.engine);
      return {
        engine: s.engine,
        another: async () => {
          const e = await s.another();
          opened.push(e);
          return e;
        },
      };
    };

    it('binds ? placeholders in order and round-trips text, integers past 2^31, floats and NULL', async () => {
      const { engine } = await subject();
      await engine.run('CREATE TABLE vals (id INTEGER PRIMARY KEY, big BIGINT, s TEXT, f DOUBLE PRECISION, n TEXT)');
      const big = 2 ** 40 + 3;
      const text = "it's ünïcode ✓ — \"quoted\", 'single', back\\slash, \u0001 and 日本語";
      expect(await engine.run('INSERT INTO vals (id, big, s, f, n) VALUES (?, ?, ?, ?, ?)', [1, big, text, 1.5, null])).toBe(1);
      expect(await engine.run('INSERT INTO vals (id, big, s, f, n) VALUES (?, ?, ?, ?, ?)', [2, -(2 ** 33), '', -0.25, 'x'])).toBe(1);
      const row = await engine.get('SELECT id, big, s, f, n FROM vals WHERE big = ? AND s = ?', [big, text]);
      expect(row).toBeDefined();
      expect(Number(row!.id)).toBe(1);
      expect(Number(row!.big)).toBe(big);
      expect(row!.s).toBe(text);
      expect(Number(row!.f)).toBe(1.5);
      expect(row!.n).toBeNull();
      const rows = await engine.all('SELECT id, big, s FROM vals WHERE id >= ? AND id <= ? ORDER BY id DESC', [1, 2]);
      expect(rows.map((r) => [Number(r.id), Number(r.big), r.s])).toEqual([
        [2, -(2 ** 33), ''],
        [1, big, text],
      ]);
      expect(await engine.get('SELECT id FROM vals WHERE id = ?', [3])).toBeUndefined();
      expect(await engine.all('SELECT id FROM vals WHERE s = ?', ['nothing'])).toEqual([]);
      // arithmetic on BIGINT past 2^31 stays exact (2^53 is the JS limit the mappers live with)
      const sum = await engine.get('SELECT SUM(big) AS total, COUNT(*) AS n FROM vals');
      expect(Number(sum!.total)).toBe(big - 2 ** 33);
      expect(Number(sum!.n)).toBe(2);
    });

    it('run() resolves to the number of rows changed; RETURNING reads back through get()', async () => {
      const { engine } = await subject();
      await engine.run('CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL)');
      for (const [k, v] of [['a', 1], ['b', 2], ['c', 3]] as const) expect(await engine.run('INSERT INTO kv (k, v) VALUES (?, ?)', [k, v])).toBe(1);
      expect(await engine.run('UPDATE kv SET v = v + 10 WHERE v >= ?', [2])).toBe(2);
      expect(await engine.run('DELETE FROM kv WHERE k = ?', ['zz'])).toBe(0);
      expect(await engine.run('INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO NOTHING', ['a', 99])).toBe(0);
      expect(await engine.run('INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v', ['a', 7])).toBe(1);
      const ret = await engine.get('UPDATE kv SET v = v * 2 WHERE k = ? RETURNING k, v', ['a']);
      expect(ret).toEqual({ k: 'a', v: 14 });
      expect(await engine.run('DELETE FROM kv')).toBe(3);
    });

    it('tx commits what fn did and answers its result; a throw rolls everything back and rejects with that error', async () => {
      const { engine, another } = await subject();
      await engine.run('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)');
      expect(
        await engine.tx(async (q) => {
          await q.run('INSERT INTO t (id, v) VALUES (?, ?)', [1, 'one']);
          expect(await q.get('SELECT v FROM t WHERE id = ?', [1])).toEqual({ v: 'one' }); // its own writes
          return 'done';
        }),
      ).toBe('done');
      const other = await another();
      expect(await other.all('SELECT id, v FROM t')).toEqual([{ id: 1, v: 'one' }]);

      const boom = new Error('boom');
      expect(
        await rejection(
          engine.tx(async (q) => {
            await q.run('INSERT INTO t (id, v) VALUES (?, ?)', [2, 'two']);
            await q.run('UPDATE t SET v = ? WHERE id = ?', ['changed', 1]);
            throw boom;
          }),
        ),
      ).toBe(boom);
      // a coded error of a repository passes through unchanged
      const coded = await rejection(
        engine.tx(async (q) => {
          await q.run('DELETE FROM t');
          throw dfError('DF_ERR_CONFLICT', 'lost the race', { ref: 'main' });
        }),
      );
      expect(coded).toBeInstanceOf(DeskfuseError);
      expect(coded).toMatchObject({ code: 'DF_ERR_CONFLICT', fields: { ref: 'main' } });
      expect(await other.all('SELECT id, v FROM t')).toEqual([{ id: 1, v: 'one' }]);
      expect(await engine.all('SELECT id, v FROM t')).toEqual([{ id: 1, v: 'one' }]);
    });

    it('many concurrent read-modify-write transactions on one counter, from two engines, end exact', async () => {
      const { engine, another } = await subject();
      const other = await another();
      await engine.run('CREATE TABLE counter (id INTEGER PRIMARY KEY, n BIGINT NOT NULL)');
      await engine.run('INSERT INTO counter (id, n) VALUES (1, ?)', [2 ** 32]);
      const N = 24;
      const bump = (e: SqlEngine) =>
        e.tx(async (q) => {
          const row = await q.get('SELECT n FROM counter WHERE id = ?', [1]);
          await q.run('UPDATE counter SET n = ? WHERE id = ?', [Number(row!.n) + 1, 1]);
          return Number(row!.n) + 1;
        });
      const results = await Promise.all(Array.from({ length: N }, (_, i) => bump(i % 2 ? other : engine)));
      // every transaction saw a distinct value: none overwrote another's increment
      expect(new Set(results).size).toBe(N);
      expect(Number((await engine.get('SELECT n FROM counter WHERE id = 1'))!.n)).toBe(2 ** 32 + N);
    });

    it('insert-if-absent raced from two engines inserts once; every caller gets an answer', async () => {
      const { engine, another } = await subject();
      const other = await another();
      await engine.run('CREATE TABLE names (name TEXT PRIMARY KEY, owner INTEGER NOT NULL)');
      const take = (e: SqlEngine, who: number) =>
        e.tx(async (q) => {
          const row = await q.get('SELECT owner FROM names WHERE name = ?', ['win11']);
          if (row) return false;
          await q.run('INSERT INTO names (name, owner) VALUES (?, ?)', ['win11', who]);
          return true;
        });
      const won = await Promise.all(Array.from({ length: 10 }, (_, i) => take(i % 2 ? other : engine, i)));
      expect(won.filter(Boolean)).toHaveLength(1);
      const owner = Number((await engine.get('SELECT owner FROM names WHERE name = ?', ['win11']))!.owner);
      expect(won[owner]).toBe(true);
    });

    it('migrate applies each migration once, in id order, even when two engines migrate at once', async () => {
      const { engine, another } = await subject();
      const other = await another();
      const ms = [trail(3, 'three'), trail(1, 'one'), trail(2, 'two')];
      const [a, b] = await Promise.all([engine.migrate(ms), other.migrate(ms)]);
      expect([...a!, ...b!].sort()).toEqual([1, 2, 3]);
      expect(await engine.all('SELECT seq, migration FROM trail ORDER BY seq')).toEqual([
        { seq: 1, migration: 1 },
        { seq: 2, migration: 2 },
        { seq: 3, migration: 3 },
      ]);
      expect((await engine.all('SELECT id, name FROM schema_migrations ORDER BY id')).map((r) => [Number(r.id), r.name])).toEqual([
        [1, 'one'],
        [2, 'two'],
        [3, 'three'],
      ]);
      expect(await other.migrate(ms)).toEqual([]);
      // a later migration is applied alone
      expect(await engine.migrate([...ms, trail(4, 'four')])).toEqual([4]);
      expect((await engine.all('SELECT migration FROM trail ORDER BY seq')).map((r) => Number(r.migration))).toEqual([1, 2, 3, 4]);
    });

    it('a migration that fails leaves nothing of itself and is applied again next time', async () => {
      const { engine } = await subject();
      let fail = true;
      const flaky: Migration = {
        id: 2,
        name: 'flaky',
        up: async (q) => {
          await q.run('INSERT INTO trail (seq, migration) VALUES (?, ?)', [100, 2]);
          if (fail) throw new Error('migration 2 broke');
        },
      };
      expect(((await rejection(engine.migrate([trail(1, 'one'), flaky]))) as Error).message).toContain('migration 2 broke');
      expect(await engine.all('SELECT migration FROM trail ORDER BY seq')).toEqual([{ migration: 1 }]);
      fail = false;
      expect(await engine.migrate([trail(1, 'one'), flaky])).toEqual([2]);
    });

    it('a database with a migration this server does not know is DF_ERR_META_SCHEMA, naming it', async () => {
      const { engine, another } = await subject();
      await engine.migrate([trail(1, 'one'), trail(2, 'two'), trail(7, 'seven')]);
      const older = await another();
      const err = await rejection(older.migrate([trail(1, 'one'), trail(2, 'two')]));
      expect(err).toBeInstanceOf(DeskfuseError);
      expect(err).toMatchObject({ code: 'DF_ERR_META_SCHEMA', fields: { unknown: [7] } });
      expect((err as Error).message).toContain('7');
    });

    it('notify reaches the listeners of another engine; unsubscribing stops delivery', async () => {
      const { engine, another } = await subject();
      const other = await another();
      const payload = `{"mac":"52:54:00:12:34:56","note":"it's ✓"}`;
      const a = received(engine, 'df_events');
      const mine = received(other, 'df_events');
      const unsubscribe = await a.subscribed;
      await mine.subscribed;
      await other.notify('df_events', payload);
      expect(await a.got).toBe(payload);
      expect(await mine.got).toBe(payload); // the sender's own listeners too
      await unsubscribe();
      // after the unsubscribe, a later marker on another channel arrives; the event before it did not
      const markers = [received(engine, 'df_marker'), received(other, 'df_marker')];
      await Promise.all(markers.map((m) => m.subscribed));
      await other.notify('df_events', 'after unsubscribe');
      await other.notify('df_marker', 'end');
      expect(await Promise.all(markers.map((m) => m.got))).toEqual(['end', 'end']);
      expect(a.seen).toEqual([payload]);
      expect(mine.seen).toEqual([payload, 'after unsubscribe']); // still subscribed
    });
  });
}
