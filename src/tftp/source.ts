import type { FileHandle } from 'node:fs/promises';
import { readFull } from '../fs/read.js';
import { writeDataHeader } from './packet.js';

/**
 * The DATA packets of one transfer, read ahead from the file in chunks so a packet is in memory before
 * the ACK that asks for it arrives (lockstep TFTP is latency-bound: no disk wait on the hot path).
 *
 * Two chunk slots, each `per` blocks laid out as ready-to-send packets:
 *   slot = [hdr(4) data(blksize)] [hdr(4) data(blksize)] …      hdr = DATA opcode + block number
 * Chunk c holds absolute blocks c·per+1 … (c+1)·per (1-based; the wire number is the low 16 bits:
 * RFC 1350 §5 has 16-bit block numbers and says nothing past 65535; they wrap to 0, as tftpd-hpa does).
 * `per` ≥ the window, so a window spans at most two chunks; when every block of a chunk is
 * acknowledged its slot is refilled with the chunk after next. Memory: 2 · per · (blksize + 4) bytes.
 * Packets are stable views into a slot until released, so a send that the kernel queued is safe.
 */
export interface BlockSource {
  /** The DATA packet for absolute block k, or undefined if its chunk is not loaded yet. */
  packet(k: number): Buffer | undefined;
  /** Resolves once block k is loaded (rejects with the read error). */
  load(k: number): Promise<void>;
  /** Every block below k is acknowledged: its memory may be reused. */
  release(k: number): void;
  /** The final block (shorter than blksize, possibly empty), once the end of the file was read. */
  readonly last: number | undefined;
  /** Bytes in the transfer (after netascii conversion), once `last` is known. */
  readonly bytes: number | undefined;
}

/** Sequential reader of the transfer's bytes: fills dst[off, off+n), returns fewer only at the end. */
export type ByteReader = (dst: Buffer, off: number, n: number) => Promise<number>;

/** Reads the file as is (mode octet). */
export function octetReader(fh: FileHandle): ByteReader {
  let pos = 0;
  return async (dst, off, n) => {
    const got = await readFull(fh, dst, off, n, pos);
    pos += got;
    return got;
  };
}

/**
 * RFC 1350 §1 / RFC 764 netascii: LF → CR LF, CR → CR NUL. Each byte maps on its own, so the
 * conversion needs no state across reads beyond the expanded bytes not consumed yet.
 */
export function netasciiReader(raw: ByteReader, readSize = 64 * 1024): ByteReader {
  const inBuf = Buffer.alloc(readSize);
  const out = Buffer.alloc(readSize * 2);
  let outPos = 0;
  let outEnd = 0;
  let eof = false;
  return async (dst, off, n) => {
    let got = 0;
    while (got < n) {
      if (outPos === outEnd) {
        if (eof) break;
        const r = await raw(inBuf, 0, readSize);
        if (r < readSize) eof = true;
        outPos = 0;
        outEnd = expandNetascii(inBuf, r, out);
        continue;
      }
      const take = Math.min(n - got, outEnd - outPos);
      out.copy(dst, off + got, outPos, outPos + take);
      outPos += take;
      got += take;
    }
    return got;
  };
}

/** Expand src[0, len) into out (which holds 2·len); returns the expanded length. */
export function expandNetascii(src: Buffer, len: number, out: Buffer): number {
  let j = 0;
  for (let i = 0; i < len; i++) {
    const b = src[i]!;
    if (b === 0x0a) { out[j++] = 0x0d; out[j++] = 0x0a; }
    else if (b === 0x0d) { out[j++] = 0x0d; out[j++] = 0x00; }
    else out[j++] = b;
  }
  return j;
}

/** Blocks per chunk: at least the window and ~64 KiB of data, so small blocks still read in bulk. */
export function blocksPerChunk(blksize: number, window: number): number {
  return Math.max(window, Math.ceil(65536 / blksize));
}

const EMPTY = Buffer.alloc(0);

interface Slot {
  buf: Buffer;
  views: Buffer[];          // views[i] = packet of the slot's i-th block (the last one may be shorter)
  chunk: number;            // -1 = empty
  count: number;            // blocks loaded
  loading: Promise<void> | undefined;
}

export class FileBlocks implements BlockSource {
  last: number | undefined;
  bytes: number | undefined;
  private readonly per: number;
  private readonly stride: number;
  private readonly slots: [Slot, Slot];
  private released = 1;     // blocks below this are acknowledged
  private failed: unknown;

  constructor(private readonly read: ByteReader, private readonly blksize: number, window: number) {
    this.per = blocksPerChunk(blksize, window);
    this.stride = blksize + 4;
    // Buffers are allocated on first use: a PXE tsize probe never gets past the OACK.
    const slot = (): Slot => ({ buf: EMPTY, views: [], chunk: -1, count: 0, loading: undefined });
    this.slots = [slot(), slot()];
  }

  private chunkOf(k: number): number { return Math.floor((k - 1) / this.per); }
  private slot(c: number): Slot { return (c & 1) === 0 ? this.slots[0] : this.slots[1]; }

  packet(k: number): Buffer | undefined {
    const c = this.chunkOf(k);
    const s = this.slot(c);
    if (s.chunk !== c || s.loading) return undefined;
    const i = k - 1 - c * this.per;
    return i < s.count ? s.views[i] : undefined;
  }

  load(k: number): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    const c = this.chunkOf(k);
    const s = this.slot(c);
    if (s.chunk === c) return s.loading ?? Promise.resolve();
    // Chunks load in order (netascii is a sequential stream): first the one before, if it is missing.
    const prev = this.slot(c + 1);
    if (c > 0 && prev.chunk !== c - 1) return this.load(k - this.per).then(() => this.load(k));
    if (s.chunk >= 0 && (s.chunk > c || this.released <= (s.chunk + 1) * this.per)) {
      return Promise.reject(new Error(`tftp: block ${k} requested while chunk ${s.chunk} is still in use`));
    }
    return this.fill(s, c);
  }

  release(k: number): void {
    this.released = Math.max(this.released, k);
    this.prefetch();
  }

  /** Start loading the next chunk as soon as its slot is free (the older chunk fully acknowledged). */
  private prefetch(): void {
    const newest = this.slots[0].chunk > this.slots[1].chunk ? this.slots[0] : this.slots[1];
    if (newest.chunk < 0 || newest.loading || this.failed !== undefined) return;
    const next = newest.chunk + 1;
    if (this.last !== undefined && next * this.per + 1 > this.last) return;
    const s = this.slot(next);
    if (s.chunk >= 0 && this.released <= (s.chunk + 1) * this.per) return;
    this.fill(s, next).catch(() => {}); // the failure is kept in `failed` and surfaces on load()
  }

  private fill(s: Slot, c: number): Promise<void> {
    if (s.buf === EMPTY) {
      const buf = Buffer.allocUnsafe(this.per * this.stride);
      s.buf = buf;
      s.views = Array.from({ length: this.per }, (_, i) => buf.subarray(i * this.stride, (i + 1) * this.stride));
    }
    s.chunk = c;
    s.count = 0;
    const p = this.fillNow(s, c).then(
      () => { s.loading = undefined; this.prefetch(); },
      (err: unknown) => { s.loading = undefined; s.chunk = -1; this.failed = err; throw err; },
    );
    s.loading = p;
    return p;
  }

  /**
   * Read the chunk's bytes into the slot's tail, then move each block forward into its packet slot
   * (destination ≤ source for every block, so ascending copies never overwrite unread data).
   */
  private async fillNow(s: Slot, c: number): Promise<void> {
    const { per, stride, blksize } = this;
    const tail = per * 4;
    const got = await this.read(s.buf, tail, per * blksize);
    const full = Math.floor(got / blksize);
    const count = got < per * blksize ? full + 1 : per;
    const first = c * per + 1;
    for (let i = 0; i < count; i++) {
      const len = Math.min(blksize, got - i * blksize);
      s.buf.copy(s.buf, i * stride + 4, tail + i * blksize, tail + i * blksize + len);
      writeDataHeader(s.buf, i * stride, first + i);
    }
    if (got < per * blksize) {
      const i = count - 1;
      s.views[i] = s.buf.subarray(i * stride, i * stride + 4 + (got - i * blksize));
      this.last = first + i;
      this.bytes = c * per * blksize + got;
    }
    s.count = count;
  }
}
