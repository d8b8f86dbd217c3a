// A commit's scan with the OS's dm-era tracking vs without it, on one file, interleaved (issue 16,
// "commit cost ∝ change"):   node bench/era-scan.mjs FILE      env: REPS=5 CHANGED=0.01
// FILE is read as a disk of 64 KiB chunks; a first scan records its ids and fingerprints (the slot).
// Rows: `full scan` = scanDisk with the slot's fingerprints (today's dirty commit without tracking:
// every allocated byte read, BLAKE3 only where XXH3 changed); `hash all` = no fingerprints either;
// `era` = real dm-era metadata (era_restore, CHANGED of the blocks marked, spread evenly) read with the
// agent's reader, then scanDisk over only the marked chunks. Needs `npm run build` and era_restore.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const [file] = process.argv.slice(2);
if (!file) throw new Error('usage: node bench/era-scan.mjs FILE');
const here = path.resolve(import.meta.dirname, '..');
const { scanDisk } = await import(path.join(here, 'dist/src/sync/scan.js'));
const { readWritten, ERA_BLOCK } = await import(path.join(here, 'dist/src/agent/era/metadata.js'));
const size = statSync(file).size;
const g = { virtualSize: Math.floor(size / 65536) * 65536, chunkSize: 65536 };
const n = g.virtualSize / g.chunkSize;
const ext = process.env.DEVICE === '1' ? [{ start: 0, length: g.virtualSize }] : null;
const first = await scanDisk(file, g, ext, null);
const tmp = mkdtempSync(path.join(os.tmpdir(), 'df-era-bench-'));
const every = Math.max(1, Math.round(1 / Number(process.env.CHANGED || 0.01)));
const bits = Array.from({ length: Math.ceil(n / every) }, (_, k) => k * every);
writeFileSync(path.join(tmp, 'm.xml'), `<superblock uuid="" block_size="128" nr_blocks="${n}" current_era="1">\n<writeset era="1" nr_bits="${n}">\n${bits.map((b) => `<bit block="${b}" value="true"/>`).join('\n')}\n</writeset>\n<era_array></era_array>\n</superblock>\n`);
execFileSync('truncate', ['-s', String(Math.ceil((n * 8 + 4 * 1024 * 1024) / 1048576) * 1048576), path.join(tmp, 'm.bin')]);
execFileSync('era_restore', ['-i', path.join(tmp, 'm.xml'), '-o', path.join(tmp, 'm.bin')]);
const meta = readFileSync(path.join(tmp, 'm.bin'));
const rows = { 'hash all': [], 'full scan': [], era: [] };
const run = async (k, f) => {
  const c = process.cpuUsage();
  const t0 = performance.now();
  const s = await f();
  const d = process.cpuUsage(c);
  if (s.changed.length) throw new Error(`${k}: ${s.changed.length} chunks changed`);
  rows[k].push([(performance.now() - t0) / 1000, (d.user + d.system) / 1e6, s.bytesRead]);
};
try {
  for (let r = 0; r < Number(process.env.REPS || 5); r++) {
    await run('hash all', () => scanDisk(file, g, ext, first.index));
    await run('full scan', () => scanDisk(file, g, ext, first.index, undefined, undefined, null, first.fingerprints));
    await run('era', async () => {
      const w = await readWritten(async (b) => meta.subarray(b * ERA_BLOCK, (b + 1) * ERA_BLOCK), meta.length / ERA_BLOCK, 1);
      return scanDisk(file, g, ext, first.index, undefined, undefined, null, first.fingerprints, w.written);
    });
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
const med = (a) => [...a].sort((x, y) => x - y)[a.length >> 1];
const base = rows['full scan'];
const bw = med(base.map((v) => v[0]));
console.log(`\n${new Date().toISOString()}, ${file}${ext ? ' (read whole, as a device)' : ''} (${size} bytes, ${n} chunks, ${bits.length} marked), median of ${base.length}, os.loadavg ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}\n`);
console.log('| | wall s | wall / full scan | CPU s | bytes read |');
console.log('|---|---|---|---|---|');
for (const [k, v] of Object.entries(rows)) {
  const w = med(v.map((p) => p[0]));
  console.log(`| ${k} | ${w.toFixed(3)} | ${(w / bw).toFixed(3)}x | ${med(v.map((p) => p[1])).toFixed(3)} | ${med(v.map((p) => p[2]))} |`);
}
