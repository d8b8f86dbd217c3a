import type { GcCandidate, GcHold, GcKind, GcLockState, GcRepo, GcVersionRoot } from '../gc/model.js';
import type { Row, Sql, SqlEngine } from './sql.js';

/** Garbage collection's lock, candidates and holds over either engine (migration 5). */
const LOCK = 'gc';
/** Ids per IN (…) list: under SQLite's and PostgreSQL's parameter limits. */
const IN_BATCH = 400;

const toLock = (r: Row): GcLockState => ({
  holder: (r.holder as string | null) ?? null, run: (r.run as string | null) ?? null, expires: Number(r.expires),
  phase: (r.phase as string | null) ?? null, progress: r.progress ? JSON.parse(r.progress as string) : null,
  startedAt: (r.started_at as string | null) ?? null, finishedAt: (r.finished_at as string | null) ?? null,
  result: r.result ? JSON.parse(r.result as string) : null,
});

const toCandidate = (r: Row): GcCandidate => ({
  kind: r.kind as GcKind, id: r.id as string, state: r.state as GcCandidate['state'], size: Number(r.size), mtime: Number(r.mtime), run: r.run as string,
  markedAt: r.marked_at as string,
});

function* batches<T>(xs: readonly T[]): Iterable<T[]> {
  for (let i = 0; i < xs.length; i += IN_BATCH) yield xs.slice(i, i + IN_BATCH);
}
const marks = (n: number) => Array.from({ length: n }, () => '?').join(', ');

async function deletingIn(q: Sql, kind: GcKind, ids: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for (const b of batches(ids)) {
    const rows = await q.all(`SELECT id FROM gc_objects WHERE kind = ? AND state = 'deleting' AND id IN (${marks(b.length)})`, [kind, ...b]);
    for (const r of rows) out.push(r.id as string);
  }
  return out;
}

export class SqlGcRepo implements GcRepo {
  constructor(private readonly db: SqlEngine) {}

  async versionRoots(after: { image: string; version: number } | null, limit: number): Promise<GcVersionRoot[]> {
    const where = after ? 'WHERE v.image > ? OR (v.image = ? AND v.version > ?)' : '';
    const rows = await this.db.all(`SELECT v.image, v.version, v.layer_id, v.index_id, p.version AS kept FROM versions v
        LEFT JOIN versions p ON p.image = v.image AND p.version = v.parent ${where} ORDER BY v.image, v.version LIMIT ?`,
      after ? [after.image, after.image, after.version, limit] : [limit]);
    return rows.map((r) => ({ image: r.image as string, version: Number(r.version), layer: r.layer_id as string, index: r.index_id as string, parentKept: r.kept !== null && r.kept !== undefined }));
  }

  async sessionRoots(): Promise<Array<{ image: string; layer: string }>> {
    const rows = await this.db.all(`SELECT image, checkpoint_layer FROM vdi_sessions WHERE checkpoint_layer IS NOT NULL AND state NOT IN ('committed', 'discarded')`);
    return rows.map((r) => ({ image: r.image as string, layer: r.checkpoint_layer as string }));
  }

  acquire(holder: string, run: string, now: number, expires: number): Promise<GcLockState | undefined> {
    return this.db.tx(async (q) => {
      const taken = await q.run(
        `INSERT INTO gc_lock (name, holder, run, expires, phase, progress, started_at) VALUES (?, ?, ?, ?, 'start', NULL, ?)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, run = excluded.run, expires = excluded.expires, phase = 'start',
           progress = NULL, started_at = excluded.started_at, finished_at = NULL
         WHERE gc_lock.holder IS NULL OR gc_lock.expires < ?`,
        [LOCK, holder, run, expires, new Date(now).toISOString(), now]);
      if (taken > 0) return undefined;
      return toLock((await q.get('SELECT * FROM gc_lock WHERE name = ?', [LOCK]))!);
    });
  }

  async renew(run: string, expires: number, phase: string, progress: unknown): Promise<boolean> {
    const n = await this.db.run('UPDATE gc_lock SET expires = ?, phase = ?, progress = ? WHERE name = ? AND run = ? AND holder IS NOT NULL',
      [expires, phase, JSON.stringify(progress), LOCK, run]);
    return n > 0;
  }

  async release(run: string, at: string, result: unknown): Promise<void> {
    await this.db.run(`UPDATE gc_lock SET holder = NULL, expires = 0, phase = 'done', finished_at = ?, result = ? WHERE name = ? AND run = ?`,
      [at, JSON.stringify(result), LOCK, run]);
  }

  async state(): Promise<GcLockState | undefined> {
    const r = await this.db.get('SELECT * FROM gc_lock WHERE name = ?', [LOCK]);
    return r && toLock(r);
  }

  async candidates(kind: GcKind, after: string, limit: number): Promise<GcCandidate[]> {
    return (await this.db.all('SELECT * FROM gc_objects WHERE kind = ? AND id > ? ORDER BY id LIMIT ?', [kind, after, limit])).map(toCandidate);
  }

  async addCandidates(rows: GcCandidate[], at: string): Promise<void> {
    if (!rows.length) return;
    await this.db.tx(async (q) => {
      for (const r of rows) {
        await q.run('INSERT INTO gc_objects (kind, id, state, size, mtime, run, marked_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, id) DO NOTHING',
          [r.kind, r.id, r.state, r.size, r.mtime, r.run, at]);
      }
    });
  }

  async dropCandidates(kind: GcKind, ids: string[]): Promise<void> {
    for (const b of batches(ids)) await this.db.run(`DELETE FROM gc_objects WHERE kind = ? AND id IN (${marks(b.length)})`, [kind, ...b]);
  }

  async startDeleting(kind: GcKind, ids: string[]): Promise<string[]> {
    const out: string[] = [];
    for (const b of batches(ids)) {
      // One transaction per batch: a commit's hold either cancelled a row before (it is gone) or sees it 'deleting' after.
      out.push(...await this.db.tx(async (q) => {
        await q.run(`UPDATE gc_objects SET state = 'deleting' WHERE kind = ? AND state = 'candidate' AND id IN (${marks(b.length)})`, [kind, ...b]);
        return deletingIn(q, kind, b);
      }));
    }
    return out;
  }

  hold(h: GcHold, chunks: string[], blobs: string[], expires: number): Promise<{ deleting: string[] }> {
    return this.db.tx(async (q) => {
      await q.run('INSERT INTO gc_holds (id, image, layer, parent_index, expires) VALUES (?, ?, ?, ?, ?)', [h.id, h.image, h.layer, h.parentIndex, expires]);
      const deleting: string[] = [];
      // Most of the time there is no candidate at all: an import of a million chunks then costs one query.
      if (!(await q.get('SELECT 1 AS x FROM gc_objects LIMIT 1'))) return { deleting };
      for (const [kind, ids] of [['chunk', chunks], ['blob', blobs]] as const) {
        for (const b of batches(ids)) await q.run(`DELETE FROM gc_objects WHERE kind = ? AND state = 'candidate' AND id IN (${marks(b.length)})`, [kind, ...b]);
        deleting.push(...await deletingIn(q, kind, ids));
      }
      return { deleting };
    });
  }

  deleting(kind: GcKind, ids: string[]): Promise<string[]> {
    return deletingIn(this.db, kind, ids);
  }

  reclaimStale(kind: GcKind, ids: string[], now: number): Promise<string[]> {
    return this.db.tx(async (q) => {
      const live = await q.get('SELECT 1 AS x FROM gc_lock WHERE name = ? AND holder IS NOT NULL AND expires >= ?', [LOCK, now]);
      if (live) return deletingIn(q, kind, ids);
      for (const b of batches(ids)) await q.run(`DELETE FROM gc_objects WHERE kind = ? AND state = 'deleting' AND id IN (${marks(b.length)})`, [kind, ...b]);
      return [];
    });
  }

  async unhold(id: string): Promise<void> {
    await this.db.run('DELETE FROM gc_holds WHERE id = ?', [id]);
  }

  async holds(now: number): Promise<GcHold[]> {
    await this.db.run('DELETE FROM gc_holds WHERE expires < ?', [now]);
    return (await this.db.all('SELECT * FROM gc_holds ORDER BY id')).map((r) => ({ id: r.id as string, image: r.image as string, layer: r.layer as string, parentIndex: (r.parent_index as string | null) ?? null }));
  }
}
