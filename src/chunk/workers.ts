import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { Worker, type Transferable } from 'node:worker_threads';
import { dfError } from '../errors.js';
import { frameContentSize } from './frame.js';
import { isZero } from './id.js';

/**
 * A small pool of worker threads that read, decompress, hash and compress chunks, so the event loop
 * that DHCP, TFTP, NBD and every HTTP client share never waits on a disk read, zstd or BLAKE3
 * (neither zstd-napi nor @napi-rs/blake-hash has an asynchronous call).
 *
 *   read(path, id, max)   read a stored frame, open and verify it   → {frame, raw}
 *   open(id, frame, max)  open and verify an uploaded frame         → raw
 *   check(id, frame, max) the same, answering only                  → {length, zero}
 *   seal(raw)             hash and compress raw bytes               → {id, frame}
 *   pack(files, …)        stored frames as one pack body, NOT opened → {body} | {missing} | {tooLarge}
 *   place(fd, frames, …)  export: open and verify frames, then pwrite their raw bytes at their offsets
 *                         → {placed, written, writes} (nothing written when one is bad)
 *   heads(files, max)     each stored frame's size and declared raw length (its first bytes only)
 *                         → {sizes, raws} | {missing}: what a pack sent from the files needs to know
 *                         (serving: the frames were verified when stored, the receiver verifies each)
 *
 * Verification is the one of frame.ts `openFrame` (declared size first, so a hostile frame cannot
 * make a thread allocate more than `max`), with the same DF_ERR_CHUNK_INVALID errors. The worker is
 * plain JavaScript evaluated from a string (with frame.ts's `frameContentSize` inlined from its own
 * source), so the same code runs under the test runner (TS source) and from dist/. Idle workers are unref'd: the pool never keeps a process alive.
 */
const WORKER_SOURCE = String.raw`
'use strict';
const { parentPort, workerData } = require('node:worker_threads');
const { closeSync, fstatSync, openSync, readFileSync, readSync, statSync, writeSync, writevSync } = require('node:fs');
const zstd = require(workerData.zstd);
const blake = require(workerData.blake);

// RFC 8878 §3.1.1.1: the content size a frame declares — frame.ts's own function, its source inlined.
const frameContentSize = ${frameContentSize.toString()};
// id.ts's isZero, likewise (a memcmp against a zero page).
const ZERO_PAGE = Buffer.alloc(4 * 1024 * 1024);
const isZero = ${isZero.toString()};

class Invalid { constructor(message, fields) { this.message = message; this.fields = fields; } }

// fill/verify (the NBD cache) reuse one frame buffer, one raw buffer and one zstd context: their
// bytes go to a slot file, so nothing is left for the garbage collector (dead 64 KiB buffers of a
// whole-disk read held tens of MiB of RSS per worker until V8 got round to them).
let zctx;
try { zctx = new (require(require('node:path').join(require('node:path').dirname(workerData.zstd), '..', 'binding.js')).DCtx)(); } catch { zctx = undefined; }
let frameBuf = Buffer.allocUnsafeSlow(256 * 1024);
let rawBuf = Buffer.allocUnsafeSlow(256 * 1024);
function readFrame(path) {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    if (size > frameBuf.length) frameBuf = Buffer.allocUnsafeSlow(size);
    let got = 0;
    while (got < size) { const n = readSync(fd, frameBuf, got, size - got, got); if (n === 0) break; got += n; }
    return frameBuf.subarray(0, got);
  } finally { closeSync(fd); }
}
function openReused(id, frame, max) {
  if (!zctx) return open(id, frame, max);
  const declared = frameContentSize(frame);
  if (declared === undefined) throw new Invalid('chunk ' + id + ': not a zstd frame with a declared content size', { id });
  if (declared > max) throw new Invalid('chunk ' + id + ': frame declares ' + declared + ' bytes, above the limit of ' + max, { id, size: declared });
  if (declared > rawBuf.length) rawBuf = Buffer.allocUnsafeSlow(declared);
  const raw = rawBuf.subarray(0, declared);
  let n;
  try { n = zctx.decompress(raw, frame); } catch { throw new Invalid('chunk ' + id + ': not a valid zstd frame', { id }); }
  if (n !== declared) throw new Invalid('chunk ' + id + ': ' + n + ' bytes, the frame declares ' + declared, { id, size: n });
  const got = blake.blake3(raw).toString('hex');
  if (got !== id) throw new Invalid('chunk ' + id + ': bytes hash to ' + got, { id, got });
  return raw;
}

// Export's arena, and open() into a given place: expected (the index's length) must be the frame's declared size.
let arena = Buffer.allocUnsafeSlow(0);
function openInto(id, frame, expected, max, dst) {
  const declared = frameContentSize(frame);
  if (declared === undefined) throw new Invalid('chunk ' + id + ': not a zstd frame with a declared content size', { id });
  if (declared > max) throw new Invalid('chunk ' + id + ': frame declares ' + declared + ' bytes, above the limit of ' + max, { id, size: declared });
  if (declared !== expected) throw new Invalid('chunk ' + id + ': frame declares ' + declared + ' bytes, the index says ' + expected, { id, size: declared });
  if (!zctx) { const raw = open(id, frame, max); raw.copy(dst); return dst; }
  let n;
  try { n = zctx.decompress(dst, frame); } catch { throw new Invalid('chunk ' + id + ': not a valid zstd frame', { id }); }
  if (n !== declared) throw new Invalid('chunk ' + id + ': ' + n + ' bytes, the frame declares ' + declared, { id, size: n });
  const got = blake.blake3(dst).toString('hex');
  if (got !== id) throw new Invalid('chunk ' + id + ': bytes hash to ' + got, { id, got });
  return dst;
}

function open(id, frame, max) {
  const declared = frameContentSize(frame);
  if (declared === undefined) throw new Invalid('chunk ' + id + ': not a zstd frame with a declared content size', { id });
  if (declared > max) throw new Invalid('chunk ' + id + ': frame declares ' + declared + ' bytes, above the limit of ' + max, { id, size: declared });
  let raw;
  try { raw = zstd.decompress(frame); } catch { throw new Invalid('chunk ' + id + ': not a valid zstd frame', { id }); }
  if (raw.length !== declared || raw.length > max) throw new Invalid('chunk ' + id + ': ' + raw.length + ' bytes exceeds the limit of ' + max, { id, size: raw.length });
  const got = blake.blake3(raw).toString('hex');
  if (got !== id) throw new Invalid('chunk ' + id + ': bytes hash to ' + got, { id, got });
  return raw;
}

// A buffer that owns its whole ArrayBuffer moves to the main thread without a copy. A copy is made with
// allocUnsafeSlow, never Buffer.from: a small Buffer.from is a slice of Node's pool, which Node >= 22 marks
// untransferable (postMessage throws "Cannot transfer object of unsupported type").
const own = (b) => {
  if (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength) return b;
  const c = Buffer.allocUnsafeSlow(b.length);
  b.copy(c);
  return c;
};
// postMessage with a transfer list; a buffer Node will not transfer (an addon's external memory, the pool)
// goes as a copy instead of failing the task.
const post = (msg, transfer) => {
  try { parentPort.postMessage(msg, transfer); } catch (e) {
    if (!(e && e.name === 'DataCloneError')) throw e;
    parentPort.postMessage(msg);
  }
};

parentPort.on('message', (t) => {
  try {
    if (t.op === 'read') {
      const frame = own(readFileSync(t.path));
      const raw = own(open(t.id, frame, t.max));
      post({ seq: t.seq, frame, raw }, [frame.buffer, raw.buffer]);
    } else if (t.op === 'fill') {
      // Stored frames opened and verified, their raw bytes written where the caller says (a slot of
      // the NBD raw-chunk cache): nothing travels back but the outcome of each.
      const out = [];
      for (let k = 0; k < t.paths.length; k++) {
        try {
          const raw = openReused(t.ids[k], readFrame(t.paths[k]), t.max);
          if (raw.length !== t.lengths[k]) { out.push({ invalid: { message: 'chunk ' + t.ids[k] + ': ' + raw.length + ' bytes, the index says ' + t.lengths[k], fields: { id: t.ids[k] } } }); continue; }
          for (let done = 0; done < raw.length; ) done += writeSync(t.fds[k], raw, done, raw.length - done, t.positions[k] + done);
          out.push(0);
        } catch (e) {
          if (e instanceof Invalid) out.push({ invalid: { message: e.message, fields: e.fields } });
          else out.push({ failed: { message: String(e && e.message), code: e && e.code } });
        }
      }
      parentPort.postMessage({ seq: t.seq, fills: out });
    } else if (t.op === 'verify') {
      // Raw bytes at fds[k]/positions[k] hashed against their ids: the NBD raw-chunk cache's slots
      // kept from before a restart are served only once this says they still hold their chunk.
      const out = [];
      for (let k = 0; k < t.ids.length; k++) {
        try {
          if (t.lengths[k] > rawBuf.length) rawBuf = Buffer.allocUnsafeSlow(t.lengths[k]);
          const raw = rawBuf.subarray(0, t.lengths[k]);
          let got = 0;
          while (got < raw.length) { const n = readSync(t.fds[k], raw, got, raw.length - got, t.positions[k] + got); if (n === 0) break; got += n; }
          out.push(got === raw.length && blake.blake3(raw).toString('hex') === t.ids[k] ? 1 : 0);
        } catch { out.push(0); }
      }
      parentPort.postMessage({ seq: t.seq, verified: out });
    } else if (t.op === 'pack') {
      // The pack format of pack.ts (golden-tested against encodePack): "DFPK" 1 0 0 0, per record id(32)
      // raw length(u32 BE) frame length(u32 BE) frame, then 32 zero bytes and the count (u32 BE).
      // Every file is sized first, then read straight into its place in the body (one open file at a
      // time): no buffer per chunk, so a storm of fetches leaves this thread and V8's GC little garbage.
      const sizes = [];
      let framesBytes = 0;
      const missing = (e, k) => { if (e && e.code === 'ENOENT') { parentPort.postMessage({ seq: t.seq, missing: t.ids[k] }); return true; } return false; };
      for (let k = 0; k < t.paths.length; k++) {
        let size;
        try { size = statSync(t.paths[k]).size; } catch (e) { if (missing(e, k)) return; throw e; }
        framesBytes += size;
        if (framesBytes > t.maxBytes) { parentPort.postMessage({ seq: t.seq, tooLarge: true }); return; }
        sizes.push(size);
      }
      const body = Buffer.allocUnsafeSlow(8 + 40 * sizes.length + framesBytes + 36);
      body.write('DFPK', 0, 'latin1');
      body.writeUInt32BE(0x01000000, 4);
      let at = 8;
      for (let k = 0; k < sizes.length; k++) {
        const frame = body.subarray(at + 40, at + 40 + sizes[k]);
        let fd;
        try { fd = openSync(t.paths[k], 'r'); } catch (e) { if (missing(e, k)) return; throw e; }
        try {
          for (let got = 0; got < frame.length; ) {
            const n = readSync(fd, frame, got, frame.length - got, got);
            if (n === 0) throw new Invalid('chunk ' + t.ids[k] + ': the stored file is shorter than it was', { id: t.ids[k] });
            got += n;
          }
        } finally { closeSync(fd); }
        const rawLength = frameContentSize(frame);
        if (rawLength === undefined || rawLength > t.max) throw new Invalid('chunk ' + t.ids[k] + ': the stored frame declares no content size of at most ' + t.max, { id: t.ids[k] });
        body.write(t.ids[k], at, 'hex');
        body.writeUInt32BE(rawLength, at + 32);
        body.writeUInt32BE(frame.length, at + 36);
        at += 40 + frame.length;
      }
      body.fill(0, at, at + 32);
      body.writeUInt32BE(sizes.length, at + 32);
      post({ seq: t.seq, body }, [body.buffer]);
    } else if (t.op === 'heads') {
      const sizes = new Float64Array(t.paths.length);
      const raws = new Float64Array(t.paths.length);
      const head = Buffer.allocUnsafe(18); // the longest zstd frame header (RFC 8878 §3.1.1.1)
      for (let k = 0; k < t.paths.length; k++) {
        let fd;
        try { fd = openSync(t.paths[k], 'r'); } catch (e) { if (e && e.code === 'ENOENT') { parentPort.postMessage({ seq: t.seq, missing: t.ids[k] }); return; } throw e; }
        try {
          sizes[k] = fstatSync(fd).size;
          const n = readSync(fd, head, 0, 18, 0);
          const raw = frameContentSize(head.subarray(0, n));
          if (raw === undefined || raw === 0 || raw > t.max) throw new Invalid('chunk ' + t.ids[k] + ': the stored frame declares no content size of 1..' + t.max, { id: t.ids[k] });
          raws[k] = raw;
        } finally { closeSync(fd); }
      }
      post({ seq: t.seq, sizes, raws }, [sizes.buffer, raws.buffer]);
    } else if (t.op === 'place') {
      // Export: open and verify every frame of the task first (nothing is written if one is bad), then
      // write each chunk at its offsets in the output file (its fd, shared by the process) with
      // pwritev of up to 4 MiB of adjacent pieces; sparse leaves zero 4 KiB blocks as holes. The raw
      // bytes go to one arena reused from task to task, its size the sum of the lengths the caller
      // expects (the index's, each checked against the frame's own before it is opened).
      const frames = Buffer.from(t.frames.buffer, t.frames.byteOffset, t.frames.byteLength);
      let total = 0;
      for (const r of t.recs) total += r.raw;
      if (total > arena.length) arena = Buffer.allocUnsafeSlow(total);
      const raws = [];
      for (let k = 0, o = 0; k < t.recs.length; o += t.recs[k].raw, k++) {
        const r = t.recs[k];
        raws.push(openInto(r.id, frames.subarray(r.off, r.off + r.len), r.raw, t.max, arena.subarray(o, o + r.raw)));
      }
      const pieces = [];
      for (let k = 0; k < raws.length; k++) for (const at of t.recs[k].at) pieces.push({ at, raw: raws[k] });
      pieces.sort((a, b) => a.at - b.at);
      let parts = [], start = 0, end = 0, written = 0, writes = 0, placed = 0;
      const flush = () => {
        if (!parts.length) return;
        let done = writevSync(t.fd, parts, start);
        if (done < end - start) { // a short write (or past IOV_MAX): the rest in one piece
          const rest = Buffer.concat(parts).subarray(done);
          for (let off = 0; off < rest.length; ) off += writeSync(t.fd, rest, off, rest.length - off, start + done + off);
        }
        written += end - start; writes++; parts = [];
      };
      const add = (data, at) => {
        if (parts.length && at !== end) flush();
        if (!parts.length) start = end = at;
        parts.push(data); end += data.length;
        if (end - start >= 4 * 1024 * 1024 || parts.length >= 1024) flush();
      };
      for (const { at, raw } of pieces) {
        placed += raw.length;
        if (!t.sparse) { add(raw, at); continue; }
        let run = -1;
        for (let off = 0; ; off += 4096) {
          const last = off >= raw.length;
          const e = Math.min(off + 4096, raw.length);
          const zero = last || raw.compare(ZERO_PAGE, 0, e - off, off, e) === 0;
          if (!zero && run < 0) run = off;
          if (zero && run >= 0) { add(raw.subarray(run, Math.min(off, raw.length)), at + run); run = -1; }
          if (last) break;
        }
      }
      flush();
      // The frames' buffer goes back to the caller, who fills it again.
      post({ seq: t.seq, length: placed, written, writes, frames: t.frames }, [t.frames.buffer]);
    } else if (t.op === 'check') {
      // An upload is verified here and stored as the frame it came as: only two facts go back.
      const raw = open(t.id, Buffer.from(t.frame.buffer, t.frame.byteOffset, t.frame.byteLength), t.max);
      parentPort.postMessage({ seq: t.seq, length: raw.length, zero: isZero(raw) });
    } else if (t.op === 'open') {
      const raw = own(open(t.id, Buffer.from(t.frame.buffer, t.frame.byteOffset, t.frame.byteLength), t.max));
      post({ seq: t.seq, raw }, [raw.buffer]);
    } else {
      const raw = Buffer.from(t.raw.buffer, t.raw.byteOffset, t.raw.byteLength);
      const frame = own(zstd.compress(raw, { compressionLevel: t.level }));
      post({ seq: t.seq, id: blake.blake3(raw).toString('hex'), frame }, [frame.buffer]);
    }
  } catch (e) {
    if (e instanceof Invalid) parentPort.postMessage({ seq: t.seq, invalid: { message: e.message, fields: e.fields } });
    else parentPort.postMessage({ seq: t.seq, failed: { message: String(e && e.message), code: e && e.code, syscall: e && e.syscall, path: e && e.path } });
  }
});
`;

type Reply = {
  seq: number; frame?: Uint8Array; raw?: Uint8Array; id?: string; length?: number; zero?: boolean;
  fills?: Array<0 | { invalid?: { message: string; fields: Record<string, unknown> }; failed?: { message: string; code?: string } }>;
  verified?: number[];
  body?: Uint8Array; frames?: Uint8Array; missing?: string; tooLarge?: boolean; sizes?: Float64Array; raws?: Float64Array; written?: number; writes?: number;
  invalid?: { message: string; fields: Record<string, unknown> };
  failed?: { message: string; code?: string; syscall?: string; path?: string };
};
type Task = { resolve: (r: Reply) => void; reject: (e: unknown) => void };

interface Slot {
  worker: Worker;
  tasks: Map<number, Task>;
}

const buf = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);
/** postMessage clones a view's whole ArrayBuffer: a slice of a 32 MiB body is copied alone. */
const alone = (u: Uint8Array): Uint8Array => (u.byteOffset === 0 && u.byteLength === u.buffer.byteLength ? u : new Uint8Array(u));

export class ChunkWorkers {
  private readonly slots: Array<Slot | undefined>;
  private seq = 0;
  /** Tasks done, by operation (observability and tests). */
  readonly done = { read: 0, open: 0, seal: 0, pack: 0, heads: 0, place: 0 };

  constructor(readonly size = Math.min(4, Math.max(2, availableParallelism() - 1))) {
    this.slots = new Array<Slot | undefined>(size).fill(undefined);
  }

  /** Read a stored frame and verify it: errno errors as thrown by fs, DF_ERR_CHUNK_INVALID on a bad frame. */
  async read(path: string, id: string, max: number): Promise<{ frame: Buffer; raw: Buffer }> {
    const r = await this.run({ op: 'read', path, id, max });
    this.done.read++;
    return { frame: buf(r.frame!), raw: buf(r.raw!) };
  }

  /**
   * Read stored frames, open and verify each (with its raw length), and write its raw bytes to
   * `fds[k]` at `positions[k]` (pwrite from the worker: the main thread never touches the bytes).
   * Per file: undefined when written, else the error (errno, or DF_ERR_CHUNK_INVALID).
   */
  async fill(files: Array<{ id: string; path: string; length: number; fd: number; position: number }>, max: number): Promise<Array<Error | undefined>> {
    const r = await this.run({ op: 'fill', ids: files.map((f) => f.id), paths: files.map((f) => f.path), lengths: files.map((f) => f.length), fds: files.map((f) => f.fd), positions: files.map((f) => f.position), max });
    this.done.read += files.length;
    return r.fills!.map((x) => {
      if (x === 0) return undefined;
      if (x.invalid) return dfError('DF_ERR_CHUNK_INVALID', x.invalid.message, x.invalid.fields);
      return Object.assign(new Error(x.failed?.message ?? 'fill failed'), { code: x.failed?.code });
    });
  }

  /** Whether the `length` raw bytes at `fds[k]`/`positions[k]` still hash to `ids[k]` (read in a worker). */
  async verify(items: Array<{ id: string; length: number; fd: number; position: number }>): Promise<boolean[]> {
    const r = await this.run({ op: 'verify', ids: items.map((f) => f.id), lengths: items.map((f) => f.length), fds: items.map((f) => f.fd), positions: items.map((f) => f.position) });
    return r.verified!.map((x) => x === 1);
  }

  /**
   * Stored frames as one pack body (pack.ts's format), read in a worker and not opened: serving
   * trusts what was verified on entry, and the receiver verifies every frame (a frame whose header
   * declares no size of at most `max` is DF_ERR_CHUNK_INVALID). Stops at the first missing file, or
   * when the frames pass `maxFrameBytes`.
   */
  async pack(files: Array<{ id: string; path: string }>, maxFrameBytes: number, max: number): Promise<{ body: Buffer } | { missing: string } | { tooLarge: true }> {
    const r = await this.run({ op: 'pack', ids: files.map((f) => f.id), paths: files.map((f) => f.path), maxBytes: maxFrameBytes, max });
    this.done.pack++;
    if (r.missing) return { missing: r.missing };
    if (r.tooLarge) return { tooLarge: true };
    return { body: buf(r.body!) };
  }

  /**
   * Each stored frame's size and the raw length its header declares (DF_ERR_CHUNK_INVALID when it
   * declares none of 1..max), from its first 18 bytes: what a pack sent straight from the files needs.
   */
  async heads(files: Array<{ id: string; path: string }>, max: number): Promise<{ sizes: Float64Array; raws: Float64Array } | { missing: string }> {
    const r = await this.run({ op: 'heads', ids: files.map((f) => f.id), paths: files.map((f) => f.path), max });
    this.done.heads++;
    if (r.missing) return { missing: r.missing };
    return { sizes: r.sizes!, raws: r.raws! };
  }

  /** Open an uploaded frame and verify it against its id (DF_ERR_CHUNK_INVALID). */
  async open(id: string, frame: Buffer, max: number): Promise<Buffer> {
    const r = await this.run({ op: 'open', id, frame: alone(frame), max });
    this.done.open++;
    return buf(r.raw!);
  }

  /**
   * Export: verify each chunk of `frames` (its frame at `off`, `len` bytes, of `raw` bytes opened, against `id`) and write
   * its raw bytes at every offset of `at` in the file open as `fd`, adjacent pieces joined into
   * pwritev calls of up to 4 MiB; `sparse` leaves zero 4 KiB blocks unwritten (a fresh file's
   * holes). All are verified before any is written: a bad frame (DF_ERR_CHUNK_INVALID) writes
   * nothing of the task. `frames` is moved to the worker, not copied, and comes back as `buffer` to
   * be filled again. A frame that declares another
   * size than `raw` is DF_ERR_CHUNK_INVALID. The caller keeps `fd` open until the promise settles.
   */
  async place(fd: number, frames: ArrayBuffer, recs: Array<{ id: string; off: number; len: number; raw: number; at: number[] }>, sparse: boolean, max: number): Promise<{ placed: number; written: number; writes: number; buffer: ArrayBuffer }> {
    const r = await this.run({ op: 'place', fd, frames: new Uint8Array(frames), recs, sparse, max }, [frames]);
    this.done.place++;
    return { placed: r.length!, written: r.written!, writes: r.writes!, buffer: r.frames!.buffer as ArrayBuffer };
  }

  /** Verify an uploaded frame against its id (DF_ERR_CHUNK_INVALID) without sending its bytes back: their length and whether all are zero. */
  async check(id: string, frame: Buffer, max: number): Promise<{ length: number; zero: boolean }> {
    const r = await this.run({ op: 'check', id, frame: alone(frame), max });
    this.done.open++;
    return { length: r.length!, zero: r.zero! };
  }

  /** Hash raw bytes (their chunk id) and compress them into the stored frame. */
  async seal(raw: Buffer, level = 3): Promise<{ id: string; frame: Buffer }> {
    const r = await this.run({ op: 'seal', raw: alone(raw), level });
    this.done.seal++;
    return { id: r.id!, frame: buf(r.frame!) };
  }

  async close(): Promise<void> {
    const all = this.slots.splice(0).filter((s): s is Slot => s !== undefined);
    await Promise.all(all.map((s) => s.worker.terminate()));
  }

  private run(task: Record<string, unknown>, transfer: Transferable[] = []): Promise<Reply> {
    const slot = this.pick();
    const seq = ++this.seq;
    return new Promise<Reply>((resolve, reject) => {
      slot.tasks.set(seq, { resolve, reject });
      if (slot.tasks.size === 1) slot.worker.ref();
      slot.worker.postMessage({ ...task, seq }, transfer);
    }).then((r) => {
      if (r.invalid) throw dfError('DF_ERR_CHUNK_INVALID', r.invalid.message, r.invalid.fields);
      if (r.failed) throw Object.assign(new Error(r.failed.message), { code: r.failed.code, syscall: r.failed.syscall, path: r.failed.path });
      return r;
    });
  }

  /** The least busy worker (started on first use). */
  private pick(): Slot {
    let best = -1;
    for (let i = 0; i < this.slots.length; i++) {
      const s = this.slots[i];
      if (!s) {
        this.slots[i] = this.start(i);
        return this.slots[i]!;
      }
      if (best < 0 || s.tasks.size < this.slots[best]!.tasks.size) best = i;
    }
    return this.slots[best]!;
  }

  private start(i: number): Slot {
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: LIBS() });
    worker.unref();
    const slot: Slot = { worker, tasks: new Map() };
    worker.on('message', (r: Reply) => {
      const t = slot.tasks.get(r.seq);
      if (!t) return;
      slot.tasks.delete(r.seq);
      if (slot.tasks.size === 0) worker.unref();
      t.resolve(r);
    });
    // A worker that dies takes its tasks with it; the next task starts a fresh one.
    const fail = (err: unknown) => {
      if (this.slots[i] === slot) this.slots[i] = undefined;
      for (const t of slot.tasks.values()) t.reject(err);
      slot.tasks.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`chunk worker exited with ${code}`)));
    return slot;
  }
}

const LIBS = (() => {
  let libs: { zstd: string; blake: string } | undefined;
  return () => {
    const req = createRequire(import.meta.url);
    return (libs ??= { zstd: req.resolve('zstd-napi'), blake: req.resolve('@napi-rs/blake-hash') });
  };
})();

let shared: ChunkWorkers | undefined;

/** The process's pool (started lazily; its idle workers never keep the process alive). */
export function chunkWorkers(): ChunkWorkers {
  return (shared ??= new ChunkWorkers());
}
