import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { NewVersion } from './repo.js';
import { SqliteMetaRepo } from './sqlite.js';

let dir: string;
let file: string;
let repo: SqliteMetaRepo;

const at = (s: number) => new Date(Date.UTC(2026, 0, 1, 8, 0, s)).toISOString();
const version = (parent: number | null, t: string): NewVersion => ({
  image: 'win11', parent, layer: 'l'.repeat(64), index: 'i'.repeat(64), kind: 'voi-commit', author: 'a', message: '', chunksChanged: 1, chunksTotal: 1, at: t,
});

beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'deskfuse-sqlite-desk-'));
  file = path.join(dir, 'meta.db');
  repo = new SqliteMetaRepo(file);
  repo.createImage({ name: 'win11', virtualSize: 1 << 30, chunkSize: 65536, hashAlg: 'blake3', createdAt: at(0) });
  repo.commitVersion(version(null, at(0)), 'main', 'unused');
  expect(repo.createDesktop({ name: 'alice', image: 'win11', mode: 'persistent', follows: 'main', createdAt: at(0) },
    { name: 'desktops/alice', version: 1, reason: 'desktop create from main@1', author: 'admin' }).kind).toBe('created');
});
afterEach(() => {
  repo.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('SqliteMetaRepo desktops', () => {
  it('creates the desktop and its ref together, or neither', () => {
    expect(repo.getRef('win11', 'desktops/alice')?.version).toBe(1);
    expect(repo.createDesktop({ name: 'alice', image: 'win11', mode: 'restore', follows: 'main', createdAt: at(1) }).kind).toBe('exists');
    repo.moveRef('win11', 'desktops/bob', 1, null, 'by hand', 'admin', at(1));
    const bob = repo.createDesktop({ name: 'bob', image: 'win11', mode: 'persistent', follows: 'main', createdAt: at(2) },
      { name: 'desktops/bob', version: 1, reason: 'x', author: 'admin' });
    expect(bob).toEqual({ kind: 'ref-exists', head: 1 });
    expect(repo.getDesktop('bob')).toBeUndefined();
    expect(repo.listDesktops().map((d) => d.name)).toEqual(['alice']);
  });
});

describe('SqliteMetaRepo leases', () => {
  it('fencing grows across takeovers, releases, breaks and expiries; renewals keep it', () => {
    const a = repo.acquireLease('alice', 'e1', at(0), at(60), false);
    expect(a).toMatchObject({ kind: 'acquired', lease: { holder: 'e1', fencing: 1, since: at(0), expiresAt: at(60) } });
    expect(repo.acquireLease('alice', 'e2', at(1), at(61), false)).toMatchObject({ kind: 'held', lease: { holder: 'e1', fencing: 1 } });
    expect(repo.acquireLease('alice', 'e1', at(2), at(62), false)).toMatchObject({ kind: 'renewed', lease: { fencing: 1, since: at(0), expiresAt: at(62) } });
    expect(repo.acquireLease('alice', 'e2', at(3), at(63), true)).toMatchObject({ kind: 'taken-over', lease: { holder: 'e2', fencing: 2 }, previous: { holder: 'e1', fencing: 1 } });
    expect(repo.releaseLease('alice', 1)).toMatchObject({ released: false, current: { holder: 'e2', fencing: 2 } });
    expect(repo.releaseLease('alice', 2)).toEqual({ released: true });
    expect(repo.acquireLease('alice', 'e2', at(4), at(64), false)).toMatchObject({ kind: 'acquired', lease: { fencing: 3 } });
    expect(repo.breakLease('alice')).toMatchObject({ holder: 'e2', fencing: 3 });
    expect(repo.breakLease('alice')).toBeUndefined();
    expect(repo.acquireLease('alice', 'e3', at(5), at(15), false).lease.fencing).toBe(4);
    expect(repo.acquireLease('alice', 'e4', at(15), at(75), false)).toMatchObject({ kind: 'acquired', lease: { holder: 'e4', fencing: 5 } });
  });

  it('two connections to one file: the second acquisition sees the first', () => {
    const other = new SqliteMetaRepo(file);
    try {
      expect(repo.acquireLease('alice', 'e1', at(0), at(60), false).kind).toBe('acquired');
      expect(other.acquireLease('alice', 'e2', at(1), at(61), false)).toMatchObject({ kind: 'held', lease: { holder: 'e1' } });
    } finally {
      other.close();
    }
  });

  it('a fenced commit moves the ref only under the current, unexpired lease', () => {
    const f = repo.acquireLease('alice', 'e1', at(0), at(60), false).lease.fencing;
    expect(repo.commitVersion(version(1, at(1)), 'desktops/alice', 'conflicts/desktops/alice/a', { desktop: 'alice', fencing: f })).toMatchObject({ kind: 'fast-forward' });
    const stale = repo.commitVersion(version(2, at(2)), 'desktops/alice', 'conflicts/desktops/alice/b', { desktop: 'alice', fencing: f + 1 });
    expect(stale).toMatchObject({ kind: 'conflict', reason: 'fencing', head: 2, conflictRef: 'conflicts/desktops/alice/b' });
    const late = repo.commitVersion(version(2, at(60)), 'desktops/alice', 'conflicts/desktops/alice/c', { desktop: 'alice', fencing: f });
    expect(late).toMatchObject({ kind: 'conflict', reason: 'fencing' });
    expect(repo.refLog('win11', 'conflicts/desktops/alice/c', 1)[0]!.reason).toContain('expired');
    expect(repo.getRef('win11', 'desktops/alice')?.version).toBe(2);
  });
});

describe('SqliteMetaRepo tokens', () => {
  it('keeps an expiry, and adds the column to a database made before it existed', () => {
    repo.addToken('h1', 'admin', at(0));
    repo.addToken('h2', 'desktop:alice', at(0), at(60));
    expect(repo.findToken('h1')).toEqual({ scope: 'admin', expiresAt: null });
    expect(repo.findToken('h2')).toEqual({ scope: 'desktop:alice', expiresAt: at(60) });

    const old = path.join(dir, 'old.db');
    const db = new Database(old);
    db.exec('CREATE TABLE tokens (hash TEXT PRIMARY KEY, scope TEXT NOT NULL, created_at TEXT NOT NULL)');
    db.prepare('INSERT INTO tokens VALUES (?, ?, ?)').run('h0', 'admin', at(0));
    db.close();
    const upgraded = new SqliteMetaRepo(old);
    try {
      expect(upgraded.findToken('h0')).toEqual({ scope: 'admin', expiresAt: null });
    } finally {
      upgraded.close();
    }
  });
});
