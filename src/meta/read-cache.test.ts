import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readTables, writtenTable } from './read-cache.js';
import { SqliteEngine } from './sqlite-engine.js';

describe('which statements the SQLite read cache remembers', () => {
  it('catalog SELECTs (CTE names aside); not other tables, not time or randomness', () => {
    expect(readTables('SELECT * FROM images WHERE name = ?')).toEqual(['images']);
    expect(readTables('SELECT v.* FROM versions v JOIN refs r ON r.version = v.version WHERE r.image = ?')?.sort()).toEqual(['refs', 'versions']);
    expect(readTables(`WITH RECURSIVE reach(v) AS (SELECT version FROM versions WHERE image = ? AND version IN (?) UNION
      SELECT p.parent FROM versions p JOIN reach r ON p.version = r.v WHERE p.image = ?) SELECT 1 AS x FROM reach WHERE v = ?`)).toEqual(['versions']);
    expect(readTables('SELECT * FROM boot_events WHERE endpoint = ?')).toBeUndefined();
    expect(readTables('SELECT * FROM images JOIN tokens ON 1')).toBeUndefined();
    expect(readTables("SELECT * FROM leases WHERE expires_at > datetime('now')")).toBeUndefined();
    expect(readTables('INSERT INTO images (name) VALUES (?) RETURNING *')).toBeUndefined();
  });

  it('writes name their table; what cannot be told is undefined (everything forgotten)', () => {
    expect(writtenTable('SELECT * FROM images')).toBeNull();
    expect(writtenTable('INSERT INTO refs (image) VALUES (?) ON CONFLICT (image, name) DO UPDATE SET version = excluded.version')).toBe('refs');
    expect(writtenTable('  update versions SET kind = ?')).toBe('versions');
    expect(writtenTable('DELETE FROM leases WHERE desktop = ?')).toBe('leases');
    expect(writtenTable('CREATE TABLE x (a INTEGER)')).toBeUndefined();
    expect(writtenTable('INSERT INTO main.images (name) VALUES (?)')).toBeUndefined();
    expect(writtenTable('INSERT INTO images(name) VALUES (?)')).toBe('images');
    expect(writtenTable('WITH d AS (SELECT 1) DELETE FROM refs')).toBeUndefined();
  });
});

describe('the SQLite engine with its read cache', () => {
  let dir: string;
  let db: SqliteEngine;
  beforeEach(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'df-readcache-'));
    db = new SqliteEngine(path.join(dir, 'meta.sqlite'));
    await db.run('CREATE TABLE images (name TEXT PRIMARY KEY, n INTEGER)');
    await db.run('CREATE TABLE refs (image TEXT, name TEXT, version INTEGER, PRIMARY KEY (image, name))');
    await db.run('CREATE TABLE boot_events (seq INTEGER PRIMARY KEY, mac TEXT)');
    await db.run('INSERT INTO images VALUES (?, ?)', ['win', 1]);
    await db.run('INSERT INTO refs VALUES (?, ?, ?)', ['win', 'main', 1]);
  });
  afterEach(async () => {
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const head = async () => (await db.get('SELECT version FROM refs WHERE image = ? AND name = ?', ['win', 'main']))?.version;

  it('answers a repeated read from memory, and sees a write to its table at once', async () => {
    expect(await head()).toBe(1);
    const misses = db.reads.stats.misses;
    expect(await head()).toBe(1);
    expect(db.reads.stats.misses).toBe(misses);
    expect(db.reads.stats.hits).toBeGreaterThan(0);
    await db.run('UPDATE refs SET version = ? WHERE image = ? AND name = ?', [2, 'win', 'main']); // a ref move
    expect(await head()).toBe(2);
    await db.run('INSERT INTO refs VALUES (?, ?, ?)', ['win', 'test', 3]); // a new ref
    expect((await db.all('SELECT name FROM refs WHERE image = ? ORDER BY name', ['win'])).map((r) => r.name)).toEqual(['main', 'test']);
    await db.run('DELETE FROM refs WHERE name = ?', ['test']);
    expect((await db.all('SELECT name FROM refs WHERE image = ? ORDER BY name', ['win'])).map((r) => r.name)).toEqual(['main']);
  });

  it('keeps its answers through writes to other tables; `get` and `all` of one text do not mix', async () => {
    await db.all('SELECT * FROM images');
    await db.get('SELECT * FROM images');
    const misses = db.reads.stats.misses;
    await db.run('INSERT INTO boot_events (seq, mac) VALUES (?, ?)', [1, 'm']);
    expect(await db.all('SELECT * FROM images')).toEqual([{ name: 'win', n: 1 }]);
    await db.run('INSERT INTO images VALUES (?, ?)', ['lin', 2]);
    expect((await db.all('SELECT * FROM images ORDER BY name')).map((r) => r.name)).toEqual(['lin', 'win']);
    expect(await db.get('SELECT * FROM images ORDER BY name')).toEqual({ name: 'lin', n: 2 });
    expect(db.reads.stats.misses).toBeGreaterThan(misses);
  });

  it('sees writes made in a transaction, and nothing of one rolled back', async () => {
    expect(await head()).toBe(1);
    await db.tx(async (q) => q.run('UPDATE refs SET version = 5 WHERE name = ?', ['main']));
    expect(await head()).toBe(5);
    await expect(db.tx(async (q) => {
      await q.run('UPDATE refs SET version = 9 WHERE name = ?', ['main']);
      expect((await q.get('SELECT version FROM refs WHERE name = ?', ['main']))?.version).toBe(9);
      throw new Error('stop');
    })).rejects.toThrow('stop');
    expect(await head()).toBe(5);
    // INSERT … RETURNING read through `all` writes too
    await db.all('INSERT INTO refs VALUES (?, ?, ?) RETURNING name', ['win', 'r', 1]);
    expect((await db.all('SELECT name FROM refs WHERE image = ? ORDER BY name', ['win'])).map((r) => r.name)).toEqual(['main', 'r']);
  });

  it('sees a write another connection made to the file (PRAGMA data_version)', async () => {
    expect(await head()).toBe(1);
    const other = new SqliteEngine(path.join(dir, 'meta.sqlite'));
    try {
      await other.run('UPDATE refs SET version = 7 WHERE name = ?', ['main']);
    } finally {
      await other.close();
    }
    await new Promise((r) => setImmediate(r)); // looked at once per turn of the event loop
    expect(await head()).toBe(7);
  });

  it('gives rows no caller can change for the next one, and a list of its own', async () => {
    const a = await db.all('SELECT * FROM images');
    expect(() => { (a[0] as Record<string, unknown>).n = 99; }).toThrow(TypeError);
    a.push({ name: 'x' });
    expect(await db.all('SELECT * FROM images')).toEqual([{ name: 'win', n: 1 }]);
  });
});
