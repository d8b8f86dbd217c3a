import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { EndpointRow } from '../endpoint/model.js';
import type { NewVersion } from '../image/model.js';
import { DEFAULT_RETENTION_POLICY, type PruneOutcome } from '../image/retention.js';
import type { VdiSessionRow } from '../vdi/model.js';
import type { MetaEngineFixture } from './meta-contract.js';
import type { Meta } from './repo.js';

/**
 * The lifecycle contract (retention, prune, deletes): the same answers on every engine. Run by
 * src/meta/lifecycle-contract-sqlite.test.ts and test/integration/lifecycle-pg.test.ts. Test support:
 * kept out of dist (tsconfig.build.json).
 */
const NOW = new Date(Date.UTC(2026, 5, 1, 12));
const daysAgo = (d: number) => new Date(NOW.getTime() - d * 86_400_000).toISOString();
const LATER = new Date(NOW.getTime() + 3600_000).toISOString();
const OPTS = { force: false, author: 'admin', at: NOW.toISOString() };
const hex = (c: string, n: number) => `${c}${n.toString(16).padStart(63, '0')}`;

function v(parent: number | null, n: number, ageDays: number, over: Partial<NewVersion> = {}): NewVersion {
  return {
    image: 'win', parent, layer: hex('a', n), index: hex('b', n), kind: parent === null ? 'import' : 'voi-commit', author: 'alice',
    message: '', chunksChanged: 1, chunksTotal: 1, at: daysAgo(ageDays), ...over,
  };
}

function endpoint(name: string, desktop: string | null, diskVersion: number | null): EndpointRow {
  return {
    id: `ep-${name}`, name, macs: [`02:00:00:00:00:${name.slice(-2).padStart(2, '0')}`], uuid: null, serial: null, state: 'enrolled', desktop, mode: 'sync',
    bootMethod: 'auto', firmware: null, disk: diskVersion === null ? 'unknown' : 'clean', diskVersion, commitRequested: null, lastSeen: null, lastSync: null, createdAt: daysAgo(1),
  };
}

function session(id: string, desktop: string, base: number, state: VdiSessionRow['state']): VdiSessionRow {
  return {
    id, desktop, image: 'win', base, mode: 'persistent', holder: `vdi:${id}`, fencing: null, secretHash: 'h', autoCommit: true, state,
    createdAt: daysAgo(1), createdBy: 'admin', updatedAt: daysAgo(1), lastConnectAt: null, lastDisconnectAt: null, lastDisconnect: null,
    outcome: null, failure: null, server: 's1', nbdHost: null, nbdPort: null, heartbeatAt: null, checkpointLayer: null, checkpointAt: null,
  };
}

export function lifecycleContract(engine: string, fx: MetaEngineFixture): void {
  let meta: Meta;
  afterEach(async () => {
    await meta.close();
    await fx.drop();
  });

  /** main: 1..n in a line, version k made (n - k + 100) days ago. */
  async function line(n: number): Promise<void> {
    for (let k = 1; k <= n; k++) {
      const out = await meta.images.commitVersion(v(k === 1 ? null : k - 1, k, n - k + 100), 'main', `conflicts/main/${k}`);
      expect(out.kind).toBe('fast-forward');
    }
  }
  const versions = async () => (await meta.images.listVersions('win', 1000)).map((x) => x.version);
  const policy = { ...DEFAULT_RETENTION_POLICY, keepLast: 3 };

  describe(`retention and deletes (${engine})`, () => {
    beforeEach(async () => {
      meta = await fx.open();
      await meta.images.createImage({ name: 'win', virtualSize: 1 << 20, chunkSize: 65536, hashAlg: 'blake3', createdAt: daysAgo(200) });
    });

    it('a dry-run prune plans and changes nothing; a real one removes the rows and keeps the ref log', async () => {
      await line(8);
      for (const n of [1, 8]) await meta.images.putManifest('win', n, { keyId: '0123456789abcdef', body: `{"version":${n}}`, sig: 'c2ln' });
      const log = await meta.images.refLog('win', undefined, 100);
      const dry = await meta.lifecycle.prune('win', policy, NOW, { dryRun: true, author: 'admin' });
      expect(dry!.plan.drop.map((x) => x.version)).toEqual([5, 4, 3, 2, 1]);
      expect(dry!.freedBlobs).toHaveLength(10);
      expect(dry!.freedLayers).toEqual([1, 2, 3, 4, 5].map((k) => hex('a', k)));
      expect(await versions()).toEqual([8, 7, 6, 5, 4, 3, 2, 1]);
      const real = await meta.lifecycle.prune('win', policy, NOW, { dryRun: false, author: 'admin' });
      expect(real!.plan.drop.map((x) => x.version)).toEqual([5, 4, 3, 2, 1]);
      expect(await versions()).toEqual([8, 7, 6]);
      expect(await meta.images.refLog('win', undefined, 100)).toEqual(log);
      // a pruned version's signed manifest goes with it
      expect(await meta.images.getManifest('win', 1)).toBeUndefined();
      expect(await meta.images.getManifest('win', 8)).toMatchObject({ body: '{"version":8}' });
      // Idempotent; the next commit gets a new number.
      expect((await meta.lifecycle.prune('win', policy, NOW, { dryRun: false, author: 'admin' }))!.plan.drop).toEqual([]);
      expect((await meta.images.commitVersion(v(8, 9, 0), 'main', 'x')).version.version).toBe(9);
      expect(await meta.lifecycle.prune('nope', policy, NOW, { dryRun: true, author: 'admin' })).toBeUndefined();
    });

    it('a blob another version (of any image) still names is not counted as freed', async () => {
      await line(6);
      await meta.images.createImage({ name: 'other', virtualSize: 1 << 20, chunkSize: 65536, hashAlg: 'blake3', createdAt: daysAgo(1) });
      await meta.images.commitVersion({ ...v(null, 1, 1), image: 'other', index: hex('b', 2) }, 'main', 'x');
      const out = await meta.lifecycle.prune('win', policy, NOW, { dryRun: false, author: 'admin' });
      expect(out!.plan.drop.map((x) => x.version)).toEqual([3, 2, 1]);
      expect(out!.freedBlobs).not.toContain(hex('b', 2));
      expect(out!.freedBlobs).not.toContain(hex('a', 1)); // other@1 has layer a…1
      expect(out!.freedBlobs).toContain(hex('b', 1));
    });

    it('keeps what desktops, leases, VDI sessions and endpoints hold; a per-image policy overrides the defaults', async () => {
      await line(20);
      await meta.desktops.createDesktop({ name: 'alice', image: 'win', mode: 'persistent', follows: 'main', createdAt: daysAgo(1) }, { name: 'desktops/alice', version: 12, reason: 'r', author: 'a' });
      await meta.desktops.createDesktop({ name: 'bob', image: 'win', mode: 'restore', follows: 'main', createdAt: daysAgo(1) });
      await meta.endpoints.insertEndpoint(endpoint('pc01', 'bob', 2));
      await meta.vdi.insert(session('s-open', 'alice', 4, 'open'));
      await meta.vdi.insert(session('s-done', 'alice', 6, 'committed'));
      const out = await meta.lifecycle.prune('win', policy, NOW, { dryRun: true, author: 'admin' });
      const why = (n: number) => out!.plan.keep.find((k) => k.version === n)?.why ?? [];
      expect(why(2)).toEqual(['endpoint pc01 (its disk records it, desktop bob)']);
      expect(why(4)).toEqual(['vdi-session s-open (open, desktop alice)']);
      expect(why(12)).toEqual(expect.arrayContaining(['ref desktops/alice', 'desktop alice (head of desktops/alice)']));
      expect(out!.plan.drop.map((x) => x.version)).toContain(6);
      // A live lease on alice freezes her whole line (an agent's commit may name any of it as parent).
      await meta.desktops.acquireLease('alice', 'endpoint:pc02', NOW.toISOString(), LATER, false);
      const leased = await meta.lifecycle.prune('win', policy, NOW, { dryRun: true, author: 'admin' });
      expect(leased!.plan.drop.map((x) => x.version)).toEqual([17, 16, 15, 14, 13]);
      // The image's own policy: keep the last 1, nothing for age.
      await meta.lifecycle.setPolicy('win', { keepLast: 1, keepDays: 0, conflictDays: null }, NOW.toISOString());
      expect(await meta.lifecycle.getPolicy('win')).toEqual({ keepLast: 1, keepDays: 0, conflictDays: null });
      const own = await meta.lifecycle.prune('win', policy, NOW, { dryRun: true, author: 'admin' });
      expect(own!.plan.policy).toEqual({ keepLast: 1, keepDays: 0, conflictDays: 30 });
      expect(own!.plan.drop.map((x) => x.version)).toEqual([19, 18, 17, 16, 15, 14, 13]);
      await meta.lifecycle.setPolicy('win', { keepLast: null, keepDays: null, conflictDays: null }, NOW.toISOString());
      expect(await meta.lifecycle.getPolicy('win')).toBeUndefined();
    });

    it('a prune deletes resolved conflict refs older than C days (logged), keeps unresolved ones and lists them', async () => {
      await line(4);
      // 5: a conflict off 3 (unresolved); 6: another conflict off 3 that main then took (resolved).
      await meta.images.commitVersion(v(3, 5, 60), 'main', 'conflicts/main/a');
      await meta.images.commitVersion(v(3, 6, 60), 'main', 'conflicts/main/b');
      await meta.images.moveRef('win', 'main', 6, 4, 'reset to the conflict', 'admin', daysAgo(59));
      const refsBefore = (await meta.images.listRefs('win')).map((r) => r.name);
      expect(refsBefore).toEqual(['conflicts/main/a', 'conflicts/main/b', 'main']);
      const out = await meta.lifecycle.prune('win', { ...policy, keepLast: 1 }, NOW, { dryRun: false, author: 'admin' });
      expect(out!.plan.conflicts.map((c) => [c.ref, c.resolved, c.deleted])).toEqual([['conflicts/main/a', false, false], ['conflicts/main/b', true, true]]);
      expect((await meta.images.listRefs('win')).map((r) => r.name)).toEqual(['conflicts/main/a', 'main']);
      expect((await meta.images.refLog('win', 'conflicts/main/b', 1))[0]).toMatchObject({ oldVersion: 6, newVersion: 6, deleted: true, author: 'admin' });
      expect(await versions()).toEqual([6, 5]);
    });

    it('ref delete: refused for a desktop line (never forceable) and an unresolved conflict (unless forced)', async () => {
      await line(3);
      await meta.images.commitVersion(v(2, 4, 1), 'main', 'conflicts/main/a');
      await meta.images.moveRef('win', 'test', 3, null, 'r', 'admin', daysAgo(1));
      await meta.desktops.createDesktop({ name: 'carol', image: 'win', mode: 'restore', follows: 'test', createdAt: daysAgo(1) });
      expect(await meta.lifecycle.deleteRef('win', 'test', { ...OPTS, force: true })).toEqual({
        kind: 'in-use', forceable: false, dependents: [{ kind: 'desktop', name: 'carol', detail: 'follows test' }],
      });
      const c = await meta.lifecycle.deleteRef('win', 'conflicts/main/a', OPTS);
      expect(c).toMatchObject({ kind: 'in-use', forceable: true, dependents: [{ kind: 'conflict', name: 'conflicts/main/a' }] });
      expect(await meta.images.getRef('win', 'conflicts/main/a')).toBeDefined();
      expect(await meta.lifecycle.deleteRef('win', 'conflicts/main/a', { ...OPTS, force: true })).toEqual({ kind: 'deleted', version: 4 });
      expect(await meta.images.getRef('win', 'conflicts/main/a')).toBeUndefined();
      expect(await meta.lifecycle.deleteRef('win', 'conflicts/main/a', OPTS)).toEqual({ kind: 'not-found' });
      expect((await meta.images.refLog('win', 'conflicts/main/a', 1))[0]).toMatchObject({ deleted: true, reason: 'ref deleted (forced)' });
    });

    it('desktop delete: refused while leased, in a VDI session or assigned; forced, it undoes them', async () => {
      await line(2);
      await meta.desktops.createDesktop({ name: 'alice', image: 'win', mode: 'persistent', follows: 'main', createdAt: daysAgo(1) }, { name: 'desktops/alice', version: 2, reason: 'r', author: 'a' });
      await meta.tokens.addToken('tokhash', 'desktop:alice', daysAgo(1), LATER);
      await meta.endpoints.insertEndpoint(endpoint('pc01', 'alice', 2));
      await meta.vdi.insert(session('s1', 'alice', 2, 'open'));
      await meta.desktops.acquireLease('alice', 'vdi:s1', NOW.toISOString(), LATER, false);
      const r = await meta.lifecycle.deleteDesktop('alice', OPTS);
      expect(r.kind === 'in-use' && r.dependents.map((d) => [d.kind, d.name])).toEqual([['lease', 'vdi:s1'], ['vdi-session', 's1'], ['endpoint', 'pc01']]);
      expect(await meta.desktops.getDesktop('alice')).toBeDefined();
      const f = await meta.lifecycle.deleteDesktop('alice', { ...OPTS, force: true });
      expect(f).toEqual({ kind: 'deleted', image: 'win', endpointsUnassigned: ['pc01'], sessionsDiscarded: ['s1'], tokensRevoked: 1 });
      expect(await meta.desktops.getDesktop('alice')).toBeUndefined();
      expect(await meta.images.getRef('win', 'desktops/alice')).toBeUndefined();
      expect(await meta.tokens.findToken('tokhash')).toBeUndefined();
      expect(await meta.endpoints.findByName('pc01')).toMatchObject({ desktop: null, diskVersion: null, disk: 'unknown' });
      expect(await meta.vdi.get('s1')).toMatchObject({ state: 'discarded' });
      expect(await meta.lifecycle.deleteDesktop('alice', OPTS)).toEqual({ kind: 'not-found' });
    });

    it('endpoint delete: refused while it holds a lease or is enrolled with a desktop; by name or id', async () => {
      await line(1);
      await meta.desktops.createDesktop({ name: 'alice', image: 'win', mode: 'restore', follows: 'main', createdAt: daysAgo(1) });
      await meta.endpoints.insertEndpoint(endpoint('pc01', 'alice', 1));
      await meta.endpoints.insertEndpoint(endpoint('pc02', null, null));
      await meta.desktops.acquireLease('alice', 'endpoint:pc01', NOW.toISOString(), LATER, false);
      const r = await meta.lifecycle.deleteEndpoint('pc01', OPTS);
      expect(r.kind === 'in-use' && r.dependents.map((d) => [d.kind, d.name])).toEqual([['lease', 'alice'], ['desktop', 'alice']]);
      expect(await meta.lifecycle.deleteEndpoint('ep-pc02', OPTS)).toEqual({ kind: 'deleted', id: 'ep-pc02', name: 'pc02' });
      expect(await meta.lifecycle.deleteEndpoint('pc01', { ...OPTS, force: true })).toEqual({ kind: 'deleted', id: 'ep-pc01', name: 'pc01' });
      expect(await meta.endpoints.findByMac('02:00:00:00:00:01')).toBeUndefined();
      expect((await meta.desktops.getLease('alice'))?.holder).toBeNull();
      expect(await meta.lifecycle.deleteEndpoint('pc01', OPTS)).toEqual({ kind: 'not-found' });
    });

    it('image delete: refused while desktops use it; forced, everything of it goes but the ref log', async () => {
      await line(3);
      await meta.desktops.createDesktop({ name: 'alice', image: 'win', mode: 'persistent', follows: 'main', createdAt: daysAgo(1) }, { name: 'desktops/alice', version: 3, reason: 'r', author: 'a' });
      await meta.lifecycle.setPolicy('win', { keepLast: 2, keepDays: null, conflictDays: null }, NOW.toISOString());
      const r = await meta.lifecycle.deleteImage('win', OPTS);
      expect(r).toMatchObject({ kind: 'in-use', forceable: true, dependents: [{ kind: 'desktop', name: 'alice' }] });
      await meta.images.putManifest('win', 3, { keyId: '0123456789abcdef', body: '{}', sig: 'c2ln' });
      const f = await meta.lifecycle.deleteImage('win', { ...OPTS, force: true });
      expect(await meta.engine.all('SELECT * FROM version_manifests WHERE image = ?', ['win'])).toEqual([]);
      expect(f).toMatchObject({ kind: 'deleted', versions: 3, desktops: ['alice'] });
      expect(f.kind === 'deleted' && f.freedBlobs).toHaveLength(6);
      expect(await meta.images.getImage('win')).toBeUndefined();
      expect(await meta.images.versionCount('win')).toBe(0);
      expect(await meta.lifecycle.getPolicy('win')).toBeUndefined();
      const log = await meta.images.refLog('win', undefined, 100);
      expect(log.filter((e) => e.deleted).map((e) => e.ref).sort()).toEqual(['desktops/alice', 'main']);
      expect(await meta.lifecycle.deleteImage('win', OPTS)).toEqual({ kind: 'not-found' });
    });

    it('a prune racing commits on another connection: a commit that lands keeps its parent; one that loses fails coded', async () => {
      const other = await fx.second();
      try {
        await line(8);
        for (let round = 0; round < 4; round++) {
          const top = (await meta.images.getRef('win', 'main'))!.version;
          const all = await versions();
          const stale = all[all.length - 1 - round] ?? all[all.length - 1]!; // an old version a disk may still be at
          const n = top + 1;
          const results = await Promise.allSettled([
            meta.lifecycle.prune('win', { keepLast: 2, keepDays: 0, conflictDays: 0 }, NOW, { dryRun: false, author: 'admin' }),
            other.images.commitVersion(v(stale, n * 10 + 1, 0), 'main', `conflicts/main/r${round}a`),
            other.images.commitVersion(v(top, n * 10 + 2, 0), 'main', `conflicts/main/r${round}b`),
          ]);
          expect(results[0].status).toBe('fulfilled');
          // the race is real: the first prune drops rows while the commits run (8 versions, keep-last 2)
          if (round === 0) expect((results[0] as PromiseFulfilledResult<PruneOutcome>).value.plan.drop.length).toBeGreaterThan(0);
          for (const r of results.slice(1)) {
            if (r.status === 'rejected') {
              expect((r.reason as { code?: string }).code).toBe('DF_ERR_VERSION_NOT_FOUND');
              continue;
            }
            const made = (r.value as { version: { parent: number | null } }).version;
            if (made.parent !== null) expect(await meta.images.getVersion('win', made.parent), `parent ${made.parent}`).toBeDefined();
          }
        }
      } finally {
        await other.close();
      }
    });

    it('a commit whose parent was pruned meanwhile fails, coded, and adds nothing', async () => {
      await line(6);
      await meta.lifecycle.prune('win', policy, NOW, { dryRun: false, author: 'admin' });
      await expect(meta.images.commitVersion(v(2, 99, 0), 'main', 'conflicts/main/z')).rejects.toMatchObject({ code: 'DF_ERR_VERSION_NOT_FOUND' });
      expect(await versions()).toEqual([6, 5, 4]);
    });
  });
}
