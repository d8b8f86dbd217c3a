import { zstdLib } from './native-libs.js';
import { dfError } from '../errors.js';
import { hashBytes, idHex } from './id.js';

/**
 * A stored chunk is one zstd frame of its raw bytes (zstd-napi, level 3: the wire and the store
 * share the same bytes, so the server never recompresses). Verification decompresses and hashes.
 */
export const ZSTD_LEVEL = 3;

export function encodeFrame(raw: Uint8Array, level = ZSTD_LEVEL): Buffer {
  return zstdLib().compress(raw as Buffer, { compressionLevel: level });
}

/**
 * The content size a zstd frame header declares (RFC 8878 §3.1.1.1), or undefined when the header
 * is malformed or leaves it out. Checked before decompressing, so a small hostile frame cannot make
 * the server allocate gigabytes.
 */
export function frameContentSize(frame: Uint8Array): number | undefined {
  if (frame.length < 6) return undefined;
  const b = Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength);
  if (b.readUInt32LE(0) !== 0xfd2fb528) return undefined;
  const fhd = b[4]!;
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  const dictFlag = fhd & 3;
  const fcsSize = [single ? 1 : 0, 2, 4, 8][fcsFlag]!;
  if (fcsSize === 0) return undefined;
  const at = 5 + (single ? 0 : 1) + [0, 1, 2, 4][dictFlag]!;
  if (b.length < at + fcsSize) return undefined;
  switch (fcsSize) {
    case 1: return b[at]!;
    case 2: return b.readUInt16LE(at) + 256;
    case 4: return b.readUInt32LE(at);
    default: {
      const v = b.readBigUInt64LE(at);
      return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
    }
  }
}

/** Decompress a frame and check it against `id`; throws DF_ERR_CHUNK_INVALID with {id, got}. */
export function openFrame(id: string, frame: Uint8Array, maxSize: number): Buffer {
  const declared = frameContentSize(frame);
  if (declared === undefined) throw dfError('DF_ERR_CHUNK_INVALID', `chunk ${id}: not a zstd frame with a declared content size`, { id });
  if (declared > maxSize) throw dfError('DF_ERR_CHUNK_INVALID', `chunk ${id}: frame declares ${declared} bytes, above the limit of ${maxSize}`, { id, size: declared });
  let raw: Buffer;
  try {
    raw = zstdLib().decompress(frame as Buffer);
  } catch (cause) {
    throw dfError('DF_ERR_CHUNK_INVALID', `chunk ${id}: not a valid zstd frame`, { id }, cause);
  }
  if (raw.length !== declared || raw.length > maxSize) throw dfError('DF_ERR_CHUNK_INVALID', `chunk ${id}: ${raw.length} bytes exceeds the limit of ${maxSize}`, { id, size: raw.length });
  const got = idHex(hashBytes(raw));
  if (got !== id) throw dfError('DF_ERR_CHUNK_INVALID', `chunk ${id}: bytes hash to ${got}`, { id, got });
  return raw;
}
