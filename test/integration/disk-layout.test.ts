import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, copyFileSync, openSync, readSync, writeSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { open } from 'node:fs/promises';
import { areaSize, encodeHeader, encodeSlot, GPT_RESERVE, headersEnd, HEADER_SIZE, readSlot, readState, slotSize } from '../../src/agent/state-area.js';
import { hashBytes } from '../../src/chunk/id.js';
import { patch, prng, sha256 } from '../helpers/disk.js';
import { cli, startInProcess, tempDir } from '../helpers/server.js';

/**
 * Issue 10 item 11: the disk's layout against the tools that "repair" a GPT. The image is a real
 * GPT disk made by sgdisk (64 MiB, one Linux partition holding data); the endpoint's disk is larger.
 */
const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const G = { virtualSize: SIZE, chunkSize: 64 * 1024 };
const DISK = SIZE + areaSize(G) + 4 * MiB;
let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startInProcess>>;
let admin: Record<string, string>;
const f = (n: string) => path.join(tmp.dir, n);
const agent = (args: string[], token: string) => cli(['agent', ...args, '--json'], { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: token });
const tool = (cmd: string, args: string[]) => {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
};

function read(file: string, pos: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  const fd = openSync(file, 'r');
  readSync(fd, b, 0, len, pos);
  closeSync(fd);
  return b;
}
function write(file: string, pos: number, data: Buffer): void {
  const fd = openSync(file, 'r+');
  writeSync(fd, data, 0, data.length, pos);
  closeSync(fd);
}
const blankDisk = (name: string) => {
  execFileSync('truncate', ['-s', String(DISK), f(name)]);
  return f(name);
};

async function desktop(name: string): Promise<string> {
  expect((await cli(['desktop', 'create', name, '--image', 'gpt'], admin)).code).toBe(0);
  return (await cli(['desktop', 'token', name], admin)).stdout.trim();
}

/** A disk provisioned for a new desktop, handed to its OS (dirty), and the desktop's token. */
async function provisioned(name: string): Promise<{ disk: string; token: string }> {
  const token = await desktop(name);
  const disk = blankDisk(`${name}.disk`);
  const s = await agent(['sync', '--disk', disk, '--desktop', name], token);
  expect(s.code, s.stderr).toBe(0);
  expect((await agent(['handoff', '--disk', disk], token)).json.state).toBe('dirty');
  return { disk, token };
}

beforeAll(async () => {
  tmp = tempDir('df-layout-');
  srv = await startInProcess(f('data'));
  admin = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  execFileSync('truncate', ['-s', String(SIZE), f('gpt.img')]);
  execFileSync('sgdisk', ['-n', '1:2048:0', '-t', '1:8300', '-c', '1:data', f('gpt.img')], { stdio: 'ignore' });
  const r = prng(1111);
  patch(f('gpt.img'), MiB, r(3 * MiB)); // the partition's data
  patch(f('gpt.img'), 40 * MiB + 4096, r(200_000));
  expect(tool('sgdisk', ['-v', f('gpt.img')]).out).toContain('No problems found');
  expect((await cli(['image', 'create', 'gpt', '--from', f('gpt.img')], admin)).code).toBe(0);
});
afterAll(async () => {
  await srv?.close();
  tmp?.cleanup();
});

describe('a GPT image on a larger disk', () => {
  it('a provisioned disk has a valid GPT for its size: sgdisk -v and sfdisk --verify find nothing to correct, and the GPT fields are no local change', async () => {
    const token = await desktop('fresh');
    const disk = blankDisk('fresh.disk');
    const s = await agent(['sync', '--disk', disk, '--desktop', 'fresh'], token);
    expect(s.code, s.stderr).toBe(0);
    const v = tool('sgdisk', ['-v', disk]);
    expect(v.out).toContain('No problems found');
    const sf = tool('sfdisk', ['--verify', disk]);
    expect(sf.out).toContain('No errors detected');
    expect(sf.out).not.toMatch(/mismatch|corrected/i);
    // The backup header is at the disk's last LBA, the primary points at it.
    const last = DISK / 512 - 1;
    expect(read(disk, 512, 512).readBigUInt64LE(32)).toBe(BigInt(last));
    expect(read(disk, DISK - 512, 8).toString()).toBe('EFI PART');
    expect(read(disk, DISK - 512, 512).readBigUInt64LE(24)).toBe(BigInt(last));
    // Only LBA 0 and 1 of the image region differ from the image (sizes and CRC), the rest is the image.
    const img = read(f('gpt.img'), 0, SIZE);
    expect(read(disk, 1024, SIZE - 1024).equals(img.subarray(1024))).toBe(true);

    // The OS ran; nothing changed: the patched fields read back as the image's.
    expect((await agent(['handoff', '--disk', disk], token)).json.state).toBe('dirty');
    const c = await agent(['commit', '--disk', disk], token);
    expect(c.code, c.stderr).toBe(0);
    expect(c.json).toMatchObject({ committed: false, localChanges: 0, version: 1 });
    const again = await agent(['sync', '--disk', disk, '--desktop', 'fresh'], token);
    expect(again.json).toMatchObject({ to: 1, chunksWritten: 0, committed: null });
    expect(tool('sgdisk', ['-v', disk]).out).toContain('No problems found');
  });

  // sgdisk -e rewrites the GPT fields the disk already has: no change. sfdisk also sets the
  // protective MBR's CHS end address to FF FF FF, a byte change of the image that is committed as such.
  it.each([
    ['sgdisk -e', 'sgdisk', ['-e'], null],
    ['sfdisk --relocate gpt-bak-std', 'sfdisk', ['--relocate', 'gpt-bak-std'], Buffer.from([0xff, 0xff, 0xff])],
  ])('%s on a disk with local changes: the state survives, the next sync commits the changes', async (_name, cmd, args, chsEnd) => {
    const name = cmd === 'sgdisk' ? 'sg' : 'sf';
    const { disk, token } = await provisioned(name);
    const local = prng(name.length * 77)(128 * 1024);
    write(disk, 20 * MiB, local); // two 64 KiB chunks of the partition
    const expected = f(`${name}.expected`);
    copyFileSync(f('gpt.img'), expected);
    patch(expected, 20 * MiB, local);
    if (chsEnd) patch(expected, 446 + 5, chsEnd);
    const stateBefore = read(disk, headersEnd(DISK) - 2 * HEADER_SIZE, 2 * HEADER_SIZE);

    const t = tool(cmd, [...args, disk]);
    expect(t.code, t.out).toBe(0);
    expect(read(disk, headersEnd(DISK) - 2 * HEADER_SIZE, 2 * HEADER_SIZE).equals(stateBefore)).toBe(true);
    expect((await agent(['status', '--disk', disk], token)).json).toMatchObject({ state: 'dirty', version: 1, desktop: name, slotOk: true });

    const s = await agent(['sync', '--disk', disk, '--desktop', name], token);
    expect(s.code, s.stderr).toBe(0);
    expect(s.json).toMatchObject({ from: 1, localChanges: chsEnd ? 3 : 2, conflict: null });
    const version = s.json.committed as number;
    expect(version).toBeGreaterThan(1);
    expect(s.json.to).toBe(version);
    expect((await cli(['image', 'export', `gpt@${version}`, '--to', f(`${name}.out`)], admin)).code).toBe(0);
    expect(sha256(f(`${name}.out`))).toBe(sha256(expected));
    // The disk is sealed again: nothing for the tools to correct.
    expect(tool('sgdisk', ['-v', disk]).out).toContain('No problems found');
    expect(read(disk, 20 * MiB, local.length).equals(local)).toBe(true);
  });
});

describe('a disk provisioned before the GPT reserve (its state at the very end of the device)', () => {
  /** Rewrites a provisioned disk as an older release left it: primary GPT as the image has it, state headers at the device's end. */
  async function toLegacyLayout(disk: string): Promise<void> {
    const fh = await open(disk, 'r+');
    try {
      const st = (await readState(fh, DISK))!;
      const slot = encodeSlot(await readSlot(fh, st));
      await fh.write(read(f('gpt.img'), 0, 1024), 0, 1024, 0); // never sealed: LBA 0 and 1 are the image's
      await fh.write(Buffer.alloc(GPT_RESERVE + 2 * HEADER_SIZE + 2 * slotSize(G)), 0, GPT_RESERVE + 2 * HEADER_SIZE + 2 * slotSize(G), DISK - GPT_RESERVE - 2 * HEADER_SIZE - 2 * slotSize(G) - 4096);
      const legacyStart = Math.floor((DISK - 2 * HEADER_SIZE) / 4096) * 4096 - 2 * slotSize(G); // the old areaStart
      await fh.write(slot, 0, slot.length, legacyStart);
      const h = encodeHeader({ ...st, seq: 7, areaStart: legacyStart, activeSlot: 0, slotHash: hashBytes(slot) });
      await fh.write(h, 0, h.length, DISK - HEADER_SIZE); // odd sequence: the second copy, as writeHeader put it
      await fh.datasync();
    } finally {
      await fh.close();
    }
  }

  it('is read as the disk\'s state, moved before the reserve at the next sync, and its local changes are committed', async () => {
    const { disk, token } = await provisioned('old');
    const local = prng(4242)(96 * 1024);
    write(disk, 30 * MiB, local);
    await toLegacyLayout(disk);
    expect(tool('sgdisk', ['-v', disk]).out).not.toContain('No problems found'); // the backup is where the old image put it
    const st = await agent(['status', '--disk', disk], token);
    expect(st.json).toMatchObject({ state: 'dirty', version: 1, desktop: 'old', slotOk: true, layout: 'legacy' });

    const s = await agent(['sync', '--disk', disk, '--desktop', 'old'], token);
    expect(s.code, s.stderr).toBe(0);
    expect(s.json).toMatchObject({ from: 1, conflict: null });
    expect(s.json.localChanges).toBeGreaterThan(0);
    const version = s.json.committed as number;
    expect(version).toBeGreaterThan(1);
    const after = await agent(['status', '--disk', disk], token);
    expect(after.json).toMatchObject({ state: 'clean', version, desktop: 'old', slotOk: true });
    expect(after.json.layout).toBeUndefined();
    expect(tool('sgdisk', ['-v', disk]).out).toContain('No problems found');
    const expected = f('old.expected');
    copyFileSync(f('gpt.img'), expected);
    patch(expected, 30 * MiB, local);
    expect((await cli(['image', 'export', `gpt@${version}`, '--to', f('old.out')], admin)).code).toBe(0);
    expect(sha256(f('old.out'))).toBe(sha256(expected));
  });
});

describe('a disk with data but no readable state', () => {
  it('is "unrecognised", not blank; sync refuses it with DF_ERR_DISK_UNKNOWN_DATA and writes nothing; --reprovision takes it', async () => {
    const { disk, token } = await provisioned('lost');
    write(disk, 30 * MiB, prng(9)(4096)); // the OS's change
    // Some tool wrote over the state area (here: both header copies).
    write(disk, headersEnd(DISK) - 2 * HEADER_SIZE, Buffer.alloc(2 * HEADER_SIZE, 0x5a));
    const before = sha256(disk);
    const st = await agent(['status', '--disk', disk], token);
    expect(st.json.state).toBe('unrecognised');

    const r = await agent(['sync', '--disk', disk, '--desktop', 'lost'], token);
    expect(r.code).not.toBe(0);
    expect(r.json.error.code).toBe('DF_ERR_DISK_UNKNOWN_DATA');
    expect(r.json.error.message).toContain('--reprovision');
    expect(sha256(disk)).toBe(before);
    expect((await cli(['image', 'log', 'gpt@desktops/lost', '--json'], admin)).json.versions).toHaveLength(1); // nothing committed either

    const re = await agent(['sync', '--disk', disk, '--desktop', 'lost', '--reprovision'], token);
    expect(re.code, re.stderr).toBe(0);
    expect((await agent(['status', '--disk', disk], token)).json).toMatchObject({ state: 'clean', version: 1 });
  });

  it('a truly blank disk (sparse, all zeros) is "blank" and provisions', async () => {
    const token = await desktop('zero');
    const disk = blankDisk('zero.disk');
    expect((await agent(['status', '--disk', disk], token)).json.state).toBe('blank');
    expect((await agent(['sync', '--disk', disk, '--desktop', 'zero'], token)).code).toBe(0);
  });

  it('the GPT reserve is the disk\'s last MiB', () => {
    expect(GPT_RESERVE).toBe(MiB);
    expect(DISK - headersEnd(DISK)).toBeGreaterThanOrEqual(GPT_RESERVE);
  });
});
