import { ID_BYTES, idHex, ZERO_ID } from './id.js';
import { Reader, Writer } from '../wire/bytes.js';

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
