import { encodeFrame } from '../chunk/frame.js';
import { hashBytes, idHex, isZero, isZeroId, ZERO_ID } from '../chunk/id.js';
import type { ChunkStore } from '../chunk/store.js';
import type { ChunkIndex } from '../image/chunk-index.js';
import type { Layer, LayerEntry } from '../image/layer.js';
import { ZERO, type CloudIncrement } from './increment.js';

/** Chunks stored per durability barrier while a commit turns an increment into a layer. */
const BATCH = 256;

export interface IncrementLayer {
  layer: Layer;
  /** Chunks newly written to the store (others were there already, shared with other versions). */
  stored: number;
  /** Raw bytes of the changed chunks. */
  bytes: number;
}

/**
 * Turn a cloud increment into a layer over its base: each changed chunk is hashed, stored (zstd
 * frame, fsynced) and named in the layer, except chunks that came back to the base's bytes. All-zero
 * chunks become zero entries and are never stored. The layer is made only after its chunks are durable.
 */
export async function incrementLayer(inc: CloudIncrement, base: ChunkIndex, chunks: ChunkStore): Promise<IncrementLayer> {
  const entries: LayerEntry[] = [];
  let batch: Array<{ id: string; frame: Buffer }> = [];
  let stored = 0;
  let bytes = 0;
  const put = async () => {
    if (!batch.length) return;
    stored += (await chunks.putMany(batch)).stored;
    batch = [];
  };
  for (const i of inc.changedPositions()) {
    const before = base.idAt(i);
    if (inc.stateAt(i) === ZERO) {
      if (!isZeroId(before)) entries.push({ index: i, id: ZERO_ID });
      continue;
    }
    const raw = await inc.chunk(i);
    if (isZero(raw)) {
      if (!isZeroId(before)) entries.push({ index: i, id: ZERO_ID });
      continue;
    }
    const id = hashBytes(raw);
    if (id.equals(before)) continue;
    entries.push({ index: i, id });
    bytes += raw.length;
    batch.push({ id: idHex(id), frame: encodeFrame(raw) });
    if (batch.length >= BATCH) await put();
  }
  await put();
  return { layer: { geometry: base.geometry, hasMasks: false, entries }, stored, bytes };
}
