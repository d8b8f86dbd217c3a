import { encodeFrame } from '../chunk/frame.js';
import { hashBytes, idHex, isZero, isZeroId, ZERO_ID } from '../chunk/id.js';
import type { ChunkStore } from '../chunk/store.js';
import type { ChunkIndex } from '../image/chunk-index.js';
import type { Layer } from '../image/layer.js';
import { BASE, ZERO, type IncrementSnapshot } from './increment.js';

/** Chunks stored per durability barrier. */
const BATCH = 256;

/**
 * A checkpoint of a VDI session: the layer a commit would make (entries for the chunks that differ
 * from the base), built from the previous checkpoint's entries and a snapshot of the chunks written
 * since (or of every changed chunk when there is no previous one). Changed chunks are stored (durable)
 * before the layer is returned; the caller stages it.
 */
export async function checkpointLayer(
  snap: IncrementSnapshot,
  base: ChunkIndex,
  chunks: ChunkStore,
  previous: ReadonlyMap<number, Buffer>,
): Promise<{ layer: Layer; entries: Map<number, Buffer>; stored: number }> {
  const entries = new Map(previous);
  let batch: Array<{ id: string; frame: Buffer }> = [];
  let stored = 0;
  const put = async () => {
    if (!batch.length) return;
    stored += (await chunks.putMany(batch)).stored;
    batch = [];
  };
  for (const i of snap.positions) {
    const c = await snap.take(i);
    const before = base.idAt(i);
    if (c.state === BASE) {
      entries.delete(i);
      continue;
    }
    if (c.state === ZERO || isZero(c.bytes!)) {
      if (isZeroId(before)) entries.delete(i);
      else entries.set(i, ZERO_ID);
      continue;
    }
    const id = hashBytes(c.bytes!);
    if (id.equals(before)) {
      entries.delete(i);
      continue;
    }
    entries.set(i, id);
    batch.push({ id: idHex(id), frame: encodeFrame(c.bytes!) });
    if (batch.length >= BATCH) await put();
  }
  await put();
  const layer: Layer = { geometry: base.geometry, hasMasks: false, entries: [...entries].sort((a, b) => a[0] - b[0]).map(([index, id]) => ({ index, id })) };
  return { layer, entries, stored };
}
