import { dfError } from '../errors.js';
import type {
  CommitFence, CommitOutcome, ConflictReason, ImageBoot, ImageRepo, ImageRow, NewVersion, RefLogRow, RefMoveOutcome, RefRow, SignedManifestRow, VersionRow,
} from '../image/model.js';
import type { LeaseRow } from '../desktop/model.js';
import { getLease } from './sql-desktops.js';
import type { Row, Sql, SqlEngine } from './sql.js';

/** The image domain over either engine (src/meta/sql.ts). Every state change is one transaction. */
const toImage = (r: Row): ImageRow => ({
  name: r.name as string, virtualSize: Number(r.virtual_size), chunkSize: Number(r.chunk_size),
  hashAlg: r.hash_alg as string, createdAt: r.created_at as string,
  ...(r.boot ? { boot: JSON.parse(r.boot as string) as ImageBoot } : {}),
});
const toVersion = (r: Row): VersionRow => ({
  image: r.image as string, version: Number(r.version), parent: r.parent === null ? null : Number(r.parent),
  layer: r.layer_id as string, index: r.index_id as string, kind: r.kind as VersionRow['kind'],
  author: r.author as string, message: r.message as string, createdAt: r.created_at as string,
  chunksChanged: Number(r.chunks_changed), chunksTotal: Number(r.chunks_total),
});
export const toRef = (r: Row): RefRow => ({ image: r.image as string, name: r.name as string, version: Number(r.version), updatedAt: r.updated_at as string });
const toLog = (r: Row): RefLogRow => ({
  seq: Number(r.seq), image: r.image as string, ref: r.ref as string,
  oldVersion: r.old_version === null ? null : Number(r.old_version), newVersion: Number(r.new_version),
  reason: r.reason as string, author: r.author as string, at: r.at as string,
  deleted: Number(r.deleted ?? 0) === 1,
});

export async function getRef(q: Sql, image: string, name: string): Promise<RefRow | undefined> {
  const r = await q.get('SELECT * FROM refs WHERE image = ? AND name = ?', [image, name]);
  return r && toRef(r);
}

async function getVersion(q: Sql, image: string, version: number): Promise<VersionRow | undefined> {
  const r = await q.get('SELECT * FROM versions WHERE image = ? AND version = ?', [image, version]);
  return r && toVersion(r);
}

async function setRef(q: Sql, image: string, name: string, old: number | null, to: number, reason: string, author: string, at: string): Promise<void> {
  if (old === null) await q.run('INSERT INTO refs (image, name, version, updated_at) VALUES (?, ?, ?, ?)', [image, name, to, at]);
  else await q.run('UPDATE refs SET version = ?, updated_at = ? WHERE image = ? AND name = ?', [to, at, image, name]);
  await appendRefLog(q, image, name, old, to, reason, author, at);
}

/** One ref log entry; `deleted`: the ref was deleted at `old` (`to` repeats it, the column being NOT NULL). */
export async function appendRefLog(q: Sql, image: string, name: string, old: number | null, to: number, reason: string, author: string, at: string, deleted = false): Promise<void> {
  const seq = Number((await q.get('SELECT COALESCE(MAX(seq), 0) + 1 AS n FROM ref_log'))!.n);
  await q.run('INSERT INTO ref_log (seq, image, ref, old_version, new_version, reason, author, at, deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
    [seq, image, name, old, to, reason, author, at, deleted ? 1 : 0]);
}

/** Compare-and-swap of a ref inside a caller's transaction. */
export async function moveRefIn(q: Sql, image: string, name: string, to: number, expect: number | null, reason: string, author: string, at: string): Promise<RefMoveOutcome> {
  const head = (await getRef(q, image, name))?.version ?? null;
  if (head !== expect) return { moved: false, head };
  await setRef(q, image, name, head, to, reason, author, at);
  return { moved: true, ref: (await getRef(q, image, name))! };
}

async function findCommit(q: Sql, image: string, commitKey: string, ref: string): Promise<CommitOutcome | undefined> {
  const r = await q.get('SELECT * FROM versions WHERE image = ? AND commit_key = ?', [image, commitKey]);
  if (!r) return undefined;
  const version = toVersion(r);
  const landed = r.landed_ref as string;
  const reason = r.landed_reason as ConflictReason | null;
  if (!reason) return { kind: 'fast-forward', version, ref: landed };
  return { kind: 'conflict', version, ref, head: (await getRef(q, image, ref))?.version ?? null, conflictRef: landed, reason };
}

function leaseText(lease: LeaseRow | undefined, at: string): string {
  if (!lease || lease.holder === null) return 'no lease is held';
  if (lease.expiresAt <= at) return `lease ${lease.fencing} of ${lease.holder} expired at ${lease.expiresAt}`;
  return `held by ${lease.holder} with fencing ${lease.fencing}`;
}

export class SqlImageRepo implements ImageRepo {
  constructor(private readonly db: SqlEngine) {}

  createImage(row: ImageRow): Promise<{ created: boolean; image: ImageRow }> {
    return this.db.tx(async (q) => {
      const r = await q.get('SELECT * FROM images WHERE name = ?', [row.name]);
      if (r) return { created: false, image: toImage(r) };
      await q.run('INSERT INTO images (name, virtual_size, chunk_size, hash_alg, created_at, boot) VALUES (?, ?, ?, ?, ?, ?)',
        [row.name, row.virtualSize, row.chunkSize, row.hashAlg, row.createdAt, row.boot ? JSON.stringify(row.boot) : null]);
      return { created: true, image: row };
    });
  }

  async setImageBoot(name: string, boot: ImageBoot | null): Promise<void> {
    await this.db.run('UPDATE images SET boot = ? WHERE name = ?', [boot ? JSON.stringify(boot) : null, name]);
  }

  async getImage(name: string): Promise<ImageRow | undefined> {
    const r = await this.db.get('SELECT * FROM images WHERE name = ?', [name]);
    return r && toImage(r);
  }

  async listImages(): Promise<ImageRow[]> {
    return (await this.db.all('SELECT * FROM images ORDER BY name')).map(toImage);
  }

  async versionCount(image: string): Promise<number> {
    return Number((await this.db.get('SELECT COUNT(*) AS n FROM versions WHERE image = ?', [image]))!.n);
  }

  getVersion(image: string, version: number): Promise<VersionRow | undefined> {
    return getVersion(this.db, image, version);
  }

  async listVersions(image: string, limit: number): Promise<VersionRow[]> {
    return (await this.db.all('SELECT * FROM versions WHERE image = ? ORDER BY version DESC LIMIT ?', [image, limit])).map(toVersion);
  }

  findCommit(image: string, commitKey: string, ref: string): Promise<CommitOutcome | undefined> {
    return findCommit(this.db, image, commitKey, ref);
  }

  commitVersion(v: NewVersion, ref: string, conflictRef: string, fence?: CommitFence): Promise<CommitOutcome> {
    return this.db.tx(async (q): Promise<CommitOutcome> => {
      const again = v.commitKey ? await findCommit(q, v.image, v.commitKey, ref) : undefined;
      if (again) return again;
      // The parent was read before this transaction: a prune may have dropped it since (src/image/retention.ts).
      if (v.parent !== null && !(await getVersion(q, v.image, v.parent))) {
        throw dfError('DF_ERR_VERSION_NOT_FOUND', `image ${v.image} has no version ${v.parent} (pruned meanwhile?)`, { image: v.image, version: v.parent });
      }
      const next = Number((await q.get('SELECT COALESCE(MAX(version), 0) + 1 AS n FROM versions WHERE image = ?', [v.image]))!.n);
      await q.run(`INSERT INTO versions (image, version, parent, layer_id, index_id, kind, author, message, created_at, chunks_changed, chunks_total)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        [v.image, next, v.parent, v.layer, v.index, v.kind, v.author, v.message, v.at, v.chunksChanged, v.chunksTotal]);
      const version = (await getVersion(q, v.image, next))!;
      const head = (await getRef(q, v.image, ref))?.version ?? null;
      const lease = fence ? await getLease(q, fence.desktop) : undefined;
      const fenced = !fence || (lease !== undefined && lease.holder !== null && lease.fencing === fence.fencing && lease.expiresAt > v.at);
      const landed = (name: string, reason: ConflictReason | null) =>
        q.run('UPDATE versions SET commit_key = ?, landed_ref = ?, landed_reason = ? WHERE image = ? AND version = ?',
          [v.commitKey ?? null, name, reason, v.image, next]);
      if (fenced && head === v.parent) {
        await setRef(q, v.image, ref, head, next, v.kind, v.author, v.at);
        await landed(ref, null);
        return { kind: 'fast-forward', version, ref };
      }
      const why = fenced
        ? `conflict: ${ref} was at ${head ?? 'none'}, parent ${v.parent ?? 'none'}`
        : `conflict: fencing ${fence!.fencing} is not the current lease of desktop ${fence!.desktop} (${leaseText(lease, v.at)})`;
      // Two conflicts on one ref in the same millisecond get distinct names.
      let name = conflictRef;
      for (let n = 2; await getRef(q, v.image, name); n++) name = `${conflictRef}-${n}`;
      await setRef(q, v.image, name, null, next, why, v.author, v.at);
      await landed(name, fenced ? 'parent' : 'fencing');
      return { kind: 'conflict', version, ref, head, conflictRef: name, reason: fenced ? 'parent' : 'fencing' };
    });
  }

  getRef(image: string, name: string): Promise<RefRow | undefined> {
    return getRef(this.db, image, name);
  }

  async listRefs(image: string): Promise<RefRow[]> {
    return (await this.db.all('SELECT * FROM refs WHERE image = ? ORDER BY name', [image])).map(toRef);
  }

  moveRef(image: string, name: string, to: number, expect: number | null, reason: string, author: string, at: string): Promise<RefMoveOutcome> {
    return this.db.tx((q) => moveRefIn(q, image, name, to, expect, reason, author, at));
  }

  async refLog(image: string, ref: string | undefined, limit: number): Promise<RefLogRow[]> {
    const rows = ref === undefined
      ? await this.db.all('SELECT * FROM ref_log WHERE image = ? ORDER BY seq DESC LIMIT ?', [image, limit])
      : await this.db.all('SELECT * FROM ref_log WHERE image = ? AND ref = ? ORDER BY seq DESC LIMIT ?', [image, ref, limit]);
    return rows.map(toLog);
  }

  async putManifest(image: string, version: number, m: SignedManifestRow): Promise<void> {
    // A number freed by a deleted version and taken again gets the new version's manifest.
    await this.db.run(`INSERT INTO version_manifests (image, version, key_id, body, sig) VALUES (?, ?, ?, ?, ?)
      ON CONFLICT (image, version) DO UPDATE SET key_id = excluded.key_id, body = excluded.body, sig = excluded.sig`, [image, version, m.keyId, m.body, m.sig]);
  }

  async getManifest(image: string, version: number): Promise<SignedManifestRow | undefined> {
    const r = await this.db.get('SELECT key_id, body, sig FROM version_manifests WHERE image = ? AND version = ?', [image, version]);
    return r && { keyId: r.key_id as string, body: r.body as string, sig: r.sig as string };
  }

  async reachable(image: string, heads: readonly number[], version: number): Promise<boolean> {
    if (!heads.length) return false;
    // Parents are always older (smaller numbers): the walk stops below the version asked about.
    const r = await this.db.get(`WITH RECURSIVE reach(v) AS (
        SELECT version FROM versions WHERE image = ? AND version IN (${heads.map(() => '?').join(', ')}) AND version >= ?
        UNION SELECT p.parent FROM versions p JOIN reach ON p.image = ? AND p.version = reach.v WHERE p.parent IS NOT NULL AND p.parent >= ?)
      SELECT 1 AS ok FROM reach WHERE v = ?`, [image, ...heads, version, image, version, version]);
    return r !== undefined;
  }

  async ancestry(image: string, heads: readonly number[], limit: number): Promise<VersionRow[]> {
    if (!heads.length) return [];
    const rows = await this.db.all(`WITH RECURSIVE reach(v) AS (
        SELECT version FROM versions WHERE image = ? AND version IN (${heads.map(() => '?').join(', ')})
        UNION SELECT p.parent FROM versions p JOIN reach ON p.image = ? AND p.version = reach.v WHERE p.parent IS NOT NULL)
      SELECT versions.* FROM versions JOIN reach ON versions.image = ? AND versions.version = reach.v ORDER BY versions.version DESC LIMIT ?`,
      [image, ...heads, image, image, limit]);
    return rows.map(toVersion);
  }
}
