import { zstdLib } from '../chunk/native-libs.js';
import { dfError } from '../errors.js';
import { frameContentSize } from '../chunk/frame.js';
import { MAX_CHUNK_SIZE } from '../image/geometry.js';

/**
 * A framed zstd stream, shared by deltas and patches: after a format's own header come
 *
 *   repeated  4 raw length R (u32 BE, 1..FRAME_RAW_MAX)  4 compressed length Z (u32 BE, 1..FRAME_Z_MAX)
 *             Z bytes: one zstd frame of R bytes
 *   end       8 zero bytes
 *
 *   FRAME_RAW_MAX = 4 MiB + 4 KiB: the largest record a format writes is a whole chunk of the largest
 *   size plus a head of at most RECORD_HEAD_MAX bytes (a patch record's head is 196 bytes at 4 MiB
 *   chunks). A flat 4 MiB limit could not frame that record (issue 10). Writers group records into
 *   frames up to FRAME_RAW_MAX and never split a record.
 *   FRAME_Z_MAX = FRAME_RAW_MAX + 64 KiB: above zstd's worst-case expansion of FRAME_RAW_MAX bytes
 *   (ZSTD_compressBound: about 1/256 more).
 *
 * So a reader decodes frame by frame with memory bounded by one frame while the body is still
 * arriving. Compressing many small blocks together is what brings the wire to the 4 KiB-block
 * reference (see README, delta granularity).
 */
export const RECORD_HEAD_MAX = 4096;
export const FRAME_RAW_MAX = MAX_CHUNK_SIZE + RECORD_HEAD_MAX;
export const FRAME_Z_MAX = FRAME_RAW_MAX + 65536;
const LEVEL = 3;

export function encodeFrameRecord(raw: Buffer): Buffer {
  const z = zstdLib().compress(raw, { compressionLevel: LEVEL });
  const head = Buffer.alloc(8);
  head.writeUInt32BE(raw.length, 0);
  head.writeUInt32BE(z.length, 4);
  return Buffer.concat([head, z]);
}

export const FRAMES_END = Buffer.alloc(8);

/** Builds a framed stream after `header`: records are grouped into frames of at most FRAME_RAW_MAX raw. */
export class FrameWriter {
  private readonly out: Buffer[];
  private parts: Buffer[] = [];
  private size = 0;

  constructor(header: Buffer) {
    this.out = [header];
  }

  /** One record (its pieces stay in the same frame), at most FRAME_RAW_MAX bytes. */
  add(...pieces: Buffer[]): void {
    const n = pieces.reduce((k, p) => k + p.length, 0);
    // No reader would take it: a format writing such a record is broken, never the data.
    if (n > FRAME_RAW_MAX) throw dfError('DF_ERR_INTERNAL', `a framed record of ${n} bytes is above the ${FRAME_RAW_MAX}-byte frame limit`, { bytes: n, max: FRAME_RAW_MAX });
    if (this.size + n > FRAME_RAW_MAX) this.flush();
    this.parts.push(...pieces);
    this.size += n;
  }

  private flush(): void {
    if (this.size) this.out.push(encodeFrameRecord(Buffer.concat(this.parts, this.size)));
    this.parts = [];
    this.size = 0;
  }

  /** The pieces complete so far (the header, then full frames), handed over once: a writer streams them. */
  take(): Buffer[] {
    return this.out.splice(0);
  }

  /** What `take` has not handed over yet, the last frame and the end marker. */
  end(): Buffer[] {
    this.flush();
    this.out.push(FRAMES_END);
    return this.out;
  }
}

/** Bytes arriving in pieces; reads copy only what they take (no quadratic re-concatenation). */
class ByteQueue {
  private parts: Buffer[] = [];
  length = 0;
  push(b: Buffer): void {
    if (b.length) {
      this.parts.push(b);
      this.length += b.length;
    }
  }
  peek(n: number): Buffer {
    if (this.parts[0] && this.parts[0].length >= n) return this.parts[0].subarray(0, n);
    // Only the parts that hold the first n bytes: Buffer.concat walks its whole list, which made
    // every peek O(parts) and a frame arriving in tiny pieces quadratic.
    const head: Buffer[] = [];
    let got = 0;
    for (let i = 0; i < this.parts.length && got < n; i++) {
      head.push(this.parts[i]!);
      got += this.parts[i]!.length;
    }
    return Buffer.concat(head, Math.min(got, Math.max(n, 0))).subarray(0, n);
  }
  take(n: number): Buffer {
    const first = this.parts[0];
    if (first && first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.parts.shift();
      else this.parts[0] = first.subarray(n);
      this.length -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let o = 0;
    let i = 0;
    while (o < n) {
      const p = this.parts[i]!;
      const k = Math.min(p.length, n - o);
      p.copy(out, o, 0, k);
      o += k;
      if (k === p.length) i++;
      else this.parts[i] = p.subarray(k);
    }
    // One splice: a shift per consumed part is O(parts) each on a long queue (quadratic).
    this.parts.splice(0, i);
    this.length -= n;
    return out;
  }
}

/**
 * Incremental reader: push bytes as they arrive, take decoded frames (null after the end marker).
 * `budget` caps the raw bytes of all frames together: a frame that would pass it is refused with
 * DF_ERR_TOO_LARGE from its declared size, before a byte of it is decompressed (a few KiB of zstd
 * can declare gigabytes).
 */
export class FrameReader {
  private readonly q = new ByteQueue();
  ended = false;
  /** Raw bytes of the frames decoded so far. */
  decoded = 0;

  constructor(private readonly what: string, private readonly budget = Infinity) {}

  push(data: Uint8Array): void {
    this.q.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  }

  /** Take exactly n raw header bytes (a format's own header), or undefined if not yet here. */
  take(n: number): Buffer | undefined {
    return this.q.length < n ? undefined : this.q.take(n);
  }

  /** The next decoded frame, undefined if more bytes are needed, null at the end marker. */
  next(): Buffer | null | undefined {
    if (this.ended) return null;
    if (this.q.length < 8) return undefined;
    const head = this.q.peek(8);
    const raw = head.readUInt32BE(0);
    const zl = head.readUInt32BE(4);
    if (raw === 0 && zl === 0) {
      this.q.take(8);
      this.ended = true;
      if (this.q.length > 0) throw dfError('DF_ERR_DECODE', `${this.what}: ${this.q.length} bytes after the end marker`, { what: this.what });
      return null;
    }
    if (raw > FRAME_RAW_MAX || zl === 0 || zl > FRAME_Z_MAX || raw === 0) {
      throw dfError('DF_ERR_DECODE', `${this.what}: frame lengths raw ${raw} / compressed ${zl} are out of range`, { what: this.what });
    }
    if (this.decoded + raw > this.budget) {
      throw dfError('DF_ERR_TOO_LARGE', `${this.what}: frames decode to more than ${this.budget} bytes`, { what: this.what, limit: this.budget });
    }
    if (this.q.length < 8 + zl) return undefined;
    this.q.take(8);
    const z = this.q.take(zl);
    if (frameContentSize(z) !== raw) throw dfError('DF_ERR_DECODE', `${this.what}: frame does not declare its ${raw} bytes`, { what: this.what });
    let out: Buffer;
    try {
      out = zstdLib().decompress(z);
    } catch (cause) {
      throw dfError('DF_ERR_DECODE', `${this.what}: corrupt zstd frame`, { what: this.what }, cause);
    }
    if (out.length !== raw) throw dfError('DF_ERR_DECODE', `${this.what}: frame holds ${out.length} bytes, header says ${raw}`, { what: this.what });
    this.decoded += raw;
    return out;
  }

  /** Bytes pushed after the end marker would be an error; call when the body is complete. */
  finish(): void {
    if (!this.ended || this.q.length) throw dfError('DF_ERR_DECODE', `${this.what}: truncated or trailing bytes`, { what: this.what });
  }
}
