import { execFileSync, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DeskfuseError } from '../errors.js';
import { encodeFrame } from './frame.js';
import { FsChunkStore } from './fs-store.js';
import { hashBytes, idHex } from './id.js';
import { ChunkWorkers } from './workers.js';
import { rejection } from '../../test/helpers/expect.js';

const MAX = 64 * 1024;
const pool = new ChunkWorkers(2);
afterAll(() => pool.close());

function chunkOf(text: string): { id: string; raw: Buffer; frame: Buffer } {
  const raw = Buffer.from(text.repeat(100));
  return { id: idHex(hashBytes(raw)), raw, frame: encodeFrame(raw) };
}

let dir: string;
let store: FsChunkStore;
beforeEach(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'deskfuse-workers-'));
  store = await FsChunkStore.open(path.join(dir, 'chunks'), MAX, pool);
});
afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

describe('FsChunkStore reads off the event loop (issue 10 item 9)', () => {
  it('a read waiting on its file leaves the event loop free: this thread writes the bytes that read then verifies', async () => {
    const c = chunkOf('fifo');
    const file = store.pathOf(c.id);
    await fsp.mkdir(path.dirname(file), { recursive: true });
    execFileSync('mkfifo', [file]);
    const frameFile = path.join(dir, 'frame');
    await fsp.writeFile(frameFile, c.frame);
    // Were the read to block this thread (a readFileSync), nothing here could feed the FIFO: a
    // helper process does after a while, so the test fails on the order below instead of hanging.
    const rescue = spawn('sh', ['-c', 'sleep 15; cat "$0" > "$1"', frameFile, file], { stdio: 'ignore', detached: true });
    try {
      const order: string[] = [];
      const got = store.get(c.id).then((x) => (order.push('read'), x));
      await new Promise((r) => setImmediate(r));
      order.push('event loop turned');
      expect(order).toEqual(['event loop turned']);
      const fh = await fsp.open(file, 'w');
      await fh.writeFile(c.frame);
      await fh.close();
      const { raw, frame } = await got;
      expect(raw).toEqual(c.raw);
      expect(frame).toEqual(c.frame);
      expect(order).toEqual(['event loop turned', 'read']);
    } finally {
      process.kill(-rescue.pid!, 'SIGKILL');
    }
  });

  it('reads go through the worker pool', async () => {
    const c = chunkOf('pooled');
    await store.put(c.id, { frame: c.frame });
    const before = pool.done.read;
    expect((await store.get(c.id)).raw).toEqual(c.raw);
    expect(pool.done.read).toBe(before + 1);
  });

  it('a stored file whose bytes are another chunk: DF_ERR_CHUNK_CORRUPT caused by DF_ERR_CHUNK_INVALID {id, got}', async () => {
    const c = chunkOf('good');
    const other = chunkOf('evil');
    await store.put(c.id, { frame: c.frame });
    await fsp.writeFile(store.pathOf(c.id), other.frame);
    const err = await rejection(store.get(c.id));
    expect(err.code).toBe('DF_ERR_CHUNK_CORRUPT');
    expect(err.fields).toMatchObject({ id: c.id, got: other.id });
    expect((err.cause as DeskfuseError).code).toBe('DF_ERR_CHUNK_INVALID');
    expect((err.cause as DeskfuseError).fields).toEqual({ id: c.id, got: other.id });
  });

  it('a stored file that is not a zstd frame, or declares more than the store takes: DF_ERR_CHUNK_CORRUPT', async () => {
    const c = chunkOf('junk');
    await store.put(c.id, { frame: c.frame });
    await fsp.writeFile(store.pathOf(c.id), Buffer.from('not a frame at all'));
    expect((await rejection(store.get(c.id))).code).toBe('DF_ERR_CHUNK_CORRUPT');
    const big = Buffer.alloc(MAX + 1, 7);
    await fsp.writeFile(store.pathOf(c.id), encodeFrame(big));
    const err = await rejection(store.get(c.id));
    expect(err.code).toBe('DF_ERR_CHUNK_CORRUPT');
    expect((err.cause as DeskfuseError).fields).toEqual({ id: c.id, size: MAX + 1 });
  });

  it('a missing chunk is DF_ERR_CHUNK_NOT_FOUND', async () => {
    expect((await rejection(store.get(chunkOf('absent').id))).code).toBe('DF_ERR_CHUNK_NOT_FOUND');
  });
});

describe('ChunkWorkers', () => {
  it('open verifies an uploaded frame (a slice of a larger body) against its id', async () => {
    const c = chunkOf('upload');
    const body = Buffer.concat([Buffer.alloc(100), c.frame, Buffer.alloc(100)]);
    expect(await pool.open(c.id, body.subarray(100, 100 + c.frame.length), MAX)).toEqual(c.raw);
    const err = await rejection(pool.open(chunkOf('other').id, c.frame, MAX));
    expect(err.code).toBe('DF_ERR_CHUNK_INVALID');
    expect(err.fields.got).toBe(c.id);
  });

  it('check verifies an upload and answers only its length and whether it is all zero', async () => {
    const c = chunkOf('check');
    expect(await pool.check(c.id, c.frame, MAX)).toEqual({ length: 500, zero: false });
    const zeros = Buffer.alloc(64 * 1024);
    expect(await pool.check(idHex(hashBytes(zeros)), encodeFrame(zeros), MAX)).toEqual({ length: 64 * 1024, zero: true });
    const err = await rejection(pool.check(chunkOf('other').id, c.frame, MAX));
    expect(err.code).toBe('DF_ERR_CHUNK_INVALID');
    expect(err.fields.got).toBe(c.id);
  });

  it('seal gives the id and a frame that opens to the same bytes', async () => {
    const c = chunkOf('seal');
    const s = await pool.seal(c.raw);
    expect(s.id).toBe(c.id);
    expect(await pool.open(c.id, s.frame, MAX)).toEqual(c.raw);
    expect(c.raw.length).toBe(400); // the caller's buffer is left intact
  });

  it('place verifies every frame of a task, then writes each chunk at its offsets, zero 4 KiB blocks left as holes', async () => {
    const a = { raw: Buffer.concat([Buffer.alloc(4096, 7), Buffer.alloc(8192), Buffer.alloc(4096, 9)]) };
    const b = { raw: Buffer.alloc(16384, 5) };
    const frames = [encodeFrame(a.raw), encodeFrame(b.raw)];
    const body = Buffer.concat([Buffer.alloc(8), frames[0]!, Buffer.alloc(3), frames[1]!]);
    const recs = [
      { id: idHex(hashBytes(a.raw)), off: 8, len: frames[0]!.length, raw: a.raw.length, at: [0, 65536] },
      { id: idHex(hashBytes(b.raw)), off: 11 + frames[0]!.length, len: frames[1]!.length, raw: b.raw.length, at: [16384] },
    ];
    const file = path.join(dir, 'out');
    const fh = await fsp.open(file, 'w+');
    try {
      await fh.truncate(128 * 1024);
      const { buffer, ...r } = await pool.place(fh.fd, new Uint8Array(body).buffer, recs, true, MAX);
      // a at 0 (4 KiB, hole, 4 KiB) and b at 16 KiB: one write of 4 KiB, one of 4 + 16 KiB (adjacent), one of 4 KiB at 64 KiB, one at 76 KiB
      expect(r).toEqual({ placed: 2 * a.raw.length + b.raw.length, written: 4 * 4096 + 16384, writes: 4 });
      expect(Buffer.from(buffer).equals(body)).toBe(true); // the frames' buffer comes back to be filled again
      const out = await fsp.readFile(file);
      expect(out.subarray(0, 16384)).toEqual(a.raw);
      expect(out.subarray(16384, 32768)).toEqual(b.raw);
      expect(out.subarray(65536, 65536 + 16384)).toEqual(a.raw);

      // One bad frame in a task: DF_ERR_CHUNK_INVALID {id, got}, and nothing of the task is written.
      await fh.truncate(0);
      await fh.truncate(128 * 1024);
      const wrong = [{ ...recs[1]!, at: [32768] }, { ...recs[0]!, id: recs[1]!.id, at: [98304] }];
      const err = await rejection(pool.place(fh.fd, new Uint8Array(body).buffer, wrong, false, MAX));
      expect(err.code).toBe('DF_ERR_CHUNK_INVALID');
      expect(err.fields).toMatchObject({ id: recs[1]!.id, got: recs[0]!.id });
      expect((await fsp.readFile(file)).equals(Buffer.alloc(128 * 1024))).toBe(true);

      // A frame that declares another size than the index gives its chunk: refused before it is opened.
      const short = [{ ...recs[0]!, raw: a.raw.length - 4096 }];
      const sizeErr = await rejection(pool.place(fh.fd, new Uint8Array(body).buffer, short, true, MAX));
      expect(sizeErr.code).toBe('DF_ERR_CHUNK_INVALID');
      expect(sizeErr.fields).toMatchObject({ id: recs[0]!.id, size: a.raw.length });
      expect((await fsp.readFile(file)).equals(Buffer.alloc(128 * 1024))).toBe(true);
    } finally {
      await fh.close();
    }
  });
});
