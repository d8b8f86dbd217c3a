import { ID_BYTES, idHex, ZERO_ID } from './id.js';
import { Reader, Writer } from '../wire/bytes.js';
import { dfError } from '../errors.js';

/**
 * A pack carries many chunks in one HTTP body (upload and batch fetch), so a transfer costs a few
 * requests instead of one per chunk (casync: 1,425 GETs for one update).
 *
 *   header   4  magic "DFPK"
 *            1  format version (1)
 *            3  reserved, zero
 *   record   32 chunk id (BLAKE3-256 of the raw bytes)
 *            4  raw length (u32 BE)
 *            4  frame length F (u32 BE)
 *            F  zstd frame of the raw bytes (exactly the stored bytes)
 *   trailer  32 zero bytes
 *            4  record count (u32 BE), so a truncated body is detected
 *
 * The codec does not verify ids: the receiver opens every frame with openFrame().
 */
export const PACK_MAGIC = Buffer.from('DFPK');
export const PACK_CONTENT_TYPE = 'application/vnd.deskfuse.pack';
/** The largest pack a server takes or answers (clients send and ask for about 8 to 16 MiB). */
export const PACK_MAX_BYTES = 32 * 1024 * 1024;
const HEADER = 8;
const RECORD_HEAD = ID_BYTES + 8;
const TRAILER = ID_BYTES + 4;

export interface PackRecord {
  id: string;
  rawLength: number;
  frame: Buffer;
}

export function packHeader(): Buffer {
  return new Writer(HEADER).bytes(PACK_MAGIC).u8(1).u8(0).u16(0).done();
}

export function packRecordHead(r: PackRecord): Buffer {
  return new Writer(RECORD_HEAD).bytes(Buffer.from(r.id, 'hex')).u32(r.rawLength).u32(r.frame.length).done();
}

export function packTrailer(count: number): Buffer {
  return new Writer(TRAILER).bytes(ZERO_ID).u32(count).done();
}

export function encodePack(records: PackRecord[]): Buffer {
  const parts: Buffer[] = [packHeader()];
  for (const r of records) parts.push(packRecordHead(r), r.frame);
  parts.push(packTrailer(records.length));
  return Buffer.concat(parts);
}

export function decodePack(buf: Buffer, maxRawLength: number): PackRecord[] {
  const r = new Reader(buf, 'pack');
  if (!r.bytes(4, 'magic').equals(PACK_MAGIC)) r.fail('magic', 'expected "DFPK"', 0);
  const ver = r.u8('format version');
  if (ver !== 1) r.fail('format version', `unsupported ${ver}`, 4);
  if (r.u8('reserved') !== 0 || r.u16('reserved') !== 0) r.fail('reserved', 'must be zero', 5);
  const out: PackRecord[] = [];
  for (;;) {
    const at = r.offset;
    const id = r.bytes(ID_BYTES, 'record id');
    if (id.equals(ZERO_ID)) {
      const count = r.u32('record count');
      if (count !== out.length) r.fail('record count', `trailer says ${count}, body holds ${out.length}`, at + ID_BYTES);
      r.end();
      return out;
    }
    const rawLength = r.u32('raw length');
    if (rawLength === 0 || rawLength > maxRawLength) r.fail('raw length', `${rawLength} is outside 1..${maxRawLength}`, at + ID_BYTES);
    const flen = r.u32('frame length');
    out.push({ id: idHex(id), rawLength, frame: r.bytes(flen, 'frame') }); // a view: no copy
  }
}

/** The most a zstd frame of at most `maxRaw` bytes takes (ZSTD_COMPRESSBOUND, plus room for a header and checksum). */
export function frameBound(maxRaw: number): number {
  return maxRaw + (maxRaw >> 8) + (maxRaw < 131072 ? (131072 - maxRaw) >> 11 : 0) + 64;
}

/**
 * A pack decoded as it arrives, piece by piece (no whole-body buffer): for each record `sink.record`
 * says where its frame goes (a buffer of exactly the frame's length, or null to skip it), the reader
 * copies the frame's bytes there as they come and calls `sink.filled` after the last one. A frame
 * longer than frameBound(maxRawLength) is refused before any byte is kept. The same DF_ERR_DECODE
 * errors as decodePack; `end()` checks the trailer. Ids are not verified here (the receiver opens
 * every frame).
 */
export interface PackSink {
  record(id: string, rawLength: number, frameLength: number): Uint8Array | null;
  filled(): void;
}

export class PackReader {
  private readonly head = Buffer.alloc(HEADER + ID_BYTES);
  private held = 0; // bytes of the current fixed-size field read so far
  private state: 'header' | 'id' | 'lengths' | 'frame' | 'count' | 'done' = 'header';
  private id = '';
  private target: Uint8Array | null = null;
  private left = 0; // bytes of the current frame still to come
  private at = 0; // offset in the body of the next byte
  private count = 0;

  constructor(private readonly maxRawLength: number, private readonly sink: PackSink) {}

  push(piece: Uint8Array): void {
    let p = 0;
    while (p < piece.length) {
      if (this.state === 'done') this.fail('end', `${piece.length - p} trailing bytes`, this.at);
      if (this.state === 'frame') {
        const n = Math.min(this.left, piece.length - p);
        if (this.target) this.target.set(piece.subarray(p, p + n), this.target.length - this.left);
        p += n;
        this.at += n;
        this.left -= n;
        if (this.left === 0) this.frameDone();
        continue;
      }
      const want = FIELD[this.state];
      const n = Math.min(want - this.held, piece.length - p);
      this.head.set(piece.subarray(p, p + n), this.held);
      this.held += n;
      this.at += n;
      p += n;
      if (this.held < want) break;
      this.held = 0;
      this.parsed(this.at - want);
    }
  }

  /** The body ended: it must end right after the trailer. Returns the record count. */
  end(): number {
    if (this.state !== 'done') this.fail(this.state, 'the body ended early', this.at);
    return this.count;
  }

  /** The field of the current state is in `head`; it began at `start`. */
  private parsed(start: number): void {
    const h = this.head;
    switch (this.state) {
      case 'header':
        if (!h.subarray(0, 4).equals(PACK_MAGIC)) this.fail('magic', 'expected "DFPK"', 0);
        if (h[4] !== 1) this.fail('format version', `unsupported ${h[4]}`, 4);
        if (h[5] !== 0 || h.readUInt16BE(6) !== 0) this.fail('reserved', 'must be zero', 5);
        this.state = 'id';
        return;
      case 'id': {
        const id = h.subarray(0, ID_BYTES);
        if (id.equals(ZERO_ID)) {
          this.state = 'count';
        } else {
          this.id = idHex(id);
          this.state = 'lengths';
        }
        return;
      }
      case 'count': {
        const count = h.readUInt32BE(0);
        if (count !== this.count) this.fail('record count', `trailer says ${count}, body holds ${this.count}`, start);
        this.state = 'done';
        return;
      }
      default: {
        const rawLength = h.readUInt32BE(0);
        if (rawLength === 0 || rawLength > this.maxRawLength) this.fail('raw length', `${rawLength} is outside 1..${this.maxRawLength}`, start);
        const flen = h.readUInt32BE(4);
        if (flen > frameBound(this.maxRawLength)) this.fail('frame length', `${flen} is more than a frame of ${this.maxRawLength} bytes takes`, start + 4);
        this.count++;
        this.target = this.sink.record(this.id, rawLength, flen);
        if (this.target && this.target.length !== flen) throw new RangeError(`the sink gave ${this.target.length} bytes for a frame of ${flen}`);
        this.left = flen;
        this.state = 'frame';
        if (flen === 0) this.frameDone();
      }
    }
  }

  private frameDone(): void {
    this.state = 'id';
    const had = this.target;
    this.target = null;
    if (had) this.sink.filled();
  }

  private fail(field: string, problem: string, at: number): never {
    throw dfError('DF_ERR_DECODE', `pack: ${field} at offset ${at}: ${problem}`, { what: 'pack', field, offset: at });
  }
}

const FIELD = { header: HEADER, id: ID_BYTES, lengths: 8, count: 4 } as const;
