import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { idHex } from '../chunk/id.js';
import type { RawChunkCache } from '../chunk/raw-cache.js';
import { dfError } from '../errors.js';
import { fsyncDir } from '../fs/durable.js';
import { readFull } from '../fs/read.js';
import { writeFull } from '../fs/write.js';
import type { ChunkIndex } from '../image/chunk-index.js';
import { chunkCount, chunkLength, forEachChunkPiece, type Geometry } from '../image/geometry.js';
import type { Extent } from '../nbd/transmission.js';
import { zeroChunkExtents } from './version-export.js';

/**
 * A VDI session's cloud increment: copy-on-write at chunk granularity over a base version, kept in
 * the session's folder so that a FLUSH makes every write before it durable.
 *
 *   overlay.raw   sparse file of the image's virtual size; chunk i lives at i·chunkSize once it is
 *                 `data` (the first write into a chunk copies the base chunk there, then patches it)
 *   map.log       header, then 12-byte records appended at each flush:
 *                   header  "DFVI" | u8 format 1 | 3 reserved | u64 virtual size | u32 chunk size  (20 bytes)
 *                   record  u32 chunk position | u32 state (0 base, 1 data, 2 zero) | u32 CRC-32 of the first 8
 *                 (big-endian). The last record of a position wins. A torn or corrupt tail (a crash
 *                 during a flush) ends the replay: only writes after the last completed flush are lost.
 *
 * A flush is: fdatasync(overlay) → append the positions whose state changed → fdatasync(map.log). So a
 * record never names overlay bytes that a crash could lose. Writes into a chunk already `data` need no
 * record: the overlay's fdatasync covers them. A whole chunk zeroed (WRITE_ZEROES, TRIM) becomes `zero`
 * without any I/O; its stale overlay bytes are rewritten before it is `data` again.
 *
 * A failed flush fails the increment for good: on Linux a failed fdatasync drops the dirty pages'
 * error once reported, so a later fdatasync "succeeds" without the lost writes ever reaching the disk
 * (PostgreSQL's "fsyncgate", 2018). Every later write and flush is refused (the NBD client gets EIO);
 * the session is marked `failed` through `onFailed` and only a discard ends it.
 *
 * Checkpoints (sessions.ts) read a point-in-time snapshot of the chunks written since the previous
 * one while the VM goes on writing: taking it waits for the writes in flight and holds new ones back
 * (a copy of a few state bytes), then a write into a chunk the snapshot has not read yet first has the
 * chunk's bytes read for it (copy-on-write). So a checkpoint is one instant of the disk: never a later
 * write without every write completed before it.
 */
export const BASE = 0;
export const DATA = 1;
export const ZERO = 2;
export type ChunkState = typeof BASE | typeof DATA | typeof ZERO;

const MAGIC = Buffer.from('DFVI');
const HEADER = 20;
const RECORD = 12;
export const OVERLAY = 'overlay.raw';
export const MAP = 'map.log';

/** A chunk as a snapshot saw it: its state, and its bytes when `data`. */
export interface SnapshotChunk {
  state: ChunkState;
  bytes: Buffer | null;
}

/** A point-in-time view of some chunks (`positions`, ascending); `release` when done (failed: they stay dirty). */
export interface IncrementSnapshot {
  readonly positions: number[];
  take(i: number): Promise<SnapshotChunk>;
  release(failed: boolean): void;
}

interface SnapState {
  states: Map<number, ChunkState>;
  /** Positions not taken yet: a write into one has it captured first. */
  pending: Set<number>;
  captured: Map<number, Promise<SnapshotChunk>>;
}

export interface IncrementStats {
  /** Chunks that differ from the base (data or zero). */
  changed: number;
  bytesWritten: number;
  flushes: number;
  lastFlushAt: string | null;
}

export class CloudIncrement {
  private readonly state: Uint8Array;
  /** Positions whose state changed since the last flush (their records are not written yet). */
  private pending = new Map<number, ChunkState>();
  /** Chunks being turned into `data` (base copy in flight): later ops on them wait. */
  private readonly busy = new Map<number, Promise<void>>();
  private flushing: Promise<void> | undefined;
  /** Writes and zeroes completed so far, and how many of them the last flush covered. */
  private writesDone = 0;
  private flushedUpTo = 0;
  private closed = false;
  /** Chunks written or zeroed since the last snapshot took them. */
  private dirty = new Set<number>();
  private snap: SnapState | undefined;
  /** Writes and zeroes running; while a snapshot is taken new ones wait at `gate`. */
  private inflight = 0;
  private gate: Promise<void> | undefined;
  private drained: (() => void) | undefined;
  /** Why the increment failed (a flush that did not make its writes durable); null while healthy. */
  failure: string | null = null;
  readonly stats: IncrementStats = { changed: 0, bytesWritten: 0, flushes: 0, lastFlushAt: null };

  private constructor(
    readonly dir: string,
    readonly geometry: Geometry,
    private readonly base: ChunkIndex,
    private readonly chunks: RawChunkCache,
    private readonly overlay: FileHandle,
    private readonly map: FileHandle,
    private mapSize: number,
    state: Uint8Array,
    private readonly onFailed: ((reason: string) => void) | undefined,
  ) {
    this.state = state;
    for (const s of state) if (s !== BASE) this.stats.changed++;
  }

  /** Make the folder, the sparse overlay and the map header, all durable. */
  static async create(dir: string, g: Geometry): Promise<void> {
    await fsp.mkdir(dir, { recursive: true, mode: 0o750 });
    const ov = await fsp.open(path.join(dir, OVERLAY), 'wx', 0o600);
    try {
      await ov.truncate(g.virtualSize);
      await ov.datasync();
    } finally {
      await ov.close();
    }
    const head = Buffer.alloc(HEADER);
    MAGIC.copy(head, 0);
    head[4] = 1;
    head.writeBigUInt64BE(BigInt(g.virtualSize), 8);
    head.writeUInt32BE(g.chunkSize, 16);
    const m = await fsp.open(path.join(dir, MAP), 'wx', 0o600);
    try {
      await m.writeFile(head);
      await m.datasync();
    } finally {
      await m.close();
    }
    await fsyncDir(dir);
    await fsyncDir(path.dirname(dir));
  }

  /**
   * Open and replay the map. `base` must be the index of the session's base version; `onFailed` hears
   * once when a flush fails (the increment refuses writes from then on).
   */
  static async open(dir: string, base: ChunkIndex, chunks: RawChunkCache, onFailed?: (reason: string) => void): Promise<CloudIncrement> {
    const g = base.geometry;
    let overlay: FileHandle | undefined;
    let map: FileHandle | undefined;
    try {
      overlay = await fsp.open(path.join(dir, OVERLAY), 'r+');
      map = await fsp.open(path.join(dir, MAP), 'r+');
      const bytes = await map.readFile();
      const { state, valid } = replay(bytes, g, dir);
      // Cut a torn tail so later records follow the last good one.
      if (valid < bytes.length) {
        await map.truncate(valid);
        await map.datasync();
      }
      return new CloudIncrement(dir, g, base, chunks, overlay, map, valid, state, onFailed);
    } catch (err) {
      await overlay?.close();
      await map?.close();
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw dfError('DF_ERR_VDI_SESSION_STATE', `the cloud increment in ${dir} is missing`, { dir }, err);
      }
      throw err;
    }
  }

  stateAt(i: number): ChunkState {
    return this.state[i] as ChunkState;
  }

  /** Positions that differ from the base, ascending. */
  changedPositions(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.state.length; i++) if (this.state[i] !== BASE) out.push(i);
    return out;
  }

  /** The bytes of [offset, offset+length) as they are now. */
  async read(offset: number, length: number): Promise<Buffer[]> {
    const out = Buffer.allocUnsafe(length);
    await this.readInto(offset, out);
    return [out];
  }

  /** The bytes at `offset` into `out` (the NBD server's reply buffer). */
  async readInto(offset: number, out: Buffer): Promise<void> {
    const jobs: Promise<void>[] = [];
    forEachChunkPiece(this.geometry, offset, out.length, (i, within, n, at) => jobs.push(this.readPieceInto(i, within, n, out, at)));
    await Promise.all(jobs);
  }

  private async readPieceInto(i: number, within: number, n: number, out: Buffer, at: number): Promise<void> {
    const b = this.busy.get(i);
    if (b) await b;
    const s = this.state[i];
    if (s === ZERO || (s === BASE && this.base.isZeroAt(i))) out.fill(0, at, at + n);
    else if (s === DATA) await this.preadInto(out, at, n, i * this.geometry.chunkSize + within);
    else await this.chunks.readInto(idHex(this.base.idAt(i)), within, n, out, at);
  }

  /** The whole chunk at position i as it is now (for commits). */
  async chunk(i: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(chunkLength(this.geometry, i));
    await this.readInto(i * this.geometry.chunkSize, out);
    return out;
  }

  /**
   * Pieces that need no copy of the base — chunks already `data`, and chunks the write covers whole —
   * go out as one pwrite per contiguous run; the others are copied on write one chunk at a time.
   */
  async write(offset: number, data: Buffer): Promise<void> {
    this.writable();
    await this.enter(offset, data.length);
    try {
      await this.writeNow(offset, data);
    } finally {
      this.leave();
    }
  }

  private async writeNow(offset: number, data: Buffer): Promise<void> {
    const jobs: Promise<void>[] = [];
    let run: { start: number; end: number; claim: number[] } | undefined;
    const flushRun = () => {
      if (run) jobs.push(this.writeRun(offset + run.start, data.subarray(run.start, run.end), run.claim));
      run = undefined;
    };
    forEachChunkPiece(this.geometry, offset, data.length, (i, within, n, at) => {
      const whole = within === 0 && n === chunkLength(this.geometry, i);
      if (!this.busy.has(i) && (this.state[i] === DATA || whole)) {
        run ??= { start: at, end: at, claim: [] };
        run.end = at + n;
        if (this.state[i] !== DATA) run.claim.push(i);
      } else {
        flushRun();
        jobs.push(this.makeData(i, offset + at, data.subarray(at, at + n)));
      }
    });
    flushRun();
    try {
      await Promise.all(jobs);
    } finally {
      this.writesDone++; // even a failed write may have landed in part: the next flush syncs
    }
    this.stats.bytesWritten += data.length;
  }

  /** One pwrite; chunks it makes `data` (written whole) are busy until it lands. */
  private async writeRun(pos: number, bytes: Buffer, claim: number[]): Promise<void> {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    for (const i of claim) this.busy.set(i, gate);
    try {
      await this.pwrite(bytes, pos);
      for (const i of claim) this.setState(i, DATA);
    } finally {
      for (const i of claim) if (this.busy.get(i) === gate) this.busy.delete(i);
      release();
    }
  }

  /** Zero a range: whole chunks become `zero` (no I/O), partial ones are written with zeros. */
  async zero(offset: number, length: number): Promise<void> {
    this.writable();
    await this.enter(offset, length);
    try {
      await this.zeroNow(offset, length);
    } finally {
      this.leave();
    }
  }

  private async zeroNow(offset: number, length: number): Promise<void> {
    const jobs: Promise<void>[] = [];
    forEachChunkPiece(this.geometry, offset, length, (i, within, n, at) => {
      if (within === 0 && n === chunkLength(this.geometry, i)) jobs.push(this.zeroWhole(i));
      else jobs.push(this.makeData(i, offset + at, Buffer.alloc(n)));
    });
    try {
      await Promise.all(jobs);
    } finally {
      this.writesDone++;
    }
  }

  private async zeroWhole(i: number): Promise<void> {
    for (let b = this.busy.get(i); b; b = this.busy.get(i)) await b;
    // A zero chunk of the base is already what this asks for.
    this.setState(i, this.base.isZeroAt(i) ? BASE : ZERO);
  }

  /**
   * Write `piece` (inside chunk i, at absolute offset `pos`). A chunk that is not `data` yet is built
   * whole in memory (base or zeros, patched) and written at once; one copy at a time per chunk.
   */
  private async makeData(i: number, pos: number, piece: Buffer): Promise<void> {
    for (let b = this.busy.get(i); b; b = this.busy.get(i)) await b;
    if (this.state[i] === DATA) {
      await this.pwrite(piece, pos);
      return;
    }
    const cs = this.geometry.chunkSize;
    const len = chunkLength(this.geometry, i);
    const job = (async () => {
      const fromBase = this.state[i] === BASE && !this.base.isZeroAt(i);
      const whole = fromBase ? Buffer.allocUnsafe(len) : Buffer.alloc(len);
      if (fromBase) await this.chunks.readInto(idHex(this.base.idAt(i)), 0, len, whole, 0);
      piece.copy(whole, pos - i * cs);
      await this.pwrite(whole, i * cs);
      this.setState(i, DATA);
    })();
    this.busy.set(i, job);
    try {
      await job;
    } finally {
      this.busy.delete(i);
    }
  }

  private setState(i: number, s: ChunkState): void {
    const was = this.state[i]!;
    if (was === s) return;
    if (was === BASE) this.stats.changed++;
    if (s === BASE) this.stats.changed--;
    this.state[i] = s;
    this.pending.set(i, s);
  }

  /** A write or zero starts: past a snapshot being taken, its chunks marked dirty and captured for a running snapshot. */
  private async enter(offset: number, length: number): Promise<void> {
    while (this.gate) await this.gate;
    this.inflight++;
    if (length === 0) return;
    const cs = this.geometry.chunkSize;
    const first = Math.floor(offset / cs);
    const last = Math.min(Math.floor((offset + length - 1) / cs), chunkCount(this.geometry) - 1);
    const waits: Promise<SnapshotChunk>[] = [];
    for (let i = first; i <= last; i++) {
      this.dirty.add(i);
      if (this.snap?.pending.has(i)) waits.push(this.capture(this.snap, i));
    }
    if (waits.length) {
      try {
        await Promise.all(waits);
      } catch (err) {
        this.leave();
        throw err;
      }
    }
  }

  private leave(): void {
    if (--this.inflight === 0) this.drained?.();
  }

  /** Chunks written since the last snapshot took them. */
  get dirtyCount(): number {
    return this.dirty.size;
  }

  /**
   * A point-in-time view of the chunks written since the last snapshot (`all`: of every chunk that
   * differs from the base, and those). One at a time.
   */
  async snapshot(all: boolean): Promise<IncrementSnapshot> {
    this.open();
    if (this.snap || this.gate) throw dfError('DF_ERR_INTERNAL', `a snapshot of the cloud increment in ${this.dir} is already running`, { dir: this.dir });
    let open!: () => void;
    this.gate = new Promise<void>((r) => (open = r));
    try {
      if (this.inflight > 0) await new Promise<void>((r) => (this.drained = r));
    } finally {
      this.drained = undefined;
    }
    const set = new Set(this.dirty);
    if (all) for (const i of this.changedPositions()) set.add(i);
    const positions = [...set].sort((a, b) => a - b);
    const snap: SnapState = { states: new Map(positions.map((i) => [i, this.state[i] as ChunkState])), pending: new Set(positions), captured: new Map() };
    this.dirty = new Set();
    this.snap = snap;
    this.gate = undefined;
    open();
    return {
      positions,
      take: async (i) => {
        if (!snap.pending.has(i) && !snap.captured.has(i)) throw dfError('DF_ERR_INTERNAL', `chunk ${i} is not in the snapshot or was taken`, { dir: this.dir });
        const c = await this.capture(snap, i);
        snap.pending.delete(i);
        snap.captured.delete(i);
        return c;
      },
      release: (failed) => {
        if (this.snap === snap) this.snap = undefined;
        if (failed) for (const i of positions) this.dirty.add(i);
      },
    };
  }

  /** Chunk i as the snapshot saw it: read once, before any write changes it. */
  private capture(snap: SnapState, i: number): Promise<SnapshotChunk> {
    let c = snap.captured.get(i);
    if (!c) {
      const state = snap.states.get(i)!;
      c = (async () => ({ state, bytes: state === DATA ? await this.chunk(i) : null }))();
      snap.captured.set(i, c);
      snap.pending.delete(i);
    }
    return c;
  }

  /** Refuse writes from now on, without failing the session (it was taken over by another server). */
  revoke(reason: string): void {
    this.failure ??= reason;
  }

  /** Make every completed write durable (NBD_CMD_FLUSH, FUA). Concurrent calls share one flush in flight. */
  async flush(): Promise<void> {
    this.writable();
    // A flush asked for while one runs must cover writes that the running one may have missed.
    while (this.flushing) await this.flushing.catch(() => {});
    this.writable(); // the flush waited for may have failed it
    this.flushing = this.doFlush();
    try {
      await this.flushing;
    } finally {
      this.flushing = undefined;
    }
  }

  private async doFlush(): Promise<void> {
    // Nothing written since the last flush (a reading VM's FLUSH, a read-only client's close): no sync.
    const upTo = this.writesDone;
    if (upTo === this.flushedUpTo && this.pending.size === 0) return;
    const batch = this.pending;
    this.pending = new Map();
    try {
      await this.overlay.datasync();
      if (batch.size) {
        const recs = Buffer.alloc(batch.size * RECORD);
        let at = 0;
        for (const [i, s] of [...batch].sort((a, b) => a[0] - b[0])) {
          recs.writeUInt32BE(i, at);
          recs.writeUInt32BE(s, at + 4);
          recs.writeUInt32BE(crc32(recs.subarray(at, at + 8)), at + 8);
          at += RECORD;
        }
        await this.map.write(recs, 0, recs.length, this.mapSize);
        this.mapSize += recs.length;
        await this.map.datasync();
      }
      this.flushedUpTo = upTo;
      this.stats.flushes++;
      this.stats.lastFlushAt = new Date().toISOString();
    } catch (err) {
      // Not durable, and a retry could not tell: what the failed sync lost is gone from the page cache's
      // dirty set, so the next fdatasync would report success. Fail for good.
      this.failure = `flush failed (${(err as Error).message}) at ${new Date().toISOString()}; writes since the last good flush${this.stats.lastFlushAt ? ` (${this.stats.lastFlushAt})` : ''} may be lost`;
      this.onFailed?.(this.failure);
      throw this.failedError(err);
    }
  }

  /** `base:allocation` extents (proto.md): zero chunks are holes that read as zeros. */
  extents(offset: number, length: number): Extent[] {
    return zeroChunkExtents(this.base, offset, length, (i) => this.state[i] === ZERO || (this.state[i] === BASE && this.base.isZeroAt(i)));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.busy.values()]);
    await this.overlay.close();
    await this.map.close();
  }

  private open(): void {
    if (this.closed) throw dfError('DF_ERR_VDI_SESSION_STATE', `the cloud increment in ${this.dir} is closed`, { dir: this.dir });
  }

  /** Open and not failed: writes and flushes go on. */
  private writable(): void {
    this.open();
    if (this.failure) throw this.failedError();
  }

  private failedError(cause?: unknown) {
    return dfError('DF_ERR_VDI_SESSION_FAILED', `the cloud increment in ${this.dir} failed: ${this.failure}; discard the session`, { dir: this.dir, reason: this.failure }, cause);
  }

  /** n bytes of the overlay at `at` into buf[off…]; past its end reads as zeros. */
  private async preadInto(buf: Buffer, off: number, n: number, at: number): Promise<void> {
    const got = await readFull(this.overlay, buf, off, n, at);
    buf.fill(0, off + got, off + n);
  }

  private async pwrite(data: Buffer, at: number): Promise<void> {
    await writeFull(this.overlay, data, at);
  }

}

function replay(bytes: Buffer, g: Geometry, dir: string): { state: Uint8Array; valid: number } {
  const bad = (why: string) => dfError('DF_ERR_STATE_CORRUPT', `the cloud increment map in ${dir} ${why}`, { dir });
  if (bytes.length < HEADER || !bytes.subarray(0, 4).equals(MAGIC) || bytes[4] !== 1) throw bad('has no valid header');
  if (Number(bytes.readBigUInt64BE(8)) !== g.virtualSize || bytes.readUInt32BE(16) !== g.chunkSize) {
    throw bad(`is for another geometry (${bytes.readBigUInt64BE(8)} bytes in ${bytes.readUInt32BE(16)}-byte chunks)`);
  }
  const n = chunkCount(g);
  const state = new Uint8Array(n);
  let at = HEADER;
  for (; at + RECORD <= bytes.length; at += RECORD) {
    const i = bytes.readUInt32BE(at);
    const s = bytes.readUInt32BE(at + 4);
    if (bytes.readUInt32BE(at + 8) !== crc32(bytes.subarray(at, at + 8)) || i >= n || s > ZERO) break;
    state[i] = s;
  }
  return { state, valid: at };
}
