import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { ApiClient } from '../api/client.js';
import { encodeFrame } from '../chunk/frame.js';
import { decodeIdList, hashBytes, ID_LIST_TYPE, idHex } from '../chunk/id.js';
import { encodePack } from '../chunk/pack.js';
import { ChunkFetcher } from './fetcher.js';

const CHUNK = 8 * 1024; // 2,048 chunks a pack (16 MiB): position 5000 is two packs past the first

/** A server that answers /chunks/fetch from a map and counts what it was asked for. */
function fakeServer(chunks: Map<string, Buffer>) {
  const asked: string[][] = [];
  const client = {
    async binary(_m: string, _p: string, o: { raw: { data: Buffer; type: string } }) {
      expect(o.raw.type).toBe(ID_LIST_TYPE); // the raw id list (src/chunk/id.ts)
      const ids = decodeIdList(o.raw.data);
      asked.push(ids);
      const body = encodePack(ids.map((id) => ({ id, rawLength: chunks.get(id)!.length, frame: encodeFrame(chunks.get(id)!) })));
      return { status: 200, body, bytesSent: 0 };
    },
  } as unknown as ApiClient;
  return { client, asked };
}

/** 6,000 positions (three packs of 2,048) of distinct chunks, but one chunk X at positions 0, 1, 5000 and the last. */
function plan() {
  const chunks = new Map<string, Buffer>();
  const add = (b: Buffer) => (chunks.set(idHex(hashBytes(b)), b), idHex(hashBytes(b)));
  const x = add(Buffer.alloc(CHUNK, 0xff));
  const ids: string[] = [];
  for (let i = 0; i < 6000; i++) ids.push(i === 0 || i === 1 || i === 5000 || i === 5999 ? x : add(randomBytes(CHUNK)));
  return { chunks, ids, x };
}

describe('ChunkFetcher', () => {
  it('serves a chunk that repeats near and far, fetching it once', async () => {
    const { chunks, ids, x } = plan();
    const s = fakeServer(chunks);
    const f = new ChunkFetcher(s.client, ids, CHUNK);
    for (const id of ids) expect((await f.get(id)).equals(chunks.get(id)!)).toBe(true);
    expect(s.asked.flat().filter((id) => id === x)).toHaveLength(1);
    expect(s.asked.flat()).toHaveLength(chunks.size);
  });

  it('fetches a repeat again when it did not fit the repeat budget', async () => {
    const { chunks, ids, x } = plan();
    const s = fakeServer(chunks);
    const f = new ChunkFetcher(s.client, ids, CHUNK, 2, 0);
    for (const id of ids) expect((await f.get(id)).equals(chunks.get(id)!)).toBe(true);
    // position 1 is still in its pack; 5000 and the last come after that pack was let go
    expect(s.asked.filter((b) => b.length === 1 && b[0] === x)).toHaveLength(2);
  });
});
