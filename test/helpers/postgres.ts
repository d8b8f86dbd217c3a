import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
export const POSTGRES_SCRIPT = fileURLToPath(new URL('../../scripts/engines/postgres.sh', import.meta.url));

/** The settings scripts/engines/*.sh print on stdout (KEY=VALUE lines). */
export function envLines(stdout: string): Record<string, string> {
  return Object.fromEntries(
    stdout
      .split('\n')
      .filter((l) => l.includes('='))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
}

/** What `postgres.sh start|env` prints. */
export interface PostgresSettings {
  /** postgres://deskfuse:PASSWORD@127.0.0.1:PORT/deskfuse */
  url: string;
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
}

export function postgresSettings(stdout: string): PostgresSettings {
  const env = envLines(stdout);
  const need = (k: string): string => {
    const v = env[k];
    if (!v) throw new Error(`postgres.sh printed no ${k}`);
    return v;
  };
  return { url: need('PG_URL'), host: need('PG_HOST'), port: Number(need('PG_PORT')), user: need('PG_USER'), password: need('PG_PASSWORD'), database: need('PG_DATABASE') };
}

/** `postgres.sh start DIR`: creates the cluster or starts it again (same port); reuses a running one. */
export async function postgresStart(dir: string): Promise<PostgresSettings> {
  try {
    return postgresSettings((await run('bash', [POSTGRES_SCRIPT, 'start', dir], { timeout: 300_000, maxBuffer: 1 << 20 })).stdout);
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`scripts/engines/postgres.sh start failed (Debian packages: scripts/setup-deps.sh engines): ${e.message}\n${e.stderr ?? ''}`);
  }
}

export async function postgresCommand(cmd: 'stop' | 'destroy' | 'pids', dir: string): Promise<string> {
  return (await run('bash', [POSTGRES_SCRIPT, cmd, dir], { timeout: 120_000 })).stdout;
}

/** A PostgreSQL cluster of the caller's own (one it may stop and start), in a temp folder. */
export interface Postgres extends PostgresSettings {
  dir: string;
  /** Fast shutdown by the recorded PID; data and port kept. */
  stop(): Promise<void>;
  /** Start again on the same data and port. */
  start(): Promise<void>;
  /** Stop and delete the folder. */
  destroy(): Promise<void>;
}

/** Start a fresh cluster (≈1.5 s). Prefer sharedPostgres() (test/helpers/engines.ts) unless the test stops it. */
export async function startPostgres(): Promise<Postgres> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startPostgresOnce();
    } catch (err) {
      // the free port the script picked was taken by another process before postgres bound it
      if (attempt >= 3 || !/Address already in use/.test((err as Error).message)) throw err;
    }
  }
}

async function startPostgresOnce(): Promise<Postgres> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'deskfuse-pg-'));
  const destroy = async () => {
    await postgresCommand('destroy', dir);
    await fsp.rm(dir, { recursive: true, force: true }); // a folder the script did not finish making
  };
  let s: PostgresSettings;
  try {
    s = await postgresStart(dir);
  } catch (err) {
    await destroy().catch(() => {});
    throw err;
  }
  return {
    ...s,
    dir,
    stop: async () => {
      await postgresCommand('stop', dir);
    },
    start: async () => {
      await postgresStart(dir);
    },
    destroy,
  };
}
