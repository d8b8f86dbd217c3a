import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { TestProject } from 'vitest/node';

/**
 * vitest globalSetup (vitest.config.ts): the shared engines of one `vitest run`. It only makes the
 * run's folder and hands its path to the workers (provide/inject); an engine starts the first time a
 * test file asks for it (test/helpers/engines.ts), at most once per run, and the teardown here stops
 * every engine started in the folder by the PIDs its script recorded, then deletes the folder.
 */
declare module 'vitest' {
  export interface ProvidedContext {
    deskfuseEnginesDir: string;
  }
}

const run = promisify(execFile);
/** The engines a run may share: the folder name in the run's folder → the script that runs it. */
export const SHARED_ENGINES = {
  postgres: fileURLToPath(new URL('../../scripts/engines/postgres.sh', import.meta.url)),
  rgw: fileURLToPath(new URL('../../scripts/engines/ceph-rgw.sh', import.meta.url)),
} as const;

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'deskfuse-engines-'));
  await fsp.chmod(dir, 0o711); // PostgreSQL runs as the `postgres` user: it must reach its folder inside
  project.provide('deskfuseEnginesDir', dir);
  return async () => {
    const failures: string[] = [];
    await Promise.all(
      Object.entries(SHARED_ENGINES).map(async ([name, script]) => {
        const d = path.join(dir, name);
        if (!(await fsp.stat(d).catch(() => null))) return;
        try {
          await run('bash', [script, 'destroy', d], { timeout: 120_000 });
        } catch (err) {
          failures.push(`${name}: ${(err as { stderr?: string }).stderr ?? (err as Error).message}`);
        }
      }),
    );
    if (failures.length) throw new Error(`stopping the shared engines failed (their folder ${dir} is kept):\n${failures.join('\n')}`);
    await fsp.rm(dir, { recursive: true, force: true });
  };
}
