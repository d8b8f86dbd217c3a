import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, openSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { agentCommit, agentHandoff } from '../../src/agent/commands.js';
import { agentSync } from '../../src/agent/sync.js';
import { decodeDescriptor, DESC_SIZE, encodeHookRecord, eraBlockBytes } from '../../src/agent/era/arm.js';
import { bmChecksum, ERA_BLOCK } from '../../src/agent/era/metadata.js';
import { headersEnd } from '../../src/agent/state-area.js';
import { makeDisk, patch, prng, sha256, sha256Prefix } from '../helpers/disk.js';
import { cli, startInProcess, tempDir } from '../helpers/server.js';

/**
 * The OS's changed-block tracking (src/agent/era/arm.ts) from the agent's side: a disk with an MBR
 * and an ext4 partition, synced and handed off armed; then an "OS session" stands in for the desktop
 * OS and its dm-era hook (initramfs/os-integration/dm-era/): it writes blocks, bumps the file
 * system's mount count as a mount does, and leaves real dm-era metadata (era_restore) and the hook's
 * record where the hook puts them. The commit must read only what the era marks when all of it is
 * consistent, and fall back to a full scan — never missing a block written while tracking was off
 * — whenever any part is not.
 */
const MiB = 1024 * 1024;
const IMAGE = 48 * MiB;
const PART = { start: 1 * MiB, length: 40 * MiB };
let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startInProcess>>;
let admin: Record<string, string>;
let token: string;
const f = (n: string) => path.join(tmp.dir, n);
const rnd = prng(0xe7a);

beforeAll(async () => {
  for (const t of ['era_restore', 'mke2fs']) if (spawnSync(t, ['-V']).error) throw new Error(`${t} missing: bash scripts/setup-deps.sh`);
  tmp = tempDir('df-era-');
  srv = await startInProcess(f('data'));
  admin = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  // An MBR with one Linux partition holding ext4, and data inside and outside it.
  const mbr = Buffer.alloc(512);
  mbr.writeUInt8(0x83, 446 + 4);
  mbr.writeUInt32LE(PART.start / 512, 446 + 8);
  mbr.writeUInt32LE(PART.length / 512, 446 + 12);
  mbr.writeUInt16LE(0xaa55, 510);
  makeDisk(f('base.img'), IMAGE, [{ at: 0, data: mbr }, { at: 512 * 64, data: rnd(200_000) }, { at: 44 * MiB, data: rnd(1 * MiB) }]);
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', `offset=${PART.start}`, f('base.img'), `${PART.length / 1024}k`]);
  patch(f('base.img'), PART.start + 8 * MiB, rnd(3 * MiB));
  expect((await cli(['image', 'create', 'linux', '--from', f('base.img')], admin)).code).toBe(0);
  expect((await cli(['desktop', 'create', 'desk', '--image', 'linux'], admin)).code).toBe(0);
  token = (await cli(['desktop', 'token', 'desk'], admin)).stdout.trim();
});
afterAll(async () => {
  await srv?.close();
  tmp?.cleanup();
});

const disk = () => f('desk.img');
const opts = () => ({ server: srv.url, token, disk: disk(), desktop: 'desk' });

function readAtSync(file: string, at: number, len: number): Buffer {
  const fd = openSync(file, 'r');
  try {
    const b = Buffer.alloc(len);
    readSync(fd, b, 0, len, at);
    return b;
  } finally {
    closeSync(fd);
  }
}

const mounts = () => readAtSync(disk(), PART.start + 1024 + 0x34, 2).readUInt16LE(0);
const setMounts = (n: number) => { const b = Buffer.alloc(2); b.writeUInt16LE(n & 0xffff); patch(disk(), PART.start + 1024 + 0x34, b); };

interface Session {
  /** Writes the era records (the OS wrote them through the era device). */
  tracked: Array<{ at: number; data: Buffer }>;
  /** Writes it does not record (a boot without the hook, a raw writer). */
  untracked?: Array<{ at: number; data: Buffer }>;
  /** Mounts by boots the hook did not see (each bumps the ext4 mount count). */
  hooklessMounts?: number;
  boots?: number;
  currentEra?: number;
  token?: Buffer;
  broken?: boolean;
  corrupt?: boolean;
  hook?: boolean;
}

/** What the desktop OS and its hook leave on the disk after a session (see the file comment). */
function osSession(s: Session): void {
  const size = readFileSync(disk()).length;
  const at = headersEnd(size);
  const d = decodeDescriptor(readAtSync(disk(), at, DESC_SIZE));
  for (const w of [...s.tracked, ...(s.untracked ?? [])]) patch(disk(), w.at, w.data);
  const boots = s.boots ?? 1;
  const start = mounts();
  if (s.hook !== false && d) {
    const p = d.partitions[0]!;
    expect(p).toMatchObject(PART);
    const eb = eraBlockBytes({ virtualSize: IMAGE, chunkSize: d.eraBlockSectors * 512 });
    const bits = new Set<number>();
    for (const w of s.tracked) for (let b = Math.floor((w.at - p.start) / eb); b * eb < w.at + w.data.length - p.start; b++) bits.add(b);
    const nr = Math.ceil(p.length / eb);
    const era = s.currentEra ?? boots;
    const xml = `<superblock uuid="" block_size="${d.eraBlockSectors}" nr_blocks="${nr}" current_era="${era}">\n<writeset era="${Math.max(1, era)}" nr_bits="${nr}">\n${[...bits].map((b) => `<bit block="${b}" value="true"/>`).join('\n')}\n</writeset>\n<era_array></era_array>\n</superblock>\n`;
    writeFileSync(f('era.xml'), xml);
    writeFileSync(f('era.bin'), Buffer.alloc(d.metaLength));
    execFileSync('era_restore', ['-i', f('era.xml'), '-o', f('era.bin')]);
    const meta = readFileSync(f('era.bin'));
    expect(bmChecksum(meta.subarray(4, ERA_BLOCK), 146538381)).toBe(meta.readUInt32LE(0));
    if (s.corrupt) { // a bit flipped in the writeset tree's root node
      const root = Number(meta.readBigUInt64LE(200)) * ERA_BLOCK;
      meta.writeUInt8(meta.readUInt8(root + 40) ^ 0x10, root + 40);
    }
    patch(disk(), d.metaStart, meta);
    patch(disk(), at + DESC_SIZE, encodeHookRecord({ token: s.token ?? d.token, boots, lastMounts: (start + boots - 1) & 0xffff, partition: 0, broken: s.broken ?? false }));
  }
  setMounts(start + boots + (s.hooklessMounts ?? 0));
}

/** Commit, then check the committed version is the disk's image region, byte for byte. */
async function commitAndCheck(): Promise<Awaited<ReturnType<typeof agentCommit>>> {
  const r = await agentCommit(opts());
  expect(r.committed).toBe(true);
  const out = f(`v${r.version}.raw`);
  expect((await cli(['image', 'export', `linux@${r.version}`, '--to', out], admin)).code).toBe(0);
  expect(sha256(out), 'the committed version is the disk as the OS left it').toBe(sha256Prefix(disk(), IMAGE));
  return r;
}

const write = (at: number, n: number) => ({ at, data: rnd(n) });

describe('dm-era changed-block tracking (agent side)', () => {
  it('a consistent tracked session: the commit reads only the marked chunks and what the era does not cover', async () => {
    execFileSync('truncate', ['-s', String(IMAGE + 12 * MiB), disk()]);
    await agentSync(opts());
    expect((await agentHandoff(disk(), true)).tracking).toBe(true);
    osSession({ tracked: [write(PART.start + 20 * MiB + 100, 5000), write(PART.start + 33 * MiB, 200_000)] });
    const r = await commitAndCheck();
    expect(r.tracking).toBe('era');
    // Outside the partition (1 MiB before, 7 MiB after; mostly holes in this file), its first 64 KiB, and the 5 chunks written.
    expect(r.bytesScanned).toBeLessThan(2 * MiB + 6 * 64 * 1024);
    expect(r.localChanges).toBeGreaterThanOrEqual(5);
  });

  // Each: a block written while tracking was off (untracked), and a reason the agent cannot trust the era.
  const cases: Array<[string, Session, RegExp, boolean?]> = [
    ['a boot without the hook (one mount the hook did not see)', { tracked: [write(PART.start + 10 * MiB, 4096)], untracked: [write(PART.start + 25 * MiB, 4096)], hooklessMounts: 1 }, /mounted 2 times in 1 tracked boots/],
    ['the hook absent from every boot', { tracked: [], untracked: [write(PART.start + 26 * MiB, 4096)], hook: false }, /the hook never tracked this arming/],
    ['a hook record of another arming (token mismatch)', { tracked: [write(PART.start + 11 * MiB, 4096)], untracked: [write(PART.start + 27 * MiB, 4096)], token: Buffer.alloc(16, 7) }, /never tracked this arming/],
    ['the hook found a boot it did not track', { tracked: [], untracked: [write(PART.start + 28 * MiB, 4096)], broken: true }, /did not track/],
    ['an era older than the tracked boots', { tracked: [write(PART.start + 12 * MiB, 4096)], untracked: [write(PART.start + 29 * MiB, 4096)], boots: 2, currentEra: 1 }, /era 1 is older than the 2 tracked boots/],
    ['torn era metadata', { tracked: [write(PART.start + 13 * MiB, 4096)], untracked: [write(PART.start + 30 * MiB, 4096)], corrupt: true }, /era metadata/],
    ['not armed (the hand-off came from no sync)', { tracked: [write(PART.start + 14 * MiB, 4096)], untracked: [write(PART.start + 31 * MiB, 4096)] }, /not armed/, false],
  ];
  for (const [name, session, reason, arm] of cases) {
    it(`never misses a block written while tracking was off: ${name}`, async () => {
      expect((await agentHandoff(disk(), arm ?? true)).tracking).toBe(arm ?? true);
      osSession(session);
      const r = await commitAndCheck();
      expect(r.tracking).toMatch(/^full scan: /);
      expect(r.tracking).toMatch(reason);
    });
  }

  it('never trusts an arming made for an older slot: a commit since, then a session under the old arming', async () => {
    expect((await agentHandoff(disk(), true)).tracking).toBe(true);
    const size = readFileSync(disk()).length;
    const armed = readAtSync(disk(), headersEnd(size), DESC_SIZE);
    osSession({ tracked: [write(PART.start + 15 * MiB, 4096)] });
    expect((await commitAndCheck()).tracking).toBe('era');
    // The disk boots again with no network boot and no new arming; the old descriptor is still there
    // (as if the disarm had not happened) and the hook goes on under it.
    await agentHandoff(disk(), false);
    expect(decodeDescriptor(readAtSync(disk(), headersEnd(size), DESC_SIZE))).toBeNull(); // a hand-off without arming disarms
    patch(disk(), headersEnd(size), armed);
    osSession({ tracked: [write(PART.start + 16 * MiB, 4096)], untracked: [write(PART.start + 32 * MiB, 4096)] });
    const r = await commitAndCheck();
    expect(r.tracking).toBe('full scan: armed for another version of the disk');
  });
});
