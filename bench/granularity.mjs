#!/usr/bin/env node
// Delta-granularity measurement: which fixed chunk size should deskfuse use?
//
// usage: node bench/granularity.mjs [DATA_DIR] [--json OUT] [--sizes 4K,16K,64K,256K,1M]
//   DATA_DIR defaults to bench/data/2G (made by /work/shared/bench/make-workload.sh) and must hold
//   base.img, v2.img and (optionally) local.img of equal size.
//
// One sequential pass reads the three images side by side in WINDOW-sized windows (memory stays
// well under 300 MiB), finds the 4 KiB blocks that differ (base->v2 = "update", base->local =
// "capture") and, for every chunk size at once, accumulates:
//   * base.img non-zero chunks, distinct non-zero chunks (BLAKE3);
//   * index sizes (32 bytes per entry): full index for the image and for a 64 GiB image;
//   * per-chunk: the changed chunks, each whole new chunk compressed alone with zstd -3
//     (what a chunk store holds and ships), also the same after dedup against base's chunks
//     (a content-addressed store skips chunks it already holds);
//   * block-mask: only the changed 4 KiB blocks of changed chunks, packed per request batch
//     (whole chunks until >= 4 MiB raw) and compressed as one zstd -3 stream per batch, plus a
//     chunkSize/4096-bit mask per changed chunk;
//   * reference: all changed 4 KiB blocks concatenated, one zstd -3 stream (PEERS.md floor).
// Ratios are to the reference computed here. Pure measurement: writes only the JSON.
import { openSync, readSync, fstatSync, closeSync, writeFileSync, existsSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, resolve, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const binding = require('zstd-napi/binding');
const { blake3UrlSafeBase64: b3key } = require('@napi-rs/blake-hash'); // string key: no Buffer garbage

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
let dataDir = join(here, 'data', '2G');
let jsonOut = join(here, 'data', 'granularity.json');
let sizeList = '4K,16K,64K,256K,1M';
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === '--json') jsonOut = resolve(args[++i]);
  else if (a === '--sizes') sizeList = args[++i];
  else if (a === '-h' || a === '--help') {
    console.log('usage: node bench/granularity.mjs [DATA_DIR] [--json OUT] [--sizes 4K,16K,64K,256K,1M]');
    process.exit(0);
  } else dataDir = resolve(a);
}

const BS = 4096;
const LEVEL = 3;
const BATCH_RAW = 4 << 20; // block-mask request batch: ~4 MiB of raw blocks
const WINDOW = 16 << 20; // read window per file (3 files => 48 MiB)
const IMG64 = 64 * 2 ** 30;
const MiB = 2 ** 20;

function parseSize(s) {
  const m = /^(\d+)([KMG]?)$/i.exec(s.trim());
  if (!m) throw new Error(`bad size ${s}`);
  return Number(m[1]) * { '': 1, K: 1024, M: MiB, G: 2 ** 30 }[m[2].toUpperCase()];
}
const label = (n) => (n >= MiB ? `${n / MiB}M` : `${n / 1024}K`);
const sizes = sizeList.split(',').map(parseSize);
for (const cs of sizes) {
  if (cs % BS || WINDOW % cs) throw new Error(`chunk size ${cs} must be a multiple of 4K dividing ${WINDOW}`);
}

// ---- streaming zstd byte counter (one frame per stream, like `zstd -3` over a pipe) ----
class ZstdCounter {
  constructor() {
    this.cctx = new binding.CCtx();
    this.cctx.setParameter(binding.CParameter.compressionLevel, LEVEL);
    this.out = Buffer.allocUnsafe(1 << 20);
    this.bytes = 0;
    this.raw = 0;
  }
  write(buf, end = false) {
    this.raw += buf.length;
    let src = buf;
    const op = end ? binding.EndDirective.end : binding.EndDirective.continue;
    for (;;) {
      const [remaining, written, consumed] = this.cctx.compressStream2(this.out, src, op);
      this.bytes += written;
      src = src.subarray(consumed);
      if (end ? remaining === 0 : src.length === 0) break;
    }
  }
  end() {
    this.write(Buffer.alloc(0), true);
    return this.bytes;
  }
}
// one-shot zstd -3 size into a preallocated buffer: no per-chunk allocation, so RSS stays flat
const oneShot = new binding.CCtx();
let zdst = Buffer.allocUnsafe(binding.compressBound(8 << 20));
const zsize = (buf) => {
  if (binding.compressBound(buf.length) > zdst.length) zdst = Buffer.allocUnsafe(binding.compressBound(buf.length));
  return oneShot.compress(zdst, buf, LEVEL);
};

// ---- inputs ----
const names = ['base', 'v2', 'local'];
const files = {};
for (const n of names) {
  const p = join(dataDir, `${n}.img`);
  if (!existsSync(p)) {
    if (n === 'local') continue;
    console.error(`granularity: ${p} missing (make it with make-workload.sh)`);
    process.exit(2);
  }
  const fd = openSync(p, 'r');
  files[n] = { fd, size: fstatSync(fd).size, buf: Buffer.allocUnsafe(WINDOW) };
}
const imgSize = files.base.size;
for (const n of Object.keys(files)) {
  if (files[n].size !== imgSize) throw new Error(`${n}.img size ${files[n].size} != base ${imgSize}`);
}
const deltas = ['update', 'capture'].filter((d) => d === 'update' || files.local);
const target = { update: 'v2', capture: 'local' };

// ---- accumulators ----
const zero = Buffer.alloc(Math.max(...sizes, WINDOW));
const isZero = (b) => b.equals(zero.subarray(0, b.length));

function newDelta() {
  return {
    changed: 0, // chunks with >= 1 differing 4K block
    changedToZero: 0, // changed chunks that became all-zero (never stored)
    perChunkRaw: 0, // bytes of the changed (non-zero) chunks
    perChunkZ: 0, // sum of zstd -3 of each changed non-zero chunk
    newIds: [], // [key, zbytes] for dedup after the pass
    maskBlocks: 0,
    maskBatches: 0,
    maskZ: 0, // batched zstd of the changed blocks
    maskChunkZ: 0, // each changed chunk's changed blocks compressed alone
    batch: null, // preallocated per (size, delta): BATCH_RAW + one chunk
    batchRaw: 0,
  };
}
const per = new Map();
for (const cs of sizes) {
  per.set(cs, {
    cs,
    nonzero: 0,
    distinct: new Set(),
    ...Object.fromEntries(deltas.map((d) => [d, newDelta()])),
  });
  for (const d of deltas) per.get(cs)[d].batch = Buffer.allocUnsafe(BATCH_RAW + cs);
}
const ref = Object.fromEntries(deltas.map((d) => [d, { blocks: 0, z: new ZstdCounter() }]));

function flushBatch(st) {
  if (st.batchRaw === 0) return;
  st.maskZ += zsize(st.batch.subarray(0, st.batchRaw));
  st.maskBatches++;
  st.batchRaw = 0;
}

// ---- the pass ----
const t0 = process.hrtime.bigint();
const nBlocksWin = WINDOW / BS;
const changedMask = Object.fromEntries(deltas.map((d) => [d, new Uint8Array(nBlocksWin)]));
for (let off = 0; off < imgSize; off += WINDOW) {
  const len = Math.min(WINDOW, imgSize - off);
  for (const n of Object.keys(files)) {
    const f = files[n];
    let got = 0;
    while (got < len) {
      const r = readSync(f.fd, f.buf, got, len - got, off + got);
      if (r === 0) throw new Error(`${n}.img: short read at ${off + got}`);
      got += r;
    }
  }
  const base = files.base.buf.subarray(0, len);
  if (isZero(base) && deltas.every((d) => files[target[d]].buf.subarray(0, len).equals(base))) continue;

  // which 4K blocks differ, per delta
  const anyChange = {};
  for (const d of deltas) {
    const tb = files[target[d]].buf.subarray(0, len);
    const m = changedMask[d];
    m.fill(0);
    anyChange[d] = false;
    if (tb.equals(base)) continue;
    anyChange[d] = true;
    for (let b = 0, o = 0; o < len; b++, o += BS) {
      const x = tb.subarray(o, o + BS);
      if (!x.equals(base.subarray(o, o + BS))) {
        m[b] = 1;
        ref[d].blocks++;
        ref[d].z.write(x);
      }
    }
  }

  for (const cs of sizes) {
    const st = per.get(cs);
    const bpc = cs / BS;
    for (let o = 0; o < len; o += cs) {
      const clen = Math.min(cs, len - o);
      const bc = base.subarray(o, o + clen);
      if (!isZero(bc)) {
        st.nonzero++;
        st.distinct.add(b3key(bc));
      }
      for (const d of deltas) {
        if (!anyChange[d]) continue;
        const m = changedMask[d];
        const b0 = o / BS;
        let nch = 0;
        for (let b = b0; b < b0 + bpc; b++) nch += m[b];
        if (nch === 0) continue;
        const ds = st[d];
        ds.changed++;
        const tc = files[target[d]].buf.subarray(o, o + clen);
        if (isZero(tc)) ds.changedToZero++;
        else {
          const z = zsize(tc);
          ds.perChunkRaw += clen;
          ds.perChunkZ += z;
          ds.newIds.push([b3key(tc), z]);
        }
        // block-mask: just the differing blocks of this chunk
        const start = ds.batchRaw;
        for (let b = b0; b < b0 + bpc; b++) {
          if (m[b]) {
            tc.copy(ds.batch, ds.batchRaw, (b - b0) * BS, (b - b0 + 1) * BS);
            ds.batchRaw += BS;
          }
        }
        ds.maskBlocks += nch;
        ds.maskChunkZ += zsize(ds.batch.subarray(start, ds.batchRaw));
        if (ds.batchRaw >= BATCH_RAW) flushBatch(ds);
      }
    }
  }
}
for (const n of Object.keys(files)) closeSync(files[n].fd);
const refOut = {};
for (const d of deltas) {
  const r = ref[d];
  refOut[d] = { blocks: r.blocks, rawBytes: r.blocks * BS, zstdBytes: r.z.end() };
}
const passSeconds = Number(process.hrtime.bigint() - t0) / 1e9;

// ---- results ----
const results = [];
for (const cs of sizes) {
  const st = per.get(cs);
  const row = {
    chunkSize: cs,
    label: label(cs),
    baseNonZeroChunks: st.nonzero,
    baseDistinctNonZeroChunks: st.distinct.size,
    indexBytesImage: Math.ceil(imgSize / cs) * 32,
    indexBytes64G: (IMG64 / cs) * 32,
  };
  for (const d of deltas) {
    const ds = st[d];
    flushBatch(ds);
    // dedup: a content-addressed store ships a changed chunk only if its id is new
    const seen = new Set();
    let newChunks = 0;
    let newZ = 0;
    for (const [k, z] of ds.newIds) {
      if (st.distinct.has(k) || seen.has(k)) continue;
      seen.add(k);
      newChunks++;
      newZ += z;
    }
    const refZ = refOut[d].zstdBytes;
    const maskBytes = Math.ceil(ds.changed * (cs / BS) / 8);
    row[d] = {
      changedChunks: ds.changed,
      changedToZeroChunks: ds.changedToZero,
      perChunk: { rawBytes: ds.perChunkRaw, zstdBytes: ds.perChunkZ, xRef: ds.perChunkZ / refZ },
      perChunkDedup: { newChunks, zstdBytes: newZ, xRef: newZ / refZ },
      blockMask: {
        blocks: ds.maskBlocks,
        batches: ds.maskBatches,
        zstdBytes: ds.maskZ,
        maskBytes,
        totalBytes: ds.maskZ + maskBytes,
        xRef: (ds.maskZ + maskBytes) / refZ,
        perChunkZstdBytes: ds.maskChunkZ,
        perChunkXRef: (ds.maskChunkZ + maskBytes) / refZ,
      },
      // layer = sparse map chunk index -> id: 8 + 32 bytes per changed chunk
      layerBytes: ds.changed * 40,
    };
  }
  results.push(row);
}
const wall = Number(process.hrtime.bigint() - t0) / 1e9;

const out = {
  dataDir,
  imageBytes: imgSize,
  blockSize: BS,
  zstdLevel: LEVEL,
  batchRawBytes: BATCH_RAW,
  reference: refOut,
  results,
  seconds: { pass: +passSeconds.toFixed(2), total: +wall.toFixed(2) },
  maxRssMiB: +(process.resourceUsage().maxRSS / 1024).toFixed(1),
  node: process.version,
  date: new Date().toISOString(),
};
mkdirSync(dirname(jsonOut), { recursive: true });
writeFileSync(jsonOut, JSON.stringify(out, null, 1) + '\n');

// ---- markdown ----
const mib = (n) => (n / MiB).toFixed(2);
const kib = (n) => (n / 1024).toFixed(n < 10240 ? 1 : 0);
const x = (v) => v.toFixed(2);
const L = [];
L.push(`Image ${mib(imgSize)} MiB (${dataDir}); zstd -${LEVEL}; block-mask batches ~${BATCH_RAW / MiB} MiB raw.`);
for (const d of deltas) {
  const r = refOut[d];
  L.push(`Reference ${d}: ${r.blocks} changed 4K blocks = ${mib(r.rawBytes)} MiB raw, ${mib(r.zstdBytes)} MiB zstd -${LEVEL} (one stream).`);
}
L.push('');
L.push('| chunk | base non-zero | distinct | index 2G KiB | index 64G MiB |');
L.push('|---|---|---|---|---|');
for (const r of results) {
  L.push(`| ${r.label} | ${r.baseNonZeroChunks} | ${r.baseDistinctNonZeroChunks} | ${kib(r.indexBytesImage)} | ${mib(r.indexBytes64G)} |`);
}
for (const d of deltas) {
  L.push('');
  L.push(`**${d}** (base → ${target[d]}; x ref = ÷ ${mib(refOut[d].zstdBytes)} MiB)`);
  L.push('');
  L.push('| chunk | changed chunks | per-chunk zstd MiB | x ref | after dedup: new chunks | MiB | x ref | block-mask MiB (batched + mask) | x ref | mask KiB | block-mask per-chunk zstd x ref | layer KiB |');
  L.push('|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const r of results) {
    const v = r[d];
    L.push(`| ${r.label} | ${v.changedChunks} | ${mib(v.perChunk.zstdBytes)} | ${x(v.perChunk.xRef)} | ${v.perChunkDedup.newChunks} | ${mib(v.perChunkDedup.zstdBytes)} | ${x(v.perChunkDedup.xRef)} | ${mib(v.blockMask.totalBytes)} | ${x(v.blockMask.xRef)} | ${kib(v.blockMask.maskBytes)} | ${x(v.blockMask.perChunkXRef)} | ${kib(v.layerBytes)} |`);
  }
}
L.push('');
L.push(`Wall ${wall.toFixed(1)} s (pass ${passSeconds.toFixed(1)} s), max RSS ${out.maxRssMiB} MiB, node ${process.version}. JSON: ${jsonOut}`);
console.log(L.join('\n'));
