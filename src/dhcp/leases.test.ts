import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openMeta } from '../meta/open.js';
import type { Meta } from '../meta/repo.js';
import type { DhcpLeaseRepo } from './model.js';
import { SqliteEngine } from '../meta/sqlite-engine.js';
import { importLeaseFile, LeasePool } from './leases.js';
import { sqliteFixture } from '../meta/meta-contract.js';
import { dhcpPoolContract } from './pool-contract.js';

dhcpPoolContract('SQLite', sqliteFixture('deskfuse-dhcp-'));

describe('the lease file of older releases', () => {
  let d: string;
  let meta: Meta;
  beforeEach(async () => {
    d = mkdtempSync(path.join(os.tmpdir(), 'deskfuse-dhcp-import-'));
    meta = await openMeta(new SqliteEngine(path.join(d, 'meta.sqlite')));
  });
  afterEach(async () => {
    await meta.close();
    rmSync(d, { recursive: true, force: true });
  });

  const NOW = Date.UTC(2026, 2, 2, 8, 0, 0);
  const file = () => path.join(d, 'dhcp-leases.json');
  const leases = [
    { mac: '52:54:00:aa:00:01', ip: '10.9.0.12', state: 'bound', expires: NOW + 1800_000 },
    { mac: '52:54:00:aa:00:02', ip: '10.9.0.10', state: 'bound', expires: NOW - 1000 },
    { mac: '', ip: '10.9.0.13', state: 'declined', expires: NOW + 60_000 },
  ];

  it('is imported once into the database and renamed; the pool then keeps its bindings', async () => {
    writeFileSync(file(), JSON.stringify({ version: 1, leases }, null, 1) + '\n');
    expect(await importLeaseFile(file(), meta.dhcp)).toBe(3);
    expect(existsSync(file())).toBe(false);
    expect(existsSync(`${file()}.imported`)).toBe(true);
    expect(await importLeaseFile(file(), meta.dhcp)).toBe(0);
    expect(await meta.dhcp.list()).toEqual([...leases].sort((a, b) => a.ip.localeCompare(b.ip)));
    const p = new LeasePool(meta.dhcp, { first: '10.9.0.10', last: '10.9.0.14', leaseSeconds: 3600, now: () => NOW });
    expect(await p.offer('52:54:00:aa:00:01')).toBe('10.9.0.12'); // its unexpired lease
    expect(await p.offer('52:54:00:aa:00:02')).toBe('10.9.0.10'); // its expired one, nobody took it
    expect(await p.offer('52:54:00:aa:00:03')).toBe('10.9.0.11'); // not .13: declined
  });

  it('does not overwrite what the database already has for an address', async () => {
    await meta.dhcp.importLeases([{ mac: '52:54:00:bb:00:09', ip: '10.9.0.12', state: 'bound', expires: NOW }]);
    writeFileSync(file(), JSON.stringify({ version: 1, leases }));
    expect(await importLeaseFile(file(), meta.dhcp)).toBe(2);
    expect((await meta.dhcp.byMac('52:54:00:bb:00:09')).map((l) => l.ip)).toEqual(['10.9.0.12']);
    expect(await meta.dhcp.byMac('52:54:00:aa:00:01')).toEqual([]);
  });

  it('a file that is not a lease file is a config error, and stays where it is', async () => {
    writeFileSync(file(), '{"version":1,"leases":[');
    await expect(importLeaseFile(file(), meta.dhcp)).rejects.toMatchObject({ code: 'DF_ERR_CONFIG' });
    writeFileSync(file(), '{"version":1}');
    await expect(importLeaseFile(file(), meta.dhcp)).rejects.toMatchObject({ code: 'DF_ERR_CONFIG' });
    expect(existsSync(file())).toBe(true);
    expect(await meta.dhcp.list()).toEqual([]);
  });
});

describe('group commit: decisions asked for at once share a transaction', () => {
  let d: string;
  let meta: Meta;
  beforeEach(async () => {
    d = mkdtempSync(path.join(os.tmpdir(), 'deskfuse-dhcp-batch-'));
    meta = await openMeta(new SqliteEngine(path.join(d, 'meta.sqlite')));
  });
  afterEach(async () => {
    await meta.close();
    rmSync(d, { recursive: true, force: true });
  });

  it('300 DISCOVERs at once (some twice): distinct addresses, a repeat gets the same one, a few commits', async () => {
    let commits = 0;
    // The real repository, counting its transactions.
    const repo: DhcpLeaseRepo = { list: () => meta.dhcp.list(), byMac: (m) => meta.dhcp.byMac(m), importLeases: (l) => meta.dhcp.importLeases(l), update: (fn) => (commits++, meta.dhcp.update(fn)) };
    const p = new LeasePool(repo, { first: '10.9.0.10', last: '10.9.3.250', leaseSeconds: 3600 });
    const mac = (i: number) => `52:54:00:dd:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`;
    const asks = Array.from({ length: 300 }, (_, i) => i).flatMap((i) => (i % 10 === 0 ? [i, i] : [i]));
    const ips = await Promise.all(asks.map((i) => p.offer(mac(i))));
    const byMac = new Map<number, string>();
    asks.forEach((i, k) => {
      expect(ips[k]).not.toBeNull();
      if (byMac.has(i)) expect(ips[k]).toBe(byMac.get(i));
      byMac.set(i, ips[k]!);
    });
    expect(new Set(byMac.values()).size).toBe(300);
    expect(commits).toBeLessThanOrEqual(2); // 330 decisions, at most 256 per transaction
    const bound = await Promise.all([...byMac].map(([i, ip]) => p.bind(mac(i), ip)));
    expect(bound.every((l) => l?.state === 'bound')).toBe(true);
    expect((await p.list()).filter((l) => l.state === 'bound')).toHaveLength(300);
  });

  it('a failed transaction fails every decision of its batch; the next batch works', async () => {
    let fail = true;
    const repo: DhcpLeaseRepo = { list: () => meta.dhcp.list(), byMac: (m) => meta.dhcp.byMac(m), importLeases: (l) => meta.dhcp.importLeases(l), update: (fn) => (fail ? Promise.reject(new Error('database unreachable')) : meta.dhcp.update(fn)) };
    const p = new LeasePool(repo, { first: '10.9.0.10', last: '10.9.0.20', leaseSeconds: 3600 });
    const r = await Promise.allSettled([p.offer('52:54:00:ee:00:01'), p.offer('52:54:00:ee:00:02')]);
    expect(r.map((x) => x.status)).toEqual(['rejected', 'rejected']);
    fail = false;
    expect(await p.offer('52:54:00:ee:00:01')).toBe('10.9.0.10');
  });
});
