import { existsSync, promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { rejection } from '../../test/helpers/expect.js';
import { scrubLocalStore } from './background-scrub.js';
import { encodeFrame } from './frame.js';
import { FsChunkStore } from './fs-store.js';
import { hashBytes, idHex } from './id.js';

const MAX = 64 * 1024;
const chunkOf = (text: string) => {
  const raw = Buffer.from(text.repeat(300));
  return { id: idHex(hashBytes(raw)), raw, frame: encodeFrame(raw) };
};

let dir: string;
let store: FsChunkStore;
beforeEach(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'deskfuse-scrub-'));
  store = await FsChunkStore.open(path.join(dir, 'chunks'), MAX);
});
afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

describe('scrubLocalStore (the background pass over a store served as stored)', () => {
  it('moves every corrupt chunk to quarantine (other bytes, or no frame at all) and keeps the good ones', async () => {
    const good = ['a', 'b', 'c'].map(chunkOf);
    const swapped = chunkOf('d');
    const garbage = chunkOf('e');
    for (const c of [...good, swapped, garbage]) await store.put(c.id, { frame: c.frame });
    await fsp.writeFile(store.pathOf(swapped.id), encodeFrame(Buffer.from('other bytes'))); // decodes, hashes wrong
    await fsp.writeFile(store.pathOf(garbage.id), 'not a frame');
    const q = path.join(dir, 'quarantine');
    const seen: string[] = [];
    const pass = await scrubLocalStore(store, { bytesPerSecond: 1 << 30, quarantine: q, onCorrupt: (id) => seen.push(id) });
    expect(pass.chunks).toBe(3);
    expect(pass.bytes).toBe(good.reduce((n, c) => n + c.frame.length, 0));
    expect(pass.quarantined.sort()).toEqual([swapped.id, garbage.id].sort());
    expect(seen.sort()).toEqual(pass.quarantined);
    expect(pass.stopped).toBe(false);
    for (const c of [swapped, garbage]) {
      expect(existsSync(path.join(q, `${c.id}.zst`))).toBe(true);
      expect(await store.has(c.id)).toBe(false);
      expect((await rejection(store.readPack([c.id], 1 << 20))).code).toBe('DF_ERR_CHUNK_NOT_FOUND');
    }
    for (const c of good) expect((await store.get(c.id)).raw.equals(c.raw)).toBe(true);
    // a second pass finds nothing more
    expect(await scrubLocalStore(store, { bytesPerSecond: 1 << 30, quarantine: q })).toMatchObject({ chunks: 3, quarantined: [] });
  });

  it('stops at once when its signal fires (the server closing), however slow its rate', async () => {
    for (const c of ['a', 'b', 'c', 'd'].map(chunkOf)) await store.put(c.id, { frame: c.frame });
    const stop = new AbortController();
    const pass = scrubLocalStore(store, { bytesPerSecond: 1, quarantine: path.join(dir, 'q'), signal: stop.signal }); // one chunk = hours of budget
    setTimeout(() => stop.abort(), 50);
    const r = await pass;
    expect(r.stopped).toBe(true);
    expect(r.chunks).toBe(1);
  });

  it('waits while endpoints are being served (busy), then goes on; a signal stops it while it waits', async () => {
    for (const c of ['a', 'b', 'c'].map(chunkOf)) await store.put(c.id, { frame: c.frame });
    let busy = true;
    let asked = 0;
    const p = scrubLocalStore(store, { bytesPerSecond: 1 << 30, quarantine: path.join(dir, 'q'), busy: () => (asked++, busy) });
    await new Promise((r) => setTimeout(r, 1500));
    expect(asked).toBeGreaterThanOrEqual(2); // it looked again while busy, and read nothing
    busy = false;
    expect(await p).toMatchObject({ chunks: 3, stopped: false });
    const stop = new AbortController();
    const waiting = scrubLocalStore(store, { bytesPerSecond: 1 << 30, quarantine: path.join(dir, 'q'), signal: stop.signal, busy: () => true });
    setTimeout(() => stop.abort(), 50);
    expect(await waiting).toMatchObject({ chunks: 0, stopped: true });
  });
});
