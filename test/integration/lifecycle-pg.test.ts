import { openEngine } from '../../src/meta/engine.js';
import { lifecycleContract } from '../../src/meta/lifecycle-contract.js';
import type { MetaEngineFixture } from '../../src/meta/meta-contract.js';
import { openMeta } from '../../src/meta/open.js';
import { sharedPostgres } from '../helpers/engines.js';

// The lifecycle contract (retention, prune, deletes) on a real PostgreSQL 15: the same answers as on
// SQLite (src/meta/lifecycle-contract-sqlite.test.ts).
let url: string | undefined;
const fixture: MetaEngineFixture = {
  open: async () => {
    url = (await sharedPostgres('lifecycle')).url;
    return openMeta(await openEngine(url));
  },
  second: async () => openMeta(await openEngine(url!)),
  drop: async () => {
    url = undefined;
  },
};

lifecycleContract('PostgreSQL 15', fixture);
