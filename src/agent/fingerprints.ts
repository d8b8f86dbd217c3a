import { chunkCount, type Geometry } from '../image/geometry.js';
import { loadNative, type Native } from '../native/addon.js';
import { FINGERPRINT_BYTES } from './state-area.js';

/**
 * Fingerprints of the chunks on the disk (state-area.ts "Fingerprints"): XXH3-128 per chunk
 * position, kept up to date as the agent writes chunks, so the next scan hashes with BLAKE3 only
 * the chunks that changed.
 */
export function emptyFingerprints(g: Geometry): Buffer {
  return Buffer.alloc(chunkCount(g) * FINGERPRINT_BYTES);
}

let nat: Native | null | undefined;

/** The fingerprint of `raw` (what position `pos` now holds) into `fps`; unknown (zero) without the addon. */
export function setFingerprint(fps: Buffer, pos: number, raw: Uint8Array): void {
  if (nat === undefined) {
    try {
      nat = loadNative();
    } catch {
      nat = null;
    }
  }
  const at = pos * FINGERPRINT_BYTES;
  if (nat) nat.fingerprint(raw, fps, at);
  else fps.fill(0, at, at + FINGERPRINT_BYTES);
}
