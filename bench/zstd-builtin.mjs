#!/usr/bin/env node
// Node's built-in zstd (node:zlib, Node >= 23.8) against zstd-napi, on the same data in one run:
// level 3 (frame.ts, frames.ts), compress and decompress, sync and async, 64 KiB and 4 MiB chunks.
// chunkSize size+1: the output in one buffer (the declared content size is known before decompressing).
// Run: node bench/zstd-builtin.mjs   (zstd-napi must be installed: npm install --no-save zstd-napi)
// The data: a disk-image-like mix (x86 code from this Node binary, text, zero runs, random bytes).
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import zlib from 'node:zlib';

const require = createRequire(import.meta.url);
const napi = require('zstd-napi');
const LEVEL = 3;
const params = { [zlib.constants.ZSTD_c_compressionLevel]: LEVEL };
const bin = readFileSync(process.execPath);
const text = readFileSync(new URL('../README.md', import.meta.url));
function sample(size, seed) {
  const out = Buffer.alloc(size);
  for (let at = 0, k = seed; at < size; k++) {
    const n = Math.min(size - at, 4096 * (1 + (k % 8)));
    const kind = k % 5;
    if (kind === 0 || kind === 1) bin.copy(out, at, (k * 7919 * 4096) % (bin.length - n), (k * 7919 * 4096) % (bin.length - n) + n);
    else if (kind === 2) text.copy(out, at, 0, Math.min(n, text.length));
    else if (kind === 3) randomBytes(n).copy(out, at);
    at += n; // kind 4: zeros
  }
  return out;
}
const zc = promisify(zlib.zstdCompress), zd = promisify(zlib.zstdDecompress);
// CPU time of the process (user + system, every thread), not wall time: a shared 2-core machine under load
// gives wall times that swing 2x between runs; the CPU an operation costs is what it takes from the server.
const cpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };
const time = (n, f) => { const t = cpu(); for (let i = 0; i < n; i++) f(i); return cpu() - t; };
const timeAsync = async (n, f) => { const t = cpu(); for (let i = 0; i < n; i++) await f(i); return cpu() - t; };

console.log(`node ${process.version} (zstd ${process.versions.zstd}), zstd-napi ${require('zstd-napi/package.json').version}, level ${LEVEL}`);
const rows = [];
for (const [label, size, count] of [['64 KiB', 65536, 512], ['4 MiB', 4 << 20, 16]]) {
  const data = Array.from({ length: count }, (_, i) => sample(size, i * 13));
  const mb = (size * count) / 2 ** 20;
  const framesNapi = data.map((d) => napi.compress(d, { compressionLevel: LEVEL }));
  const framesNode = data.map((d) => zlib.zstdCompressSync(d, { params }));
  let same = 0;
  for (let i = 0; i < count; i++) {
    if (Buffer.compare(framesNapi[i], framesNode[i]) === 0) same++;
    if (!napi.decompress(framesNode[i]).equals(data[i]) || !zlib.zstdDecompressSync(framesNapi[i]).equals(data[i])) throw new Error('round trip');
  }
  const ratio = framesNapi.reduce((k, f) => k + f.length, 0) / (size * count);
  for (let rep = 0; rep < 7; rep++) {   // best of 7, interleaved so both see the same machine state
    const r = {
      'compress napi sync': time(count, (i) => napi.compress(data[i], { compressionLevel: LEVEL })),
      'compress node sync': time(count, (i) => zlib.zstdCompressSync(data[i], { params })),
      'compress node async': await timeAsync(count, (i) => zc(data[i], { params })),
      'decompress napi sync': time(count, (i) => napi.decompress(framesNapi[i])),
      'decompress node sync': time(count, (i) => zlib.zstdDecompressSync(framesNapi[i])),
      'decompress node sync, chunkSize size+1': time(count, (i) => zlib.zstdDecompressSync(framesNapi[i], { chunkSize: size + 1 })),
      'decompress node async': await timeAsync(count, (i) => zd(framesNapi[i])),
      'decompress node async, chunkSize size+1': await timeAsync(count, (i) => zd(framesNapi[i], { chunkSize: size + 1 })),
    };
    for (const [k, ms] of Object.entries(r)) {
      const row = rows.find((x) => x.chunk === label && x.op === k);
      const mbs = mb / (ms / 1000);
      if (row) row['MB/s'] = Math.max(row['MB/s'], Math.round(mbs)); else rows.push({ chunk: label, op: k, 'MB/s': Math.round(mbs) });
    }
  }
  console.log(`${label}: ${count} chunks, ratio ${ratio.toFixed(3)}, ${same}/${count} frames byte-identical between the two`);
}
console.table(rows);
