import { idHex } from '../chunk/id.js';
import type { RawChunkCache, RawChunks } from '../chunk/raw-cache.js';
import { dfError } from '../errors.js';
import { readExactSync } from '../fs/read.js';
import type { ChunkIndex } from '../image/chunk-index.js';
import { forEachChunkPiece } from '../image/geometry.js';
import { DEFAULT_MAX_PAYLOAD, STATE } from '../nbd/constants.js';
import type { NbdExport, NbdHandoff } from '../nbd/export.js';
import type { Extent } from '../nbd/transmission.js';

/** Data chunks loaded ahead of a read in order that missed (32 chunks of 64 KiB: 2 MiB). */
const READ_AHEAD = 32;
/** Chunks per location window a worker thread asks for after a miss (warmAround): 16 MiB of 64 KiB chunks. */
const WARM_WINDOW = 256;
/** Chunks whose locations go with a handoff (knownNow): 4 GiB of 64 KiB chunks, a message of under 1 MiB. */
const KNOWN_AT_HANDOFF = 1 << 16;

/** A cached chunk's location as a worker thread reads it (src/vdi/thread-chunks.ts), by chunk position. */
export interface KnownAt { i: number; fd: number; at: number; length: number; slot: number; gens: Int32Array; gen: number }

/** Block sizes of every deskfuse export: any byte alignment works, 4 KiB is what disks like. */
export const BLOCK_SIZE = { minimum: 1, preferred: 4096, maximum: DEFAULT_MAX_PAYLOAD } as const;

/**
 * A version as a read-only NBD export: chunks come from the verified raw-chunk cache, zero chunks are
 * holes (so `nbdcopy` and `qemu-img convert` skip them through base:allocation).
 */
export class VersionExport implements NbdExport {
  readonly readOnly = true;
  readonly blockSize = BLOCK_SIZE;
  readonly size: number;

  /** An immutable version: every connection reads the same bytes, a flush has nothing to cover. */
  readonly multiConn = true;

  constructor(readonly name: string, readonly description: string, private readonly index: ChunkIndex, private readonly chunks: RawChunks) {
    this.size = index.geometry.virtualSize;
  }

  /**
   * Served from an NBD worker thread (src/nbd/server.ts NbdThreads): the thread rebuilds this export
   * from its index and reads the same slot files, asking this thread's cache where chunks are.
   */
  handoff(): NbdHandoff & { kind: string } | undefined {
    const cache = this.chunks as RawChunkCache;
    if (typeof cache.where !== 'function') return undefined;
    return { kind: 'vdi-version', data: { name: this.name, description: this.description, index: this.index.encode(), known: this.knownNow(cache) }, call: (req) => versionCall(cache, req as VersionCall) };
  }

  /**
   * Where the cached, verified chunks of this version are now (chunk position and location), sent
   * with the handoff: the thread then reads them without asking the main thread first. Bounded
   * (KNOWN_AT_HANDOFF chunks looked at): the rest of a huge disk is learnt by window (warmAround).
   */
  private knownNow(cache: RawChunkCache): KnownAt[] {
    const out: KnownAt[] = [];
    for (let i = 0; i < Math.min(this.index.count, KNOWN_AT_HANDOFF); i++) {
      if (this.index.isZeroAt(i)) continue;
      const w = cache.whereNow(idHex(this.index.idAt(i)));
      if (w) out.push({ i, ...locOf(w) });
    }
    return out;
  }

  /** In a worker thread: the locations sent with the handoff (knownNow), learnt by the thread's chunk view. */
  learn(known: KnownAt[]): void {
    if (!this.chunks.learn) return;
    this.chunks.learn(known.map(({ i, ...loc }) => ({ id: idHex(this.index.idAt(i)), ...loc })));
  }

  async read(offset: number, length: number): Promise<Buffer[]> {
    const out = Buffer.allocUnsafe(length);
    await this.readInto(offset, out);
    return [out];
  }

  /** Cached chunks in adjacent slots are read with one pread; misses load (and verify) in parallel. */
  readInto(offset: number, out: Buffer): Promise<void> | void {
    const r = this.readOnce(offset, out);
    // In a worker thread: a slot read synchronously changed hands meanwhile, so read those again.
    if (!this.chunks.stale?.()) return r;
    return r ? r.then(() => this.readInto(offset, out)) : this.readInto(offset, out);
  }

  private readOnce(offset: number, out: Buffer): Promise<void> | void {
    const jobs: Promise<void>[] = [];
    let last = -1;
    let run: { fd: number; from: number; to: number; at: number } | undefined;
    const readRun = () => {
      if (run) readExactSync(run.fd, out, run.at, run.to - run.from, run.from, 'raw chunk cache');
      run = undefined;
    };
    forEachChunkPiece(this.index.geometry, offset, out.length, (i, within, n, at) => {
      if (this.index.isZeroAt(i)) {
        readRun();
        out.fill(0, at, at + n);
        return;
      }
      const id = idHex(this.index.idAt(i));
      const hit = this.chunks.locate(id);
      if (hit && run && run.fd === hit.fd && run.to === hit.at + within) run.to += n;
      else if (hit) { readRun(); run = { fd: hit.fd, from: hit.at + within, to: hit.at + within + n, at }; }
      else { readRun(); jobs.push(this.chunks.readInto(id, within, n, out, at, this.chunkLength(i))); last = i; }
      // A run continues only into the next chunk's first byte, and only after a whole chunk.
      if (run && within + n !== hit?.length) readRun();
    });
    readRun();
    // All from the cache (the usual case): done now, no promise.
    if (!jobs.length) return;
    this.readAhead(last);
    this.warmAround(last);
    return Promise.all(jobs).then(() => undefined);
  }

  /** Windows of the index whose locations were asked for (warmAround). */
  private readonly warmed = new Set<number>();

  /**
   * A worker thread's copy learns where chunks are by asking the main thread: after a miss, the
   * locations of the cached chunks around it come in one message (`known`, nothing loads), so a
   * random reader pays one round trip per window instead of one per chunk it touches first.
   */
  private warmAround(i: number): void {
    const warm = this.chunks.warm;
    const w = Math.floor(i / WARM_WINDOW);
    if (!warm || this.warmed.has(w)) return;
    this.warmed.add(w);
    const items: Array<{ id: string; length: number }> = [];
    for (let j = w * WARM_WINDOW; j < Math.min(this.index.count, (w + 1) * WARM_WINDOW); j++) {
      if (!this.index.isZeroAt(j)) items.push({ id: idHex(this.index.idAt(j)), length: this.chunkLength(j) });
    }
    if (items.length) warm.call(this.chunks, items);
  }

  private chunkLength(i: number): number {
    const { chunkSize: cs, virtualSize } = this.index.geometry;
    return Math.min(cs, virtualSize - i * cs);
  }

  /**
   * A read that missed (a version read after a server start): the chunks after it along the index
   * are loaded too, verified in the store's worker threads while this one is served, so a reader
   * going in order finds them cached. Only when the chunk before the miss is cached or a hole (a
   * read in order), so a random reader does not pay for chunks it never wants.
   */
  private readAhead(i: number): void {
    if (i > 0 && !this.index.isZeroAt(i - 1) && !this.chunks.has(idHex(this.index.idAt(i - 1)))) return;
    const want: Array<{ id: string; length: number }> = [];
    for (let j = i + 1, seen = 0; j < this.index.count && seen < READ_AHEAD; j++) {
      if (this.index.isZeroAt(j)) continue;
      seen++;
      const id = idHex(this.index.idAt(j));
      if (!this.chunks.has(id)) want.push({ id, length: this.chunkLength(j) });
    }
    if (want.length) this.chunks.prefetch(want);
  }

  /** Chunk positions where data and holes alternate (the index never changes): made on first use. */
  private bounds: number[] | undefined;

  extents(offset: number, length: number): Extent[] {
    const { chunkSize: cs, virtualSize } = this.index.geometry;
    const b = (this.bounds ??= runBounds(this.index));
    const out: Extent[] = [];
    const end = Math.min(offset + length, virtualSize);
    // The run holding `offset`: the last bound at or before its chunk (bounds[0] = 0).
    let lo = 0;
    for (let hi = b.length - 1, i = Math.floor(offset / cs); lo < hi;) {
      const mid = (lo + hi + 1) >> 1;
      if (b[mid]! <= i) lo = mid; else hi = mid - 1;
    }
    for (let k = lo, at = offset; at < end && out.length < 4096; k++) {
      // Like the chunk walk: the last extent runs to its run's end (the server trims it to the request).
      const stop = k + 1 < b.length ? b[k + 1]! * cs : virtualSize;
      out.push({ length: stop - at, flags: this.index.isZeroAt(b[k]!) ? STATE.HOLE | STATE.ZERO : 0 });
      at = stop;
    }
    return out;
  }

  write(): Promise<void> { return Promise.reject(readOnly(this.name)); }
  zero(): Promise<void> { return Promise.reject(readOnly(this.name)); }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

/** Positions where a run of zero or non-zero chunks starts (0 first). */
function runBounds(index: ChunkIndex): number[] {
  const out = [0];
  for (let i = 1; i < index.count; i++) if (index.isZeroAt(i) !== index.isZeroAt(i - 1)) out.push(i);
  return out;
}

/** Extents at chunk granularity: runs of chunks that are holes (`isHole`) or data, merged. */
export function zeroChunkExtents(index: ChunkIndex, offset: number, length: number, isHole: (i: number) => boolean): Extent[] {
  const { chunkSize: cs, virtualSize } = index.geometry;
  const out: Extent[] = [];
  const end = Math.min(offset + length, virtualSize);
  for (let at = offset; at < end;) {
    const i = Math.floor(at / cs);
    const n = Math.min((i + 1) * cs, virtualSize) - at;
    const flags = isHole(i) ? STATE.HOLE | STATE.ZERO : 0;
    const last = out[out.length - 1];
    if (last && last.flags === flags) last.length += n;
    else out.push({ length: n, flags });
    at += n;
    // Enough for the client to go on; a huge disk need not be described in one reply.
    if (out.length >= 4096) break;
  }
  return out;
}

function readOnly(name: string) {
  return dfError('DF_ERR_FORBIDDEN', `export ${name} is read-only`, { export: name });
}

/**
 * What a thread's copy of a version export asks of the main thread (VersionExport.handoff): `where`
 * loads what is missing; `known` only tells where the cached, verified ones are (null for others).
 */
export type VersionCall = { op: 'where' | 'known'; items: Array<{ id: string; length: number }> };

const locOf = (w: { fd: number; at: number; length: number; slot: number; gens: Int32Array; gen: number }) => ({ fd: w.fd, at: w.at, length: w.length, slot: w.slot, gens: w.gens, gen: w.gen });

async function versionCall(cache: RawChunkCache, req: VersionCall): Promise<unknown> {
  if (req.op === 'known') return req.items.map((x) => { const w = cache.whereNow(x.id); return w ? locOf(w) : null; });
  // One reply for all, once each is known (cached ones at once, misses once loaded and verified).
  return Promise.all(req.items.map((x) => cache.where(x.id, x.length).then((w) => ('raw' in w ? { raw: w.raw } : locOf(w)), (err: unknown) => ({ error: { message: (err as Error).message, code: (err as { code?: string }).code } }))));
}
