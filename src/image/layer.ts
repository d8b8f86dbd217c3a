import { dfError } from '../errors.js';
import { ID_BYTES, isZeroId, ZERO_ID } from '../chunk/id.js';
import { Reader, Writer } from '../wire/bytes.js';
import { ChunkIndex } from './chunk-index.js';
import { checkGeometry, chunkCount, maskBytes, type Geometry } from './geometry.js';

/**
 * A layer: the patent's "incremental file" — the chunks of a version that differ from its parent.
 *
 *   offset size  field
 *   0      4     magic "DFLY"
 *   4      1     format version (1)
 *   5      1     flags: bit 0 = entries carry block masks
 *   6      2     reserved, zero
 *   8      8     virtual size (u64 BE)
 *   16     4     chunk size (u32 BE)
 *   20     4     entry count E (u32 BE)
 *   24     …     E entries, strictly increasing position:
 *                  4   chunk position (u32 BE)
 *                  32  chunk id; 32 zero bytes = the chunk became all zero
 *                  M   (flag bit 0 only) block mask, M = ceil(chunk size / 4 KiB / 8) bytes:
 *                      bit b (LSB first within each byte) set = 4 KiB block b differs from the
 *                      parent's chunk at that position; all bits set where either side is a
 *                      zero chunk (the whole chunk is fetched or zeroed then). Root versions
 *                      carry no masks: there is no parent chunk to rebuild from.
 *
 * Masks let an endpoint that holds the parent's chunk fetch only the changed 4 KiB blocks and
 * rebuild the chunk, whose id it then verifies. The client uploads a layer without masks; the
 * server, which holds both chunks, adds them when it commits. Named by the BLAKE3 of its bytes.
 */
export const LAYER_MAGIC = Buffer.from('DFLY');
const HEADER = 24;
export const FLAG_MASKS = 1;

export interface LayerEntry {
  index: number;
  /** 32-byte id; all zeros = zero chunk. */
  id: Buffer;
  /** Present when the layer carries masks. */
  mask?: Buffer;
}

export interface Layer {
  geometry: Geometry;
  hasMasks: boolean;
  entries: LayerEntry[];
}

export function encodeLayer(layer: Layer): Buffer {
  const g = checkGeometry(layer.geometry);
  const mb = layer.hasMasks ? maskBytes(g) : 0;
  const w = new Writer(HEADER + layer.entries.length * (4 + ID_BYTES + mb));
  w.bytes(LAYER_MAGIC).u8(1).u8(layer.hasMasks ? FLAG_MASKS : 0).u16(0).u64(g.virtualSize).u32(g.chunkSize).u32(layer.entries.length);
  let prev = -1;
  const n = chunkCount(g);
  for (const e of layer.entries) {
    if (!Number.isInteger(e.index) || e.index <= prev || e.index >= n) {
      throw dfError('DF_ERR_DECODE', `layer entry position ${e.index} is out of order or beyond ${n} chunks`, { what: 'layer', field: 'position' });
    }
    if (e.id.length !== ID_BYTES) throw dfError('DF_ERR_DECODE', `layer entry ${e.index}: id must be ${ID_BYTES} bytes`, { what: 'layer', field: 'id' });
    w.u32(e.index).bytes(e.id);
    if (mb) {
      if (!e.mask || e.mask.length !== mb) throw dfError('DF_ERR_DECODE', `layer entry ${e.index}: mask must be ${mb} bytes`, { what: 'layer', field: 'mask' });
      w.bytes(e.mask);
    }
    prev = e.index;
  }
  return w.done();
}

export function decodeLayer(buf: Buffer): Layer {
  const r = new Reader(buf, 'layer');
  if (!r.bytes(4, 'magic').equals(LAYER_MAGIC)) r.fail('magic', 'expected "DFLY"', 0);
  const ver = r.u8('format version');
  if (ver !== 1) r.fail('format version', `unsupported ${ver}`, 4);
  const flags = r.u8('flags');
  if (flags & ~FLAG_MASKS) r.fail('flags', `unknown bits 0x${flags.toString(16)}`, 5);
  if (r.u16('reserved') !== 0) r.fail('reserved', 'must be zero', 6);
  const virtualSize = r.u64('virtual size');
  const chunkSize = r.u32('chunk size');
  let g: Geometry;
  try {
    g = checkGeometry({ virtualSize, chunkSize });
  } catch (cause) {
    throw dfError('DF_ERR_DECODE', `layer: ${(cause as Error).message}`, { what: 'layer', field: 'geometry' }, cause);
  }
  const count = r.u32('entry count');
  const hasMasks = (flags & FLAG_MASKS) !== 0;
  const mb = hasMasks ? maskBytes(g) : 0;
  if (count * (4 + ID_BYTES + mb) !== r.remaining) r.fail('entry count', `${count} entries need ${count * (4 + ID_BYTES + mb)} bytes, ${r.remaining} present`, 20);
  const n = chunkCount(g);
  const entries: LayerEntry[] = new Array(count);
  let prev = -1;
  for (let k = 0; k < count; k++) {
    const at = r.offset;
    const index = r.u32('position');
    if (index <= prev || index >= n) r.fail('position', `${index} is out of order or beyond ${n} chunks`, at);
    const id = Buffer.from(r.bytes(ID_BYTES, 'id'));
    const e: LayerEntry = { index, id };
    if (hasMasks) e.mask = Buffer.from(r.bytes(mb, 'mask'));
    entries[k] = e;
    prev = index;
  }
  r.end();
  return { geometry: g, hasMasks, entries };
}

/** The layer that turns `parent` (or an all-zero disk) into `child`: every position whose id differs. */
export function diffIndexes(parent: ChunkIndex | null, child: ChunkIndex): Layer {
  if (parent && (parent.geometry.virtualSize !== child.geometry.virtualSize || parent.geometry.chunkSize !== child.geometry.chunkSize)) {
    throw dfError('DF_ERR_SIZE_MISMATCH', 'indexes of different geometry cannot be compared');
  }
  const entries: LayerEntry[] = [];
  for (let i = 0; i < child.count; i++) {
    const before = parent ? parent.idAt(i) : ZERO_ID;
    const after = child.idAt(i);
    if (!before.equals(after)) entries.push({ index: i, id: Buffer.from(after) });
  }
  return { geometry: child.geometry, hasMasks: false, entries };
}

/** Apply a layer to a copy of `parent` (null = all zeros). */
export function applyLayer(parent: ChunkIndex | null, layer: Layer): ChunkIndex {
  const out = parent ? parent.clone() : ChunkIndex.empty(layer.geometry);
  for (const e of layer.entries) out.set(e.index, e.id);
  return out;
}

export function layerChunkIds(layer: Layer): Buffer[] {
  return layer.entries.filter((e) => !isZeroId(e.id)).map((e) => e.id);
}
