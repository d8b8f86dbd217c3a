import type {
  DesktopCreateOutcome, DesktopRepo, DesktopRow, LeaseAcquireOutcome, LeaseReleaseOutcome, LeaseRow,
} from '../desktop/model.js';
import { moveRefIn } from './sql-images.js';
import type { Row, Sql, SqlEngine } from './sql.js';

/** Desktops and their leases over either engine. Lease races are decided by the database's transactions. */
const toDesktop = (r: Row): DesktopRow => ({
  name: r.name as string, image: r.image as string, mode: r.mode as DesktopRow['mode'], follows: r.follows as string, createdAt: r.created_at as string,
});
const toLease = (r: Row): LeaseRow => ({
  desktop: r.desktop as string, holder: (r.holder as string | null) ?? null, fencing: Number(r.fencing), since: r.since as string, expiresAt: r.expires_at as string,
});

export async function getLease(q: Sql, desktop: string): Promise<LeaseRow | undefined> {
  const r = await q.get('SELECT * FROM leases WHERE desktop = ?', [desktop]);
  return r && toLease(r);
}

async function getDesktop(q: Sql, name: string): Promise<DesktopRow | undefined> {
  const r = await q.get('SELECT * FROM desktops WHERE name = ?', [name]);
  return r && toDesktop(r);
}

export class SqlDesktopRepo implements DesktopRepo {
  constructor(private readonly db: SqlEngine) {}

  createDesktop(row: DesktopRow, ref?: { name: string; version: number; reason: string; author: string }): Promise<DesktopCreateOutcome> {
    return this.db.tx(async (q): Promise<DesktopCreateOutcome> => {
      const existing = await getDesktop(q, row.name);
      if (existing) return { kind: 'exists', desktop: existing };
      if (ref) {
        const moved = await moveRefIn(q, row.image, ref.name, ref.version, null, ref.reason, ref.author, row.createdAt);
        if (!moved.moved) return { kind: 'ref-exists', head: moved.head };
      }
      await q.run('INSERT INTO desktops (name, image, mode, follows, created_at) VALUES (?, ?, ?, ?, ?)',
        [row.name, row.image, row.mode, row.follows, row.createdAt]);
      return { kind: 'created', desktop: row };
    });
  }

  getDesktop(name: string): Promise<DesktopRow | undefined> {
    return getDesktop(this.db, name);
  }

  async listDesktops(): Promise<DesktopRow[]> {
    return (await this.db.all('SELECT * FROM desktops ORDER BY name')).map(toDesktop);
  }

  getLease(desktop: string): Promise<LeaseRow | undefined> {
    return getLease(this.db, desktop);
  }

  acquireLease(desktop: string, holder: string, at: string, expiresAt: string, force: boolean): Promise<LeaseAcquireOutcome> {
    return this.db.tx(async (q): Promise<LeaseAcquireOutcome> => {
      const cur = await getLease(q, desktop);
      if (!cur) {
        await q.run('INSERT INTO leases (desktop, holder, fencing, since, expires_at) VALUES (?, ?, ?, ?, ?)', [desktop, holder, 1, at, expiresAt]);
        return { kind: 'acquired', lease: (await getLease(q, desktop))! };
      }
      const live = cur.holder !== null && cur.expiresAt > at;
      if (live && cur.holder === holder) {
        await q.run('UPDATE leases SET expires_at = ? WHERE desktop = ? AND fencing = ?', [expiresAt, desktop, cur.fencing]);
        return { kind: 'renewed', lease: (await getLease(q, desktop))! };
      }
      if (live && !force) return { kind: 'held', lease: cur };
      // Compare-and-swap on the fencing read above; the next fencing is always higher.
      await q.run('UPDATE leases SET holder = ?, fencing = ?, since = ?, expires_at = ? WHERE desktop = ? AND fencing = ?',
        [holder, cur.fencing + 1, at, expiresAt, desktop, cur.fencing]);
      const lease = (await getLease(q, desktop))!;
      return live ? { kind: 'taken-over', lease, previous: cur } : { kind: 'acquired', lease };
    });
  }

  releaseLease(desktop: string, fencing: number): Promise<LeaseReleaseOutcome> {
    return this.db.tx(async (q): Promise<LeaseReleaseOutcome> => {
      const cur = await getLease(q, desktop);
      if (!cur || cur.fencing !== fencing) return { released: false, current: cur };
      await q.run('UPDATE leases SET holder = NULL WHERE desktop = ? AND fencing = ?', [desktop, fencing]);
      return { released: true };
    });
  }

  breakLease(desktop: string): Promise<LeaseRow | undefined> {
    return this.db.tx(async (q) => {
      const cur = await getLease(q, desktop);
      if (!cur || cur.holder === null) return undefined;
      await q.run('UPDATE leases SET holder = NULL WHERE desktop = ? AND fencing = ?', [desktop, cur.fencing]);
      return cur;
    });
  }
}
