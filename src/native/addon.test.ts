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

  it('fingerprint is XXH3-128 (as xxhsum -H2 prints it), written at the offset asked, of any Uint8Array', () => {
    const n = loadNative();
    const out = Buffer.alloc(40, 0xaa);
    n.fingerprint(Buffer.from('abc'), out, 8);
    expect(out.subarray(8, 24).toString('hex')).toBe('06b05ab6733a618578af5f94892f3950'); // echo -n abc | xxhsum -H2
    expect(out.subarray(0, 8).equals(Buffer.alloc(8, 0xaa)) && out.subarray(24).equals(Buffer.alloc(16, 0xaa))).toBe(true);
    const big = Buffer.alloc(65536, 7);
    const a = Buffer.alloc(16);
    const b = new Uint8Array(16);
    n.fingerprint(big, a, 0);
    n.fingerprint(new Uint8Array(big.buffer, big.byteOffset, big.length), b, 0);
    expect(Buffer.from(b).equals(a)).toBe(true);
    big[40000] = 8; // one byte
    n.fingerprint(big, b, 0);
    expect(Buffer.from(b).equals(a)).toBe(false);
    expect(() => n.fingerprint(big, a, 1)).toThrow(/16 bytes/);
    expect(typeof n.mallocTune(128 * 1024, 2)).toBe('boolean');
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
