import { hashBytes, idHex } from '../../src/chunk/id.js';
import { encodeFrameRecord, FRAMES_END } from '../../src/sync/frames.js';
import { PATCH_MAGIC } from '../../src/sync/patch.js';
import { Writer } from '../../src/wire/bytes.js';

const MiB = 1024 * 1024;

/**
 * A decompression bomb in patch format: `frames` copies of one zstd frame of 3 records of a 1 MiB
 * zero chunk sent whole (each frame ~3 MiB raw, ~100 bytes compressed). Valid in every byte, so only
 * a budget stops it: 100 frames are ~10 KiB on the wire and 300 MiB decoded.
 */
export function patchBomb(frames: number): { body: Buffer; rawPerFrame: number } {
  const chunkSize = MiB;
  const mb = chunkSize / 4096 / 8;
  const id = hashBytes(Buffer.alloc(chunkSize));
  const rec = Buffer.concat([new Writer(64 + 4 + mb).bytes(id).bytes(Buffer.alloc(32)).u32(chunkSize).bytes(Buffer.alloc(mb, 0xff)).done(), Buffer.alloc(chunkSize)]);
  const raw = Buffer.concat([rec, rec, rec]);
  const frame = encodeFrameRecord(raw);
  const header = new Writer(12).bytes(PATCH_MAGIC).u8(1).u8(0).u16(0).u32(chunkSize).done();
  return { body: Buffer.concat([header, ...new Array<Buffer>(frames).fill(frame), FRAMES_END]), rawPerFrame: raw.length };
}

export const zeroChunkId = (size: number): string => idHex(hashBytes(Buffer.alloc(size)));
