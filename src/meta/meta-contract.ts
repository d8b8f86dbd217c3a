import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { EndpointRow } from '../endpoint/model.js';
import type { NewVersion } from '../image/model.js';
import { pruneMeta } from './prune.js';
import { openMeta } from './open.js';
import type { Meta } from './repo.js';
import { SqliteEngine } from './sqlite-engine.js';

/**
 * The metadata contract: every repository answers the same on every engine, races included (two
 * servers = two connections to one database). Run by src/meta/meta-contract-sqlite.test.ts and
 * test/integration/meta-pg.test.ts. Test support: kept out of dist (tsconfig.build.json).
 */
export interface MetaEngineFixture {
  /** A fresh, empty database, migrated: the first connection. */
  open(): Promise<Meta>;
  /** Another connection (another server) to the database `open` made last. */
  second(): Promise<Meta>;
  /** Drop what `open` made (after the connections are closed). */
  drop(): Promise<void>;
}

/**
 * A fresh SQLite database per test. SQLite is the one-server engine: "another server" is another caller
 * of the same connection, so the races are between concurrent requests of one server (its transactions
 * queue; see sqlite-engine.ts).
 */
export function sqliteFixture(prefix: string): MetaEngineFixture {
  let dir: string | undefined;
  let engine: SqliteEngine | undefined;
  return {
    open: async () => {
      dir = mkdtempSync(path.join(os.tmpdir(), prefix));
      engine = new SqliteEngine(path.join(dir, 'meta.sqlite'));
      return openMeta(engine);
    },
    second: async () => ({ ...(await openMeta(engine!)), close: async () => {} }),
    drop: async () => {
      if (dir) rmSync(dir, { recursive: true, force: true });
      dir = undefined;
    },
  };
}

const T0 = '2026-01-01T00:00:00.000Z';
const at = (s: number) => new Date(Date.UTC(2026, 0, 1, 8, 0, s)).toISOString();
const HOUR = 3600;
const NOW = Date.UTC(2026, 2, 2, 8, 0, 0);
/** `s` seconds before NOW (negative: after). */
const ago = (s: number) => new Date(NOW - s * 1000).toISOString();
const policy = { eventsSeconds: 24 * HOUR, tokensSeconds: 2 * HOUR, pendingSeconds: 6 * HOUR };

function version(parent: number | null, t: string, over: Partial<NewVersion> = {}): NewVersion {
  return {
    image: 'win11', parent, layer: 'l'.repeat(64), index: 'i'.repeat(64), kind: 'voi-commit', author: 'alice',
    message: 'm', chunksChanged: 1, chunksTotal: 10, at: t, ...over,
  };
}
const dversion = (parent: number | null, t: string): NewVersion => version(parent, t, { author: 'a', message: '', chunksTotal: 1 });

function endpoint(id: string, state: EndpointRow['state'], lastSeen: string): EndpointRow {
  return {
    id, name: id, macs: [`02:00:00:00:00:${id.slice(-2)}`], uuid: null, serial: null, state, desktop: null, mode: 'sync', bootMethod: 'auto',
    firmware: null, disk: 'unknown', diskVersion: null, commitRequested: null, lastSeen, lastSync: null, createdAt: lastSeen,
  };
}

export function metaContract(engine: string, fx: MetaEngineFixture): void {
  let meta: Meta;
  const others: Meta[] = [];
  const second = async () => {
    const m = await fx.second();
    others.push(m);
    return m;
  };
  afterEach(async () => {
    for (const m of others.splice(0)) await m.close();
    await meta.close();
    await fx.drop();
  });

  describe(`images, versions and refs (${engine})`, () => {
    beforeEach(async () => {
      meta = await fx.open();
      await meta.images.createImage({ name: 'win11', virtualSize: 1 << 30, chunkSize: 65536, hashAlg: 'blake3', createdAt: T0 });
    });
    describe('metadata images', async () => {
      it('createImage is idempotent and returns the existing row', async () => {
        const again = await meta.images.createImage({ name: 'win11', virtualSize: 2, chunkSize: 4096, hashAlg: 'blake3', createdAt: 'later' });
        expect(again.created).toBe(false);
        expect(again.image.virtualSize).toBe(1 << 30);
        expect((await meta.images.listImages()).map((i) => i.name)).toEqual(['win11']);
      });
    });

    describe('metadata: signed manifests', async () => {
      it('a version\'s signed manifest is kept, read back, and replaced when its number is taken again', async () => {
        await meta.images.commitVersion(version(null, 't1', { kind: 'import' }), 'main', 'conflicts/main/x');
        expect(await meta.images.getManifest('win11', 1)).toBeUndefined();
        const m = { keyId: '0123456789abcdef', body: '{"type":"manifest","version":1}', sig: 'c2ln' };
        await meta.images.putManifest('win11', 1, m);
        expect(await meta.images.getManifest('win11', 1)).toEqual(m);
        await meta.images.putManifest('win11', 1, { ...m, keyId: 'fedcba9876543210', sig: 'b3RoZXI=' });
        expect(await meta.images.getManifest('win11', 1)).toEqual({ ...m, keyId: 'fedcba9876543210', sig: 'b3RoZXI=' });
        expect(await meta.images.getManifest('win11', 2)).toBeUndefined();
      });
    });

    describe('metadata.commitVersion', async () => {
      it('the first commit with parent null creates the ref (fast-forward)', async () => {
        const out = await meta.images.commitVersion(version(null, 't1', { kind: 'import' }), 'main', 'conflicts/main/x');
        expect(out.kind).toBe('fast-forward');
        expect(out.version).toMatchObject({ image: 'win11', version: 1, parent: null, kind: 'import', chunksChanged: 1, chunksTotal: 10, createdAt: 't1' });
        expect(await meta.images.getRef('win11', 'main')).toEqual({ image: 'win11', name: 'main', version: 1, updatedAt: 't1' });
      });

      it('a commit on the head fast-forwards; a commit on a stale parent becomes a conflict ref', async () => {
        await meta.images.commitVersion(version(null, 't1'), 'main', 'conflicts/main/a');
        const ff = await meta.images.commitVersion(version(1, 't2'), 'main', 'conflicts/main/b');
        expect(ff).toMatchObject({ kind: 'fast-forward', ref: 'main' });
        expect(ff.version.version).toBe(2);
        expect((await meta.images.getRef('win11', 'main'))?.version).toBe(2);

        const stale = await meta.images.commitVersion(version(1, 't3', { author: 'bob' }), 'main', 'conflicts/main/c');
        expect(stale).toMatchObject({ kind: 'conflict', ref: 'main', head: 2, conflictRef: 'conflicts/main/c' });
        // The version is kept, the ref did not move, the conflict ref points at the new version.
        expect(stale.version).toMatchObject({ version: 3, parent: 1, author: 'bob' });
        expect((await meta.images.getVersion('win11', 3))?.parent).toBe(1);
        expect(await meta.images.getRef('win11', 'main')).toMatchObject({ version: 2, updatedAt: 't2' });
        expect(await meta.images.getRef('win11', 'conflicts/main/c')).toMatchObject({ version: 3, updatedAt: 't3' });
        expect(await meta.images.versionCount('win11')).toBe(3);
        expect((await meta.images.listVersions('win11', 10)).map((v) => v.version)).toEqual([3, 2, 1]);
      });

      it('a commit with a parent on a ref that does not exist is a conflict with head null', async () => {
        await meta.images.commitVersion(version(null, 't1'), 'main', 'unused');
        const out = await meta.images.commitVersion(version(1, 't2'), 'desktops/alice', 'conflicts/desktops/alice/x');
        expect(out).toMatchObject({ kind: 'conflict', head: null });
        expect(await meta.images.getRef('win11', 'desktops/alice')).toBeUndefined();
      });

      it('a commit with parent null on an existing ref is a conflict', async () => {
        await meta.images.commitVersion(version(null, 't1'), 'main', 'unused');
        expect(await meta.images.commitVersion(version(null, 't2'), 'main', 'conflicts/main/y')).toMatchObject({ kind: 'conflict', head: 1 });
        expect((await meta.images.getRef('win11', 'main'))?.version).toBe(1);
      });

      it('logs both kinds of move', async () => {
        await meta.images.commitVersion(version(null, 't1', { kind: 'import' }), 'main', 'unused');
        await meta.images.commitVersion(version(null, 't2'), 'main', 'conflicts/main/z');
        const log = await meta.images.refLog('win11', undefined, 10);
        expect(log.map(({ ref, oldVersion, newVersion, author, at }) => ({ ref, oldVersion, newVersion, author, at }))).toEqual([
          { ref: 'conflicts/main/z', oldVersion: null, newVersion: 2, author: 'alice', at: 't2' },
          { ref: 'main', oldVersion: null, newVersion: 1, author: 'alice', at: 't1' },
        ]);
        expect(log[1]!.reason).toBe('import');
        expect(log[0]!.reason).toContain('conflict');
        expect(log[0]!.seq).toBeGreaterThan(log[1]!.seq);
      });
    });

    describe('metadata.moveRef', async () => {
      beforeEach(async () => {
        await meta.images.commitVersion(version(null, 't1'), 'main', 'unused');
        await meta.images.commitVersion(version(1, 't2'), 'main', 'unused');
      });

      it('moves when the head is the expected version and logs the move', async () => {
        const out = await meta.images.moveRef('win11', 'main', 1, 2, 'rollback', 'admin', 't3');
        expect(out).toEqual({ moved: true, ref: { image: 'win11', name: 'main', version: 1, updatedAt: 't3' } });
        expect((await meta.images.refLog('win11', 'main', 1))[0]).toMatchObject({ ref: 'main', oldVersion: 2, newVersion: 1, reason: 'rollback', author: 'admin', at: 't3' });
      });

      it('refuses a stale expect and changes nothing, not even the log', async () => {
        const refBefore = await meta.images.getRef('win11', 'main');
        const logBefore = await meta.images.refLog('win11', undefined, 100);
        expect(await meta.images.moveRef('win11', 'main', 1, 1, 'rollback', 'admin', 't3')).toEqual({ moved: false, head: 2 });
        expect(await meta.images.moveRef('win11', 'main', 1, null, 'rollback', 'admin', 't3')).toEqual({ moved: false, head: 2 });
        expect(await meta.images.getRef('win11', 'main')).toEqual(refBefore);
        expect(await meta.images.refLog('win11', undefined, 100)).toEqual(logBefore);
      });

      it('expect null creates a ref that does not exist, and refuses one that does', async () => {
        expect(await meta.images.moveRef('win11', 'desktops/alice', 2, null, 'branch', 'admin', 't3')).toMatchObject({ moved: true, ref: { version: 2 } });
        expect(await meta.images.moveRef('win11', 'desktops/alice', 1, null, 'branch', 'admin', 't4')).toEqual({ moved: false, head: 2 });
        expect((await meta.images.listRefs('win11')).map((r) => r.name)).toEqual(['desktops/alice', 'main']);
      });

      it('expecting a version of a missing ref is refused with head null', async () => {
        expect(await meta.images.moveRef('win11', 'nope', 1, 2, 'x', 'admin', 't3')).toEqual({ moved: false, head: null });
        expect(await meta.images.getRef('win11', 'nope')).toBeUndefined();
      });

      it('the ref log records every move, newest first, per ref and per image', async () => {
        await meta.images.moveRef('win11', 'main', 1, 2, 'rollback', 'admin', 't3');
        await meta.images.moveRef('win11', 'main', 2, 1, 'forward', 'admin', 't4');
        await meta.images.moveRef('win11', 'other', 2, null, 'branch', 'admin', 't5');
        const main = await meta.images.refLog('win11', 'main', 100);
        expect(main.map((r) => [r.oldVersion, r.newVersion])).toEqual([[1, 2], [2, 1], [1, 2], [null, 1]]);
        expect(await meta.images.refLog('win11', undefined, 100)).toHaveLength(5);
        expect((await meta.images.refLog('win11', undefined, 2)).map((r) => r.ref)).toEqual(['other', 'main']);
        const seqs = (await meta.images.refLog('win11', undefined, 100)).map((r) => r.seq);
        expect(seqs).toEqual([...seqs].sort((a, b) => b - a));
        expect(new Set(seqs).size).toBe(seqs.length);
      });
    });


  });

  describe(`desktops, leases and tokens (${engine})`, () => {
    beforeEach(async () => {
      meta = await fx.open();
      await meta.images.createImage({ name: 'win11', virtualSize: 1 << 30, chunkSize: 65536, hashAlg: 'blake3', createdAt: at(0) });
      await meta.images.commitVersion(dversion(null, at(0)), 'main', 'unused');
      expect((await meta.desktops.createDesktop({ name: 'alice', image: 'win11', mode: 'persistent', follows: 'main', createdAt: at(0) },
        { name: 'desktops/alice', version: 1, reason: 'desktop create from main@1', author: 'admin' })).kind).toBe('created');
    });
    describe('metadata desktops', async () => {
      it('creates the desktop and its ref together, or neither', async () => {
        expect((await meta.images.getRef('win11', 'desktops/alice'))?.version).toBe(1);
        expect((await meta.desktops.createDesktop({ name: 'alice', image: 'win11', mode: 'restore', follows: 'main', createdAt: at(1) })).kind).toBe('exists');
        await meta.images.moveRef('win11', 'desktops/bob', 1, null, 'by hand', 'admin', at(1));
        const bob = await meta.desktops.createDesktop({ name: 'bob', image: 'win11', mode: 'persistent', follows: 'main', createdAt: at(2) },
          { name: 'desktops/bob', version: 1, reason: 'x', author: 'admin' });
        expect(bob).toEqual({ kind: 'ref-exists', head: 1 });
        expect(await meta.desktops.getDesktop('bob')).toBeUndefined();
        expect((await meta.desktops.listDesktops()).map((d) => d.name)).toEqual(['alice']);
      });
    });

    describe('metadata leases', async () => {
      it('fencing grows across takeovers, releases, breaks and expiries; renewals keep it', async () => {
        const a = await meta.desktops.acquireLease('alice', 'e1', at(0), at(60), false);
        expect(a).toMatchObject({ kind: 'acquired', lease: { holder: 'e1', fencing: 1, since: at(0), expiresAt: at(60) } });
        expect(await meta.desktops.acquireLease('alice', 'e2', at(1), at(61), false)).toMatchObject({ kind: 'held', lease: { holder: 'e1', fencing: 1 } });
        expect(await meta.desktops.acquireLease('alice', 'e1', at(2), at(62), false)).toMatchObject({ kind: 'renewed', lease: { fencing: 1, since: at(0), expiresAt: at(62) } });
        expect(await meta.desktops.acquireLease('alice', 'e2', at(3), at(63), true)).toMatchObject({ kind: 'taken-over', lease: { holder: 'e2', fencing: 2 }, previous: { holder: 'e1', fencing: 1 } });
        expect(await meta.desktops.releaseLease('alice', 1)).toMatchObject({ released: false, current: { holder: 'e2', fencing: 2 } });
        expect(await meta.desktops.releaseLease('alice', 2)).toEqual({ released: true });
        expect(await meta.desktops.acquireLease('alice', 'e2', at(4), at(64), false)).toMatchObject({ kind: 'acquired', lease: { fencing: 3 } });
        expect(await meta.desktops.breakLease('alice')).toMatchObject({ holder: 'e2', fencing: 3 });
        expect(await meta.desktops.breakLease('alice')).toBeUndefined();
        expect((await meta.desktops.acquireLease('alice', 'e3', at(5), at(15), false)).lease.fencing).toBe(4);
        expect(await meta.desktops.acquireLease('alice', 'e4', at(15), at(75), false)).toMatchObject({ kind: 'acquired', lease: { holder: 'e4', fencing: 5 } });
      });

      it('a fenced commit moves the ref only under the current, unexpired lease', async () => {
        const f = (await meta.desktops.acquireLease('alice', 'e1', at(0), at(60), false)).lease.fencing;
        expect(await meta.images.commitVersion(dversion(1, at(1)), 'desktops/alice', 'conflicts/desktops/alice/a', { desktop: 'alice', fencing: f })).toMatchObject({ kind: 'fast-forward' });
        const stale = await meta.images.commitVersion(dversion(2, at(2)), 'desktops/alice', 'conflicts/desktops/alice/b', { desktop: 'alice', fencing: f + 1 });
        expect(stale).toMatchObject({ kind: 'conflict', reason: 'fencing', head: 2, conflictRef: 'conflicts/desktops/alice/b' });
        const late = await meta.images.commitVersion(dversion(2, at(60)), 'desktops/alice', 'conflicts/desktops/alice/c', { desktop: 'alice', fencing: f });
        expect(late).toMatchObject({ kind: 'conflict', reason: 'fencing' });
        expect((await meta.images.refLog('win11', 'conflicts/desktops/alice/c', 1))[0]!.reason).toContain('expired');
        expect((await meta.images.getRef('win11', 'desktops/alice'))?.version).toBe(2);
      });
    });

    describe('metadata tokens', () => {
      it('keeps an expiry', async () => {
        await meta.tokens.addToken('h1', 'admin', at(0));
        await meta.tokens.addToken('h2', 'desktop:alice', at(0), at(60));
        expect(await meta.tokens.findToken('h1')).toEqual({ scope: 'admin', expiresAt: null });
        expect(await meta.tokens.findToken('h2')).toEqual({ scope: 'desktop:alice', expiresAt: at(60) });
      });

      it('adds a first admin token once when two add it at once', async () => {
        const added = await Promise.all([meta.tokens.addTokenIfNone('a1', 'admin', at(0)), meta.tokens.addTokenIfNone('a2', 'admin', at(0))]);
        expect(added.filter(Boolean)).toHaveLength(1);
        expect(await meta.tokens.countTokens('admin')).toBe(1);
        expect(await meta.tokens.addTokenIfNone('a3', 'admin', at(1))).toBe(false);
      });

      it('lists endpoints with their MACs and key state, as each one reads alone', async () => {
        await meta.endpoints.insertEndpoint({ ...endpoint('ep-12', 'enrolled', at(0)), macs: ['02:00:00:00:01:02', '02:00:00:00:01:01'] });
        await meta.endpoints.insertEndpoint(endpoint('ep-11', 'pending', at(0)));
        await meta.endpoints.insertEndpoint(endpoint('ep-13', 'enrolled', at(0)));
        await meta.endpoints.setKeys('ep-12', { key: 'k', pendingKey: null }, at(1));
        await meta.endpoints.setKeys('ep-13', { key: null, pendingKey: 'p' }, at(1));
        const list = await meta.endpoints.listEndpoints();
        expect(list.map((e) => [e.id, e.macs, e.secret])).toEqual([
          ['ep-11', ['02:00:00:00:00:11'], 'none'], ['ep-12', ['02:00:00:00:01:01', '02:00:00:00:01:02'], 'bound'], ['ep-13', ['02:00:00:00:00:13'], 'provisioning'],
        ]);
        for (const e of list) expect(await meta.endpoints.getEndpoint(e.id)).toEqual(e);
      });

      it('keeps the last live admin token when asked: an expired admin does not count, other scopes go', async () => {
        await meta.tokens.addToken('aaaaaaaaaaaaaaaa-live', 'admin', at(0));
        await meta.tokens.addToken('bbbbbbbbbbbbbbbb-old', 'admin', at(0), at(10));
        await meta.tokens.addToken('cccccccccccccccc-d', 'desktop:alice', at(0));
        expect(await meta.tokens.deleteToken('aaaaaaaaaaaaaaaa', at(20))).toBe('last-admin');
        expect(await meta.tokens.deleteToken('bbbbbbbbbbbbbbbb', at(20))).toMatchObject({ scope: 'admin' });
        expect(await meta.tokens.deleteToken('cccccccccccccccc', at(20))).toMatchObject({ scope: 'desktop:alice' });
        expect(await meta.tokens.deleteToken('cccccccccccccccc', at(20))).toBeUndefined();
        expect(await meta.tokens.findToken('aaaaaaaaaaaaaaaa-live')).toBeDefined();
        expect(await meta.tokens.deleteToken('aaaaaaaaaaaaaaaa')).toMatchObject({ scope: 'admin' }); // unguarded
      });
    });

  });

  describe(`housekeeping (${engine})`, () => {
    beforeEach(async () => {
      meta = await fx.open();
    });
    describe('pruneMeta', async () => {
      it('deletes used and expired boot tokens, long-expired tokens, old events and stale pending endpoints; keeps the rest', async () => {
        await meta.tokens.addToken('admin-forever', 'admin', ago(1000 * HOUR));
        await meta.tokens.addToken('expired-long-ago', 'desktop:a', ago(10 * HOUR), ago(3 * HOUR));
        await meta.tokens.addToken('expired-recently', 'desktop:a', ago(10 * HOUR), ago(1 * HOUR)); // still answers "expired"
        await meta.tokens.addToken('live', 'hypervisor', ago(10 * HOUR), ago(-HOUR));
        const boot = (hash: string, expiresAt: string, usedAt: string | null) =>
          meta.endpoints.addBootToken({ hash, endpoint: 'ep-01', mac: '02:00:00:00:00:01', action: 'sync', createdAt: ago(HOUR), expiresAt, usedAt });
        await boot('b-used', ago(-HOUR), ago(30));
        await boot('b-expired', ago(1), null);
        await boot('b-fresh', ago(-600), null);
        await meta.endpoints.insertEndpoint(endpoint('ep-01', 'pending', ago(7 * HOUR)));
        await meta.endpoints.insertEndpoint(endpoint('ep-02', 'pending', ago(5 * HOUR)));
        await meta.endpoints.insertEndpoint(endpoint('ep-03', 'enrolled', ago(100 * HOUR)));
        await meta.endpoints.setAddress('ep-01', '10.0.0.1', ago(7 * HOUR));
        for (const [i, s] of [[1, 48 * HOUR], [2, 25 * HOUR], [3, 23 * HOUR], [4, 60]] as const) {
          await meta.endpoints.addEvent({ endpoint: 'ep-03', mac: '02:00:00:00:00:03', phase: 'script', at: ago(s), detail: { i } });
        }

        expect(await pruneMeta(meta, new Date(NOW), policy)).toEqual({ bootTokens: 2, tokens: 1, events: 2, pending: 1 });
        // nothing left to do: a second run deletes nothing
        expect(await pruneMeta(meta, new Date(NOW), policy)).toEqual({ bootTokens: 0, tokens: 0, events: 0, pending: 0 });

        expect((await meta.tokens.listTokens()).map((t) => t.scope).sort()).toEqual(['admin', 'desktop:a', 'hypervisor']);
        expect(await meta.tokens.findToken('expired-long-ago')).toBeUndefined();
        expect(await meta.tokens.findToken('expired-recently')).toBeDefined();
        expect(await meta.endpoints.useBootToken('b-used', ago(0))).toBeUndefined();
        expect(await meta.endpoints.useBootToken('b-expired', ago(0))).toBeUndefined();
        expect((await meta.endpoints.useBootToken('b-fresh', ago(0)))?.usedAt).toBeNull();
        expect((await meta.endpoints.listEndpoints()).map((e) => e.id)).toEqual(['ep-02', 'ep-03']);
        expect(await meta.endpoints.findByMac('02:00:00:00:00:01')).toBeUndefined();
        expect(await meta.endpoints.getAddress('ep-01')).toBeUndefined();
        expect((await meta.endpoints.listEvents(undefined, 10)).map((e) => e.detail.i)).toEqual([3, 4]);
      });

      it('keeps the newest event even when it is old, so event numbers never start over', async () => {
        await meta.endpoints.addEvent({ endpoint: null, mac: '02:00:00:00:00:09', phase: 'dhcp', at: ago(90 * HOUR), detail: {} });
        const last = await meta.endpoints.addEvent({ endpoint: null, mac: '02:00:00:00:00:09', phase: 'dhcp', at: ago(80 * HOUR), detail: {} });
        expect((await pruneMeta(meta, new Date(NOW), policy)).events).toBe(1);
        expect((await meta.endpoints.addEvent({ endpoint: null, mac: '02:00:00:00:00:09', phase: 'dhcp', at: ago(0), detail: {} })).seq).toBe(last.seq + 1);
      });
    });

  });

  describe(`garbage collection (${engine})`, () => {
    const id = (c: string) => c.repeat(64);
    beforeEach(async () => {
      meta = await fx.open();
      await meta.images.createImage({ name: 'win11', virtualSize: 1 << 30, chunkSize: 65536, hashAlg: 'blake3', createdAt: T0 });
    });

    it('the lock: one holder until it releases or its lease runs out; renew fails once taken over', async () => {
      expect(await meta.gc.acquire('a', 'r1', NOW, NOW + 60_000)).toBeUndefined();
      expect(await meta.gc.acquire('b', 'r2', NOW + 1000, NOW + 61_000)).toMatchObject({ holder: 'a', run: 'r1' });
      expect(await meta.gc.renew('r1', NOW + 120_000, 'mark', { done: 5 })).toBe(true);
      expect(await meta.gc.state()).toMatchObject({ holder: 'a', phase: 'mark', progress: { done: 5 } });
      expect(await meta.gc.acquire('b', 'r2', NOW + 121_000, NOW + 200_000)).toBeUndefined(); // a's lease ran out
      expect(await meta.gc.renew('r1', NOW + 300_000, 'sweep', {})).toBe(false);
      await meta.gc.release('r2', ago(0), { ok: 1 });
      expect(await meta.gc.state()).toMatchObject({ holder: null, phase: 'done', result: { ok: 1 } });
      expect(await meta.gc.acquire('c', 'r3', NOW, NOW + 1)).toBeUndefined();
    });

    it('candidates page in id order; startDeleting moves only rows still there; a hold cancels candidates and reports those being deleted', async () => {
      const row = (c: string) => ({ kind: 'chunk' as const, id: id(c), state: 'candidate' as const, size: 10, mtime: 5, run: 'r1' });
      await meta.gc.addCandidates(['3', '1', '2', '4'].map(row), ago(0));
      await meta.gc.addCandidates([row('1')], ago(0)); // again: kept once
      expect((await meta.gc.candidates('chunk', '', 2)).map((c) => c.id)).toEqual([id('1'), id('2')]);
      expect((await meta.gc.candidates('chunk', id('2'), 10)).map((c) => c.id)).toEqual([id('3'), id('4')]);
      expect(await meta.gc.candidates('blob', '', 10)).toEqual([]);
      expect(await meta.gc.startDeleting('chunk', [id('1')])).toEqual([id('1')]);
      const h = await meta.gc.hold({ id: 'h1', image: 'win11', layer: id('a'), parentIndex: id('b') }, [id('1'), id('2')], [id('a')], NOW + 1000);
      expect(h.deleting).toEqual([id('1')]);
      expect((await meta.gc.candidates('chunk', '', 10)).map((c) => c.id)).toEqual([id('1'), id('3'), id('4')]); // 2 cancelled
      expect(await meta.gc.startDeleting('chunk', [id('2'), id('3')])).toEqual([id('3')]);
      expect(await meta.gc.holds(NOW)).toEqual([{ id: 'h1', image: 'win11', layer: id('a'), parentIndex: id('b') }]);
      expect(await meta.gc.holds(NOW + 2000)).toEqual([]); // expired holds go
      // A live run's rows stay; a dead run's are taken back.
      await meta.gc.acquire('a', 'r9', NOW, NOW + 60_000);
      expect((await meta.gc.reclaimStale('chunk', [id('1'), id('3')], NOW)).sort()).toEqual([id('1'), id('3')]);
      expect(await meta.gc.reclaimStale('chunk', [id('1'), id('3')], NOW + 61_000)).toEqual([]);
      expect(await meta.gc.deleting('chunk', [id('1'), id('3')])).toEqual([]);
      await meta.gc.dropCandidates('chunk', [id('4')]);
      expect(await meta.gc.candidates('chunk', '', 10)).toEqual([]);
    });

    it('version roots page in (image, version) order and say whether the parent row is kept; open sessions checkpoint roots', async () => {
      await meta.images.commitVersion(version(null, at(1), { layer: id('1'), index: id('2') }), 'main', 'c/1');
      await meta.images.commitVersion(version(1, at(2), { layer: id('3'), index: id('4') }), 'main', 'c/2');
      await meta.images.commitVersion(version(2, at(3), { layer: id('5'), index: id('6') }), 'main', 'c/3');
      await meta.engine.run('DELETE FROM versions WHERE image = ? AND version = 2', ['win11']);
      const first = await meta.gc.versionRoots(null, 1);
      expect(first).toEqual([{ image: 'win11', version: 1, layer: id('1'), index: id('2'), parentKept: false }]);
      expect(await meta.gc.versionRoots({ image: 'win11', version: 1 }, 10)).toEqual([{ image: 'win11', version: 3, layer: id('5'), index: id('6'), parentKept: false }]);
      expect(await meta.gc.sessionRoots()).toEqual([]);
    });
  });

  describe(`races between two servers (${engine})`, () => {
    beforeEach(async () => {
      meta = await fx.open();
      await meta.images.createImage({ name: 'win11', virtualSize: 1 << 30, chunkSize: 65536, hashAlg: 'blake3', createdAt: at(0) });
      await meta.images.commitVersion(dversion(null, at(0)), 'main', 'unused');
      await meta.desktops.createDesktop({ name: 'alice', image: 'win11', mode: 'persistent', follows: 'main', createdAt: at(0) },
        { name: 'desktops/alice', version: 1, reason: 'x', author: 'admin' });
    });

    it('two commits on one parent at once: one fast-forward, one conflict, distinct versions', async () => {
      const b = await second();
      for (let round = 0; round < 5; round++) {
        const head = (await meta.images.getRef('win11', 'main'))!.version;
        const outs = await Promise.all([
          meta.images.commitVersion(version(head, at(10 + round), { author: 'a' }), 'main', `conflicts/main/a${round}`),
          b.images.commitVersion(version(head, at(10 + round), { author: 'b' }), 'main', `conflicts/main/b${round}`),
        ]);
        expect(outs.map((o) => o.kind).sort()).toEqual(['conflict', 'fast-forward']);
        expect(new Set(outs.map((o) => o.version.version)).size).toBe(2);
        const ff = outs.find((o) => o.kind === 'fast-forward')!;
        expect((await b.images.getRef('win11', 'main'))!.version).toBe(ff.version.version);
      }
      expect(await meta.images.versionCount('win11')).toBe(11);
      const seqs = (await meta.images.refLog('win11', undefined, 100)).map((r) => r.seq);
      expect(new Set(seqs).size).toBe(seqs.length);
    });

    it('the same commit retried through both servers at once lands once', async () => {
      const b = await second();
      const v = version(1, at(5), { commitKey: 'k'.repeat(64) });
      const outs = await Promise.all([meta.images.commitVersion(v, 'main', 'conflicts/main/x'), b.images.commitVersion(v, 'main', 'conflicts/main/y')]);
      expect(outs[0]).toEqual(outs[1]);
      expect(outs[0]!.kind).toBe('fast-forward');
      expect(await meta.images.versionCount('win11')).toBe(2);
    });

    it('two lease takers at once: one holds it, the other is told who does', async () => {
      const b = await second();
      for (let round = 0; round < 5; round++) {
        const outs = await Promise.all([
          meta.desktops.acquireLease('alice', `a${round}`, at(100 * round), at(100 * round + 60), false),
          b.desktops.acquireLease('alice', `b${round}`, at(100 * round), at(100 * round + 60), false),
        ]);
        expect(outs.map((o) => o.kind).sort()).toEqual(['acquired', 'held']);
        const won = outs.find((o) => o.kind === 'acquired')!;
        expect(outs.find((o) => o.kind === 'held')!.lease.holder).toBe(won.lease.holder);
        expect(won.lease.fencing).toBe(round + 1);
        expect(await b.desktops.releaseLease('alice', won.lease.fencing)).toEqual({ released: true });
      }
    });

    it('a VDI session taken over through both servers at once (conditional update): exactly one wins; the row keeps its ownership fields', async () => {
      const b = await second();
      await meta.vdi.insert({
        id: '0123456789', desktop: 'alice', image: 'win11', base: 1, mode: 'persistent', holder: 'vdi:0123456789', fencing: 1, secretHash: 'h',
        autoCommit: true, state: 'open', createdAt: at(0), createdBy: 'admin', updatedAt: at(0), lastConnectAt: null, lastDisconnectAt: null,
        lastDisconnect: null, outcome: null, failure: null, server: 'a', nbdHost: '10.0.0.1', nbdPort: 10809, heartbeatAt: null,
        checkpointLayer: 'c'.repeat(64), checkpointAt: at(1),
      });
      expect(await b.vdi.get('0123456789')).toMatchObject({ server: 'a', nbdHost: '10.0.0.1', nbdPort: 10809, heartbeatAt: null, checkpointLayer: 'c'.repeat(64), checkpointAt: at(1) });
      const expect0 = { server: 'a', heartbeatAt: null, state: 'open' } as const;
      const outs = await Promise.all([
        meta.vdi.updateIf('0123456789', expect0, { server: 'b', state: 'committing' }),
        b.vdi.updateIf('0123456789', expect0, { server: 'c', state: 'committing' }),
      ]);
      expect(outs.filter((o) => o === undefined)).toHaveLength(1);
      const won = outs.find((o) => o !== undefined)!;
      expect((await meta.vdi.get('0123456789'))!.server).toBe(won.server);
      // A heartbeat from the old owner, conditional on still owning it, changes nothing.
      expect(await meta.vdi.updateIf('0123456789', { server: 'a', state: 'open' }, { heartbeatAt: at(2) })).toBeUndefined();
      expect((await b.vdi.get('0123456789'))!.heartbeatAt).toBeNull();
    });

    it('compare-and-swap ref moves at once: exactly one wins', async () => {
      const b = await second();
      await meta.images.commitVersion(dversion(1, at(1)), 'main', 'unused');
      const outs = await Promise.all([
        meta.images.moveRef('win11', 'main', 1, 2, 'rollback', 'a', at(2)),
        b.images.moveRef('win11', 'main', 1, 2, 'rollback', 'b', at(2)),
        b.images.moveRef('win11', 'fresh', 2, null, 'branch', 'b', at(2)),
        meta.images.moveRef('win11', 'fresh', 1, null, 'branch', 'a', at(2)),
      ]);
      expect(outs.filter((o) => o.moved)).toHaveLength(2);
      expect(outs.slice(0, 2).filter((o) => o.moved)).toHaveLength(1);
      expect(outs.slice(2).filter((o) => o.moved)).toHaveLength(1);
      expect((await meta.images.refLog('win11', 'main', 10)).filter((r) => r.reason === 'rollback')).toHaveLength(1);
    });

    it('a fencing number from a lease taken over through the other server keeps the commit as a conflict', async () => {
      const b = await second();
      const f = (await meta.desktops.acquireLease('alice', 'e1', at(0), at(600), false)).lease.fencing;
      await b.desktops.acquireLease('alice', 'e2', at(1), at(600), true);
      const out = await meta.images.commitVersion(dversion(1, at(2)), 'desktops/alice', 'conflicts/desktops/alice/x', { desktop: 'alice', fencing: f });
      expect(out).toMatchObject({ kind: 'conflict', reason: 'fencing' });
      expect((await b.images.getRef('win11', 'desktops/alice'))!.version).toBe(1);
    });

    it('the two last admin tokens revoked at once, through both servers: one goes, one stays', async () => {
      const b = await second();
      for (let i = 0; i < 5; i++) {
        await meta.tokens.addToken(`${i}aaaaaaaaaaaaaaa-x`, 'admin', at(0));
        await meta.tokens.addToken(`${i}bbbbbbbbbbbbbbb-x`, 'admin', at(0));
        const outs = await Promise.all([meta.tokens.deleteToken(`${i}aaaaaaaaaaaaaaa`, at(1)), b.tokens.deleteToken(`${i}bbbbbbbbbbbbbbb`, at(1))]);
        expect(outs.filter((o) => o === 'last-admin')).toHaveLength(1);
        expect(await meta.tokens.countTokens('admin')).toBe(1);
        await meta.tokens.deleteToken(outs[0] === 'last-admin' ? `${i}aaaaaaaaaaaaaaa` : `${i}bbbbbbbbbbbbbbb`);
      }
    });

    it('a one-time boot token used twice at once, through both servers: one use sees it fresh', async () => {
      const b = await second();
      for (let i = 0; i < 5; i++) {
        await meta.endpoints.addBootToken({ hash: `t${i}`, endpoint: 'ep-01', mac: '02:00:00:00:00:01', action: 'sync', createdAt: at(0), expiresAt: at(600), usedAt: null });
        const outs = await Promise.all([meta.endpoints.useBootToken(`t${i}`, at(1)), b.endpoints.useBootToken(`t${i}`, at(2))]);
        expect(outs.filter((o) => o?.usedAt === null)).toHaveLength(1);
        expect(outs.filter((o) => o?.usedAt !== null && o !== undefined)).toHaveLength(1);
      }
    });

    it('two writers of one endpoint row (an admin approving, the endpoint booting) keep both changes', async () => {
      const b = await second();
      await meta.endpoints.insertEndpoint(endpoint('ep-07', 'pending', at(0)));
      const read = (await meta.endpoints.getEndpoint('ep-07'))!;
      const readB = (await b.endpoints.getEndpoint('ep-07'))!;
      await Promise.all([
        meta.endpoints.updateEndpoint({ ...read, state: 'enrolled', desktop: 'alice' }, read),
        b.endpoints.updateEndpoint({ ...readB, lastSeen: at(5), firmware: 'uefi' }, readB),
      ]);
      expect(await meta.endpoints.getEndpoint('ep-07')).toMatchObject({ state: 'enrolled', desktop: 'alice', lastSeen: at(5), firmware: 'uefi' });
    });

    it('boot events recorded through both servers at once get distinct, growing numbers', async () => {
      const b = await second();
      const evs = await Promise.all(Array.from({ length: 20 }, (_, i) =>
        (i % 2 ? b : meta).endpoints.addEvent({ endpoint: null, mac: '02:00:00:00:00:01', phase: 'dhcp', at: at(i), detail: { i } })));
      expect(new Set(evs.map((e) => e.seq)).size).toBe(20);
      expect((await meta.endpoints.listEvents(undefined, 100))).toHaveLength(20);
    });
  });
}
