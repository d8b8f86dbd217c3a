/**
 * The full-mode DHCP pool's domain: its bindings and the repository that keeps them (one table in the
 * metadata database, src/meta/sql-dhcp.ts), so several servers answering one boot LAN share one pool
 * and never hand out one address twice. The decisions themselves are pure (src/dhcp/leases.ts); the
 * repository runs each inside one serializable transaction.
 */
export interface DhcpLease {
  mac: string;
  ip: string;
  /** offered: held for the client between OFFER and REQUEST; declined: the address is in use by someone we don't know (RFC 2131 §4.3.3). */
  state: 'offered' | 'bound' | 'declined';
  /** ms since the epoch */
  expires: number;
}

/** What one decision changes: addresses whose binding is now `lease`, or none (null). */
export type LeaseChanges = ReadonlyMap<string, DhcpLease | null>;

export interface DhcpLeaseRepo {
  /**
   * One transaction: reads every binding, lets `decide` choose, writes the changes it returns and
   * commits. `decide` is pure: on a serialization failure it runs again over what the other
   * transaction left, so of two servers deciding at once, neither hands out what the other took.
   */
  update<T>(decide: (leases: readonly DhcpLease[]) => { result: T; changes: LeaseChanges }): Promise<T>;
  /** The bindings of this MAC (any state). */
  byMac(mac: string): Promise<DhcpLease[]>;
  /** Every binding, by address text. */
  list(): Promise<DhcpLease[]>;
  /** Adds the bindings whose addresses have none yet (an upgrade's lease file); resolves to how many. */
  importLeases(leases: readonly DhcpLease[]): Promise<number>;
}
