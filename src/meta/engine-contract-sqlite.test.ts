import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll } from 'vitest';
import { engineContract } from './engine-contract.js';
import type { SqlEngine } from './sql.js';
import { SqliteEngine } from './sqlite-engine.js';

const root = mkdtempSync(path.join(os.tmpdir(), 'deskfuse-engine-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;

// SQLite is the one-server engine: "another server" is another caller of the same connection
// (its close is the suite's business, once), as in meta-contract-sqlite.test.ts.
engineContract('SQLite', async () => {
  const engine = new SqliteEngine(path.join(root, `meta-${++n}.sqlite`));
  const another = async (): Promise<SqlEngine> => ({
    dialect: engine.dialect,
    all: (sql, params) => engine.all(sql, params),
    get: (sql, params) => engine.get(sql, params),
    run: (sql, params) => engine.run(sql, params),
    tx: (fn) => engine.tx(fn),
    migrate: (ms) => engine.migrate(ms),
    notify: (channel, payload) => engine.notify(channel, payload),
    listen: (channel, fn) => engine.listen(channel, fn),
    close: async () => {},
  });
  return { engine, another };
});
