// Garbage-collection benchmark helper (bench/gc.sh drives it).
//   node bench/gc.mjs make DIR VERSIONS [CHANGED]   a store of VERSIONS synthetic versions of one image
//        (256 chunks of 4 KiB; each version changes CHANGED random chunks, default 16, with new bytes),
//        then drops the oldest half of the version rows (as retention would): their own chunks, layers
//        and indexes are garbage, the rest is shared with what stays
//   node bench/gc.mjs run DIR                       one garbage collection (grace 0; the clock 2 s on,
//        so everything just written counts as old); prints its result as one JSON line
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { FsChunkStore } from '../dist/src/chunk/fs-store.js';
import { encodeFrame } from '../dist/src/chunk/frame.js';
import { hashBytes, idHex } from '../dist/src/chunk/id.js';
import { runGc } from '../dist/src/gc/gc.js';
import { gcStoreOf } from '../dist/src/gc/stores.js';
import { applyLayer, encodeLayer } from '../dist/src/image/layer.js';
import { openMeta } from '../dist/src/meta/open.js';
import { SqliteEngine } from '../dist/src/meta/sqlite-engine.js';
import { DeltaCache } from '../dist/src/sync/delta-cache.js';

const [mode, dir, nArg, changedArg] = process.argv.slice(2);
const G = { virtualSize: 256 * 4096, chunkSize: 4096 };
const open = async () => ({
  meta: await openMeta(new SqliteEngine(path.join(dir, 'meta.sqlite'))),
  chunks: await FsChunkStore.open(path.join(dir, 'chunks'), 1 << 20),
  blobs: await FsChunkStore.open(path.join(dir, 'blobs'), 1 << 30),
});

if (mode === 'make') {
  const n = Number(nArg);
  const changed = Number(changedArg ?? 16);
  const { meta, chunks, blobs } = await open();
  await meta.images.createImage({ name: 'bench', virtualSize: G.virtualSize, chunkSize: G.chunkSize, hashAlg: 'blake3', createdAt: new Date().toISOString() });
  let index = null;
  let parent = null;
  for (let v = 1; v <= n; v++) {
    const positions = v === 1 ? Array.from({ length: 256 }, (_, i) => i) : [...new Set(Array.from({ length: changed }, () => Math.floor(Math.random() * 256)))].sort((a, b) => a - b);
    const put = [];
    const entries = positions.map((i) => {
      const raw = randomBytes(4096);
      const id = hashBytes(raw);
      put.push({ id: idHex(id), frame: encodeFrame(raw) });
      return { index: i, id };
    });
    await chunks.putMany(put);
    const layer = { geometry: G, hasMasks: false, entries };
    const layerBytes = encodeLayer(layer);
    index = applyLayer(index, layer);
    const indexBytes = index.encode();
    const layerId = idHex(hashBytes(layerBytes));
    const indexId = idHex(hashBytes(indexBytes));
    await blobs.putMany([{ id: layerId, frame: encodeFrame(layerBytes) }, { id: indexId, frame: encodeFrame(indexBytes) }]);
    const out = await meta.images.commitVersion({
      image: 'bench', parent, layer: layerId, index: indexId, kind: 'publish', author: 'bench', message: '',
      chunksChanged: entries.length, chunksTotal: index.nonZeroCount(), at: new Date().toISOString(),
    }, 'main', 'conflicts/main/x');
    parent = out.version.version;
  }
  const dropped = await meta.engine.run('DELETE FROM versions WHERE image = ? AND version <= ?', ['bench', Math.floor(n / 2)]);
  const c = await chunks.size();
  const b = await blobs.size();
  console.log(JSON.stringify({ versions: n, dropped, chunks: c.chunks, chunkBytes: c.bytes, blobs: b.chunks, blobBytes: b.bytes }));
  await meta.close();
} else if (mode === 'run') {
  const { meta, chunks, blobs } = await open();
  const r = await runGc({
    repo: meta.gc, images: meta.images, chunks: gcStoreOf(chunks), blobs: gcStoreOf(blobs),
    deltas: new DeltaCache(path.join(dir, 'deltas'), blobs, chunks), readBlob: async (id) => (await blobs.get(id)).raw,
    tmpDir: path.join(dir, 'gc-tmp'), holder: 'bench', graceMs: 0, now: () => Date.now() + 2000,
  });
  console.log(JSON.stringify({ seconds: r.seconds, marked: r.marked, candidates: r.candidates, cancelled: r.cancelled, deleted: r.deleted }));
  await meta.close();
} else {
  console.error('usage: node bench/gc.mjs make DIR VERSIONS [CHANGED] | run DIR');
  process.exit(2);
}
