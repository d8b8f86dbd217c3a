import type { ApiClient } from '../api/client.js';
import { openFrame } from '../chunk/frame.js';
import { decodePack } from '../chunk/pack.js';
import { MAX_CHUNK_SIZE } from '../image/geometry.js';

/**
 * Whole chunks the agent must fetch, in the order it will write them: requested in packs of about
 * 8 MiB, two packs ahead, each chunk verified against its id before anyone sees it.
 */
export class ChunkFetcher {
  private readonly batches: string[][] = [];
  private readonly batchOf = new Map<string, number>();
  private readonly pending = new Map<number, Promise<Map<string, Buffer>>>();
  private nextToStart = 0;

  constructor(private readonly client: ApiClient, ids: string[], chunkSize: number, private readonly ahead = 2) {
    // 8 MiB packs, two ahead: the agent stays well under 256 MiB on any disk.
    const per = Math.max(1, Math.min(4096, Math.floor((8 * 1024 * 1024) / chunkSize)));
    for (const id of ids) {
      if (this.batchOf.has(id)) continue;
      let b = this.batches[this.batches.length - 1];
      if (!b || b.length >= per) this.batches.push((b = []));
      b.push(id);
      this.batchOf.set(id, this.batches.length - 1);
    }
  }

  async get(id: string): Promise<Buffer> {
    const k = this.batchOf.get(id);
    if (k === undefined) return this.fetchOne(id);
    while (this.nextToStart <= Math.min(k + this.ahead, this.batches.length - 1)) this.start(this.nextToStart++);
    const got = (await this.pending.get(k)!).get(id);
    // Batches before this one are done with: let them be collected.
    for (const old of this.pending.keys()) if (old < k) this.pending.delete(old);
    if (!got) throw new Error(`chunk ${id} missing from its batch`);
    return got;
  }

  private start(k: number): void {
    const p = this.load(this.batches[k]!);
    p.catch(() => {}); // surfaced by get()
    this.pending.set(k, p);
  }

  private async load(ids: string[]): Promise<Map<string, Buffer>> {
    const r = await this.client.binary('POST', '/api/v1/chunks/fetch', { body: { ids }, idempotent: true });
    const out = new Map<string, Buffer>();
    for (const rec of decodePack(r.body, MAX_CHUNK_SIZE)) out.set(rec.id, openFrame(rec.id, rec.frame, MAX_CHUNK_SIZE));
    for (const id of ids) if (!out.has(id)) throw new Error(`server omitted chunk ${id}`);
    return out;
  }

  /** One chunk outside the plan (a rebuilt chunk that failed its check). */
  async fetchOne(id: string): Promise<Buffer> {
    return (await this.load([id])).get(id)!;
  }
}
