import { randomBytes } from 'node:crypto';
import path from 'node:path';
import pg from 'pg';
import { inject } from 'vitest';
import { postgresStart, type PostgresSettings } from './postgres.js';
import { rgwStart, s3Url, type RgwSettings } from './rgw.js';

/**
 * Engines shared by every test file of one `vitest run`: each is started at most once per run, by the
 * first file that asks (its script's start lock makes the others wait and then reuse it), and stopped
 * at the end of the run by test/helpers/engines-setup.ts (the vitest globalSetup) by recorded PIDs.
 * A file that must stop or restart an engine starts its own: startPostgres() / startRgw().
 * The first call may take a while (RGW ≈ 25 s): call it in a beforeAll with a long timeout.
 */

function runDir(): string {
  const dir = inject('deskfuseEnginesDir');
  if (!dir) throw new Error('the shared engines need the globalSetup test/helpers/engines-setup.ts (vitest.config.ts)');
  return dir;
}

let pgCluster: Promise<PostgresSettings> | undefined;
let rgwCluster: Promise<RgwSettings> | undefined;

/** A database of the caller's own, made fresh (CREATE DATABASE) in the run's shared PostgreSQL. */
export interface SharedPostgres extends PostgresSettings {
  /** postgres://deskfuse:PASSWORD@127.0.0.1:PORT/<database>: the fresh database */
  url: string;
  /** its name (df_<label>_<random>) */
  database: string;
}

/** The run's PostgreSQL (started on first use), and a fresh empty database in it for this caller. */
export async function sharedPostgres(label = 't'): Promise<SharedPostgres> {
  pgCluster ??= postgresStart(path.join(runDir(), 'postgres'));
  let cluster: PostgresSettings;
  try {
    cluster = await pgCluster;
  } catch (err) {
    pgCluster = undefined;
    throw err;
  }
  const database = `df_${label.toLowerCase().replace(/[^a-z0-9]+/g, '_').slice(0, 30)}_${randomBytes(5).toString('hex')}`;
  const admin = new pg.Client({ connectionString: cluster.url });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(database)} OWNER ${pg.escapeIdentifier(cluster.user)}`);
  } finally {
    await admin.end();
  }
  const u = new URL(cluster.url);
  u.pathname = `/${database}`;
  return { ...cluster, url: u.toString(), database };
}

/** The run's RADOS Gateway with a prefix of the caller's own in its bucket. */
export interface SharedRgw extends RgwSettings {
  /** unique to this call, ends with `/` */
  prefix: string;
  /** The S3 store URL for `prefix + sub`. */
  url(sub?: string): string;
}

/** The run's Ceph RGW (started on first use: ≈ 25 s), and a prefix no other caller uses. */
export async function sharedRgw(label = 't'): Promise<SharedRgw> {
  rgwCluster ??= rgwStart(path.join(runDir(), 'rgw'));
  let s: RgwSettings;
  try {
    s = await rgwCluster;
  } catch (err) {
    rgwCluster = undefined;
    throw err;
  }
  const prefix = `${label.replace(/[^A-Za-z0-9_-]+/g, '-')}-${randomBytes(6).toString('hex')}/`;
  return { ...s, prefix, url: (sub = '') => s3Url(s, `${prefix}${sub}`) };
}
