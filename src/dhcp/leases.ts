import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { writeDurable } from '../fs/durable.js';
import { dfError } from '../errors.js';

/**
 * The full-mode address pool: one binding per MAC, persisted as JSON
 * `{"version":1,"leases":[{mac, ip, state, expires}]}` (write temp, fsync, rename, fsync folder).
 * Expired bindings are kept, so a returning MAC gets its old address back while nobody else took it
 * (RFC 2131 §4.3.1: "the client's current address … or previous address … if still available").
 */
export interface Lease {
  mac: string;
  ip: string;
  /** offered: held for the client between OFFER and REQUEST; declined: the address is in use by someone we don't know (RFC 2131 §4.3.3). */
  state: 'offered' | 'bound' | 'declined';
  /** ms since the epoch */
  expires: number;
}

export interface PoolOptions {
  first: string;
  last: string;
  leaseSeconds: number;
  file: string;
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

export class LeasePool {
  private readonly byIp = new Map<string, Lease>();
  private readonly first: number;
  private readonly last: number;
  private readonly exclude: Set<string>;
  private readonly now: () => number;
  private saving: Promise<void> = Promise.resolve();

  constructor(private readonly opts: PoolOptions) {
    this.first = ipToInt(opts.first);
    this.last = ipToInt(opts.last);
    if (this.first > this.last) throw dfError('DF_ERR_CONFIG', `pool first ${opts.first} is after last ${opts.last}`, { field: 'pool' });
    this.exclude = new Set(opts.exclude ?? []);
    this.now = opts.now ?? Date.now;
    let text: string | undefined;
    try {
      text = readFileSync(opts.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      mkdirSync(path.dirname(opts.file), { recursive: true });
    }
    if (text !== undefined) {
      try {
        const j = JSON.parse(text) as { leases: Lease[] };
        for (const l of j.leases) if (this.inRange(l.ip)) this.byIp.set(l.ip, l);
      } catch (err) {
        throw dfError('DF_ERR_CONFIG', `the lease file ${opts.file} is not valid JSON: ${(err as Error).message}`, { file: opts.file }, err);
      }
    }
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

  /** The binding of this MAC, whatever its state. */
  byMac(mac: string): Lease | undefined {
    for (const l of this.byIp.values()) if (l.mac === mac && l.state !== 'declined') return l;
    return undefined;
  }

  /** May `mac` have `ip`? It is in range and nobody else holds it (an expired binding holds nothing). */
  available(ip: string, mac: string): boolean {
    if (!this.inRange(ip)) return false;
    const l = this.byIp.get(ip);
    return !l || l.mac === mac || l.expires <= this.now();
  }

  /**
   * Choose an address for a DISCOVER (RFC 2131 §4.3.1): the MAC's own binding, else the requested
   * address, else one never used, else the longest-expired one. Held as `offered`. null: pool full.
   */
  offer(mac: string, requested?: string): string | null {
    const own = this.byMac(mac);
    let ip: string | undefined;
    if (own && this.available(own.ip, mac)) ip = own.ip;
    else if (requested && this.available(requested, mac)) ip = requested;
    else {
      let oldest: Lease | undefined;
      for (let n = this.first; n <= this.last && !ip; n++) {
        const cand = intToIp(n);
        if (this.exclude.has(cand)) continue;
        const l = this.byIp.get(cand);
        if (!l) ip = cand;
        else if (l.expires <= this.now() && (!oldest || l.expires < oldest.expires)) oldest = l;
      }
      ip ??= oldest?.ip;
    }
    if (!ip) return null;
    if (own && own.ip !== ip && own.state === 'offered') this.byIp.delete(own.ip);
    const cur = this.byIp.get(ip);
    // A bound, unexpired binding of this MAC stays bound; otherwise hold the address for the offer.
    if (!(cur && cur.mac === mac && cur.state === 'bound' && cur.expires > this.now())) {
      this.set({ mac, ip, state: 'offered', expires: this.now() + (this.opts.offerSeconds ?? 60) * 1000 });
    }
    return ip;
  }

  /** Bind `ip` to `mac` for a lease (REQUEST → ACK). null: the address is not this client's to have (→ NAK). */
  async bind(mac: string, ip: string): Promise<Lease | null> {
    if (!this.available(ip, mac)) return null;
    const own = this.byMac(mac);
    if (own && own.ip !== ip) this.byIp.delete(own.ip);
    const lease: Lease = { mac, ip, state: 'bound', expires: this.now() + this.opts.leaseSeconds * 1000 };
    this.set(lease);
    await this.save();
    return lease;
  }

  /** The client chose another server's offer (RFC 2131 §4.3.2): give the held address back. */
  dropOffer(mac: string): void {
    const own = this.byMac(mac);
    if (own?.state === 'offered') this.byIp.delete(own.ip);
  }

  /** RELEASE (RFC 2131 §4.3.4): the binding expires now but is remembered for the same MAC. */
  async release(mac: string, ip: string): Promise<boolean> {
    const l = this.byIp.get(ip);
    if (!l || l.mac !== mac) return false;
    this.set({ ...l, expires: this.now() });
    await this.save();
    return true;
  }

  /** DECLINE (RFC 2131 §4.3.3): someone else uses the address; keep it out of the pool for a while. */
  async decline(mac: string, ip: string): Promise<boolean> {
    const l = this.byIp.get(ip);
    if (!l || l.mac !== mac) return false;
    this.set({ mac: '', ip, state: 'declined', expires: this.now() + (this.opts.declineSeconds ?? 600) * 1000 });
    await this.save();
    return true;
  }

  list(): Lease[] {
    return [...this.byIp.values()];
  }

  private set(l: Lease): void {
    this.byIp.set(l.ip, l);
  }

  /** Saves run one after another, each writing the latest state. */
  save(): Promise<void> {
    const run = async (): Promise<void> => {
      const leases = this.list().filter((l) => l.state !== 'offered');
      await writeDurable(this.opts.file, Buffer.from(JSON.stringify({ version: 1, leases }, null, 1) + '\n'));
    };
    this.saving = this.saving.then(run, run);
    return this.saving;
  }

  /** Wait for pending writes. */
  flush(): Promise<void> {
    return this.saving.catch(() => {});
  }
}
