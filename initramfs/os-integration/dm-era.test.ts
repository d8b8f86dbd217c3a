import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { decodeHookRecord, DESC_SIZE, encodeDescriptor, type Descriptor } from '../../src/agent/era/arm.js';
import { headersEnd } from '../../src/agent/state-area.js';

// The dm-era local-premount script as the initramfs runs it, against the records the agent writes
// (encodeDescriptor) and read back the way the agent reads them (decodeHookRecord). This host's kernel
// has no device-mapper, so `dmsetup` is a stand-in that logs its arguments; losetup is the real one,
// over the disk file. /sys, /dev, /conf and /run are a stand-in tree (DESKFUSE_ERA_TEST_ROOT).
const SCRIPT = path.resolve(import.meta.dirname, 'dm-era/local-premount');
const MiB = 1024 * 1024;
const PART = { start: 1 * MiB, length: 40 * MiB };
const DISK = 64 * MiB;
let T: string;
const loops: string[] = [];

function pread(file: string, at: number, len: number): Buffer {
  const fd = openSync(file, 'r');
  try { const b = Buffer.alloc(len); readSync(fd, b, 0, len, at); return b; } finally { closeSync(fd); }
}
function pwrite(file: string, at: number, data: Buffer): void {
  const fd = openSync(file, 'r+');
  try { writeSync(fd, data, 0, data.length, at); } finally { closeSync(fd); }
}

beforeAll(() => {
  for (const t of ['losetup', 'mke2fs', 'od']) if (spawnSync(t, ['--version']).error) throw new Error(`${t} missing`);
  T = mkdtempSync(path.join(tmpdir(), 'df-era-hook-'));
  for (const d of ['sys/devices/disk/p1', 'sys/class/block', 'sys/block/dm-0/dm', 'dev', 'conf', 'run', 'bin']) mkdirSync(path.join(T, d), { recursive: true });
  writeFileSync(path.join(T, 'sys/devices/disk/size'), `${DISK / 512}\n`);
  writeFileSync(path.join(T, 'sys/devices/disk/p1/partition'), '1\n');
  writeFileSync(path.join(T, 'sys/devices/disk/p1/start'), `${PART.start / 512}\n`);
  writeFileSync(path.join(T, 'sys/devices/disk/p1/size'), `${PART.length / 512}\n`);
  writeFileSync(path.join(T, 'sys/devices/disk/p1/dev'), '254:2\n');
  writeFileSync(path.join(T, 'sys/block/dm-0/dm/name'), 'deskfuse-era\n'); // what the kernel shows once dmsetup created it
  symlinkSync('../../devices/disk', path.join(T, 'sys/class/block/disk'));
  symlinkSync('../../devices/disk/p1', path.join(T, 'sys/class/block/p1'));
  writeFileSync(path.join(T, 'bin/dmsetup'), `#!/bin/sh\necho "$*" >> "${T}/dmsetup.log"\n`);
  writeFileSync(path.join(T, 'bin/modprobe'), '#!/bin/sh\nexit 0\n');
  // blkid -l -t UUID=… -o device, as the initramfs's: the partition stand-in for the root's UUID.
  writeFileSync(path.join(T, 'bin/blkid'), `#!/bin/sh\n[ "$3" = UUID=0df0da7a-test ] && echo "${T}/dev/p1"\n`);
  chmodSync(path.join(T, 'bin/blkid'), 0o755);
  chmodSync(path.join(T, 'bin/dmsetup'), 0o755);
  chmodSync(path.join(T, 'bin/modprobe'), 0o755);
  execFileSync('truncate', ['-s', String(DISK), path.join(T, 'dev/disk')]);
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', `offset=${PART.start}`, path.join(T, 'dev/disk'), `${PART.length / 1024}k`]);
});
afterEach(() => {
  for (const l of loops.splice(0)) spawnSync('losetup', ['-d', l]);
});
afterAll(() => rmSync(T, { recursive: true, force: true }));

const disk = () => path.join(T, 'dev/disk');
const at = headersEnd(DISK);
const mounts = () => pread(disk(), PART.start + 1024 + 0x34, 2).readUInt16LE(0);
const mount = () => { const b = Buffer.alloc(2); b.writeUInt16LE(mounts() + 1); pwrite(disk(), PART.start + 1024 + 0x34, b); };

function arm(parts = [{ ...PART, mounts: mounts() }]): Descriptor {
  const d: Descriptor = { token: Buffer.from('00112233445566778899aabbccddeeff', 'hex'), metaStart: 50 * MiB, metaLength: 2 * MiB, eraBlockSectors: 128, slotHash: Buffer.alloc(32, 5), version: 3, partitions: parts };
  pwrite(disk(), at, Buffer.concat([encodeDescriptor(d), Buffer.alloc(DESC_SIZE)]));
  return d;
}

/** One boot's run of the script: what it told dmsetup, what it put into param.conf, its record. */
function boot(root = path.join(T, 'dev/p1')): { table: string | null; root: string | null; log: string } {
  // The partition device: its first 64 KiB as the disk holds them now (the script reads its superblock).
  writeFileSync(path.join(T, 'dev/p1'), pread(disk(), PART.start, 64 * 1024));
  for (const f of ['dmsetup.log', 'conf/param.conf', 'dev/kmsg']) rmSync(path.join(T, f), { force: true });
  const r = spawnSync('sh', [SCRIPT], { env: { PATH: `${T}/bin:${process.env.PATH}`, ROOT: root, DESKFUSE_ERA_TEST_ROOT: T }, encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  const log = existsSync(path.join(T, 'dev/kmsg')) ? readFileSync(path.join(T, 'dev/kmsg'), 'utf8') : '';
  const table = existsSync(path.join(T, 'dmsetup.log')) ? readFileSync(path.join(T, 'dmsetup.log'), 'utf8').trim().split('\n')[0]! : null;
  const loop = /era metadata on (\/dev\/loop\d+)/.exec(log)?.[1];
  if (loop) loops.push(loop);
  const conf = path.join(T, 'conf/param.conf');
  return { table, root: existsSync(conf) ? readFileSync(conf, 'utf8').trim() : null, log };
}
const record = () => decodeHookRecord(pread(disk(), at + DESC_SIZE, DESC_SIZE));

describe('the dm-era local-premount script', () => {
  it('tracks an armed root: an era table over a loop on the metadata space, root moved to it, and a record the agent reads', () => {
    const d = arm();
    const m0 = mounts();
    const b = boot('UUID=0df0da7a-test'); // as the kernel command line names it (root=UUID=…)
    expect(b.log).toMatch(/tracking .*p1 as \/dev\/dm-0 \(boot 1 of this arming, era metadata on \/dev\/loop\d+\)/);
    const loop = loops[0]!;
    const loopDev = readFileSync(`/sys/class/block/${path.basename(loop)}/dev`, 'utf8').trim();
    expect(b.table).toBe(`--noudevsync create deskfuse-era --table 0 ${PART.length / 512} era ${loopDev} 254:2 128`);
    // The loop is exactly the metadata space of the disk.
    expect(readFileSync(`/sys/class/block/${path.basename(loop)}/loop/offset`, 'utf8').trim()).toBe(String(d.metaStart));
    expect(readFileSync(`/sys/class/block/${path.basename(loop)}/loop/sizelimit`, 'utf8').trim()).toBe(String(d.metaLength));
    expect(b.root).toBe('ROOT=/dev/dm-0');
    expect(record()).toEqual({ token: d.token, boots: 1, lastMounts: m0, partition: 0, broken: false });
  });

  it('goes on at the next boot after one mount, and breaks the arming when a boot it did not see mounted the file system', () => {
    const d = arm();
    const m0 = mounts();
    boot();
    mount(); // the tracked boot's mount
    const second = boot();
    expect(second.root).toBe('ROOT=/dev/dm-0');
    expect(record()).toEqual({ token: d.token, boots: 2, lastMounts: m0 + 1, partition: 0, broken: false });
    mount();
    mount(); // a boot without the hook
    const third = boot();
    expect(third.log).toMatch(/a boot was not tracked/);
    expect(third.table).toBeNull();
    expect(third.root).toBeNull();
    expect(record()).toMatchObject({ token: d.token, boots: 2, broken: true });
    expect(boot().log).toMatch(/tracking broken earlier in this arming/); // and stays off until the agent arms again
  });

  it('leaves the root alone when not armed, or armed for another partition', () => {
    pwrite(disk(), at, Buffer.alloc(2 * DESC_SIZE));
    const off = boot();
    expect(off).toMatchObject({ table: null, root: null });
    expect(off.log).toMatch(/not armed/);
    arm([{ start: 2 * MiB, length: PART.length, mounts: mounts() }]);
    const other = boot();
    expect(other).toMatchObject({ table: null, root: null });
    expect(other.log).toMatch(/is not the armed partition/);
    expect(record()).toBeNull();
  });
});
