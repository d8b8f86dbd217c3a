import { mkdtempSync, readSync, renameSync, rmSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { HeldFiles } from './held-files.js';

const read = (fd: number, size: number) => {
  const b = Buffer.alloc(size);
  readSync(fd, b, 0, size, 0);
  return b.toString();
};

describe('HeldFiles', () => {
  const dirs: string[] = [];
  const held: HeldFiles[] = [];
  const setup = () => {
    const d = mkdtempSync(path.join(tmpdir(), 'held-'));
    dirs.push(d);
    const h = new HeldFiles(50);
    held.push(h);
    return { d, h, p: path.join(d, 'f') };
  };
  afterEach(() => {
    for (const h of held.splice(0)) h.close();
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it('holds one descriptor across uses', async () => {
    const { h, p } = setup();
    writeFileSync(p, 'one');
    const a = await h.acquire(p);
    a!.release();
    const b = await h.acquire(p);
    expect(b!.fd).toBe(a!.fd);
    expect(read(b!.fd, b!.size)).toBe('one');
    b!.release();
  });

  it('lets go of a file rewritten in place, renamed over or deleted: the next use reads what the path holds now', async () => {
    const { h, p, d } = setup();
    writeFileSync(p, 'one');
    const a = (await h.acquire(p))!;
    a.release();
    writeFileSync(p, 'second'); // in place: size and mtime change
    const b = (await h.acquire(p))!;
    expect(read(b.fd, b.size)).toBe('second');
    b.release();
    writeFileSync(path.join(d, 'new'), 'third!');
    renameSync(path.join(d, 'new'), p); // a rebuild renamed in: the held inode has no link left
    const c = (await h.acquire(p))!;
    expect(read(c.fd, c.size)).toBe('third!');
    c.release();
    unlinkSync(p);
    expect(await h.acquire(p)).toBeUndefined();
  });

  it('a rewrite in place with the same size and an old mtime is seen too', async () => {
    const { h, p } = setup();
    writeFileSync(p, 'aaaa');
    utimesSync(p, 1000, 1000);
    (await h.acquire(p))!.release();
    writeFileSync(p, 'bbbb');
    const b = (await h.acquire(p))!;
    expect(read(b.fd, b.size)).toBe('bbbb');
    b.release();
  });

  it('keeps a descriptor in use open until released, and closes idle ones', async () => {
    const { h, p, d } = setup();
    writeFileSync(p, 'one');
    const a = (await h.acquire(p))!;
    writeFileSync(path.join(d, 'new'), 'two');
    renameSync(path.join(d, 'new'), p);
    const b = (await h.acquire(p))!;
    expect(read(a.fd, a.size)).toBe('one'); // still open for its user
    expect(read(b.fd, b.size)).toBe('two');
    a.release();
    b.release();
    expect(h.size).toBe(1);
    await new Promise((r) => setTimeout(r, 200));
    expect(h.size).toBe(0);
  });
});
