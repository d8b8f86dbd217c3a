import { dfError } from '../errors.js';
import { idHex, isZeroId } from '../chunk/id.js';
import type { ChunkReader } from '../chunk/store.js';
import { chunkLength, fullMask } from '../image/geometry.js';
import type { Layer, LayerEntry } from '../image/layer.js';
import { Writer } from '../wire/bytes.js';
import { extractBlocks, maskedLength } from './blockhash.js';
import { FrameReader, FrameWriter } from './frames.js';

/**
 * A delta: what an endpoint holding a version's parent needs to rebuild that version's changed
 * chunks — only the 4 KiB blocks the layer's masks name, compressed together. One static,
 * cacheable body per version (GET …/versions/:v/delta), made once by the server.
 *
 *   header   4   magic "DFDL"
 *            1   format version (1)
 *            3   reserved, zero
 *            32  layer id (the layer, with masks, that says which blocks follow)
 *            4   entry count E: the layer's entries whose new chunk is not zero, in layer order
 *   frames   a framed zstd stream (frames.ts) whose raw bytes are, entry after entry, the masked
 *            blocks of the new chunk (all its blocks when the layer has no masks); an entry's
 *            blocks never straddle two frames
 */
export const DELTA_MAGIC = Buffer.from('DFDL');
const HEADER = 44;

export function deltaEntries(layer: Layer): LayerEntry[] {
  return layer.entries.filter((e) => !isZeroId(e.id));
}

/** Build a delta from a layer and the store holding its chunks (each read is verified). */
export async function buildDelta(layerId: string, layer: Layer, chunks: ChunkReader): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const piece of deltaPieces(layerId, layer, chunks)) out.push(piece);
  return out;
}

/** The same bytes as they are made (the header, then frame by frame): memory stays at about one frame. */
export async function* deltaPieces(layerId: string, layer: Layer, chunks: ChunkReader): AsyncGenerator<Buffer> {
  const entries = deltaEntries(layer);
  const all = fullMask(layer.geometry);
  const w = new FrameWriter(new Writer(HEADER).bytes(DELTA_MAGIC).u8(1).u8(0).u16(0).bytes(Buffer.from(layerId, 'hex')).u32(entries.length).done());
  for (const e of entries) {
    const { raw } = await chunks.get(idHex(e.id));
    w.add(extractBlocks(raw, e.mask ?? all));
    yield* w.take();
  }
  yield* w.end();
}

export interface DeltaItem {
  entry: LayerEntry;
  /** The masked blocks of the entry's new chunk. */
  blocks: Buffer;
  mask: Buffer;
}

/**
 * Read a delta as it arrives: yields the entries of `layer` (non-zero ones, in order) with their
 * blocks. Memory stays at about one frame.
 */
export async function* readDelta(layerId: string, layer: Layer, body: AsyncIterable<Uint8Array>): AsyncGenerator<DeltaItem> {
  const entries = deltaEntries(layer);
  const all = fullMask(layer.geometry);
  const r = new FrameReader('delta');
  let header: Buffer | undefined;
  let k = 0;
  let frame: Buffer | null | undefined;
  let off = 0;
  const check = (h: Buffer) => {
    if (!h.subarray(0, 4).equals(DELTA_MAGIC) || h[4] !== 1 || h.readUIntBE(5, 3) !== 0) throw dfError('DF_ERR_DECODE', 'delta: bad magic, version or reserved bytes', { what: 'delta', offset: 0 });
    if (h.subarray(8, 40).toString('hex') !== layerId) throw dfError('DF_ERR_DECODE', 'delta: made for another layer', { what: 'delta', field: 'layer id', offset: 8 });
    if (h.readUInt32BE(40) !== entries.length) throw dfError('DF_ERR_DECODE', `delta: ${h.readUInt32BE(40)} entries, layer has ${entries.length}`, { what: 'delta', field: 'entry count', offset: 40 });
  };
  for await (const piece of body) {
    r.push(piece);
    if (!header) {
      header = r.take(HEADER);
      if (!header) continue;
      check(header);
    }
    for (;;) {
      if (!frame || off >= frame.length) {
        frame = r.next();
        off = 0;
        if (frame === undefined || frame === null) break;
      }
      while (off < frame.length) {
        const entry = entries[k];
        if (!entry) throw dfError('DF_ERR_DECODE', 'delta: more blocks than entries', { what: 'delta' });
        const mask = entry.mask ?? all;
        const n = maskedLength(mask, chunkLength(layer.geometry, entry.index));
        if (off + n > frame.length) throw dfError('DF_ERR_DECODE', `delta: entry ${entry.index} straddles a frame`, { what: 'delta' });
        yield { entry, blocks: frame.subarray(off, off + n), mask };
        off += n;
        k++;
      }
    }
  }
  if (!header) throw dfError('DF_ERR_DECODE', 'delta: empty body', { what: 'delta' });
  r.finish();
  if (k !== entries.length) throw dfError('DF_ERR_DECODE', `delta: ${k} of ${entries.length} entries present`, { what: 'delta' });
}
