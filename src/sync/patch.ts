import { dfError } from '../errors.js';
import { hashBytes, ID_BYTES, idHex, isZeroId } from '../chunk/id.js';
import { blocksPerChunk, checkGeometry, maskBytes, MAX_CHUNK_SIZE, type Geometry } from '../image/geometry.js';
import { Writer } from '../wire/bytes.js';
import { maskedLength, patchBlocks } from './blockhash.js';
import { FrameReader, FrameWriter } from './frames.js';

/**
 * A patch upload: new chunks sent as the 4 KiB blocks that differ from a base chunk the server
 * already has (a commit's local changes against the on-disk version). The server rebuilds each
 * chunk and stores it only if it hashes to its id.
 *
 *   header   4   magic "DFPT"
 *            1   format version (1)
 *            3   reserved, zero
 *            4   chunk size (u32 BE); the mask has ceil(chunk size / 4 KiB / 8) bytes
 *   frames   a framed zstd stream (frames.ts) of records, never straddling frames:
 *            32  new chunk id
 *            32  base chunk id (32 zero bytes: a zero chunk)
 *            4   new chunk length (u32 BE)
 *            M   mask: the blocks that follow (LSB first)
 *            …   those blocks of the new chunk, in order
 *            A record is at most a whole chunk plus its head (196 bytes at 4 MiB chunks): within a
 *            frame's FRAME_RAW_MAX, whatever the chunk size.
 */
export const PATCH_MAGIC = Buffer.from('DFPT');
export const PATCH_CONTENT_TYPE = 'application/vnd.deskfuse.patch';
const HEADER = 12;

export interface PatchRecord {
  id: string;
  base: string | null;
  length: number;
  mask: Buffer;
  blocks: Buffer;
}

export function encodePatch(g: Geometry, records: PatchRecord[]): Buffer {
  const mb = maskBytes(g);
  const w = new FrameWriter(new Writer(HEADER).bytes(PATCH_MAGIC).u8(1).u8(0).u16(0).u32(g.chunkSize).done());
  for (const r of records) {
    w.add(new Writer(ID_BYTES * 2 + 4 + mb).bytes(Buffer.from(r.id, 'hex')).bytes(r.base ? Buffer.from(r.base, 'hex') : Buffer.alloc(ID_BYTES)).u32(r.length).bytes(r.mask).done(), r.blocks);
  }
  return Buffer.concat(w.end());
}

/**
 * The decoded bytes one patch body may hold: the agent sends about 16 MiB of blocks plus one chunk
 * (src/agent/commit.ts), and a server never decodes more than this of one body.
 */
export const PATCH_RAW_MAX = 32 * 1024 * 1024;
/** The largest patch body (frames of PATCH_RAW_MAX raw bytes, with zstd's worst-case overhead). */
export const PATCH_BODY_MAX = PATCH_RAW_MAX + 1024 * 1024;

/**
 * Open a patch body: the header is checked now, the records are decoded as they are taken, frame by
 * frame (memory: one frame), and no more than `budget` raw bytes in all (DF_ERR_TOO_LARGE, raised
 * before the frame that would pass it is decompressed). Malformed input is DF_ERR_DECODE.
 */
export function openPatch(body: Buffer, budget = PATCH_RAW_MAX): { chunkSize: number; records: Generator<PatchRecord> } {
  if (body.length < HEADER || !body.subarray(0, 4).equals(PATCH_MAGIC) || body[4] !== 1 || body.readUIntBE(5, 3) !== 0) {
    throw dfError('DF_ERR_DECODE', 'patch: bad header (magic, version or reserved bytes)', { what: 'patch', offset: 0 });
  }
  const chunkSize = body.readUInt32BE(8);
  const g: Geometry = { chunkSize, virtualSize: chunkSize };
  try {
    checkGeometry(g);
  } catch (cause) {
    throw dfError('DF_ERR_DECODE', `patch: chunk size ${chunkSize} is invalid`, { what: 'patch', field: 'chunk size', offset: 8 }, cause);
  }
  return { chunkSize, records: patchRecords(body.subarray(HEADER), chunkSize, maskBytes(g), budget) };
}

function* patchRecords(frames: Buffer, chunkSize: number, mb: number, budget: number): Generator<PatchRecord> {
  const r = new FrameReader('patch', budget);
  r.push(frames);
  for (let f = r.next(); f; f = r.next()) {
    let off = 0;
    while (off < f.length) {
      if (off + ID_BYTES * 2 + 4 + mb > f.length) throw dfError('DF_ERR_DECODE', 'patch: truncated record head', { what: 'patch' });
      const id = idHex(f.subarray(off, off + ID_BYTES));
      const baseId = f.subarray(off + ID_BYTES, off + 2 * ID_BYTES);
      const length = f.readUInt32BE(off + 2 * ID_BYTES);
      const mask = f.subarray(off + 2 * ID_BYTES + 4, off + 2 * ID_BYTES + 4 + mb);
      off += 2 * ID_BYTES + 4 + mb;
      if (length === 0 || length > chunkSize) throw dfError('DF_ERR_DECODE', `patch: chunk ${id} length ${length} is outside 1..${chunkSize}`, { what: 'patch', field: 'length' });
      const n = maskedLength(mask, length);
      if (off + n > f.length) throw dfError('DF_ERR_DECODE', `patch: chunk ${id} blocks are truncated`, { what: 'patch' });
      yield { id, base: isZeroId(baseId) ? null : idHex(baseId), length, mask, blocks: f.subarray(off, off + n) };
      off += n;
    }
  }
  r.finish();
}

/** A whole patch decoded at once (tests and small bodies; the server takes records one by one). */
export function decodePatch(body: Buffer, budget = PATCH_RAW_MAX): { chunkSize: number; records: PatchRecord[] } {
  const p = openPatch(body, budget);
  return { chunkSize: p.chunkSize, records: [...p.records] };
}

/**
 * Rebuild a patched chunk: the base (or zeros) with its masked blocks replaced, cut or extended to
 * the new length. Returns the raw chunk if it hashes to the record's id, else null.
 */
export function rebuild(rec: PatchRecord, baseRaw: Buffer | null, chunkSize: number): Buffer | null {
  const out = patched(rec, baseRaw, chunkSize);
  return out && idHex(hashBytes(out)) === rec.id ? out : null;
}

/** The bytes `rebuild` checks, unhashed (the server hashes them in a worker thread), or null when the record cannot fit. */
export function patched(rec: PatchRecord, baseRaw: Buffer | null, chunkSize: number): Buffer | null {
  if (rec.length > MAX_CHUNK_SIZE || blocksPerChunk({ chunkSize, virtualSize: chunkSize }) * 4096 < rec.length) return null;
  const out = Buffer.alloc(rec.length);
  if (baseRaw) baseRaw.copy(out, 0, 0, Math.min(baseRaw.length, rec.length));
  patchBlocks(out, rec.mask, rec.blocks);
  return out;
}
