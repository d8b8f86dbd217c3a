import type { FileHandle } from 'node:fs/promises';
import { BLOCK_SIZE } from '../image/geometry.js';

const ZERO_BLOCK = Buffer.alloc(BLOCK_SIZE);
const COALESCE = 4 * 1024 * 1024;

/**
 * Writes chunks at their positions, joining writes that follow each other on the disk into one of up
 * to 4 MiB (one syscall instead of 64). `sparse` skips all-zero 4 KiB blocks, leaving holes (for a
 * fresh export file; a disk being synced must have its old bytes overwritten). The export's chunks
 * are written by the chunk workers that verify them, by the same rules (src/chunk/workers.ts `place`:
 * adjacent pieces in pwritev calls of up to 4 MiB, zero 4 KiB blocks of a fresh file left as holes).
 */
export class DiskWriter {
  private parts: Buffer[] = [];
  private start = 0;
  private end = 0;
  written = 0;

  constructor(private readonly fh: FileHandle, private readonly sparse: boolean) {}

  async chunk(raw: Buffer, pos: number): Promise<void> {
    if (!this.sparse) return this.add(raw, pos);
    let runStart = -1;
    for (let off = 0; ; off += BLOCK_SIZE) {
      const atEnd = off >= raw.length;
      const end = Math.min(off + BLOCK_SIZE, raw.length);
      const zero = atEnd || raw.subarray(off, end).equals(ZERO_BLOCK.subarray(0, end - off));
      if (!zero && runStart < 0) runStart = off;
      if (zero && runStart >= 0) {
        await this.add(raw.subarray(runStart, Math.min(off, raw.length)), pos + runStart);
        runStart = -1;
      }
      if (atEnd) break;
    }
  }

  private async add(data: Buffer, at: number): Promise<void> {
    if (this.parts.length && at !== this.end) await this.flush();
    if (!this.parts.length) this.start = this.end = at;
    this.parts.push(data);
    this.end += data.length;
    if (this.end - this.start >= COALESCE) await this.flush();
  }

  /** Write what is pending (call before a sync or a close). */
  async flush(): Promise<void> {
    if (!this.parts.length) return;
    const buf = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.end - this.start);
    let done = 0;
    while (done < buf.length) done += (await this.fh.write(buf, done, buf.length - done, this.start + done)).bytesWritten;
    this.written += buf.length;
    this.parts = [];
  }
}
