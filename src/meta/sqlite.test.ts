import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { NewVersion } from './repo.js';
import { SqliteMetaRepo } from './sqlite.js';

let dir: string;
let repo: SqliteMetaRepo;

const T0 = '2026-01-01T00:00:00.000Z';

function version(parent: number | null, at: string, over: Partial<NewVersion> = {}): NewVersion {
  return {
    image: 'win11', parent, layer: 'l'.repeat(64), index: 'i'.repeat(64), kind: 'voi-commit', author: 'alice',
    message: 'm', chunksChanged: 1, chunksTotal: 10, at, ...over,
  };
}

beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'deskfuse-sqlite-'));
  repo = new SqliteMetaRepo(path.join(dir, 'meta.db'));
  repo.createImage({ name: 'win11', virtualSize: 1 << 30, chunkSize: 65536, hashAlg: 'blake3', createdAt: T0 });
});

afterEach(() => {
  repo.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('SqliteMetaRepo images', () => {
  it('createImage is idempotent and returns the existing row', () => {
    const again = repo.createImage({ name: 'win11', virtualSize: 2, chunkSize: 4096, hashAlg: 'blake3', createdAt: 'later' });
    expect(again.created).toBe(false);
    expect(again.image.virtualSize).toBe(1 << 30);
    expect(repo.listImages().map((i) => i.name)).toEqual(['win11']);
  });
});

describe('SqliteMetaRepo.commitVersion', () => {
  it('the first commit with parent null creates the ref (fast-forward)', () => {
    const out = repo.commitVersion(version(null, 't1', { kind: 'import' }), 'main', 'conflicts/main/x');
    expect(out.kind).toBe('fast-forward');
    expect(out.version).toMatchObject({ image: 'win11', version: 1, parent: null, kind: 'import', chunksChanged: 1, chunksTotal: 10, createdAt: 't1' });
    expect(repo.getRef('win11', 'main')).toEqual({ image: 'win11', name: 'main', version: 1, updatedAt: 't1' });
  });

  it('a commit on the head fast-forwards; a commit on a stale parent becomes a conflict ref', () => {
    repo.commitVersion(version(null, 't1'), 'main', 'conflicts/main/a');
    const ff = repo.commitVersion(version(1, 't2'), 'main', 'conflicts/main/b');
    expect(ff).toMatchObject({ kind: 'fast-forward', ref: 'main' });
    expect(ff.version.version).toBe(2);
    expect(repo.getRef('win11', 'main')?.version).toBe(2);

    const stale = repo.commitVersion(version(1, 't3', { author: 'bob' }), 'main', 'conflicts/main/c');
    expect(stale).toMatchObject({ kind: 'conflict', ref: 'main', head: 2, conflictRef: 'conflicts/main/c' });
    // The version is kept, the ref did not move, the conflict ref points at the new version.
    expect(stale.version).toMatchObject({ version: 3, parent: 1, author: 'bob' });
    expect(repo.getVersion('win11', 3)?.parent).toBe(1);
    expect(repo.getRef('win11', 'main')).toMatchObject({ version: 2, updatedAt: 't2' });
    expect(repo.getRef('win11', 'conflicts/main/c')).toMatchObject({ version: 3, updatedAt: 't3' });
    expect(repo.versionCount('win11')).toBe(3);
    expect(repo.listVersions('win11', 10).map((v) => v.version)).toEqual([3, 2, 1]);
  });

  it('a commit with a parent on a ref that does not exist is a conflict with head null', () => {
    repo.commitVersion(version(null, 't1'), 'main', 'unused');
    const out = repo.commitVersion(version(1, 't2'), 'desktops/alice', 'conflicts/desktops/alice/x');
    expect(out).toMatchObject({ kind: 'conflict', head: null });
    expect(repo.getRef('win11', 'desktops/alice')).toBeUndefined();
  });

  it('a commit with parent null on an existing ref is a conflict', () => {
    repo.commitVersion(version(null, 't1'), 'main', 'unused');
    expect(repo.commitVersion(version(null, 't2'), 'main', 'conflicts/main/y')).toMatchObject({ kind: 'conflict', head: 1 });
    expect(repo.getRef('win11', 'main')?.version).toBe(1);
  });

  it('logs both kinds of move', () => {
    repo.commitVersion(version(null, 't1', { kind: 'import' }), 'main', 'unused');
    repo.commitVersion(version(null, 't2'), 'main', 'conflicts/main/z');
    const log = repo.refLog('win11', undefined, 10);
    expect(log.map(({ ref, oldVersion, newVersion, author, at }) => ({ ref, oldVersion, newVersion, author, at }))).toEqual([
      { ref: 'conflicts/main/z', oldVersion: null, newVersion: 2, author: 'alice', at: 't2' },
      { ref: 'main', oldVersion: null, newVersion: 1, author: 'alice', at: 't1' },
    ]);
    expect(log[1]!.reason).toBe('import');
    expect(log[0]!.reason).toContain('conflict');
    expect(log[0]!.seq).toBeGreaterThan(log[1]!.seq);
  });
});

describe('SqliteMetaRepo.moveRef', () => {
  beforeEach(() => {
    repo.commitVersion(version(null, 't1'), 'main', 'unused');
    repo.commitVersion(version(1, 't2'), 'main', 'unused');
  });

  it('moves when the head is the expected version and logs the move', () => {
    const out = repo.moveRef('win11', 'main', 1, 2, 'rollback', 'admin', 't3');
    expect(out).toEqual({ moved: true, ref: { image: 'win11', name: 'main', version: 1, updatedAt: 't3' } });
    expect(repo.refLog('win11', 'main', 1)[0]).toMatchObject({ ref: 'main', oldVersion: 2, newVersion: 1, reason: 'rollback', author: 'admin', at: 't3' });
  });

  it('refuses a stale expect and changes nothing, not even the log', () => {
    const refBefore = repo.getRef('win11', 'main');
    const logBefore = repo.refLog('win11', undefined, 100);
    expect(repo.moveRef('win11', 'main', 1, 1, 'rollback', 'admin', 't3')).toEqual({ moved: false, head: 2 });
    expect(repo.moveRef('win11', 'main', 1, null, 'rollback', 'admin', 't3')).toEqual({ moved: false, head: 2 });
    expect(repo.getRef('win11', 'main')).toEqual(refBefore);
    expect(repo.refLog('win11', undefined, 100)).toEqual(logBefore);
  });

  it('expect null creates a ref that does not exist, and refuses one that does', () => {
    expect(repo.moveRef('win11', 'desktops/alice', 2, null, 'branch', 'admin', 't3')).toMatchObject({ moved: true, ref: { version: 2 } });
    expect(repo.moveRef('win11', 'desktops/alice', 1, null, 'branch', 'admin', 't4')).toEqual({ moved: false, head: 2 });
    expect(repo.listRefs('win11').map((r) => r.name)).toEqual(['desktops/alice', 'main']);
  });

  it('expecting a version of a missing ref is refused with head null', () => {
    expect(repo.moveRef('win11', 'nope', 1, 2, 'x', 'admin', 't3')).toEqual({ moved: false, head: null });
    expect(repo.getRef('win11', 'nope')).toBeUndefined();
  });

  it('the ref log records every move, newest first, per ref and per image', () => {
    repo.moveRef('win11', 'main', 1, 2, 'rollback', 'admin', 't3');
    repo.moveRef('win11', 'main', 2, 1, 'forward', 'admin', 't4');
    repo.moveRef('win11', 'other', 2, null, 'branch', 'admin', 't5');
    const main = repo.refLog('win11', 'main', 100);
    expect(main.map((r) => [r.oldVersion, r.newVersion])).toEqual([[1, 2], [2, 1], [1, 2], [null, 1]]);
    expect(repo.refLog('win11', undefined, 100)).toHaveLength(5);
    expect(repo.refLog('win11', undefined, 2).map((r) => r.ref)).toEqual(['other', 'main']);
    const seqs = repo.refLog('win11', undefined, 100).map((r) => r.seq);
    expect(seqs).toEqual([...seqs].sort((a, b) => b - a));
    expect(new Set(seqs).size).toBe(seqs.length);
  });
});

describe('SqliteMetaRepo durability', () => {
  it('state survives closing and reopening the file', () => {
    repo.commitVersion(version(null, 't1'), 'main', 'unused');
    repo.close();
    repo = new SqliteMetaRepo(path.join(dir, 'meta.db'));
    expect(repo.getRef('win11', 'main')?.version).toBe(1);
    expect(repo.refLog('win11', 'main', 10)).toHaveLength(1);
  });
});
