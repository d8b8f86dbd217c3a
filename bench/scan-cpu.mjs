// The scan alone vs `xxhsum -H2` on one file, interleaved, wall and CPU (issue 16):
//   node bench/scan-cpu.mjs FILE [OLD_DIST]      env: REPS=5
// FILE is read as a disk of 64 KiB chunks that holds what a first scan found (a dirty disk with nothing
// changed). Rows: xxhsum -H2 (wall, user+sys); `hash all` = scanDisk with no fingerprints (holes
// skipped, every data chunk BLAKE3); `fingerprints` = scanDisk with the first scan's fingerprints
// (BLAKE3 only where XXH3-128 changed: here none); with OLD_DIST (another checkout's dist/, e.g. the
// code before), its scanDisk too. CPU is process.cpuUsage() over the call (worker threads included),
// the fairer measure on a busy machine. Needs `npm run build` and xxhsum.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const [file, oldDist] = process.argv.slice(2);
if (!file) throw new Error('usage: node bench/scan-cpu.mjs FILE [OLD_DIST]');
const here = path.resolve(import.meta.dirname, '..');
const newm = await import(path.join(here, 'dist/src/sync/scan.js'));
const oldm = oldDist ? await import(path.resolve(oldDist, 'src/sync/scan.js')) : null;
const size = statSync(file).size;
const g = { virtualSize: Math.floor(size / 512) * 512, chunkSize: 65536 };
const first = await newm.scanDisk(file, g, null, null);
const tmp = mkdtempSync(path.join(os.tmpdir(), 'df-scan-cpu-'));
const rows = { 'xxhsum -H2': [], ...(oldm ? { 'before (OLD_DIST)': [] } : {}), 'hash all': [], fingerprints: [] };
const run = async (k, f) => {
  const c = process.cpuUsage();
  const s = await f();
  const d = process.cpuUsage(c);
  if (s.changed.length) throw new Error(`${k}: ${s.changed.length} chunks changed`);
  rows[k].push([s.seconds, (d.user + d.system) / 1e6]);
};
try {
  for (let r = 0; r < Number(process.env.REPS || 5); r++) {
    execFileSync('/usr/bin/time', ['-f', '%e %U %S', '-o', path.join(tmp, 't'), 'xxhsum', '-H2', file], { stdio: 'ignore' });
    const [e, u, s] = readFileSync(path.join(tmp, 't'), 'utf8').trim().split('\n').pop().split(' ').map(Number);
    rows['xxhsum -H2'].push([e, u + s]);
    if (oldm) await run('before (OLD_DIST)', () => oldm.scanDisk(file, g, null, first.index));
    await run('hash all', () => newm.scanDisk(file, g, null, first.index));
    await run('fingerprints', () => newm.scanDisk(file, g, null, first.index, undefined, undefined, null, first.fingerprints));
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
const med = (a) => [...a].sort((x, y) => x - y)[a.length >> 1];
const x = rows['xxhsum -H2'];
const xw = med(x.map((v) => v[0]));
const xc = med(x.map((v) => v[1]));
console.log(`\n${new Date().toISOString()}, ${file} (${size} bytes), median of ${x.length}, os.loadavg ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}\n`);
console.log('| | wall s | wall / xxhsum | CPU s | CPU / xxhsum |');
console.log('|---|---|---|---|---|');
for (const [k, v] of Object.entries(rows)) {
  const w = med(v.map((p) => p[0]));
  const c = med(v.map((p) => p[1]));
  console.log(`| ${k} | ${w.toFixed(3)} | ${(w / xw).toFixed(2)}x | ${c.toFixed(3)} | ${(c / xc).toFixed(2)}x |`);
}
