import type { ApiClient } from '../api/client.js';
import { openFrame } from '../chunk/frame.js';
import { encodeIdList, ID_LIST_TYPE } from '../chunk/id.js';
import { decodePack } from '../chunk/pack.js';
import { MAX_CHUNK_SIZE } from '../image/geometry.js';

/** Chunks needed again later are kept in memory up to this many bytes; past it they are fetched again. */
export const REPEAT_BUDGET = 64 * 1024 * 1024;

/**
 * Raw bytes asked for per batch fetch. Each request costs the server a fixed amount of work beyond
 * the bytes (parse, auth, admission, a sender job): at 8 MiB that was half its CPU in a storm of
 * provisioning endpoints; 16 MiB halves it. Three batches in memory (one being written, two ahead)
 * stay under 100 MiB, and the frames of 16 MiB of chunks fit the server's 32 MiB pack limit even
 * when they do not compress.
 */
export const FETCH_BATCH_BYTES = 16 * 1024 * 1024;

/** Ids per batch fetch for a chunk size (the server takes at most 4096). */
export function idsPerFetch(chunkSize: number): number {
  return Math.max(1, Math.min(4096, Math.floor(FETCH_BATCH_BYTES / chunkSize)));
}

/**
 * Whole chunks the agent must fetch, in the order it will write them: requested in packs of about
 * 16 MiB, two packs ahead (kept compressed until used), each chunk verified against its id before anyone sees it.
 *
 * Real disks repeat chunks (identical files, 0xFF-filled regions): an id is requested once, in the
 * pack of its first use, and kept until its last use while the repeat budget allows; a repeat that
 * did not fit is fetched again on its own. `get` must be called in the order of `ids`.
 */
export class ChunkFetcher {
  private readonly batches: string[][] = [];
  private readonly batchOf = new Map<string, number>();
  private readonly pending = new Map<number, Promise<Map<string, Buffer>>>();
  /** Uses still to come, per id (ids used once never enter). */
  private readonly usesLeft = new Map<string, number>();
  private readonly kept = new Map<string, Buffer>();
  private keptBytes = 0;
  private nextToStart = 0;

  constructor(
    private readonly client: ApiClient,
    ids: string[],
    chunkSize: number,
    private readonly ahead = 2,
    private readonly repeatBudget = REPEAT_BUDGET,
  ) {
    // 16 MiB packs, two ahead: the agent stays well under 256 MiB on any disk.
    const per = idsPerFetch(chunkSize);
    for (const id of ids) {
      if (this.batchOf.has(id)) {
        this.usesLeft.set(id, (this.usesLeft.get(id) ?? 1) + 1);
        continue;
      }
      let b = this.batches[this.batches.length - 1];
      if (!b || b.length >= per) this.batches.push((b = []));
      b.push(id);
      this.batchOf.set(id, this.batches.length - 1);
    }
  }

  async get(id: string): Promise<Buffer> {
    const got = this.kept.get(id) ?? (await this.lookup(id)) ?? (await this.fetchOne(id));
    this.used(id, got);
    return got;
  }

  /** The chunk from its batch, opened and verified now: a batch waits as its compressed frames, not as raw chunks. */
  private async lookup(id: string): Promise<Buffer | undefined> {
    const k = this.batchOf.get(id);
    if (k === undefined) return undefined;
    while (this.nextToStart <= Math.min(k + this.ahead, this.batches.length - 1)) this.start(this.nextToStart++);
    const batch = this.pending.get(k);
    // A repeat whose pack is gone and that did not fit the budget: fetched again by the caller.
    if (!batch) return undefined;
    const frame = (await batch).get(id);
    // Packs before this one are done with: let them be collected.
    for (const old of this.pending.keys()) if (old < k) this.pending.delete(old);
    if (!frame) throw new Error(`chunk ${id} missing from its batch`);
    return openFrame(id, frame, MAX_CHUNK_SIZE);
  }

  /** Keeps a chunk that is needed again (within the budget), forgets it at its last use. */
  private used(id: string, raw: Buffer): void {
    const left = this.usesLeft.get(id);
    if (left === undefined) return;
    if (left <= 1) {
      this.usesLeft.delete(id);
      if (this.kept.delete(id)) this.keptBytes -= raw.length;
      return;
    }
    this.usesLeft.set(id, left - 1);
    if (!this.kept.has(id) && this.keptBytes + raw.length <= this.repeatBudget) {
      this.kept.set(id, raw);
      this.keptBytes += raw.length;
    }
  }

  private start(k: number): void {
    const p = this.load(this.batches[k]!);
    p.catch(() => {}); // surfaced by get()
    this.pending.set(k, p);
  }

  /** A batch's frames (views of the pack body; opened by lookup). */
  private async load(ids: string[]): Promise<Map<string, Buffer>> {
    const r = await this.client.binary('POST', '/api/v1/chunks/fetch', { raw: { data: encodeIdList(ids), type: ID_LIST_TYPE }, idempotent: true });
    const out = new Map<string, Buffer>();
    for (const rec of decodePack(r.body, MAX_CHUNK_SIZE)) out.set(rec.id, rec.frame);
    for (const id of ids) if (!out.has(id)) throw new Error(`server omitted chunk ${id}`);
    return out;
  }

  /** One chunk outside the plan (a rebuilt chunk that failed its check, or a repeat past the budget). */
  async fetchOne(id: string): Promise<Buffer> {
    return openFrame(id, (await this.load([id])).get(id)!, MAX_CHUNK_SIZE);
  }
}
