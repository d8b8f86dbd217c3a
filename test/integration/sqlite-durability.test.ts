import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SqliteEngine } from '../../src/meta/sqlite-engine.js';

// The SQLite engine's group commit: commits share one fdatasync of the WAL, and nobody hears of a
// commit (or reads one) before that sync.

const dirs: string[] = [];
const tmp = () => {
  const d = mkdtempSync(path.join(os.tmpdir(), 'df-durable-'));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('SqliteEngine durability', () => {
  it('concurrent commits share syncs; each is answered after one; reads with nothing pending sync nothing', async () => {
    const db = new SqliteEngine(path.join(tmp(), 'meta.sqlite'));
    await db.run('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
    expect((await db.all('PRAGMA synchronous'))[0]).toEqual({ synchronous: 1 }); // NORMAL: the engine syncs the WAL itself
    const s0 = db.durability.syncs;
    await db.run('INSERT INTO t (v) VALUES (?)', ['one']);
    expect(db.durability.syncs).toBe(s0 + 1); // a lone commit: one sync before its answer

    const s1 = db.durability.syncs;
    const n = 64;
    await Promise.all(Array.from({ length: n }, (_, i) => i % 2
      ? db.run('INSERT INTO t (v) VALUES (?)', [`r${i}`])
      : db.tx(async (q) => q.run('INSERT INTO t (v) VALUES (?)', [`t${i}`]))));
    const shared = db.durability.syncs - s1;
    expect(shared).toBeGreaterThanOrEqual(1);
    expect(shared).toBeLessThan(n / 4); // grouped: a sync covers every commit written before it starts

    const s2 = db.durability.syncs;
    expect((await db.get('SELECT COUNT(*) AS n FROM t'))?.n).toBe(n + 1);
    await db.all('SELECT v FROM t');
    expect(db.durability.syncs).toBe(s2); // nothing pending: reads cost no sync

    // A read issued while a commit waits for its sync waits for that sync too (it may have seen the row).
    let committed = false;
    const w = db.run('INSERT INTO t (v) VALUES (?)', ['late']).then(() => { committed = true; });
    const r = await db.get('SELECT v FROM t WHERE v = ?', ['late']);
    expect(r).toEqual({ v: 'late' });
    expect(db.durability.syncs).toBe(s2 + 1);
    await w;
    expect(committed).toBe(true);
    await db.close();
  });

  it('a commit that was answered survives a kill -9 of its process', async () => {
    const file = path.join(tmp(), 'meta.sqlite');
    const engine = new URL('../../dist/src/meta/sqlite-engine.js', import.meta.url).pathname; // npm test builds dist first
    // The child commits rows one by one and says "acked N" after each answer; it is killed mid-way.
    const child = spawn(process.execPath, ['--input-type=module', '-e', `
      const { SqliteEngine } = await import(${JSON.stringify(engine)});
      const db = new SqliteEngine(${JSON.stringify(file)});
      await db.run('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY)');
      for (let i = 1; ; i++) { await db.tx(async (q) => q.run('INSERT INTO t (id) VALUES (?)', [i])); process.stdout.write('acked ' + i + '\\n'); }
    `], { stdio: ['ignore', 'pipe', 'inherit'] });
    let acked = 0;
    await new Promise<void>((resolve) => {
      child.stdout.on('data', (b: Buffer) => {
        for (const m of b.toString().matchAll(/acked (\d+)/g)) acked = Math.max(acked, Number(m[1]));
        if (acked >= 40 && !child.killed) child.kill('SIGKILL');
      });
      child.on('exit', () => resolve());
    });
    expect(acked).toBeGreaterThanOrEqual(40);
    const db = new SqliteEngine(file);
    const rows = (await db.all('SELECT id FROM t ORDER BY id')).map((r) => Number(r.id));
    expect(rows.length).toBeGreaterThanOrEqual(acked); // every answered commit is there (a later one may be too)
    expect(rows.slice(0, acked)).toEqual(Array.from({ length: acked }, (_, i) => i + 1));
    await db.close();
  });
});
