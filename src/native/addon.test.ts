import { closeSync, openSync, writeSync, ftruncateSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { thrown } from '../../test/helpers/expect.js';
import { tempDir } from '../../test/helpers/server.js';
import { loadNative } from './addon.js';

describe('native addon', () => {
  const tmp = tempDir('df-native-');
  afterAll(() => tmp.cleanup());

  it('finds data and holes in a sparse file (-1 past the last data)', () => {
    const n = loadNative();
    const f = path.join(tmp.dir, 'sparse');
    const fd = openSync(f, 'w+');
    try {
      ftruncateSync(fd, 8 << 20);
      writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 4 << 20);
      expect(n.seekData(fd, 0)).toBe(4 << 20);
      expect(n.seekHole(fd, 4 << 20)).toBe((4 << 20) + 4096);
      expect(n.seekData(fd, (4 << 20) + 4096)).toBe(-1);
    } finally {
      closeSync(fd);
    }
  });

  it('reports errno and syscall', () => {
    let err: (Error & { code?: string; syscall?: string }) | undefined;
    try {
      loadNative().udpSocket('no-such-if0', 0, { broadcast: true, reuseAddr: true });
    } catch (e) {
      err = e as typeof err;
    }
    expect(err).toMatchObject({ code: 'ENODEV', syscall: 'setsockopt' });
  });

  it('a missing addon is DF_ERR_NATIVE_MISSING saying how to build it', () => {
    const err = thrown(() => loadNative(path.join(tmp.dir, 'none.node')));
    expect(err.code).toBe('DF_ERR_NATIVE_MISSING');
    expect(err.message).toContain('npm run build');
  });
});
