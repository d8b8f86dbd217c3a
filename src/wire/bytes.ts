import { dfError } from '../errors.js';

/**
 * Byte reader shared by every binary codec. Reads are bounds-checked; the first out-of-bounds
 * read throws DF_ERR_DECODE naming the field and offset, so decoders stay straight-line code.
 */
export class Reader {
  offset = 0;
  constructor(readonly buf: Buffer, readonly what: string) {}

  get remaining(): number {
    return this.buf.length - this.offset;
  }

  private need(n: number, field: string): void {
    if (this.offset + n > this.buf.length) {
      throw dfError('DF_ERR_DECODE', `${this.what}: ${field} needs ${n} bytes at offset ${this.offset}, only ${this.remaining} left`, {
        what: this.what, field, offset: this.offset,
      });
    }
  }

  u8(field: string): number { this.need(1, field); return this.buf.readUInt8(this.offset++); }
  u16(field: string): number { this.need(2, field); const v = this.buf.readUInt16BE(this.offset); this.offset += 2; return v; }
  u32(field: string): number { this.need(4, field); const v = this.buf.readUInt32BE(this.offset); this.offset += 4; return v; }
  u64(field: string): number {
    this.need(8, field);
    const v = this.buf.readBigUInt64BE(this.offset);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(field, `value ${v} is too large`);
    this.offset += 8;
    return Number(v);
  }
  bytes(n: number, field: string): Buffer { this.need(n, field); const v = this.buf.subarray(this.offset, this.offset + n); this.offset += n; return v; }

  fail(field: string, problem: string, at = this.offset): never {
    throw dfError('DF_ERR_DECODE', `${this.what}: ${field} at offset ${at}: ${problem}`, { what: this.what, field, offset: at });
  }

  end(): void {
    if (this.remaining !== 0) this.fail('end', `${this.remaining} trailing bytes`);
  }
}

/** Byte writer over a preallocated buffer (codecs know their encoded size up front). */
export class Writer {
  offset = 0;
  readonly buf: Buffer;
  constructor(size: number) { this.buf = Buffer.alloc(size); }
  u8(v: number): this { this.buf.writeUInt8(v, this.offset); this.offset += 1; return this; }
  u16(v: number): this { this.buf.writeUInt16BE(v, this.offset); this.offset += 2; return this; }
  u32(v: number): this { this.buf.writeUInt32BE(v, this.offset); this.offset += 4; return this; }
  u64(v: number): this { this.buf.writeBigUInt64BE(BigInt(v), this.offset); this.offset += 8; return this; }
  bytes(b: Uint8Array): this { this.buf.set(b, this.offset); this.offset += b.length; return this; }
  done(): Buffer {
    if (this.offset !== this.buf.length) throw new Error(`encoder wrote ${this.offset} of ${this.buf.length} bytes`);
    return this.buf;
  }
}
