import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openMeta } from '../meta/open.js';
import type { Meta } from '../meta/repo.js';
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
