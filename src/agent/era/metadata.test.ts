import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rejection } from '../../../test/helpers/expect.js';
import { bmChecksum, ERA_BLOCK, readSuperblock, readWritten, type BlockReader } from './metadata.js';

// Real dm-era metadata made by era_restore (Debian's thin-provisioning-tools) from XML, checked
// against era_dump --logical (the same tools' reading of it).
let dir: string;
beforeAll(() => {
  if (spawnSync('era_restore', ['--version']).error) throw new Error('era_restore missing: bash scripts/setup-deps.sh (apt-get install thin-provisioning-tools)');
  dir = mkdtempSync(path.join(os.tmpdir(), 'df-era-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Spec { nrBlocks: number; blockSize: number; currentEra: number; writesets: Array<{ era: number; bits: number[] }>; eras: Array<[number, number]> }

function restore(name: string, s: Spec, mib = 8): Buffer {
  const xml = [`<superblock uuid="" block_size="${s.blockSize}" nr_blocks="${s.nrBlocks}" current_era="${s.currentEra}">`];
  for (const w of s.writesets) xml.push(`<writeset era="${w.era}" nr_bits="${s.nrBlocks}">`, ...w.bits.map((b) => `<bit block="${b}" value="true"/>`), '</writeset>');
  xml.push('<era_array>', ...s.eras.map(([b, e]) => `<era block="${b}" era="${e}"/>`), '</era_array>', '</superblock>');
  const x = path.join(dir, `${name}.xml`);
  const out = path.join(dir, `${name}.bin`);
  writeFileSync(x, xml.join('\n'));
  writeFileSync(out, Buffer.alloc(0));
  execFileSync('truncate', ['-s', `${mib}M`, out]);
  execFileSync('era_restore', ['-i', x, '-o', out]);
  return readFileSync(out);
}

/** era_dump --logical: each block's last era (its writesets merged into the array). */
function logicalEras(meta: Buffer, name: string): Map<number, number> {
  const f = path.join(dir, `${name}.dump.bin`);
  writeFileSync(f, meta);
  const xml = execFileSync('era_dump', ['--logical', f], { encoding: 'utf8', maxBuffer: 1 << 28 });
  const m = new Map<number, number>();
  for (const r of xml.matchAll(/<era block="(\d+)" era="(\d+)"\/>/g)) m.set(Number(r[1]), Number(r[2]));
  return m;
}

const reader = (meta: Buffer): BlockReader => async (n) => Buffer.from(meta.subarray(n * ERA_BLOCK, (n + 1) * ERA_BLOCK));
const written = (w: Uint8Array) => [...w.keys()].filter((b) => w[b]);

describe('dm-era metadata reader', () => {
  it('reads the superblock era_restore wrote, its checksum computed as the kernel does', async () => {
    const meta = restore('sb', { nrBlocks: 64, blockSize: 128, currentEra: 5, writesets: [{ era: 3, bits: [2, 7] }], eras: [[0, 0]] });
    expect(bmChecksum(meta.subarray(4, ERA_BLOCK), 146538381)).toBe(meta.readUInt32LE(0));
    const sb = await readSuperblock(reader(meta));
    expect(sb).toMatchObject({ dataBlockSectors: 128, nrBlocks: 64, currentEra: 5 });
  });

  it('finds exactly the blocks era_dump --logical says were written since an era, in a metadata of 300,000 blocks (its era array needs a two-level btree)', async () => {
    const n = 300_000;
    const spec: Spec = {
      nrBlocks: n, blockSize: 128, currentEra: 9,
      writesets: [{ era: 7, bits: [0, 63, 64, 65, 211_999, n - 1] }, { era: 8, bits: [1, 100_000, 250_001] }],
      eras: [[5, 3], [6, 4], [200_000, 6], [299_998, 2], [42, 7]],
    };
    const meta = restore('big', spec, 16);
    const logical = logicalEras(meta, 'big');
    expect(logical.size).toBe(n);
    for (const since of [1, 3, 4, 7, 8, 9]) {
      const got = await readWritten(reader(meta), meta.length / ERA_BLOCK, since);
      const want = [...logical].filter(([, e]) => e >= since).map(([b]) => b).sort((a, b) => a - b);
      expect(written(got.written), `since era ${since}`).toEqual(want);
    }
  });

  it('counts the current writeset (the superblock\'s, not yet archived)', async () => {
    const meta = restore('cur', { nrBlocks: 5000, blockSize: 8, currentEra: 4, writesets: [{ era: 4, bits: [10, 4999] }], eras: [[3, 1]] });
    // Move era 4's writeset from the tree to the superblock's current writeset (as the kernel has it
    // while the target runs): the tree keeps only an empty leaf then.
    const sb = await readSuperblock(reader(meta));
    const leaf = meta.subarray(sb.writesetTreeRoot * ERA_BLOCK, (sb.writesetTreeRoot + 1) * ERA_BLOCK);
    const max = leaf.readUInt32LE(20);
    const value = leaf.subarray(32 + max * 8, 32 + max * 8 + 12);
    meta.writeUInt32LE(value.readUInt32LE(0), 188);
    meta.writeBigUInt64LE(value.readBigUInt64LE(4), 192);
    meta.writeUInt32LE(bmChecksum(meta.subarray(4, ERA_BLOCK), 146538381), 0);
    leaf.writeUInt32LE(0, 16);
    leaf.writeUInt32LE(bmChecksum(leaf.subarray(4), 121107), 0);
    expect(written((await readWritten(reader(meta), meta.length / ERA_BLOCK, 1)).written)).toEqual([3, 10, 4999]);
    expect(written((await readWritten(reader(meta), meta.length / ERA_BLOCK, 4)).written)).toEqual([10, 4999]);
  });

  it('refuses a torn or foreign metadata: blank, a flipped byte in any block it reads, a block outside the device', async () => {
    const meta = restore('bad', { nrBlocks: 3000, blockSize: 128, currentEra: 3, writesets: [{ era: 2, bits: [5] }], eras: [[1, 1]] });
    const blocks = meta.length / ERA_BLOCK;
    expect((await rejection(readWritten(reader(Buffer.alloc(meta.length)), blocks))).code).toBe('DF_ERR_ERA_METADATA');
    const used = new Set<number>();
    await readWritten(async (k) => { used.add(k); return reader(meta)(k); }, blocks);
    expect(used.size).toBeGreaterThan(3);
    for (const k of used) {
      const torn = Buffer.from(meta);
      torn.writeUInt8(torn.readUInt8(k * ERA_BLOCK + 100) ^ 1, k * ERA_BLOCK + 100);
      expect((await rejection(readWritten(reader(torn), blocks))).code, `block ${k}`).toBe('DF_ERR_ERA_METADATA');
    }
    expect((await rejection(readWritten(reader(meta), Math.min(...[...used].filter((k) => k > 0))))).code).toBe('DF_ERR_ERA_METADATA');
  });
});
