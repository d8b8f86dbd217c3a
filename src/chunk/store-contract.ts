import { describe, expect, it } from 'vitest';
import { DeskfuseError } from '../errors.js';
import { encodeFrame } from './frame.js';
import { hashBytes, idHex } from './id.js';
import type { PrunableStore } from './store.js';

/**
 * The store ladder's contract: the same tests for every PrunableStore (FsChunkStore in
 * store-contract-fs.test.ts, S3ChunkStore on a real Ceph RGW in test/integration/s3-store.test.ts),
 * so an engine answers exactly as the local store does. Test-only code (imports vitest).
 */
export interface ContractSubject {
  store: PrunableStore;
  /** Replace a chunk's stored bytes behind the store's back (disk rot, a bad copy). */
  overwrite(id: string, bytes: Buffer): Promise<void>;
  /** A second, independent handle on the same storage (another server). */
  another(): Promise<PrunableStore>;
}

export const CONTRACT_MAX = 64 * 1024;

export function chunkOf(text: string): { id: string; raw: Buffer; frame: Buffer } {
  const raw = Buffer.from(text.repeat(100));
  return { id: idHex(hashBytes(raw)), raw, frame: encodeFrame(raw) };
}

export async function listed(store: PrunableStore): Promise<string[]> {
  const out: string[] = [];
  for await (const id of store.list()) out.push(id);
  return out;
}

async function rejection(p: Promise<unknown>): Promise<DeskfuseError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(DeskfuseError);
  return err as DeskfuseError;
}

/** `subject` makes a fresh, empty store for each test (called in the test, so it can be async and shared). */
export function storeContract(name: string, subject: () => Promise<ContractSubject>): void {
  describe(`store contract: ${name}`, () => {
    it('put then has and get return the verified chunk, frame as stored', async () => {
      const { store } = await subject();
      const c = chunkOf('alpha');
      expect(await store.has(c.id)).toBe(false);
      expect(await store.put(c.id, { frame: c.frame })).toBe(true);
      expect(await store.has(c.id)).toBe(true);
      const got = await store.get(c.id);
      expect(got.raw).toEqual(c.raw);
      expect(got.frame).toEqual(c.frame);
    });

    it('put of raw bytes compresses them; a second put reports the chunk was there', async () => {
      const { store } = await subject();
      const c = chunkOf('raw put');
      expect(await store.put(c.id, { raw: c.raw })).toBe(true);
      expect(await store.put(c.id, { frame: c.frame })).toBe(false);
      const got = await store.get(c.id);
      expect(got.raw).toEqual(c.raw);
      expect(got.frame).toEqual(c.frame); // the same zstd level: the bytes served are the bytes uploaded
    });

    it('putMany counts duplicates within the batch and chunks already stored as existing', async () => {
      const { store } = await subject();
      const [a, b, c] = [chunkOf('a'), chunkOf('b'), chunkOf('c')];
      await store.put(a.id, { frame: a.frame });
      const r = await store.putMany([a, b, b, c, c, c].map(({ id, frame }) => ({ id, frame })));
      expect(r).toEqual({ stored: 2, existing: 4 });
      expect(await listed(store)).toEqual([a.id, b.id, c.id].sort());
      expect(await store.putMany([])).toEqual({ stored: 0, existing: 0 });
    });

    it('putMany with an invalid id is DF_ERR_BAD_REQUEST', async () => {
      const { store } = await subject();
      const c = chunkOf('bad batch');
      const err = await rejection(store.putMany([{ id: 'ZZ../etc', frame: c.frame }]));
      expect(err.code).toBe('DF_ERR_BAD_REQUEST');
      expect(await listed(store)).toEqual([]);
    });

    it('an absent chunk: has is false, get is DF_ERR_CHUNK_NOT_FOUND; an invalid id is never "there"', async () => {
      const { store } = await subject();
      const id = chunkOf('absent').id;
      expect(await store.has(id)).toBe(false);
      const err = await rejection(store.get(id));
      expect(err.code).toBe('DF_ERR_CHUNK_NOT_FOUND');
      expect(err.fields).toEqual({ id });
      expect(await store.has('not-an-id')).toBe(false);
      expect((await rejection(store.get('../../etc/passwd'))).code).toBe('DF_ERR_BAD_REQUEST');
    });

    it('list yields every chunk once, in id order; size counts them and their frame bytes', async () => {
      const { store } = await subject();
      expect(await listed(store)).toEqual([]);
      expect(await store.size()).toEqual({ chunks: 0, bytes: 0 });
      const cs = Array.from({ length: 7 }, (_, i) => chunkOf(`listed ${i}`));
      await store.putMany(cs.map(({ id, frame }) => ({ id, frame })));
      expect(await listed(store)).toEqual(cs.map((c) => c.id).sort());
      expect(await store.size()).toEqual({ chunks: 7, bytes: cs.reduce((n, c) => n + c.frame.length, 0) });
    });

    it('remove deletes a chunk (get is then NOT_FOUND); removing an absent chunk changes nothing', async () => {
      const { store } = await subject();
      const [a, b] = [chunkOf('keep'), chunkOf('drop')];
      await store.putMany([a, b].map(({ id, frame }) => ({ id, frame })));
      await store.remove(b.id);
      expect(await store.has(b.id)).toBe(false);
      expect((await rejection(store.get(b.id))).code).toBe('DF_ERR_CHUNK_NOT_FOUND');
      expect(await listed(store)).toEqual([a.id]);
      await store.remove(b.id);
      await store.remove(chunkOf('never stored').id);
      expect(await listed(store)).toEqual([a.id]);
      expect((await store.get(a.id)).raw).toEqual(a.raw);
      // removed, then stored again
      expect(await store.put(b.id, { frame: b.frame })).toBe(true);
      expect((await store.get(b.id)).raw).toEqual(b.raw);
    });

    it('stored bytes that hash to another id are DF_ERR_CHUNK_CORRUPT caused by DF_ERR_CHUNK_INVALID', async () => {
      const { store, overwrite } = await subject();
      const [c, other] = [chunkOf('victim'), chunkOf('impostor')];
      await store.put(c.id, { frame: c.frame });
      await overwrite(c.id, other.frame);
      const err = await rejection(store.get(c.id));
      expect(err.code).toBe('DF_ERR_CHUNK_CORRUPT');
      expect(err.fields.id).toBe(c.id);
      expect(err.fields.got).toBe(other.id);
      expect((err.cause as DeskfuseError).code).toBe('DF_ERR_CHUNK_INVALID');
      expect(await store.has(c.id)).toBe(true); // still there: a scrub decides, not a read
    });

    it('stored bytes that are no zstd frame are DF_ERR_CHUNK_CORRUPT', async () => {
      const { store, overwrite } = await subject();
      const c = chunkOf('garbled');
      await store.put(c.id, { frame: c.frame });
      const garbled = Buffer.from(c.frame);
      garbled.fill(0xa5, 0, 8);
      await overwrite(c.id, garbled);
      const err = await rejection(store.get(c.id));
      expect(err.code).toBe('DF_ERR_CHUNK_CORRUPT');
      expect((err.cause as DeskfuseError).code).toBe('DF_ERR_CHUNK_INVALID');
    });

    it('the same chunk put at once through two handles: both succeed, one object, intact', async () => {
      const { store, another } = await subject();
      const second = await another();
      const c = chunkOf('raced');
      const [p1, p2, m1, m2] = await Promise.all([
        store.put(c.id, { frame: c.frame }),
        second.put(c.id, { frame: c.frame }),
        store.putMany([{ id: c.id, frame: c.frame }]),
        second.putMany([{ id: c.id, frame: c.frame }]),
      ]);
      // each call answers for its one chunk: stored or already there (how many "stored" is the engine's: see the S3 suite)
      expect(typeof p1 === 'boolean' && typeof p2 === 'boolean').toBe(true);
      for (const m of [m1, m2]) expect(m.stored + m.existing).toBe(1);
      expect([p1, p2, m1.stored === 1, m2.stored === 1].some(Boolean)).toBe(true);
      expect(await listed(store)).toEqual([c.id]);
      expect(await listed(second)).toEqual([c.id]);
      expect((await second.get(c.id)).raw).toEqual(c.raw);
      expect(await store.size()).toEqual({ chunks: 1, bytes: c.frame.length });
    });
  });
}
