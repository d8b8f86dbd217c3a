import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { MetaEngineFixture } from '../meta/meta-contract.js';
import type { Meta } from '../meta/repo.js';
import { LeasePool, type PoolOptions } from './leases.js';

/**
 * The full-mode DHCP pool over the metadata database: RFC 2131 behaviour, and the races of several
 * servers answering one LAN (two pools over two connections to one database). Run on every engine:
 * src/dhcp/leases.test.ts (SQLite) and the PostgreSQL runner, with the fixture of src/meta/meta-contract.ts.
 * Test support: kept out of dist (tsconfig.build.json).
 */
const NOW = Date.UTC(2026, 2, 2, 8, 0, 0);
const mac = (i: number) => `52:54:00:00:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`;

export function dhcpPoolContract(engine: string, fx: MetaEngineFixture): void {
  let meta: Meta;
  const others: Meta[] = [];
  let t = NOW;
  const clock = { now: () => t };
  const pool = (m: Meta, over: Partial<PoolOptions> = {}) =>
    new LeasePool(m.dhcp, { first: '10.9.0.10', last: '10.9.0.14', leaseSeconds: 3600, exclude: ['10.9.0.11'], offerSeconds: 60, declineSeconds: 600, ...clock, ...over });
  const second = async () => {
    const m = await fx.second();
    others.push(m);
    return m;
  };
  beforeEach(async () => {
    t = NOW;
    meta = await fx.open();
  });
  afterEach(async () => {
    for (const m of others.splice(0)) await m.close();
    await meta.close();
    await fx.drop();
  });

  describe(`DHCP pool, RFC 2131 (${engine})`, () => {
    it('offers the lowest free address, skipping excluded ones, and holds it for that MAC', async () => {
      const p = pool(meta);
      expect(await p.offer(mac(1))).toBe('10.9.0.10');
      expect(await p.offer(mac(1))).toBe('10.9.0.10');
      expect(await p.offer(mac(2))).toBe('10.9.0.12');
      expect(await p.list()).toEqual([
        { mac: mac(1), ip: '10.9.0.10', state: 'offered', expires: NOW + 60_000 },
        { mac: mac(2), ip: '10.9.0.12', state: 'offered', expires: NOW + 60_000 },
      ]);
      expect(p.inRange('10.9.0.11')).toBe(false);
      expect(p.inRange('10.9.0.15')).toBe(false);
      expect(p.inRange('not an ip')).toBe(false);
    });

    it('offers the requested address when it is free, not when another MAC holds it (§4.3.1)', async () => {
      const p = pool(meta);
      expect(await p.offer(mac(1), '10.9.0.13')).toBe('10.9.0.13');
      expect(await p.offer(mac(2), '10.9.0.13')).toBe('10.9.0.10');
      expect(await p.offer(mac(3), '10.9.0.11')).toBe('10.9.0.12'); // excluded
      expect(await p.offer(mac(4), '192.168.1.5')).toBe('10.9.0.14'); // off the range
    });

    it('binds an offered address (REQUEST → ACK); another MAC cannot bind it (→ NAK)', async () => {
      const p = pool(meta);
      const ip = (await p.offer(mac(1)))!;
      expect(await p.bind(mac(2), ip)).toBeNull();
      expect(await p.bind(mac(1), ip)).toEqual({ mac: mac(1), ip, state: 'bound', expires: NOW + 3600_000 });
      expect(await p.bind(mac(2), ip)).toBeNull();
      expect(await p.bind(mac(2), '10.9.0.11')).toBeNull(); // excluded
      expect(await p.bind(mac(2), '10.9.0.99')).toBeNull(); // off the range
      expect(await p.byMac(mac(1))).toMatchObject({ ip, state: 'bound' });
      expect(await p.byMac(mac(2))).toBeUndefined();
    });

    it('an offer holds its address for the hold time only', async () => {
      const p = pool(meta, { last: '10.9.0.10' });
      expect(await p.offer(mac(1))).toBe('10.9.0.10');
      expect(await p.offer(mac(2))).toBeNull();
      t += 59_000;
      expect(await p.offer(mac(2))).toBeNull();
      t += 1_000;
      expect(await p.offer(mac(2))).toBe('10.9.0.10');
      expect(await p.bind(mac(1), '10.9.0.10')).toBeNull();
    });

    it('a bound client that DISCOVERs again is offered its address, and the binding stays bound', async () => {
      const p = pool(meta);
      await p.bind(mac(1), '10.9.0.13');
      t += 1000;
      expect(await p.offer(mac(1))).toBe('10.9.0.13');
      expect(await p.byMac(mac(1))).toEqual({ mac: mac(1), ip: '10.9.0.13', state: 'bound', expires: NOW + 3600_000 });
    });

    it('renewing extends the lease; binding another address moves the binding', async () => {
      const p = pool(meta);
      await p.bind(mac(1), '10.9.0.12');
      t += 1800_000;
      expect(await p.bind(mac(1), '10.9.0.12')).toMatchObject({ expires: t + 3600_000 });
      expect(await p.bind(mac(1), '10.9.0.14')).toMatchObject({ ip: '10.9.0.14', state: 'bound' });
      expect((await p.list()).map((l) => l.ip)).toEqual(['10.9.0.14']);
    });

    it('a returning MAC gets its expired address back; others get never-used addresses first, then the longest-expired', async () => {
      const p = pool(meta);
      await p.bind(mac(1), '10.9.0.10');
      t += 10_000;
      await p.bind(mac(2), '10.9.0.12');
      t += 7200_000; // both expired
      expect(await p.offer(mac(3))).toBe('10.9.0.13');
      expect(await p.offer(mac(4))).toBe('10.9.0.14');
      expect(await p.offer(mac(1))).toBe('10.9.0.10'); // its previous address, still free
      expect(await p.offer(mac(5))).toBe('10.9.0.12'); // only an expired one of someone else is left
      expect(await p.byMac(mac(2))).toBeUndefined();
      expect(await p.offer(mac(6))).toBeNull();
    });

    it('an expired address can be bound by another MAC; an unexpired one cannot', async () => {
      const p = pool(meta);
      await p.bind(mac(1), '10.9.0.10');
      expect(await p.bind(mac(2), '10.9.0.10')).toBeNull();
      t += 3600_000;
      expect(await p.bind(mac(2), '10.9.0.10')).toMatchObject({ mac: mac(2), state: 'bound' });
      expect(await p.byMac(mac(1))).toBeUndefined();
    });

    it('RELEASE ends the lease now but remembers it for the same MAC (§4.3.4)', async () => {
      const p = pool(meta, { last: '10.9.0.12' });
      await p.bind(mac(1), '10.9.0.10');
      expect(await p.release(mac(2), '10.9.0.10')).toBe(false);
      expect(await p.release(mac(1), '10.9.0.13')).toBe(false);
      expect(await p.release(mac(1), '10.9.0.10')).toBe(true);
      expect(await p.byMac(mac(1))).toEqual({ mac: mac(1), ip: '10.9.0.10', state: 'bound', expires: NOW });
      expect(await p.offer(mac(2))).toBe('10.9.0.12'); // a never-used address first
      expect(await p.offer(mac(1))).toBe('10.9.0.10');
      t += 60_000;
      expect(await p.offer(mac(3))).toBe('10.9.0.10'); // the hold ended: the released address is free
    });

    it('DECLINE keeps the address out of the pool for the decline time (§4.3.3)', async () => {
      const p = pool(meta, { last: '10.9.0.12' });
      await p.bind(mac(1), '10.9.0.10');
      expect(await p.decline(mac(2), '10.9.0.10')).toBe(false);
      expect(await p.decline(mac(1), '10.9.0.10')).toBe(true);
      expect(await p.byMac(mac(1))).toBeUndefined();
      expect(await p.offer(mac(1))).toBe('10.9.0.12');
      await p.bind(mac(1), '10.9.0.12');
      expect(await p.offer(mac(2))).toBeNull();
      expect(await p.bind(mac(2), '10.9.0.10')).toBeNull();
      t += 600_000;
      expect(await p.offer(mac(2))).toBe('10.9.0.10');
    });

    it('a REQUEST for another server frees the held address (§4.3.2), unless it names that very address', async () => {
      const p = pool(meta);
      const ip = (await p.offer(mac(1)))!;
      await p.dropOffer(mac(1), ip);
      expect(await p.byMac(mac(1))).toMatchObject({ ip, state: 'offered' });
      await p.dropOffer(mac(1), '192.168.0.7');
      expect(await p.byMac(mac(1))).toBeUndefined();
      await p.bind(mac(1), ip);
      await p.dropOffer(mac(1));
      expect(await p.byMac(mac(1))).toMatchObject({ ip, state: 'bound' }); // a binding is not an offer
    });

    it('a pool of one full range is exhausted; a pool with first after last is a config error', async () => {
      const p = pool(meta);
      for (let i = 1; i <= 4; i++) expect(await p.offer(mac(i))).not.toBeNull();
      expect(await p.offer(mac(9))).toBeNull();
      expect(() => pool(meta, { first: '10.9.0.20' })).toThrow(expect.objectContaining({ code: 'DF_ERR_CONFIG' }));
    });

    it('bindings outlive the pool object (a restart) and are seen by a pool of another server', async () => {
      await pool(meta).bind(mac(1), '10.9.0.13');
      const b = pool(await second());
      expect(await b.byMac(mac(1))).toMatchObject({ ip: '10.9.0.13', state: 'bound' });
      expect(await b.offer(mac(1))).toBe('10.9.0.13');
      expect(await b.bind(mac(2), '10.9.0.13')).toBeNull();
    });

    it("a pool ignores the bindings of other ranges (another subnet's servers on the same database)", async () => {
      const a = pool(meta);
      const other = pool(meta, { first: '10.8.0.10', last: '10.8.0.20', exclude: [] });
      await a.bind(mac(1), '10.9.0.10');
      expect(await other.byMac(mac(1))).toBeUndefined();
      expect(await other.offer(mac(1))).toBe('10.8.0.10');
      expect(await other.bind(mac(1), '10.8.0.10')).toMatchObject({ state: 'bound' });
      expect(await a.byMac(mac(1))).toMatchObject({ ip: '10.9.0.10', state: 'bound' });
      expect((await a.list()).map((l) => l.ip)).toEqual(['10.9.0.10']);
    });
  });

  describe(`DHCP pool races between two servers (${engine})`, () => {
    it('50 clients at once, each DISCOVER answered by both servers: no address twice, the rest get no offer', async () => {
      const range = { first: '10.9.1.10', last: '10.9.1.29', exclude: ['10.9.1.20'] }; // 19 addresses
      const servers = [pool(meta, range), pool(await second(), range)];
      const clients = Array.from({ length: 50 }, (_, i) => mac(100 + i));
      const outcome = await Promise.all(clients.map(async (m, i) => {
        // The broadcast DISCOVER reaches both servers at once; both offer.
        const offers = await Promise.all(servers.map((s) => s.offer(m)));
        const pick = offers[i % 2] !== null ? i % 2 : 1 - (i % 2);
        const ip = offers[pick];
        if (ip === null || ip === undefined) return { m, offers, ack: null };
        // The REQUEST (broadcast too) names the chosen server: it binds, the other drops its offer.
        const [ack] = await Promise.all([servers[pick]!.bind(m, ip), servers[1 - pick]!.dropOffer(m, ip)]);
        return { m, offers, ack };
      }));
      const acked = outcome.filter((o) => o.ack);
      // Both servers offered a client the same address (they share the pool), and every offer ended in an ACK.
      for (const o of outcome) {
        const made = o.offers.filter((x) => x !== null);
        expect(new Set(made).size).toBeLessThanOrEqual(1);
        expect(o.ack === null).toBe(made.length === 0);
      }
      expect(acked).toHaveLength(19);
      expect(new Set(acked.map((o) => o.ack!.ip)).size).toBe(19);
      expect(acked.every((o) => o.ack!.mac === o.m)).toBe(true);
      expect(outcome.filter((o) => o.offers.every((x) => x === null))).toHaveLength(31);
      const rows = await servers[1]!.list();
      expect(rows).toHaveLength(19);
      expect(rows.every((l) => l.state === 'bound')).toBe(true);
      expect(new Set(rows.map((l) => l.mac)).size).toBe(19);
      expect(rows.map((l) => l.ip)).not.toContain('10.9.1.20');
      expect(Object.fromEntries(rows.map((l) => [l.mac, l.ip]))).toEqual(Object.fromEntries(acked.map((o) => [o.m, o.ack!.ip])));
    });

    it('two clients asking for one address at once: one gets it, the other another address', async () => {
      const [a, b] = [pool(meta), pool(await second())];
      const [x, y] = await Promise.all([a.offer(mac(1), '10.9.0.13'), b.offer(mac(2), '10.9.0.13')]);
      expect([x, y].sort()).toEqual(['10.9.0.10', '10.9.0.13']);
    });

    it('two servers binding one free address for two MACs at once: one ACK, one NAK', async () => {
      const [a, b] = [pool(meta), pool(await second())];
      for (let round = 0; round < 4; round++) {
        const ip = `10.9.0.${[10, 12, 13, 14][round]}`;
        const outs = await Promise.all([a.bind(mac(10 + 2 * round), ip), b.bind(mac(11 + 2 * round), ip)]);
        expect(outs.filter((o) => o !== null)).toHaveLength(1);
        expect((await a.list()).filter((l) => l.ip === ip)).toEqual([outs.find((o) => o !== null)]);
      }
    });
  });
}
