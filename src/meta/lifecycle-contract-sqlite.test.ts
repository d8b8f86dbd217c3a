import { lifecycleContract } from './lifecycle-contract.js';
import { sqliteFixture } from './meta-contract.js';

lifecycleContract('SQLite', sqliteFixture('deskfuse-lifecycle-'));
