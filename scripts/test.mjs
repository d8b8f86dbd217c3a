#!/usr/bin/env node
// `npm test`: install the Debian tools the tests use, build, run vitest, and print the plain
// "N passed, N failed" line CI reads (vitest's own summary is not one it knows).
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const run = (cmd, args) => execFileSync(cmd, args, { stdio: 'inherit' });
run('bash', ['scripts/setup-deps.sh']);
run('npm', ['run', '--silent', 'build']);

const dir = mkdtempSync(path.join(tmpdir(), 'deskfuse-test-'));
const report = path.join(dir, 'vitest.json');
const r = spawnSync('npx', ['vitest', 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...process.argv.slice(2)], { stdio: 'inherit' });
let passed = 0, failed = 0, skipped = 0;
try {
  const j = JSON.parse(readFileSync(report, 'utf8'));
  passed = j.numPassedTests;
  failed = j.numFailedTests + (j.numRuntimeErrorTestSuites ?? 0);
  skipped = j.numPendingTests + j.numTodoTests;
  // A file that failed outside its tests (an import, a hook such as afterAll) counts as one failure.
  for (const s of j.testResults ?? []) if (s.status === 'failed' && !(s.assertionResults ?? []).some((a) => a.status === 'failed')) failed++;
} catch {
  failed = failed || 1;
}
rmSync(dir, { recursive: true, force: true });
console.log(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exitCode = r.status !== 0 || failed > 0 ? 1 : 0;
