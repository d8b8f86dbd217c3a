import { dhcpPoolContract } from '../../src/dhcp/pool-contract.js';
import { openEngine } from '../../src/meta/engine.js';
import { metaContract, type MetaEngineFixture } from '../../src/meta/meta-contract.js';
import { openMeta } from '../../src/meta/open.js';
import { sharedPostgres } from '../helpers/engines.js';

// The metadata contract and the DHCP pool contract on a real PostgreSQL 15 (the run's shared cluster,
// a fresh database per test): the same answers as on SQLite (src/meta/meta-contract-sqlite.test.ts,
// src/dhcp/leases.test.ts), races between two servers being two connection pools on one database.
function fixture(label: string): MetaEngineFixture {
  let url: string | undefined;
  return {
    open: async () => {
      url = (await sharedPostgres(label)).url;
      return openMeta(await openEngine(url));
    },
    second: async () => openMeta(await openEngine(url!)),
    drop: async () => {
      url = undefined; // the database goes with the run's cluster
    },
  };
}

metaContract('PostgreSQL 15', fixture('meta'));
dhcpPoolContract('PostgreSQL 15', fixture('dhcp'));
