/**
 * The store on a full or broken file system (issue 10 item 10): a real 8 MiB tmpfs that fills up, and
 * real errnos from the kernel (a symlink loop, a file where a folder should be). Needs root (mount).
 */
import { execFileSync } from 'node:child_process';
import { promises as fsp, statfsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rejection } from '../../test/helpers/expect.js';
import { prng } from '../../test/helpers/disk.js';
import { encodeFrame } from './frame.js';
import { FsChunkStore } from './fs-store.js';
import { hashBytes, idHex } from './id.js';

const KiB = 1024;
const MAX = 256 * KiB;
const rand = prng(10);

let dir: string;
let mnt: string;

beforeAll(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'deskfuse-store-io-'));
  mnt = path.join(dir, 'small');
  await fsp.mkdir(mnt);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mnt]);
});

afterAll(async () => {
  if (mnt) execFileSync('umount', [mnt]);
  await fsp.rm(dir, { recursive: true, force: true });
});

/** Random (incompressible) chunks, so their frames take their size on the disk. */
function chunks(n: number, size: number): Array<{ id: string; raw: Buffer; frame: Buffer }> {
  return Array.from({ length: n }, () => {
    const raw = Buffer.from(rand(size));
    return { id: idHex(hashBytes(raw)), raw, frame: encodeFrame(raw) };
  });
}

const free = (p: string) => { const s = statfsSync(p); return s.bavail * s.bsize; };

async function temps(store: FsChunkStore): Promise<string[]> {
  const out: string[] = [];
  for await (const t of store.temps()) out.push(t);
  return out;
}

describe('FsChunkStore on a full disk', () => {
  it('answers DF_ERR_NO_SPACE, leaves no temp file and frees what it took; a retry after freeing space stores everything', async () => {
    const store = await FsChunkStore.open(path.join(mnt, 'chunks'), MAX);
    const filler = path.join(mnt, 'filler');
    // Leave 600 KiB: a batch of 16 chunks of 128 KiB cannot fit.
    await fsp.writeFile(filler, Buffer.alloc(free(mnt) - 600 * KiB));
    const before = free(mnt);
    const batch = chunks(16, 128 * KiB);
    const err = await rejection(store.putMany(batch));
    expect(err.code).toBe('DF_ERR_NO_SPACE');
    expect(err.status).toBe(507);
    expect(err.message).toContain("the server's store is full");
    expect(err.fields.errno).toBe('ENOSPC');
    expect(await temps(store)).toEqual([]);
    // What is left on the disk is whole chunks only (readable, verified), nothing half-written.
    const kept: string[] = [];
    for await (const id of store.list()) kept.push(id);
    for (const id of kept) expect((await store.get(id)).raw.equals(batch.find((c) => c.id === id)!.raw)).toBe(true);
    expect(before - free(mnt)).toBeLessThanOrEqual(kept.length * (128 * KiB + 8 * KiB));

    await fsp.rm(filler);
    expect(await store.putMany(batch)).toEqual({ stored: 16 - kept.length, existing: kept.length });
    for (const c of batch) expect((await store.get(c.id)).raw.equals(c.raw)).toBe(true);
    expect(await temps(store)).toEqual([]);
  });

  it('put() of one chunk into a full store: DF_ERR_NO_SPACE and no temp file', async () => {
    const store = await FsChunkStore.open(path.join(mnt, 'one'), MAX);
    const filler = path.join(mnt, 'filler1');
    await fsp.writeFile(filler, Buffer.alloc(free(mnt) - 64 * KiB));
    const [c] = chunks(1, 200 * KiB);
    expect((await rejection(store.put(c!.id, { frame: c!.frame }))).code).toBe('DF_ERR_NO_SPACE');
    expect(await temps(store)).toEqual([]);
    expect(await store.has(c!.id)).toBe(false);
    await fsp.rm(filler);
    expect(await store.put(c!.id, { frame: c!.frame })).toBe(true);
  });
});

describe('FsChunkStore.has', () => {
  it('is false only for ENOENT: a lookup the kernel refuses (ELOOP, ENOTDIR) is a coded store error, not "absent"', async () => {
    const store = await FsChunkStore.open(path.join(dir, 'broken'), MAX);
    const a = 'a'.repeat(64);
    const b = 'b'.repeat(64);
    expect(await store.has(a)).toBe(false);
    // The chunk's name is a symlink to itself: ELOOP.
    await fsp.mkdir(path.dirname(store.pathOf(a)), { recursive: true });
    await fsp.symlink(path.basename(store.pathOf(a)), store.pathOf(a));
    const loop = await rejection(store.has(a));
    expect(loop.code).toBe('DF_ERR_STORE_IO');
    expect(loop.fields.errno).toBe('ELOOP');
    // A file where the fan-out folder should be: ENOTDIR.
    await fsp.writeFile(path.dirname(store.pathOf(b)), 'not a folder');
    const notDir = await rejection(store.has(b));
    expect(notDir.code).toBe('DF_ERR_STORE_IO');
    expect(notDir.fields.errno).toBe('ENOTDIR');
  });
});
