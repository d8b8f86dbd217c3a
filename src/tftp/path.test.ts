import { mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openInRoot, safeRelative } from './path.js';

describe('safeRelative', () => {
  it.each([
    ['pxelinux.0', 'pxelinux.0'],
    ['/pxelinux.0', 'pxelinux.0'],
    ['//boot/./x', 'boot/x'],
    ['pxelinux.cfg\\default', 'pxelinux.cfg/default'],
    ['/', ''],
  ])('%j → %j', (req, rel) => expect(safeRelative(req)).toBe(rel));

  it.each(['../etc/passwd', 'a/../../x', 'a/../b', '..\\..\\x', '/..', 'a\0b'])('%j is refused', (req) => {
    expect(safeRelative(req)).toBeUndefined();
  });
});

describe('openInRoot', () => {
  let dir: string;
  let root: string;
  beforeAll(() => {
    dir = realpathSync(mkdtempSync(path.join(tmpdir(), 'df-tftp-path-')));
    root = path.join(dir, 'root');
    mkdirSync(path.join(root, 'sub'), { recursive: true });
    writeFileSync(path.join(root, 'sub', 'f'), 'hello');
    writeFileSync(path.join(dir, 'outside'), 'secret');
    symlinkSync('../outside', path.join(root, 'out'));
    symlinkSync('sub/f', path.join(root, 'in'));
    symlinkSync(dir, path.join(root, 'updir'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('opens files inside the root, through symlinks that stay inside', async () => {
    for (const req of ['sub/f', '/sub/f', 'in']) {
      const r = await openInRoot(root, req);
      expect(r).toMatchObject({ ok: true, size: 5, path: path.join(root, 'sub', 'f') });
      if (r.ok) await r.fh.close();
    }
  });

  it.each([
    ['out', 2], ['updir/outside', 2], ['../outside', 2], ['nope', 1], ['sub', 1], ['/', 1],
  ])('%j → ERROR %i', async (req, code) => {
    expect(await openInRoot(root, req)).toMatchObject({ ok: false, code });
  });
});
