import { SqlDesktopRepo } from './sql-desktops.js';
import { SqlDhcpLeaseRepo } from './sql-dhcp.js';
import { SqlGcRepo } from './sql-gc.js';
import { SqlEndpointRepo } from './sql-endpoints.js';
import { SqlImageRepo } from './sql-images.js';
import { SqlLifecycleRepo } from './sql-lifecycle.js';
import { SqlTokenRepo } from './sql-tokens.js';
import { SqlVdiRepo } from './sql-vdi.js';
import type { Logger } from '../log.js';
import { openEngine } from './engine.js';
import { MIGRATIONS } from './migrations.js';
import type { Meta } from './repo.js';
import type { SqlEngine } from './sql.js';

/** The repositories over an opened engine, after bringing its schema up to date. Closing the result closes the engine. */
export async function openMeta(engine: SqlEngine): Promise<Meta> {
  await engine.migrate(MIGRATIONS);
  return {
    images: new SqlImageRepo(engine),
    desktops: new SqlDesktopRepo(engine),
    tokens: new SqlTokenRepo(engine),
    endpoints: new SqlEndpointRepo(engine),
    vdi: new SqlVdiRepo(engine),
    lifecycle: new SqlLifecycleRepo(engine),
    dhcp: new SqlDhcpLeaseRepo(engine),
    gc: new SqlGcRepo(engine),
    engine,
    close: () => engine.close(),
  };
}

/**
 * The engine a server's config names: PostgreSQL for a URL, else SQLite in the data directory.
 * `log` gets the engine's own lines (PostgreSQL: a lost connection, the LISTEN connection restored).
 */
export async function openConfiguredMeta(meta: string | null, sqliteFile: string, log?: Logger): Promise<Meta> {
  const engine = await openEngine(meta ?? sqliteFile, log ? { log } : {});
  try {
    return await openMeta(engine);
  } catch (err) {
    await engine.close();
    throw err;
  }
}
