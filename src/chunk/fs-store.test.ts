import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DeskfuseError } from '../errors.js';
import { encodeFrame, openFrame } from './frame.js';
import { decodePack, encodePack } from './pack.js';
import { FsChunkStore } from './fs-store.js';
import type { PackPlan } from './store.js';
import { hashBytes, idHex } from './id.js';
import { ChunkWorkers } from './workers.js';
import { rejection } from '../../test/helpers/expect.js';

const MAX = 64 * 1024;

function chunkOf(text: string): { id: string; raw: Buffer; frame: Buffer } {
  const raw = Buffer.from(text.repeat(100));
  return { id: idHex(hashBytes(raw)), raw, frame: encodeFrame(raw) };
}

async function listed(store: FsChunkStore): Promise<string[]> {
  const out: string[] = [];
  for await (const id of store.list()) out.push(id);
  return out;
}

let dir: string;
let store: FsChunkStore;

beforeEach(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'deskfuse-fs-store-'));
  store = await FsChunkStore.open(path.join(dir, 'chunks'), MAX);
});

afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

describe('FsChunkStore', () => {
  it('put then has and get return the verified chunk', async () => {
    const c = chunkOf('alpha');
    expect(await store.has(c.id)).toBe(false);
    expect(await store.put(c.id, { frame: c.frame })).toBe(true);
    expect(await store.has(c.id)).toBe(true);
    const got = await store.get(c.id);
    expect(got.raw).toEqual(c.raw);
    expect(got.frame).toEqual(c.frame);
  });

  it('stores the frame at <root>/<id[0..3]>/<id>.zst', async () => {
    const c = chunkOf('layout');
    await store.put(c.id, { frame: c.frame });
    const file = path.join(dir, 'chunks', c.id.slice(0, 3), `${c.id}.zst`);
    expect(store.pathOf(c.id)).toBe(file);
    expect(await fsp.readFile(file)).toEqual(c.frame);
  });

  it('put of raw bytes compresses them', async () => {
    const c = chunkOf('raw put');
    expect(await store.put(c.id, { raw: c.raw })).toBe(true);
    expect((await store.get(c.id)).raw).toEqual(c.raw);
  });

  it('a second put of the same chunk reports it was already there', async () => {
    const c = chunkOf('twice');
    expect(await store.put(c.id, { frame: c.frame })).toBe(true);
    expect(await store.put(c.id, { frame: c.frame })).toBe(false);
  });

  it('putMany counts duplicates within the batch and chunks already stored as existing', async () => {
    const [a, b, c] = [chunkOf('a'), chunkOf('b'), chunkOf('c')];
    await store.put(a.id, { frame: a.frame });
    const r = await store.putMany([a, b, b, c, c, c].map(({ id, frame }) => ({ id, frame })));
    expect(r).toEqual({ stored: 2, existing: 4 });
    expect((await listed(store)).sort()).toEqual([a.id, b.id, c.id].sort());
    expect(await store.putMany([])).toEqual({ stored: 0, existing: 0 });
  });

  it('get of an absent chunk is DF_ERR_CHUNK_NOT_FOUND', async () => {
    const id = chunkOf('absent').id;
    const err = await rejection(store.get(id));
    expect(err.code).toBe('DF_ERR_CHUNK_NOT_FOUND');
    expect(err.fields).toEqual({ id });
  });

  it('a file holding another chunk is DF_ERR_CHUNK_CORRUPT and no bytes are returned', async () => {
    const [c, other] = [chunkOf('good'), chunkOf('other')];
    await store.put(c.id, { frame: c.frame });
    await fsp.writeFile(store.pathOf(c.id), other.frame);
    const err = await rejection(store.get(c.id));
    expect(err.code).toBe('DF_ERR_CHUNK_CORRUPT');
    expect(err.fields).toEqual({ id: c.id, got: other.id, path: store.pathOf(c.id) });
    expect(err.cause).toBeInstanceOf(DeskfuseError);
    expect((err.cause as DeskfuseError).code).toBe('DF_ERR_CHUNK_INVALID');
  });

  it.each([
    ['a flipped byte', (f: Buffer) => { const b = Buffer.from(f); b[b.length - 2] = b[b.length - 2]! ^ 0xff; return b; }],
    ['a truncated frame', (f: Buffer) => f.subarray(0, f.length >> 1)],
    ['garbage', () => Buffer.from('not zstd')],
    ['an empty file', () => Buffer.alloc(0)],
  ])('%s on disk is DF_ERR_CHUNK_CORRUPT', async (_name, corrupt) => {
    const c = chunkOf('to be damaged');
    await store.put(c.id, { frame: c.frame });
    await fsp.writeFile(store.pathOf(c.id), corrupt(c.frame));
    const err = await rejection(store.get(c.id));
    expect(err.code).toBe('DF_ERR_CHUNK_CORRUPT');
    expect(err.fields.id).toBe(c.id);
  });

  it('a chunk above the size limit is DF_ERR_CHUNK_CORRUPT', async () => {
    const raw = Buffer.alloc(MAX + 1, 3);
    const id = idHex(hashBytes(raw));
    await store.put(id, { raw });
    expect((await rejection(store.get(id))).code).toBe('DF_ERR_CHUNK_CORRUPT');
  });

  it('list() yields stored ids in order and ignores temp and foreign files', async () => {
    const ids = ['one', 'two', 'three', 'four', 'five'].map(chunkOf);
    await store.putMany(ids.map(({ id, frame }) => ({ id, frame })));
    const fan = path.dirname(store.pathOf(ids[0]!.id));
    await fsp.writeFile(path.join(fan, `.tmp-${ids[0]!.id.slice(0, 16)}-abcdef012345`), 'partial');
    await fsp.writeFile(path.join(fan, 'notes.txt'), 'x');
    await fsp.writeFile(path.join(fan, `${'A'.repeat(64)}.zst`), 'x');
    await fsp.mkdir(path.join(dir, 'chunks', 'lost+found'));
    expect(await listed(store)).toEqual(ids.map((c) => c.id).sort());
    const temps: string[] = [];
    for await (const t of store.temps()) temps.push(t);
    expect(temps).toEqual([path.join(fan, `.tmp-${ids[0]!.id.slice(0, 16)}-abcdef012345`)]);
  });

  it('a completed put leaves no temp files', async () => {
    await store.putMany(['p', 'q', 'r'].map(chunkOf).map(({ id, frame }) => ({ id, frame })));
    const temps: string[] = [];
    for await (const t of store.temps()) temps.push(t);
    expect(temps).toEqual([]);
  });

  it('remove and size', async () => {
    const [a, b] = [chunkOf('size a'), chunkOf('size b')];
    await store.putMany([a, b].map(({ id, frame }) => ({ id, frame })));
    expect(await store.size()).toEqual({ chunks: 2, bytes: a.frame.length + b.frame.length });
    await store.remove(a.id);
    expect(await store.has(a.id)).toBe(false);
    expect(await listed(store)).toEqual([b.id]);
    await store.remove(a.id); // removing an absent chunk is not an error
  });

  it('refuses ids that are not 64 lowercase hex characters', async () => {
    expect(() => store.pathOf('../../etc/passwd')).toThrow(DeskfuseError);
    expect((await rejection(store.get('A'.repeat(64)))).code).toBe('DF_ERR_BAD_REQUEST');
    expect(await store.has('nope')).toBe(false);
  });
});

describe('FsChunkStore.readPack (a batch fetch served as stored)', () => {
  it("is byte for byte pack.ts's encoding of the stored frames, in the order asked", async () => {
    const cs = ['one', 'two', 'three', 'four'].map(chunkOf);
    for (const c of cs) await store.put(c.id, { frame: c.frame });
    const order = [cs[2]!, cs[0]!, cs[3]!];
    const body = await store.readPack(order.map((c) => c.id), 1 << 20);
    expect(body.equals(encodePack(order.map((c) => ({ id: c.id, rawLength: c.raw.length, frame: c.frame }))))).toBe(true);
    expect(decodePack(body, MAX).map((r) => r.id)).toEqual(order.map((c) => c.id));
    expect((await store.readPack([], 1 << 20)).equals(encodePack([]))).toBe(true);
  });

  it('identical requests in flight share one read; other ids, or the same later, read again', async () => {
    const workers = new ChunkWorkers(1);
    const s = await FsChunkStore.open(path.join(dir, 'shared'), MAX, workers);
    try {
      const cs = ['p', 'q', 'r'].map(chunkOf);
      for (const c of cs) await s.put(c.id, { frame: c.frame });
      const ids = cs.map((c) => c.id);
      const same = await Promise.all(Array.from({ length: 20 }, () => s.readPack(ids, 1 << 20)));
      expect(workers.done.pack).toBe(1);
      for (const b of same) expect(b).toBe(same[0]);
      await Promise.all([s.readPack(ids, 1 << 20), s.readPack(ids.slice(1), 1 << 20)]);
      expect(workers.done.pack).toBe(3);
      // a shared failure reaches every waiter
      const missing = chunkOf('absent').id;
      const errs = await Promise.all([s.readPack([missing], 1 << 20), s.readPack([missing], 1 << 20)].map((p) => rejection(p)));
      expect(errs.map((e) => e.code)).toEqual(['DF_ERR_CHUNK_NOT_FOUND', 'DF_ERR_CHUNK_NOT_FOUND']);
    } finally {
      await workers.close();
    }
  });

  it('an absent chunk is DF_ERR_CHUNK_NOT_FOUND naming it; frames past the limit DF_ERR_TOO_LARGE', async () => {
    const a = chunkOf('a');
    const b = chunkOf('b');
    await store.put(a.id, { frame: a.frame });
    expect(await rejection(store.readPack([a.id, b.id], 1 << 20))).toMatchObject({ code: 'DF_ERR_CHUNK_NOT_FOUND', fields: { id: b.id } });
    await store.put(b.id, { frame: b.frame });
    expect((await rejection(store.readPack([a.id, b.id], a.frame.length + b.frame.length - 1))).code).toBe('DF_ERR_TOO_LARGE');
    expect(decodePack(await store.readPack([a.id, b.id], a.frame.length + b.frame.length), MAX)).toHaveLength(2);
  });

  it('a stored file that is no zstd frame is DF_ERR_CHUNK_CORRUPT; a frame with other bytes is served for the receiver to refuse', async () => {
    const a = chunkOf('a');
    const b = chunkOf('b');
    await store.put(a.id, { frame: a.frame });
    await store.put(b.id, { frame: b.frame });
    await fsp.writeFile(store.pathOf(a.id), Buffer.from('not a frame'));
    expect(await rejection(store.readPack([b.id, a.id], 1 << 20))).toMatchObject({ code: 'DF_ERR_CHUNK_CORRUPT', fields: { id: a.id } });
    const other = encodeFrame(Buffer.from('other bytes'));
    await fsp.writeFile(store.pathOf(a.id), other);
    const [rec] = decodePack(await store.readPack([a.id], 1 << 20), MAX);
    expect(rec!.frame.equals(other)).toBe(true);
    expect(() => openFrame(a.id, rec!.frame, MAX)).toThrow(/hash to/); // what the agent does with every record
  });
});

/** What the sender thread sends for a plan (native sendPack): each record head, then its id's file, which must have the size the head says. */
async function materialize(s: FsChunkStore, plan: PackPlan): Promise<Buffer> {
  expect(plan.root).toBe(s.root);
  const out: Buffer[] = [plan.meta.subarray(0, 8)];
  const n = (plan.meta.length - 44) / 40;
  for (let k = 0; k < n; k++) {
    const head = plan.meta.subarray(8 + 40 * k, 48 + 40 * k);
    const file = await fsp.readFile(path.join(plan.root, head.toString('hex', 0, 32).slice(0, 3), `${head.toString('hex', 0, 32)}.zst`));
    expect(file.length).toBe(head.readUInt32BE(36));
    out.push(head, file);
  }
  out.push(plan.meta.subarray(8 + 40 * n));
  const body = Buffer.concat(out);
  expect(body.length).toBe(plan.size);
  return body;
}

describe('FsChunkStore.packPlan (a batch fetch sent from the stored files)', () => {
  it("is byte for byte pack.ts's encoding of the stored frames, frames as file parts; each file's head is read once", async () => {
    const workers = new ChunkWorkers(1);
    const s = await FsChunkStore.open(path.join(dir, 'plan'), MAX, workers);
    try {
      const cs = ['one', 'two', 'three', 'four'].map(chunkOf);
      for (const c of cs) await s.put(c.id, { frame: c.frame });
      const order = [cs[2]!, cs[0]!, cs[3]!];
      const plan = await s.packPlan(order.map((c) => c.id), 1 << 20);
      expect((await materialize(s, plan)).equals(encodePack(order.map((c) => ({ id: c.id, rawLength: c.raw.length, frame: c.frame }))))).toBe(true);
      expect((await materialize(s, await s.packPlan([], 1 << 20))).equals(encodePack([]))).toBe(true);
      expect(workers.done.heads).toBe(1);
      // known heads are not read again; concurrent plans needing the same unknown ones share one read
      await Promise.all(Array.from({ length: 10 }, () => s.packPlan([cs[1]!.id, cs[2]!.id], 1 << 20)));
      expect(workers.done.heads).toBe(2);
      await s.packPlan(cs.map((c) => c.id), 1 << 20);
      expect(workers.done.heads).toBe(2);
      s.forget([cs[0]!.id]);
      await s.packPlan(cs.map((c) => c.id), 1 << 20);
      expect(workers.done.heads).toBe(3);
    } finally {
      await workers.close();
    }
  });

  it('absent → DF_ERR_CHUNK_NOT_FOUND naming it; past the limit → DF_ERR_TOO_LARGE; no frame header → DF_ERR_CHUNK_CORRUPT', async () => {
    const s = await FsChunkStore.open(path.join(dir, 'plan-errors'), MAX);
    const a = chunkOf('a');
    const b = chunkOf('b');
    await s.put(a.id, { frame: a.frame });
    expect(await rejection(s.packPlan([a.id, b.id], 1 << 20))).toMatchObject({ code: 'DF_ERR_CHUNK_NOT_FOUND', fields: { id: b.id } });
    await s.put(b.id, { frame: b.frame });
    expect((await rejection(s.packPlan([a.id, b.id], a.frame.length + b.frame.length - 1))).code).toBe('DF_ERR_TOO_LARGE');
    expect(decodePack(await materialize(s, await s.packPlan([a.id, b.id], a.frame.length + b.frame.length)), MAX)).toHaveLength(2);
    const c = chunkOf('c');
    await s.put(c.id, { frame: c.frame });
    await fsp.writeFile(s.pathOf(c.id), Buffer.from('not a frame'));
    expect(await rejection(s.packPlan([a.id, c.id], 1 << 20))).toMatchObject({ code: 'DF_ERR_CHUNK_CORRUPT', fields: { id: c.id } });
  });
});
