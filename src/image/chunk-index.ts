import { dfError } from '../errors.js';
import { ID_BYTES, idHex, isZeroId } from '../chunk/id.js';
import { Reader, Writer } from '../wire/bytes.js';
import { checkGeometry, chunkCount, type Geometry } from './geometry.js';

/**
 * A chunk index: the full content of one version, one chunk id per chunk position.
 *
 *   offset size  field
 *   0      4     magic "DFIX"
 *   4      1     format version (1)
 *   5      1     hash algorithm (1 = BLAKE3-256)
 *   6      2     reserved, zero
 *   8      8     virtual size in bytes (u64 BE)
 *   16     4     chunk size in bytes (u32 BE)
 *   20     4     chunk count N (u32 BE) = ceil(virtual size / chunk size)
 *   24     32*N  chunk ids in position order; 32 zero bytes = an all-zero chunk (never stored)
 *
 * An index is named, like a chunk, by the BLAKE3 of its encoded bytes.
 */
export const INDEX_MAGIC = Buffer.from('DFIX');
const HEADER = 24;

export class ChunkIndex {
  readonly count: number;
  private constructor(readonly geometry: Geometry, readonly ids: Buffer) {
    this.count = chunkCount(geometry);
  }

  /** A fresh index whose chunks are all zero. */
  static empty(g: Geometry): ChunkIndex {
    checkGeometry(g);
    return new ChunkIndex({ virtualSize: g.virtualSize, chunkSize: g.chunkSize }, Buffer.alloc(chunkCount(g) * ID_BYTES));
  }

  /** An index over `ids` as they are (not copied): 32 bytes per position of `g`. */
  static over(g: Geometry, ids: Buffer): ChunkIndex {
    checkGeometry(g);
    if (ids.length !== chunkCount(g) * ID_BYTES) throw dfError('DF_ERR_BAD_REQUEST', `an index of ${chunkCount(g)} positions needs ${chunkCount(g) * ID_BYTES} bytes of ids, not ${ids.length}`);
    return new ChunkIndex({ virtualSize: g.virtualSize, chunkSize: g.chunkSize }, ids);
  }

  static decode(buf: Buffer): ChunkIndex {
    const r = new Reader(buf, 'chunk index');
    if (!r.bytes(4, 'magic').equals(INDEX_MAGIC)) r.fail('magic', 'expected "DFIX"', 0);
    const ver = r.u8('format version');
    if (ver !== 1) r.fail('format version', `unsupported ${ver}`, 4);
    const alg = r.u8('hash algorithm');
    if (alg !== 1) r.fail('hash algorithm', `unsupported ${alg}`, 5);
    if (r.u16('reserved') !== 0) r.fail('reserved', 'must be zero', 6);
    const virtualSize = r.u64('virtual size');
    const chunkSize = r.u32('chunk size');
    const count = r.u32('chunk count');
    let g: Geometry;
    try {
      g = checkGeometry({ virtualSize, chunkSize });
    } catch (cause) {
      throw dfError('DF_ERR_DECODE', `chunk index: ${(cause as Error).message}`, { what: 'chunk index', field: 'geometry' }, cause);
    }
    if (count !== chunkCount(g)) r.fail('chunk count', `${count} does not match geometry (${chunkCount(g)})`, 20);
    const ids = Buffer.from(r.bytes(count * ID_BYTES, 'chunk ids'));
    r.end();
    return new ChunkIndex(g, ids);
  }

  encode(): Buffer {
    return new Writer(HEADER + this.ids.length)
      .bytes(INDEX_MAGIC).u8(1).u8(1).u16(0)
      .u64(this.geometry.virtualSize).u32(this.geometry.chunkSize).u32(this.count)
      .bytes(this.ids).done();
  }

  clone(): ChunkIndex {
    return new ChunkIndex(this.geometry, Buffer.from(this.ids));
  }

  /** The id at position i (a view; all zeros = zero chunk). */
  idAt(i: number): Buffer {
    return this.ids.subarray(i * ID_BYTES, (i + 1) * ID_BYTES);
  }

  isZeroAt(i: number): boolean {
    return isZeroId(this.idAt(i));
  }

  set(i: number, id: Uint8Array): void {
    this.ids.set(id, i * ID_BYTES);
  }

  /** Distinct non-zero chunk ids (hex). */
  distinctIds(): Set<string> {
    const s = new Set<string>();
    for (let i = 0; i < this.count; i++) if (!this.isZeroAt(i)) s.add(idHex(this.idAt(i)));
    return s;
  }

  nonZeroCount(): number {
    let n = 0;
    for (let i = 0; i < this.count; i++) if (!this.isZeroAt(i)) n++;
    return n;
  }
}
