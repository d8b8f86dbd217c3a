import type { RawChunks } from '../chunk/raw-cache.js';
import { readExactSync } from '../fs/read.js';
import type { VersionCall } from './version-export.js';

interface Loc {
  id: string;
  fd: number;
  at: number;
  length: number;
  slot: number;
  gens: Int32Array;
  gen: number;
}
type Answer = Omit<Loc, 'id'> | { raw: Uint8Array } | { error: { message: string; code?: string } };

/**
 * The raw-chunk cache as an NBD worker thread sees it (src/nbd/server.ts NbdThreads): the main
 * thread's RawChunkCache keeps the slots, loads and verifies; this thread learns where chunks are
 * (one message for a whole read-ahead) and preads the same slot files itself. A slot can change
 * hands on the main thread (eviction): its counter in shared memory (RawChunkCache.gensFor) moves
 * first, so a pread followed by an unchanged counter read the chunk it was told about; otherwise the
 * location is dropped and asked again. One per thread, shared by its connections (ids are global).
 */
export class ThreadChunks implements RawChunks {
  private readonly known = new Map<string, Loc>();
  private readonly asking = new Map<string, Promise<Loc | Buffer>>();
  /** Locations handed out by locate() since the last stale(). */
  private used: Loc[] = [];

  constructor(private readonly call: (req: VersionCall) => Promise<unknown>) {}

  locate(id: string): { fd: number; at: number; length: number } | undefined {
    const l = this.known.get(id);
    if (!l) return undefined;
    if (Atomics.load(l.gens, l.slot) !== l.gen) { this.known.delete(id); return undefined; }
    this.used.push(l);
    return l;
  }

  stale(): boolean {
    let bad = false;
    for (const l of this.used) {
      if (Atomics.load(l.gens, l.slot) !== l.gen) { bad = true; if (this.known.get(l.id) === l) this.known.delete(l.id); }
    }
    this.used = [];
    return bad;
  }

  has(id: string): boolean {
    return this.known.has(id) || this.asking.has(id);
  }

  prefetch(items: Array<{ id: string; length: number }>): void {
    const want = items.filter((x) => !this.has(x.id));
    if (want.length) this.ask(want).forEach((p) => p.catch(() => undefined));
  }

  learn(known: Loc[]): void {
    for (const l of known) if (!this.known.has(l.id)) this.known.set(l.id, l);
  }

  warm(items: Array<{ id: string; length: number }>): void {
    const want = items.filter((x) => !this.has(x.id));
    if (!want.length) return;
    (this.call({ op: 'known', items: want }) as Promise<Array<Omit<Loc, 'id'> | null>>).then((all) => {
      all.forEach((a, k) => {
        const id = want[k]!.id;
        if (a && !this.known.has(id)) this.known.set(id, { id, ...a });
      });
    }, () => undefined);
  }

  async readInto(id: string, within: number, n: number, out: Buffer, at: number, length?: number): Promise<void> {
    for (let tries = 0; tries < 4; tries++) {
      const got = this.asking.get(id) ?? this.known.get(id) ?? (await this.ask([{ id, length: length ?? 0 }])[0]!);
      const l = await got;
      if (Buffer.isBuffer(l)) { l.copy(out, at, within, within + n); return; }
      readExactSync(l.fd, out, at, n, l.at + within, 'raw chunk cache');
      if (Atomics.load(l.gens, l.slot) === l.gen) return;
      if (this.known.get(id) === l) this.known.delete(id);
    }
    throw new Error(`chunk ${id}: its cache slot kept changing while read`);
  }

  /** One message for all of `items`; a promise per item. */
  private ask(items: Array<{ id: string; length: number }>): Array<Promise<Loc | Buffer>> {
    const answers = this.call({ op: 'where', items }) as Promise<Answer[]>;
    return items.map((x, k) => {
      const p = answers.then((all) => {
        const a = all[k]!;
        if ('error' in a) throw Object.assign(new Error(a.error.message), { code: a.error.code });
        if ('raw' in a) return Buffer.from(a.raw.buffer, a.raw.byteOffset, a.raw.byteLength);
        const l: Loc = { id: x.id, ...a };
        this.known.set(x.id, l);
        return l;
      }).finally(() => { if (this.asking.get(x.id) === p) this.asking.delete(x.id); });
      this.asking.set(x.id, p);
      return p;
    });
  }
}
