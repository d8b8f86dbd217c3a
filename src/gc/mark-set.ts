import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';

/**
 * A mark set that does not hold every id in memory: an external sort.
 *
 *   add(id, tag) → an in-memory run of at most `runSize` records → sorted, deduplicated, written as
 *   <dir>/<name>.<n>.run, fixed-size binary records, ascending:
 *
 *     +----------------------+-----------------+
 *     | id: 32 bytes         | tag: u32 BE     |   (36 bytes a record)
 *     +----------------------+-----------------+
 *
 *   entries() merges the runs (k-way, k = runs) into one ascending stream of {id, tags}: each id once,
 *   with every distinct tag it was added with (GC uses the tag for the image and the kind that
 *   reference it, for `store usage`).
 *
 * Memory: one run of strings while adding (runSize × ~90 bytes), one read buffer per run while merging.
 */
const REC = 36;
const READ_RECORDS = 4096;

export interface MarkEntry {
  id: string;
  tags: number[];
}

export class MarkSet {
  private pending: string[] = [];
  private readonly runs: string[] = [];
  private finished = false;

  constructor(private readonly dir: string, private readonly name: string, private readonly runSize = 200_000) {}

  async add(id: string, tag: number): Promise<void> {
    if (this.finished) throw new Error('MarkSet: add after entries()');
    this.pending.push(id + tag.toString(16).padStart(8, '0'));
    if (this.pending.length >= this.runSize) await this.flush();
  }

  private async flush(): Promise<void> {
    if (!this.pending.length) return;
    const recs = this.pending.sort();
    this.pending = [];
    const buf = Buffer.allocUnsafe(recs.length * REC);
    let n = 0;
    let last = '';
    for (const r of recs) {
      if (r === last) continue;
      last = r;
      buf.write(r, n * REC, 'hex');
      n++;
    }
    await fsp.mkdir(this.dir, { recursive: true });
    const file = path.join(this.dir, `${this.name}.${this.runs.length}.run`);
    await fsp.writeFile(file, buf.subarray(0, n * REC));
    this.runs.push(file);
  }

  /** The merged, ascending stream (after the last add; may be read again). */
  async *entries(): AsyncGenerator<MarkEntry> {
    if (!this.finished) {
      this.finished = true;
      await this.flush();
    }
    const readers = await Promise.all(this.runs.map((f) => RunReader.open(f)));
    try {
      let cur: MarkEntry | undefined;
      for (;;) {
        // k is small (a run per runSize ids): a linear pick of the least head is enough.
        let best = -1;
        for (let i = 0; i < readers.length; i++) {
          const h = readers[i]!.head;
          if (h !== undefined && (best < 0 || h < readers[best]!.head!)) best = i;
        }
        if (best < 0) break;
        const rec = readers[best]!.head!;
        await readers[best]!.next();
        const id = rec.slice(0, 64);
        const tag = parseInt(rec.slice(64), 16);
        if (cur && cur.id === id) {
          if (!cur.tags.includes(tag)) cur.tags.push(tag);
          continue;
        }
        if (cur) yield cur;
        cur = { id, tags: [tag] };
      }
      if (cur) yield cur;
    } finally {
      await Promise.all(readers.map((r) => r.close()));
    }
  }

  /** Remove the run files. */
  async dispose(): Promise<void> {
    await Promise.all(this.runs.map((f) => fsp.rm(f, { force: true })));
  }
}

class RunReader {
  head: string | undefined;
  private buf = Buffer.alloc(0);
  private at = 0;
  private pos = 0;

  private constructor(private readonly fh: FileHandle) {}

  static async open(file: string): Promise<RunReader> {
    const r = new RunReader(await fsp.open(file, 'r'));
    await r.next();
    return r;
  }

  async next(): Promise<void> {
    if (this.at >= this.buf.length) {
      const b = Buffer.allocUnsafe(REC * READ_RECORDS);
      const { bytesRead } = await this.fh.read(b, 0, b.length, this.pos);
      this.pos += bytesRead;
      this.buf = b.subarray(0, bytesRead - (bytesRead % REC));
      this.at = 0;
      if (!this.buf.length) {
        this.head = undefined;
        return;
      }
    }
    this.head = this.buf.toString('hex', this.at, this.at + REC);
    this.at += REC;
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

/**
 * A cursor over an ascending stream, for merge joins: `seek(id)` advances to the first entry ≥ id and
 * answers the entry when it is exactly id.
 */
export class SortedCursor<T extends { id: string }> {
  private cur: T | undefined;
  private started = false;
  private done = false;
  private last = '';

  constructor(private readonly it: AsyncIterator<T>) {}

  async seek(id: string): Promise<T | undefined> {
    if (id < this.last) throw new Error(`SortedCursor: ${id} after ${this.last} (input not in id order)`);
    this.last = id;
    if (!this.started) {
      this.started = true;
      await this.advance();
    }
    while (!this.done && this.cur!.id < id) await this.advance();
    return !this.done && this.cur!.id === id ? this.cur : undefined;
  }

  /** Stop early: the stream's files are closed. */
  async close(): Promise<void> {
    if (!this.done) await this.it.return?.();
    this.done = true;
  }

  private async advance(): Promise<void> {
    const r = await this.it.next();
    if (r.done) {
      this.done = true;
      this.cur = undefined;
    } else this.cur = r.value;
  }
}
