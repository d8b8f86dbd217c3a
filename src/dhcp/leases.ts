import { readFileSync, renameSync } from 'node:fs';
import { dfError } from '../errors.js';
import type { Logger } from '../log.js';
import { GroupCommit } from '../meta/group-commit.js';
import type { DhcpLease, DhcpLeaseRepo } from './model.js';

/**
 * The full-mode address pool: one binding per MAC, kept in the metadata database (DhcpLeaseRepo), so
 * every server on the boot LAN shares it. Each decision (offer, bind, release, decline, drop an offer)
 * is one transaction over the bindings of this pool's range: of two servers answering one broadcast,
 * or two clients at once, the database lets one decide first and the other decides again after it.
 * Expired bindings are kept, so a returning MAC gets its old address back while nobody else took it
 * (RFC 2131 §4.3.1: "the client's current address … or previous address … if still available").
 */
export interface PoolOptions {
  first: string;
  last: string;
  leaseSeconds: number;
  /** Addresses never handed out (the server's own, the router). */
  exclude?: string[];
  /** How long an OFFER holds its address (default 60 s). */
  offerSeconds?: number;
  /** How long a DECLINEd address stays out of use (default 10 min). */
  declineSeconds?: number;
  now?: () => number;
}

export function ipToInt(ip: string): number {
  const p = ip.split('.').map(Number);
  if (p.length !== 4 || p.some((n) => !Number.isInteger(n) || n < 0 || n > 255)) throw dfError('DF_ERR_CONFIG', `'${ip}' is not an IPv4 address`, { value: ip });
  return ((p[0]! << 24) | (p[1]! << 16) | (p[2]! << 8) | p[3]!) >>> 0;
}
export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** The bindings of the pool's range as one transaction read them, and what the decision changes. */
class View {
  private readonly byIp = new Map<string, DhcpLease>();
  readonly changes = new Map<string, DhcpLease | null>();

  constructor(leases: readonly DhcpLease[], inRange: (ip: string) => boolean) {
    // In address order, so "the MAC's binding" is the same on every engine (each address parsed once).
    const mine = leases.filter((l) => inRange(l.ip)).map((l) => [ipToInt(l.ip), l] as const).sort((a, b) => a[0] - b[0]);
    for (const [, l] of mine) this.byIp.set(l.ip, l);
  }

  get(ip: string): DhcpLease | undefined {
    return this.byIp.get(ip);
  }
  byMac(mac: string): DhcpLease | undefined {
    for (const l of this.byIp.values()) if (l.mac === mac && l.state !== 'declined') return l;
    return undefined;
  }
  set(l: DhcpLease): void {
    this.byIp.set(l.ip, l);
    this.changes.set(l.ip, l);
  }
  delete(ip: string): void {
    this.byIp.delete(ip);
    this.changes.set(ip, null);
  }
}

export class LeasePool {
  /** Decisions asked for at once share a transaction, in call order (see decide). */
  private readonly batch = new GroupCommit<(v: View, now: number) => unknown, unknown>((fns) => {
    const now = this.now();
    // Pure over what the transaction read: on a serialization failure it runs again (PostgreSQL).
    return this.repo.update((leases) => {
      const v = new View(leases, (ip) => this.inRange(ip));
      return { result: fns.map((fn) => fn(v, now)), changes: v.changes };
    });
  });
  private readonly first: number;
  private readonly last: number;
  private readonly exclude: Set<string>;
  private readonly now: () => number;

  constructor(private readonly repo: DhcpLeaseRepo, private readonly opts: PoolOptions) {
    this.first = ipToInt(opts.first);
    this.last = ipToInt(opts.last);
    if (this.first > this.last) throw dfError('DF_ERR_CONFIG', `pool first ${opts.first} is after last ${opts.last}`, { field: 'pool' });
    this.exclude = new Set(opts.exclude ?? []);
    this.now = opts.now ?? Date.now;
  }

  inRange(ip: string): boolean {
    try {
      const n = ipToInt(ip);
      return n >= this.first && n <= this.last && !this.exclude.has(ip);
    } catch {
      return false;
    }
  }

  get leaseSeconds(): number {
    return this.opts.leaseSeconds;
  }

  /**
   * A decision over this range's bindings, in one transaction. Group commit: the decisions asked for
   * while a transaction runs (or in the same event-loop turn) go together into the next one, in call
   * order, each seeing the changes of those before it. A storm of DISCOVERs then costs one commit
   * (one fsync on SQLite) per batch, not per message; the database still decides races between servers.
   */
  private decide<T>(fn: (v: View, now: number) => T): Promise<T> {
    return this.batch.add(fn) as Promise<T>;
  }

  /** The binding of this MAC in this pool's range, whatever its state but declined. */
  async byMac(mac: string): Promise<DhcpLease | undefined> {
    return new View(await this.repo.byMac(mac), (ip) => this.inRange(ip)).byMac(mac);
  }

  /** May `mac` have `ip`? It is in range and nobody else holds it (an expired binding holds nothing). */
  private available(v: View, ip: string, mac: string, now: number): boolean {
    if (!this.inRange(ip)) return false;
    const l = v.get(ip);
    return !l || l.mac === mac || l.expires <= now;
  }

  /**
   * Choose an address for a DISCOVER (RFC 2131 §4.3.1): the MAC's own binding, else the requested
   * address, else the lowest one never used, else the longest-expired one. Held as `offered`. null: pool full.
   */
  offer(mac: string, requested?: string): Promise<string | null> {
    return this.decide((v, now) => {
      const own = v.byMac(mac);
      let ip: string | undefined;
      if (own && this.available(v, own.ip, mac, now)) ip = own.ip;
      else if (requested && this.available(v, requested, mac, now)) ip = requested;
      else {
        let oldest: DhcpLease | undefined;
        for (let n = this.first; n <= this.last && !ip; n++) {
          const cand = intToIp(n);
          if (this.exclude.has(cand)) continue;
          const l = v.get(cand);
          if (!l) ip = cand;
          else if (l.expires <= now && (!oldest || l.expires < oldest.expires)) oldest = l;
        }
        ip ??= oldest?.ip;
      }
      if (!ip) return null;
      if (own && own.ip !== ip && own.state === 'offered') v.delete(own.ip);
      const cur = v.get(ip);
      // A bound, unexpired binding of this MAC stays bound; otherwise hold the address for the offer.
      if (!(cur && cur.mac === mac && cur.state === 'bound' && cur.expires > now)) {
        v.set({ mac, ip, state: 'offered', expires: now + (this.opts.offerSeconds ?? 60) * 1000 });
      }
      return ip;
    });
  }

  /** Bind `ip` to `mac` for a lease (REQUEST → ACK). null: the address is not this client's to have (→ NAK). */
  bind(mac: string, ip: string): Promise<DhcpLease | null> {
    return this.decide((v, now) => {
      if (!this.available(v, ip, mac, now)) return null;
      const own = v.byMac(mac);
      if (own && own.ip !== ip) v.delete(own.ip);
      const lease: DhcpLease = { mac, ip, state: 'bound', expires: now + this.opts.leaseSeconds * 1000 };
      v.set(lease);
      return lease;
    });
  }

  /**
   * The client chose another server's offer (RFC 2131 §4.3.2): give the held address back — unless
   * it is the address the client chose (`chosen`): then the other server shares this pool and is
   * binding it now; dropping the hold could hand it to someone else in between.
   */
  async dropOffer(mac: string, chosen?: string): Promise<void> {
    await this.decide((v) => {
      const own = v.byMac(mac);
      if (own?.state === 'offered' && own.ip !== chosen) v.delete(own.ip);
    });
  }

  /** RELEASE (RFC 2131 §4.3.4): the binding expires now but is remembered for the same MAC. */
  release(mac: string, ip: string): Promise<boolean> {
    return this.decide((v, now) => {
      const l = v.get(ip);
      if (!l || l.mac !== mac) return false;
      v.set({ ...l, expires: now });
      return true;
    });
  }

  /** DECLINE (RFC 2131 §4.3.3): someone else uses the address; keep it out of the pool for a while. */
  decline(mac: string, ip: string): Promise<boolean> {
    return this.decide((v, now) => {
      const l = v.get(ip);
      if (!l || l.mac !== mac) return false;
      v.set({ mac: '', ip, state: 'declined', expires: now + (this.opts.declineSeconds ?? 600) * 1000 });
      return true;
    });
  }

  /** The bindings of this pool's range, in address order. */
  async list(): Promise<DhcpLease[]> {
    return (await this.repo.list()).filter((l) => this.inRange(l.ip)).sort((a, b) => ipToInt(a.ip) - ipToInt(b.ip));
  }
}

/**
 * The lease file of releases before the pool moved into the database
 * (`{"version":1,"leases":[{mac, ip, state, expires}]}`): imported once into the repository at start,
 * then renamed `<file>.imported`, so an upgrade keeps its bindings. Addresses the database already has
 * keep their row. Resolves to how many bindings were added (0 without a file).
 */
export async function importLeaseFile(file: string, repo: DhcpLeaseRepo, log?: Logger): Promise<number> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw err;
  }
  let leases: DhcpLease[];
  try {
    const j = JSON.parse(text) as { leases?: unknown };
    if (!Array.isArray(j.leases)) throw new Error('no "leases" array');
    leases = (j.leases as Array<Partial<DhcpLease>>).filter((l): l is DhcpLease =>
      typeof l.mac === 'string' && typeof l.ip === 'string' && typeof l.expires === 'number' && ['offered', 'bound', 'declined'].includes(l.state as string));
  } catch (err) {
    throw dfError('DF_ERR_CONFIG', `the lease file ${file} is not valid: ${(err as Error).message}`, { file }, err);
  }
  const added = await repo.importLeases(leases);
  renameSync(file, `${file}.imported`);
  log?.info({ file, leases: leases.length, added }, 'dhcp lease file imported into the metadata database');
  return added;
}
