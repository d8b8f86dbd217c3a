// Where end-to-end runs leave their files: ${DESKFUSE_E2E_DIR:-/tmp/deskfuse-e2e}/<run>/<vm>/…
import { mkdirSync } from 'node:fs';
import path from 'node:path';

/** The root of all e2e run directories (env DESKFUSE_E2E_DIR, default /tmp/deskfuse-e2e). */
export function e2eRoot(): string {
  return process.env.DESKFUSE_E2E_DIR || '/tmp/deskfuse-e2e';
}

/** Creates (if needed) and returns `<root>/<run>`. `run` must be a plain name, not a path. */
export function runDir(run: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(run)) throw new Error(`e2e run name: expected [A-Za-z0-9_.-]+, received ${JSON.stringify(run)}`);
  const dir = path.join(e2eRoot(), run);
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** True when DESKFUSE_E2E_KEEP=1: logs are kept even after a passing run. */
export function keepLogsAlways(): boolean {
  return process.env.DESKFUSE_E2E_KEEP === '1';
}
