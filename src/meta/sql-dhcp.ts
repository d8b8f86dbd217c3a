import type { DhcpLease, DhcpLeaseRepo, LeaseChanges } from '../dhcp/model.js';
import type { Row, SqlEngine } from './sql.js';

/**
 * The full-mode DHCP pool's bindings (table dhcp_leases, migration 3), over either engine. The
 * address is the primary key: one row per address, whichever server wrote it.
 */
const toLease = (r: Row): DhcpLease => ({ ip: r.ip as string, mac: r.mac as string, state: r.state as DhcpLease['state'], expires: Number(r.expires) });

const COLUMNS = 'ip, mac, state, expires';

export class SqlDhcpLeaseRepo implements DhcpLeaseRepo {
  constructor(private readonly db: SqlEngine) {}

  update<T>(decide: (leases: readonly DhcpLease[]) => { result: T; changes: LeaseChanges }): Promise<T> {
    // Serializable: a server that read the bindings before another committed its change is rolled
    // back and decides again (PostgreSQL); SQLite runs one transaction at a time.
    return this.db.tx(async (q) => {
      const { result, changes } = decide((await q.all(`SELECT ${COLUMNS} FROM dhcp_leases`)).map(toLease));
      for (const [ip, l] of changes) {
        if (l === null) await q.run('DELETE FROM dhcp_leases WHERE ip = ?', [ip]);
        else {
          await q.run(`INSERT INTO dhcp_leases (${COLUMNS}) VALUES (?, ?, ?, ?)
            ON CONFLICT (ip) DO UPDATE SET mac = excluded.mac, state = excluded.state, expires = excluded.expires`, [l.ip, l.mac, l.state, l.expires]);
        }
      }
      return result;
    });
  }

  async byMac(mac: string): Promise<DhcpLease[]> {
    return (await this.db.all(`SELECT ${COLUMNS} FROM dhcp_leases WHERE mac = ? ORDER BY ip`, [mac])).map(toLease);
  }

  async list(): Promise<DhcpLease[]> {
    return (await this.db.all(`SELECT ${COLUMNS} FROM dhcp_leases ORDER BY ip`)).map(toLease);
  }

  importLeases(leases: readonly DhcpLease[]): Promise<number> {
    return this.db.tx(async (q) => {
      let added = 0;
      for (const l of leases) {
        added += await q.run(`INSERT INTO dhcp_leases (${COLUMNS}) VALUES (?, ?, ?, ?) ON CONFLICT (ip) DO NOTHING`, [l.ip, l.mac, l.state, l.expires]);
      }
      return added;
    });
  }
}
