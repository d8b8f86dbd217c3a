import type { RefRow } from '../image/model.js';
import { isConflictRef } from '../image/names.js';
import {
  planRetention, type DeleteOpts, type DeleteOutcome, type Dependent, type LifecycleRepo, type PolicyOverride, type PruneOutcome,
  type RetentionPolicy, type RetentionRoot, type RetentionVersion,
} from '../image/retention.js';
import { desktopRef, desktopScope } from '../desktop/desktops.js';
import { appendRefLog, getRef, toRef } from './sql-images.js';
import type { Row, Sql, SqlEngine } from './sql.js';

/**
 * Retention and deletes over either engine (src/image/retention.ts says what they mean). Each is one
 * transaction that reads what depends on the thing and changes it, so a lease taken, a session
 * opened or a commit landing meanwhile is seen (SQLite: transactions queue; PostgreSQL:
 * serializable, retried on conflict).
 */
const UNFINISHED_VDI = ['open', 'committing', 'failed'];
const toRetentionVersion = (r: Row): RetentionVersion => ({
  version: Number(r.version), parent: r.parent === null ? null : Number(r.parent), createdAt: r.created_at as string,
  landedRef: (r.landed_ref as string | null) ?? null, layer: r.layer_id as string, index: r.index_id as string,
});
const marks = (n: number) => Array.from({ length: n }, () => '?').join(', ');

async function deleteRefRow(q: Sql, r: RefRow, reason: string, author: string, at: string): Promise<void> {
  await q.run('DELETE FROM refs WHERE image = ? AND name = ?', [r.image, r.name]);
  await appendRefLog(q, r.image, r.name, r.version, r.version, reason, author, at, true);
}

/** Of `ids`, those a version other than `except` (image → versions) still names. */
async function blobsInUse(q: Sql, ids: readonly string[], except: { image: string; versions: ReadonlySet<number> } | { image: string; all: true }): Promise<Set<string>> {
  const used = new Set<string>();
  const list = [...new Set(ids)];
  for (let i = 0; i < list.length; i += 200) {
    const part = list.slice(i, i + 200);
    const rows = await q.all(`SELECT image, version, layer_id, index_id FROM versions WHERE layer_id IN (${marks(part.length)}) OR index_id IN (${marks(part.length)})`, [...part, ...part]);
    for (const r of rows) {
      if (r.image === except.image && ('all' in except || except.versions.has(Number(r.version)))) continue;
      used.add(r.layer_id as string);
      used.add(r.index_id as string);
    }
  }
  return used;
}

function freed(dropped: readonly RetentionVersion[], used: ReadonlySet<string>): { freedBlobs: string[]; freedLayers: string[] } {
  const layers = new Set(dropped.map((v) => v.layer).filter((id) => !used.has(id)));
  const blobs = new Set([...layers, ...dropped.map((v) => v.index).filter((id) => !used.has(id))]);
  return { freedBlobs: [...blobs].sort(), freedLayers: [...layers].sort() };
}

async function deleteVersions(q: Sql, image: string, versions: readonly number[]): Promise<void> {
  for (let i = 0; i < versions.length; i += 500) {
    const part = versions.slice(i, i + 500);
    await q.run(`DELETE FROM versions WHERE image = ? AND version IN (${marks(part.length)})`, [image, ...part]);
    await q.run(`DELETE FROM version_manifests WHERE image = ? AND version IN (${marks(part.length)})`, [image, ...part]);
  }
}

/** What holds versions of `image` besides its refs (src/image/retention.ts, "root"). */
async function rootsOf(q: Sql, image: string, now: string): Promise<RetentionRoot[]> {
  const roots: RetentionRoot[] = [];
  const refs = new Map((await q.all('SELECT * FROM refs WHERE image = ?', [image])).map((r) => [r.name as string, Number(r.version)]));
  const desktops = await q.all('SELECT name, mode, follows FROM desktops WHERE image = ?', [image]);
  const names = desktops.map((d) => d.name as string);
  // Live leases of this image's desktops, in one query (a site has hundreds of desktops).
  const leases = new Map((await q.all('SELECT l.desktop, l.holder, l.fencing FROM leases l JOIN desktops d ON d.name = l.desktop WHERE d.image = ? AND l.holder IS NOT NULL AND l.expires_at > ?', [image, now]))
    .map((l) => [l.desktop as string, l]));
  for (const d of desktops) {
    const ref = d.mode === 'persistent' ? desktopRef(d.name as string) : (d.follows as string);
    const head = refs.get(ref);
    if (head === undefined) continue;
    roots.push({ kind: 'desktop', name: d.name as string, version: head, detail: `head of ${ref}` });
    const lease = leases.get(d.name as string);
    if (lease) roots.push({ kind: 'lease', name: lease.holder as string, version: head, line: true, detail: `on desktop ${d.name as string}, fencing ${Number(lease.fencing)}` });
  }
  for (const s of await q.all(`SELECT id, desktop, base, state FROM vdi_sessions WHERE image = ? AND state IN (${marks(UNFINISHED_VDI.length)})`, [image, ...UNFINISHED_VDI])) {
    roots.push({ kind: 'vdi-session', name: s.id as string, version: Number(s.base), detail: `${s.state as string}, desktop ${s.desktop as string}` });
  }
  if (names.length) {
    for (const e of await q.all(`SELECT name, desktop, disk_version FROM endpoints WHERE disk_version IS NOT NULL AND desktop IN (${marks(names.length)})`, names)) {
      roots.push({ kind: 'endpoint', name: e.name as string, version: Number(e.disk_version), detail: `its disk records it, desktop ${e.desktop as string}` });
    }
  }
  return roots;
}

async function versionsOf(q: Sql, image: string): Promise<RetentionVersion[]> {
  return (await q.all('SELECT version, parent, created_at, landed_ref, layer_id, index_id FROM versions WHERE image = ?', [image])).map(toRetentionVersion);
}

/** Is `version` on the line (walking parents) of a non-conflict ref head? */
function onPlainLine(versions: readonly RetentionVersion[], refs: readonly RefRow[], version: number): boolean {
  const byNum = new Map(versions.map((v) => [v.version, v]));
  for (const r of refs) {
    if (isConflictRef(r.name)) continue;
    for (let v = byNum.get(r.version), n = 0; v && n <= versions.length; v = v.parent === null ? undefined : byNum.get(v.parent), n++) {
      if (v.version === version) return true;
      if (v.version < version) break; // parents are older
    }
  }
  return false;
}

async function desktopDependents(q: Sql, name: string, at: string): Promise<Dependent[]> {
  const out: Dependent[] = [];
  const lease = await q.get('SELECT holder, fencing, expires_at FROM leases WHERE desktop = ? AND holder IS NOT NULL AND expires_at > ?', [name, at]);
  if (lease) out.push({ kind: 'lease', name: lease.holder as string, detail: `holds the lease (fencing ${Number(lease.fencing)}) until ${lease.expires_at as string}` });
  for (const s of await q.all(`SELECT id, state FROM vdi_sessions WHERE desktop = ? AND state IN (${marks(UNFINISHED_VDI.length)}) ORDER BY id`, [name, ...UNFINISHED_VDI])) {
    out.push({ kind: 'vdi-session', name: s.id as string, detail: `VDI session ${s.state as string}` });
  }
  for (const e of await q.all('SELECT name, state, disk_version FROM endpoints WHERE desktop = ? ORDER BY name', [name])) {
    out.push({ kind: 'endpoint', name: e.name as string, detail: `${e.state as string} endpoint assigned to it${e.disk_version === null ? '' : ` (its disk is at version ${Number(e.disk_version)})`}` });
  }
  return out;
}

type DesktopDeleted = { image: string; endpointsUnassigned: string[]; sessionsDiscarded: string[]; tokensRevoked: number };

async function deleteDesktopIn(q: Sql, name: string, o: DeleteOpts): Promise<DeleteOutcome<DesktopDeleted>> {
  const d = await q.get('SELECT * FROM desktops WHERE name = ?', [name]);
  if (!d) return { kind: 'not-found' };
  const deps = await desktopDependents(q, name, o.at);
  if (deps.length && !o.force) return { kind: 'in-use', dependents: deps, forceable: true };
  const endpoints = (await q.all('SELECT id, name FROM endpoints WHERE desktop = ? ORDER BY name', [name]));
  // An endpoint without a desktop waits at boot (src/endpoint/decide.ts); its disk is another line's now.
  await q.run("UPDATE endpoints SET desktop = NULL, disk = 'unknown', disk_version = NULL, commit_requested = 0 WHERE desktop = ?", [name]);
  const sessions = (await q.all(`SELECT id FROM vdi_sessions WHERE desktop = ? AND state IN (${marks(UNFINISHED_VDI.length)}) ORDER BY id`, [name, ...UNFINISHED_VDI])).map((r) => r.id as string);
  if (sessions.length) {
    await q.run(`UPDATE vdi_sessions SET state = 'discarded', failure = ?, updated_at = ? WHERE desktop = ? AND state IN (${marks(UNFINISHED_VDI.length)})`,
      [`desktop ${name} deleted by ${o.author}`, o.at, name, ...UNFINISHED_VDI]);
  }
  await q.run('DELETE FROM leases WHERE desktop = ?', [name]);
  const tokensRevoked = await q.run('DELETE FROM tokens WHERE scope = ?', [desktopScope(name)]);
  const image = d.image as string;
  if (d.mode === 'persistent') {
    const r = await getRef(q, image, desktopRef(name));
    if (r) await deleteRefRow(q, r, `desktop ${name} deleted`, o.author, o.at);
  }
  await q.run('DELETE FROM desktops WHERE name = ?', [name]);
  return { kind: 'deleted', image, endpointsUnassigned: endpoints.map((e) => e.name as string), sessionsDiscarded: sessions, tokensRevoked };
}

export class SqlLifecycleRepo implements LifecycleRepo {
  constructor(private readonly db: SqlEngine) {}

  async getPolicy(image: string): Promise<PolicyOverride | undefined> {
    const r = await this.db.get('SELECT keep_last, keep_days, conflict_days FROM image_policies WHERE image = ?', [image]);
    const n = (v: unknown) => (v === null || v === undefined ? null : Number(v));
    return r && { keepLast: n(r.keep_last), keepDays: n(r.keep_days), conflictDays: n(r.conflict_days) };
  }

  async setPolicy(image: string, o: PolicyOverride, at: string): Promise<void> {
    if (o.keepLast === null && o.keepDays === null && o.conflictDays === null) {
      await this.db.run('DELETE FROM image_policies WHERE image = ?', [image]);
      return;
    }
    await this.db.run(`INSERT INTO image_policies (image, keep_last, keep_days, conflict_days, updated_at) VALUES (?, ?, ?, ?, ?)
      ON CONFLICT (image) DO UPDATE SET keep_last = excluded.keep_last, keep_days = excluded.keep_days, conflict_days = excluded.conflict_days, updated_at = excluded.updated_at`,
    [image, o.keepLast, o.keepDays, o.conflictDays, at]);
  }

  prune(image: string, defaults: RetentionPolicy, now: Date, opts: { dryRun: boolean; author: string }): Promise<PruneOutcome | undefined> {
    return this.db.tx(async (q) => {
      if (!(await q.get('SELECT name FROM images WHERE name = ?', [image]))) return undefined;
      const o = await q.get('SELECT keep_last, keep_days, conflict_days FROM image_policies WHERE image = ?', [image]);
      const pick = (v: unknown, d: number) => (v === null || v === undefined ? d : Number(v));
      const policy: RetentionPolicy = o
        ? { keepLast: pick(o.keep_last, defaults.keepLast), keepDays: pick(o.keep_days, defaults.keepDays), conflictDays: pick(o.conflict_days, defaults.conflictDays) }
        : { ...defaults };
      const at = now.toISOString();
      const refs = (await q.all('SELECT * FROM refs WHERE image = ? ORDER BY name', [image])).map(toRef);
      const plan = planRetention({ versions: await versionsOf(q, image), refs, roots: await rootsOf(q, image, at), policy, now });
      const dropped = new Set(plan.drop.map((v) => v.version));
      const used = await blobsInUse(q, plan.drop.flatMap((v) => [v.layer, v.index]), { image, versions: dropped });
      const out: PruneOutcome = { plan, dryRun: opts.dryRun, ...freed(plan.drop, used) };
      if (opts.dryRun) return out;
      for (const c of plan.conflicts.filter((x) => x.deleted)) {
        await deleteRefRow(q, { image, name: c.ref, version: c.version, updatedAt: c.updatedAt }, `prune: conflict resolved (version ${c.version} is on a line) and older than ${policy.conflictDays} days`, opts.author, at);
      }
      await deleteVersions(q, image, [...dropped]);
      return out;
    });
  }

  deleteRef(image: string, name: string, o: DeleteOpts): Promise<DeleteOutcome<{ version: number }>> {
    return this.db.tx(async (q): Promise<DeleteOutcome<{ version: number }>> => {
      const ref = await getRef(q, image, name);
      if (!ref) return { kind: 'not-found' };
      const lines = (await q.all('SELECT name, mode, follows FROM desktops WHERE image = ? ORDER BY name', [image]))
        .filter((d) => d.follows === name || (d.mode === 'persistent' && desktopRef(d.name as string) === name))
        .map((d): Dependent => ({ kind: 'desktop', name: d.name as string, detail: d.follows === name ? `follows ${name}` : `its line is ${name}` }));
      if (lines.length) return { kind: 'in-use', dependents: lines, forceable: false };
      if (isConflictRef(name) && !o.force) {
        const refs = (await q.all('SELECT * FROM refs WHERE image = ?', [image])).map(toRef);
        if (!onPlainLine(await versionsOf(q, image), refs, ref.version)) {
          return { kind: 'in-use', forceable: true, dependents: [{ kind: 'conflict', name, detail: `version ${ref.version} is on no other ref's line: the conflict is not resolved (reset or promote to it, or --force to give it up)` }] };
        }
      }
      await deleteRefRow(q, ref, `ref deleted${o.force ? ' (forced)' : ''}`, o.author, o.at);
      return { kind: 'deleted', version: ref.version };
    });
  }

  deleteDesktop(name: string, o: DeleteOpts): Promise<DeleteOutcome<DesktopDeleted>> {
    return this.db.tx((q) => deleteDesktopIn(q, name, o));
  }

  deleteEndpoint(key: string, o: DeleteOpts): Promise<DeleteOutcome<{ id: string; name: string }>> {
    return this.db.tx(async (q): Promise<DeleteOutcome<{ id: string; name: string }>> => {
      const e = (await q.get('SELECT * FROM endpoints WHERE id = ?', [key])) ?? (await q.get('SELECT * FROM endpoints WHERE name = ?', [key]));
      if (!e) return { kind: 'not-found' };
      const id = e.id as string;
      const name = e.name as string;
      const deps: Dependent[] = [];
      const leases = await q.all('SELECT desktop, fencing, expires_at FROM leases WHERE holder = ? AND expires_at > ? ORDER BY desktop', [`endpoint:${name}`, o.at]);
      for (const l of leases) deps.push({ kind: 'lease', name: l.desktop as string, detail: `it holds the lease of desktop ${l.desktop as string} (fencing ${Number(l.fencing)}) until ${l.expires_at as string}` });
      if (e.state === 'enrolled' && e.desktop !== null) {
        deps.push({ kind: 'desktop', name: e.desktop as string, detail: `enrolled and assigned to desktop ${e.desktop as string}${e.disk_version === null ? '' : `, its disk at version ${Number(e.disk_version)}`}` });
      }
      if (deps.length && !o.force) return { kind: 'in-use', dependents: deps, forceable: true };
      for (const l of leases) await q.run('UPDATE leases SET holder = NULL WHERE desktop = ? AND fencing = ?', [l.desktop as string, Number(l.fencing)]);
      for (const t of ['endpoint_macs', 'endpoint_keys', 'endpoint_addresses', 'boot_tokens']) await q.run(`DELETE FROM ${t} WHERE endpoint = ?`, [id]);
      await q.run('DELETE FROM endpoints WHERE id = ?', [id]);
      return { kind: 'deleted', id, name };
    });
  }

  deleteImage(name: string, o: DeleteOpts): Promise<DeleteOutcome<{ versions: number; desktops: string[]; freedBlobs: string[]; freedLayers: string[] }>> {
    return this.db.tx(async (q): Promise<DeleteOutcome<{ versions: number; desktops: string[]; freedBlobs: string[]; freedLayers: string[] }>> => {
      if (!(await q.get('SELECT name FROM images WHERE name = ?', [name]))) return { kind: 'not-found' };
      const desktops = (await q.all('SELECT name FROM desktops WHERE image = ? ORDER BY name', [name])).map((d) => d.name as string);
      if (desktops.length && !o.force) {
        const deps: Dependent[] = [];
        for (const d of desktops) {
          const under = await desktopDependents(q, d, o.at);
          deps.push({ kind: 'desktop', name: d, detail: `desktop of this image${under.length ? `; ${under.map((x) => `${x.kind} ${x.name}: ${x.detail}`).join('; ')}` : ''}` });
        }
        return { kind: 'in-use', dependents: deps, forceable: true };
      }
      for (const d of desktops) await deleteDesktopIn(q, d, { ...o, force: true });
      const versions = await versionsOf(q, name);
      const used = await blobsInUse(q, versions.flatMap((v) => [v.layer, v.index]), { image: name, all: true });
      for (const r of (await q.all('SELECT * FROM refs WHERE image = ? ORDER BY name', [name])).map(toRef)) await deleteRefRow(q, r, `image ${name} deleted`, o.author, o.at);
      await q.run('DELETE FROM versions WHERE image = ?', [name]);
      await q.run('DELETE FROM version_manifests WHERE image = ?', [name]);
      await q.run('DELETE FROM image_policies WHERE image = ?', [name]);
      await q.run('DELETE FROM images WHERE name = ?', [name]);
      return { kind: 'deleted', versions: versions.length, desktops, ...freed(versions, used) };
    });
  }
}
