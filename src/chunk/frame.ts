import { compress, decompress } from 'zstd-napi';
import { dfError } from '../errors.js';
import { hashBytes, idHex } from './id.js';

/**
 * A stored chunk is one zstd frame of its raw bytes (zstd-napi, level 3: the wire and the store
 * share the same bytes, so the server never recompresses). Verification decompresses and hashes.
 */
export const ZSTD_LEVEL = 3;

export function encodeFrame(raw: Uint8Array, level = ZSTD_LEVEL): Buffer {
  return compress(raw as Buffer, { compressionLevel: level });
}

/** Decompress a frame and check it against `id`; throws DF_ERR_CHUNK_INVALID with {id, got}. */
export function openFrame(id: string, frame: Uint8Array, maxSize: number): Buffer {
  let raw: Buffer;
  try {
    raw = decompress(frame as Buffer);
  } catch (cause) {
    throw dfError('DF_ERR_CHUNK_INVALID', `chunk ${id}: not a valid zstd frame`, { id }, cause);
  }
  if (raw.length > maxSize) throw dfError('DF_ERR_CHUNK_INVALID', `chunk ${id}: ${raw.length} bytes exceeds the limit of ${maxSize}`, { id, size: raw.length });
  const got = idHex(hashBytes(raw));
  if (got !== id) throw dfError('DF_ERR_CHUNK_INVALID', `chunk ${id}: bytes hash to ${got}`, { id, got });
  return raw;
}
